//! Wall-clock timestamps as the API server writes them.

use jiff::Timestamp;

/// Now, truncated to whole seconds: metav1.Time carries second precision on the wire.
pub(crate) fn now_seconds() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// Now as an RFC 3339 string with seconds, as stored in metadata.
pub(crate) fn now_rfc3339() -> String {
    format_seconds(now_seconds())
}

pub(crate) fn format_seconds(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}
