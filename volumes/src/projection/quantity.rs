//! The downward API's divisions (k8s-semantics §2.4) over the store's exactly parsed quantities: the
//! store owns the grammar, this module only the ceil divisions and the allowed divisors.

use strata_store::quantity::Quantity;

const NANOS_PER_MILLI: i128 = 1_000_000;
const NANOS_PER_UNIT: i128 = 1_000_000_000;

/// `ceil(a / b)` for `b > 0`, exact for negative `a` too.
fn ceil_div(a: i128, b: i128) -> i128 {
    a.div_euclid(b) + i128::from(a.rem_euclid(b) != 0)
}

/// `Quantity.MilliValue()`: thousandths, rounded up.
fn milli_value(q: Quantity) -> i128 {
    ceil_div(q.nanos(), NANOS_PER_MILLI)
}

/// CPU as the downward API prints it: ceil(milli(q) / milli(divisor)).
pub fn cpu_in(q: Quantity, divisor: Quantity) -> i128 {
    ceil_div(milli_value(q), milli_value(divisor).max(1))
}

/// Memory, ephemeral storage and hugepages: ceil(value(q) / value(divisor)).
pub fn bytes_in(q: Quantity, divisor: Quantity) -> i128 {
    ceil_div(q.ceil_units(), divisor.ceil_units().max(1))
}

/// Allowed cpu divisors: `1` and `1m`, compared by value (so `1000m` counts as `1`).
pub fn valid_cpu_divisor(d: Quantity) -> bool {
    d.nanos() == NANOS_PER_UNIT || d.nanos() == NANOS_PER_MILLI
}

/// Allowed memory-like divisors: `1`, the decimal units k..E and the binary units Ki..Ei,
/// compared by value.
pub fn valid_bytes_divisor(d: Quantity) -> bool {
    if d.nanos() % NANOS_PER_UNIT != 0 {
        return false;
    }
    let v = d.nanos() / NANOS_PER_UNIT;
    (0..=6).any(|i| v == 10i128.pow(3 * i)) || (1..=6).any(|i| v == 1i128 << (10 * i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        strata_store::quantity::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn downward_api_divisions() {
        // k8s-semantics §2.4: 250m with divisor 1 is "1", with 1m is "250".
        assert_eq!(cpu_in(q("250m"), q("1")), 1);
        assert_eq!(cpu_in(q("250m"), q("1m")), 250);
        assert_eq!(cpu_in(q("2"), q("1")), 2);
        assert_eq!(cpu_in(q("1n"), q("1m")), 1, "MilliValue() rounds up");
        assert_eq!(bytes_in(q("128Mi"), q("1Mi")), 128);
        assert_eq!(bytes_in(q("100M"), q("1Mi")), 96, "ceil(100e6 / 2^20)");
        assert_eq!(bytes_in(q("1Mi"), q("1k")), 1049, "ceil(1048576 / 1000)");
        assert_eq!(bytes_in(q("1"), q("1Gi")), 1);
        assert_eq!(bytes_in(q("0.1"), q("1")), 1, "Value() rounds up");
    }

    #[test]
    fn negative_and_huge_values_stay_exact() {
        // ceil rounds towards +inf: -1.5 cpu in whole cpus is -1, -250m is 0.
        assert_eq!(cpu_in(q("-1500m"), q("1")), -1);
        assert_eq!(cpu_in(q("-250m"), q("1")), 0);
        assert_eq!(bytes_in(q("-1Ki"), q("1k")), -1);
        // The store's largest quantity (2^63-1 units) divides without overflow.
        let max = q("9223372036854775807");
        assert_eq!(bytes_in(max, q("1")), i128::from(i64::MAX));
        assert_eq!(cpu_in(max, q("1m")), i128::from(i64::MAX) * 1000);
        assert_eq!(bytes_in(max, q("1Ei")), 8, "ceil((2^63-1) / 2^60)");
    }

    #[test]
    fn divisor_rules() {
        for ok in ["1", "1m", "1000m"] {
            assert!(valid_cpu_divisor(q(ok)), "{ok}");
        }
        for bad in ["2", "10m", "1k", "0.5", "1n", "-1", "-1m"] {
            assert!(!valid_cpu_divisor(q(bad)), "{bad}");
        }
        for ok in [
            "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei",
            "1000", "1024Ki",
        ] {
            assert!(valid_bytes_divisor(q(ok)), "{ok}");
        }
        for bad in ["2", "1m", "10Mi", "1.5", "-1", "-1Ki", "1001m"] {
            assert!(!valid_bytes_divisor(q(bad)), "{bad}");
        }
    }
}
