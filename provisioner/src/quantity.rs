//! Storage sizes: `Quantity` strings to bytes and back.
//!
//! Parsing is the store's (`strata_store::quantity`, the API server's exact grammar); this
//! module only turns its result into whole bytes and formats byte counts for PVs and PVCs.

use strata_store::quantity;

use crate::k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Parses a quantity into whole bytes, a fraction rounded up as upstream `Quantity.Value()`
/// rounds (`1.5` is 2 bytes, `1500m` too).
///
/// Surrounding whitespace is trimmed first: upstream decodes a quantity from JSON with
/// `ParseQuantity(strings.TrimSpace(..))`, so a client reading `" 1Gi"` gets 1Gi, while
/// `strata_store::quantity::parse` (like `ParseQuantity`) takes the bare string only.
/// A negative size is an error: no storage size is negative.
pub fn parse_bytes(q: &str) -> Result<u128, String> {
    let parsed = quantity::parse(q.trim()).map_err(|e| e.to_string())?;
    if parsed.is_negative() {
        return Err(format!("invalid quantity {q:?}: negative"));
    }
    // The store caps a quantity at i64::MAX whole units, so a non-negative one fits u64.
    parsed
        .to_bytes()
        .map(u128::from)
        .ok_or_else(|| format!("invalid quantity {q:?}: too large"))
}

/// Bytes of a `Quantity`, or an error naming the bad value.
pub fn bytes_of(q: &Quantity) -> Result<u128, String> {
    parse_bytes(&q.0)
}

/// The canonical binary form upstream uses for byte counts (`resource.NewQuantity(n, BinarySI)`).
pub fn format_bytes(n: u128) -> Quantity {
    const SUFFIXES: [(&str, u32); 6] = [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ];
    for (suffix, shift) in SUFFIXES {
        let unit = 1u128 << shift;
        if n >= unit && n.is_multiple_of(unit) {
            return Quantity(format!("{}{suffix}", n / unit));
        }
    }
    Quantity(n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes_and_rounds_up() {
        assert_eq!(parse_bytes("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("500M").unwrap(), 500_000_000);
        assert_eq!(parse_bytes("1.5Ki").unwrap(), 1536);
        assert_eq!(parse_bytes("1e3").unwrap(), 1000);
        assert_eq!(parse_bytes("1500m").unwrap(), 2);
        assert_eq!(parse_bytes("0.1").unwrap(), 1);
        assert_eq!(parse_bytes("42").unwrap(), 42);
        assert_eq!(parse_bytes("+7k").unwrap(), 7000);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "1K", "1.2.3", "-1Gi", "1Xi", "1e", "1e99", "abc"] {
            assert!(parse_bytes(bad).is_err(), "{bad} must be rejected");
        }
        // Upstream's scanner reads a missing number as zero; admission refuses a
        // zero request, not the parser.
        assert_eq!(parse_bytes("Gi").unwrap(), 0);
    }

    #[test]
    fn trims_like_upstream_json_decoding() {
        assert_eq!(parse_bytes(" 1Gi\n").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("-0").unwrap(), 0, "upstream parses -0 as zero");
        assert!(parse_bytes("1 Gi").is_err());
    }

    #[test]
    fn formats_binary() {
        assert_eq!(format_bytes(1 << 30).0, "1Gi");
        assert_eq!(format_bytes(3 << 20).0, "3Mi");
        assert_eq!(format_bytes(1536).0, "1536");
        assert_eq!(format_bytes(0).0, "0");
    }
}
