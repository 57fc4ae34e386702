//! Just enough of the Kubernetes `resource.Quantity` for the downward API: exact parsing
//! into a fraction, and the ceil divisions of §2.4.

/// An exact non-negative-or-negative fraction `num / den` (`den > 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    num: i128,
    den: i128,
}

/// Parses `"250m"`, `"1.5Gi"`, `"2e3"`, `"128974848"`, ...; `None` when malformed or too large.
pub fn parse(s: &str) -> Option<Ratio> {
    let s = s.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.len() + frac.len() > 30 {
        return None;
    }
    let digits = format!("{int}{frac}");
    let mut num: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let mut den: i128 = 10i128.checked_pow(frac.len() as u32)?;
    let scale = |p: u32| 10i128.checked_pow(p);
    match suffix {
        "" => {}
        "n" => den = den.checked_mul(scale(9)?)?,
        "u" => den = den.checked_mul(scale(6)?)?,
        "m" => den = den.checked_mul(scale(3)?)?,
        "k" => num = num.checked_mul(scale(3)?)?,
        "M" => num = num.checked_mul(scale(6)?)?,
        "G" => num = num.checked_mul(scale(9)?)?,
        "T" => num = num.checked_mul(scale(12)?)?,
        "P" => num = num.checked_mul(scale(15)?)?,
        "E" => num = num.checked_mul(scale(18)?)?,
        "Ki" => num = num.checked_mul(1 << 10)?,
        "Mi" => num = num.checked_mul(1 << 20)?,
        "Gi" => num = num.checked_mul(1 << 30)?,
        "Ti" => num = num.checked_mul(1 << 40)?,
        "Pi" => num = num.checked_mul(1 << 50)?,
        "Ei" => num = num.checked_mul(1 << 60)?,
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            if e.unsigned_abs() > 30 {
                return None;
            }
            if e >= 0 {
                num = num.checked_mul(scale(e as u32)?)?;
            } else {
                den = den.checked_mul(scale(e.unsigned_abs())?)?;
            }
        }
        _ => return None,
    }
    Some(Ratio {
        num: if neg { -num } else { num },
        den,
    })
}

fn ceil_div(a: i128, b: i128) -> i128 {
    -((-a).div_euclid(b))
}

impl Ratio {
    pub const ONE: Ratio = Ratio { num: 1, den: 1 };
    pub const ZERO: Ratio = Ratio { num: 0, den: 1 };

    pub fn is_zero(&self) -> bool {
        self.num == 0
    }

    /// `Quantity.Value()`: rounded up to a whole number.
    pub fn value(&self) -> i128 {
        ceil_div(self.num, self.den)
    }

    /// `Quantity.MilliValue()`: thousandths, rounded up.
    pub fn milli_value(&self) -> i128 {
        ceil_div(self.num.saturating_mul(1000), self.den)
    }
}

/// CPU as the downward API prints it: ceil(milli(q) / milli(divisor)).
pub fn cpu_in(q: Ratio, divisor: Ratio) -> i128 {
    ceil_div(q.milli_value(), divisor.milli_value().max(1))
}

/// Memory, ephemeral storage and hugepages: ceil(value(q) / value(divisor)).
pub fn bytes_in(q: Ratio, divisor: Ratio) -> i128 {
    ceil_div(q.value(), divisor.value().max(1))
}

/// Allowed cpu divisors: `1` and `1m` (by value, so `1000m` counts as `1`).
pub fn valid_cpu_divisor(d: Ratio) -> bool {
    d.den != 0 && (d.milli_value() == 1000 || d.milli_value() == 1) && d.num * 1000 % d.den == 0
}

/// Allowed memory-like divisors: `1`, the decimal and the binary units up to E/Ei.
pub fn valid_bytes_divisor(d: Ratio) -> bool {
    if d.num % d.den != 0 {
        return false;
    }
    let v = d.num / d.den;
    (0..=6).any(|i| v == 10i128.pow(3 * i)) || (1..=6).any(|i| v == 1i128 << (10 * i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Ratio {
        parse(s).unwrap_or_else(|| panic!("{s}"))
    }

    #[test]
    fn parses_units() {
        assert_eq!(q("250m").milli_value(), 250);
        assert_eq!(q("1").milli_value(), 1000);
        assert_eq!(q("1.5").milli_value(), 1500);
        assert_eq!(q("128Mi").value(), 128 << 20);
        assert_eq!(q("1G").value(), 1_000_000_000);
        assert_eq!(q("2e3").value(), 2000);
        assert_eq!(q("1.5Ki").value(), 1536);
        assert_eq!(q("0.1").value(), 1, "Value() rounds up");
        assert_eq!(q("1n").milli_value(), 1, "MilliValue() rounds up");
        for bad in ["", "abc", "1.2.3", "1Zi", "--1", "1e99", "."] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn downward_api_divisions() {
        // §2.4: 250m with divisor 1 is "1", with 1m is "250".
        assert_eq!(cpu_in(q("250m"), q("1")), 1);
        assert_eq!(cpu_in(q("250m"), q("1m")), 250);
        assert_eq!(cpu_in(q("2"), q("1")), 2);
        assert_eq!(bytes_in(q("128Mi"), q("1Mi")), 128);
        assert_eq!(bytes_in(q("100M"), q("1Mi")), 96, "ceil(100e6 / 2^20)");
        assert_eq!(bytes_in(q("1"), q("1Gi")), 1);
    }

    #[test]
    fn divisor_rules() {
        for ok in ["1", "1m", "1000m"] {
            assert!(valid_cpu_divisor(q(ok)), "{ok}");
        }
        for bad in ["2", "10m", "1k", "0.5"] {
            assert!(!valid_cpu_divisor(q(bad)), "{bad}");
        }
        for ok in [
            "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei",
        ] {
            assert!(valid_bytes_divisor(q(ok)), "{ok}");
        }
        for bad in ["2", "1m", "10Mi", "1.5"] {
            assert!(!valid_bytes_divisor(q(bad)), "{bad}");
        }
    }
}
