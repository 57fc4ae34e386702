//! Shared by the `quantity` fuzz target and `quantity/tests/fuzz_seeds.rs`.

/// Parsing never panics; what parses prints a canonical form that parses back to
/// the same value and prints the same again.
pub fn check(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(q) = strata_quantity::parse(s) {
        let text = q.to_string();
        let back = strata_quantity::parse(&text)
            .unwrap_or_else(|e| panic!("{s:?} printed as {text:?}, which does not parse: {e}"));
        assert_eq!(back, q, "{s:?} -> {text:?}");
        assert_eq!(back.to_string(), text, "{s:?} -> {text:?} is not stable");
    }
}
