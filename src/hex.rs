//! Lowercase hexadecimal, as the connector writes digests: idempotency fingerprints, callback
//! signatures, verdict-cache keys, audit hashes, key ids and token hashes.

/// `bytes` as lowercase hex, two digits a byte, in one allocation.
pub(crate) fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_byte_is_two_lowercase_digits_as_format_writes_them() {
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::encode(&all), expected);
        assert_eq!(super::encode(&[]), "");
    }
}
