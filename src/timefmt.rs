//! Times as the API, the dashboard and the flows' records show them.

/// Wall-clock milliseconds since the Unix epoch as RFC 3339 (UTC); empty for a time RFC 3339 cannot
/// hold.
pub(crate) fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
