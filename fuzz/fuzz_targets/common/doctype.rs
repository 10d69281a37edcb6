//! Shared by the SOAP fuzz targets.

/// A document whose prolog (after the XML declaration, whitespace and comments) holds a DOCTYPE.
pub fn starts_with_doctype(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let mut rest = text.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("<?") {
            match after.find("?>") {
                Some(end) => rest = after[end + 2..].trim_start(),
                None => return false,
            }
        } else if let Some(after) = rest.strip_prefix("<!--") {
            match after.find("-->") {
                Some(end) => rest = after[end + 3..].trim_start(),
                None => return false,
            }
        } else {
            return rest.to_ascii_uppercase().starts_with("<!DOCTYPE");
        }
    }
}
