//! Kubernetes resource quantities (`10Gi`, `500M`, `1.5e9`) to and from bytes.
//!
//! Only what storage sizes need: non-negative values, rounded up to whole bytes as
//! `Quantity.Value()` does upstream.

use crate::k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Parses a quantity into whole bytes, rounding a fraction up.
pub fn parse_bytes(q: &str) -> Result<u128, String> {
    let s = q.trim();
    if s.is_empty() {
        return Err("empty quantity".into());
    }
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits_end);
    let num = num.strip_prefix('+').unwrap_or(num);
    if num.is_empty() || num.matches('.').count() > 1 || num == "." {
        return Err(format!("invalid quantity {q:?}"));
    }
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    // mantissa = int_part.frac_part as an integer, scaled down by 10^frac_len.
    let mut mantissa: u128 = 0;
    for c in int_part.chars().chain(frac_part.chars()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(c as u8 - b'0')))
            .ok_or_else(|| format!("quantity {q:?} is too large"))?;
    }
    let mut den_pow10 = frac_part.len() as u32;
    let (mul, extra_den_pow10): (u128, u32) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "n" => (1, 9),
        "u" => (1, 6),
        "m" => (1, 3),
        "k" => (1_000, 0),
        "M" => (1_000_000, 0),
        "G" => (1_000_000_000, 0),
        "T" => (1_000_000_000_000, 0),
        "P" => (1_000_000_000_000_000, 0),
        "E" => (1_000_000_000_000_000_000, 0),
        other => {
            let exp = other
                .strip_prefix(['e', 'E'])
                .ok_or_else(|| format!("invalid quantity suffix in {q:?}"))?;
            let exp: i32 = exp
                .parse()
                .map_err(|_| format!("invalid quantity exponent in {q:?}"))?;
            if exp.unsigned_abs() > 30 {
                return Err(format!("quantity exponent out of range in {q:?}"));
            }
            if exp >= 0 {
                (10u128.pow(exp as u32), 0)
            } else {
                (1, exp.unsigned_abs())
            }
        }
    };
    den_pow10 += extra_den_pow10;
    let num = mantissa
        .checked_mul(mul)
        .ok_or_else(|| format!("quantity {q:?} is too large"))?;
    if den_pow10 > 38 {
        return Ok(u128::from(num > 0));
    }
    let den = 10u128.pow(den_pow10);
    Ok(num.div_ceil(den))
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
        for bad in ["", "Gi", "1.2.3", "-1Gi", "1Xi", "1e", "1e99", "abc", "."] {
            assert!(parse_bytes(bad).is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn formats_binary() {
        assert_eq!(format_bytes(1 << 30).0, "1Gi");
        assert_eq!(format_bytes(3 << 20).0, "3Mi");
        assert_eq!(format_bytes(1536).0, "1536");
        assert_eq!(format_bytes(0).0, "0");
    }
}
