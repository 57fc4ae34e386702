//! resource.Quantity parsed exactly, as the API server validates it.
//!
//! Grammar (apimachinery `resource/quantity.go`):
//! `<signedNumber><suffix>`, where the number is `digits`, `digits.digits`, `digits.` or
//! `.digits`, and the suffix is a binary SI unit (Ki Mi Gi Ti Pi Ei), a decimal SI unit
//! (n u m "" k M G T P E) or a decimal exponent (`e`/`E` followed by a signed integer).
//! Values are held in units of 10^-9 (nano); finer fractions round up, as upstream does.

use std::fmt;

/// An exactly parsed quantity, in nano units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    nanos: i128,
}

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityError {
    pub input: String,
    pub reason: &'static str,
}

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid quantity {:?}: {}", self.input, self.reason)
    }
}

impl std::error::Error for QuantityError {}

const NANO: i128 = 1_000_000_000;

impl Quantity {
    /// The value times 10^9.
    pub fn nanos(self) -> i128 {
        self.nanos
    }

    /// The value rounded up to a whole number (bytes, for storage).
    pub fn ceil_units(self) -> i128 {
        self.nanos.div_euclid(NANO) + i128::from(self.nanos.rem_euclid(NANO) != 0)
    }

    /// Whole bytes, rounded up; None when negative or beyond u64.
    pub fn to_bytes(self) -> Option<u64> {
        u64::try_from(self.ceil_units()).ok()
    }

    pub fn is_negative(self) -> bool {
        self.nanos < 0
    }

    pub fn is_zero(self) -> bool {
        self.nanos == 0
    }

    pub fn from_units(units: i64) -> Quantity {
        Quantity {
            nanos: i128::from(units) * NANO,
        }
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// Parses a quantity string exactly.
pub fn parse(input: &str) -> Result<Quantity, QuantityError> {
    let err = |reason| QuantityError {
        input: input.to_string(),
        reason,
    };
    if input.is_empty() {
        return Err(err("empty"));
    }
    if input.len() > 64 {
        return Err(err("too long"));
    }
    let bytes = input.as_bytes();
    let mut i = 0;
    let negative = match bytes[0] {
        b'-' => {
            i = 1;
            true
        }
        b'+' => {
            i = 1;
            false
        }
        _ => false,
    };
    let int_start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = &input[int_start..i];
    let mut frac_digits = "";
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = &input[frac_start..i];
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(err("no digits"));
    }
    let suffix = &input[i..];
    let (exp10, exp2): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        s if s.starts_with(['e', 'E']) => {
            (parse_exponent(&s[1..]).ok_or_else(|| err("bad suffix"))?, 0)
        }
        _ => return Err(err("bad suffix")),
    };
    // mantissa = int_digits ++ frac_digits, scaled by 10^-(frac len).
    let digits = format!("{int_digits}{frac_digits}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 36 {
        return Err(err("too many digits"));
    }
    let mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| err("bad digits"))?
    };
    let frac_len = i32::try_from(frac_digits.len()).map_err(|_| err("too many digits"))?;
    let mut value = mantissa
        .checked_mul(1i128 << exp2)
        .ok_or_else(|| err("too large"))?;
    let scale = 9 - frac_len + exp10;
    if scale >= 0 {
        let factor = pow10(scale).ok_or_else(|| err("too large"))?;
        value = value.checked_mul(factor).ok_or_else(|| err("too large"))?;
    } else {
        // Finer than a nano: round up, as upstream rounds to its smallest scale.
        value = match pow10(-scale) {
            Some(div) => value / div + i128::from(value % div != 0),
            None => i128::from(value != 0),
        };
    }
    // Upstream keeps values in an int64 of the smallest scale at most; beyond that it would
    // need arbitrary precision. 2^63 units is far past any storage size.
    if value / NANO > i128::from(i64::MAX) {
        return Err(err("too large"));
    }
    Ok(Quantity {
        nanos: if negative { -value } else { value },
    })
}

fn parse_exponent(s: &str) -> Option<i32> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn pow10(exp: i32) -> Option<i128> {
    10i128.checked_pow(u32::try_from(exp).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> i128 {
        parse(s).unwrap().ceil_units()
    }

    #[test]
    fn units_and_forms() {
        assert_eq!(bytes("10Gi"), 10 << 30);
        assert_eq!(bytes("1Ki"), 1024);
        assert_eq!(bytes("1Ei"), 1 << 60);
        assert_eq!(bytes("1G"), 1_000_000_000);
        assert_eq!(bytes("1E"), 1_000_000_000_000_000_000);
        assert_eq!(bytes("1e3"), 1000);
        assert_eq!(bytes("1E3"), 1000);
        assert_eq!(bytes("1.5Gi"), 3 << 29);
        assert_eq!(bytes(".5Ki"), 512);
        assert_eq!(bytes("5."), 5);
        assert_eq!(bytes("+7"), 7);
        assert_eq!(bytes("12e-1"), 2, "1.2 rounds up to 2 whole units");
        assert_eq!(parse("100m").unwrap().nanos(), 100_000_000);
        assert_eq!(parse("1n").unwrap().nanos(), 1);
        assert_eq!(parse("1e-10").unwrap().nanos(), 1, "sub-nano rounds up");
        assert_eq!(parse("0").unwrap(), Quantity::from_units(0));
        assert!(parse("-1Gi").unwrap().is_negative());
        assert!(parse("1Gi").unwrap() > parse("1G").unwrap());
        assert_eq!(parse("1024Mi").unwrap(), parse("1Gi").unwrap());
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "10Gx",
            "Gi",
            "1.2.3",
            "1 Gi",
            "1gi",
            "1KiB",
            "e3",
            "1e",
            "1e+",
            "1ee3",
            "--1",
            "1e99999",
            "99999999999999999999Ei",
            "0x10",
            " 1",
            "1Gi ",
            ".",
            "+",
            "1.5e1.5",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(
            parse("10Gx").unwrap_err().to_string(),
            "invalid quantity \"10Gx\": bad suffix"
        );
    }

    proptest::proptest! {
        /// Any string: parse never panics, and what it accepts matches the grammar's shape.
        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,24}") {
            let _ = parse(&s);
        }

        /// Well-formed quantities parse to exactly the value their parts say.
        #[test]
        fn grammar_values_are_exact(
            int in 0u64..1_000_000,
            frac in proptest::option::of(0u32..1000),
            unit in 0usize..8,
        ) {
            let (suffix, mult): (&str, i128) = [
                ("", 1), ("k", 1_000), ("M", 1_000_000), ("G", 1_000_000_000),
                ("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("e3", 1_000),
            ][unit];
            let text = match frac {
                Some(f) => format!("{int}.{f:03}{suffix}"),
                None => format!("{int}{suffix}"),
            };
            let q = parse(&text).unwrap();
            // value * 1e9 = (int * 1000 + frac) * mult * 1e6
            let want = (i128::from(int) * 1000 + i128::from(frac.unwrap_or(0))) * mult * 1_000_000;
            proptest::prop_assert_eq!(q.nanos(), want, "{}", text);
        }
    }
}
