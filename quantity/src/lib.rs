//! Kubernetes resource quantities (`resource.Quantity`), parsed and formatted the
//! way k8s.io/apimachinery does, so the driver, the store's admission and the
//! controllers accept the same strings and print the same canonical forms.
//!
//! Grammar (apimachinery `ParseQuantity`): an optional sign, digits with an
//! optional `.` and fraction, then a suffix: binary (`Ki Mi Gi Ti Pi Ei`), decimal
//! (`n u m` none `k M G T P E`) or a decimal exponent (`e`/`E` and a signed
//! integer). `K` is not a suffix. As upstream's scanner does, a number may have no
//! digits at all (`Gi`, `+`, `.` are zero), and a fraction may be empty (`1.G`).
//! Values are held in units of 10^-9; a finer non-zero value rounds away from zero
//! to the next nano, as upstream rounds.
//!
//! The canonical string ([`Quantity`]'s `Display`, upstream's `String()`) keeps
//! the parsed format: binary values print with the largest binary suffix that
//! divides them (`1.5Gi` is `1536Mi`), unless they are under 1024 or not whole
//! (then decimal); decimal values print with an exponent that is a multiple of
//! three and an integer mantissa (`1500` stays, `1000` is `1k`, `0.1` is `100m`).
//!
//! Limits: upstream keeps decimal quantities in arbitrary precision; here values
//! must fit 2^63-1 whole units and at most 36 significant digits, or parsing says
//! "too large"/"too many digits". Binary values above 2^63-1 are capped there, as
//! upstream caps them.

use std::fmt;

/// How a quantity was written, which decides its canonical string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `Ki`..`Ei`.
    BinarySI,
    /// No suffix or `n u m k M G T P E`.
    DecimalSI,
    /// `e<exp>` / `E<exp>`.
    DecimalExponent,
}

/// An exactly parsed quantity: its value in nano units and its format.
/// Equality and order compare values only (`1Ki` equals `1024`).
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl std::hash::Hash for Quantity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.nanos.hash(state);
    }
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
/// Upstream's cap for binary quantities and our range for all: 2^63-1 units.
const MAX_NANOS: i128 = i64::MAX as i128 * NANO;

impl Quantity {
    /// The value times 10^9.
    pub fn nanos(self) -> i128 {
        self.nanos
    }

    pub fn format(self) -> Format {
        self.format
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

    /// A whole number of units, formatted decimal (upstream `NewQuantity(n, DecimalSI)`).
    pub fn from_units(units: i64) -> Quantity {
        Quantity {
            nanos: i128::from(units) * NANO,
            format: Format::DecimalSI,
        }
    }

    /// A byte count, formatted binary (upstream `NewQuantity(n, BinarySI)`).
    pub fn from_bytes(bytes: u64) -> Quantity {
        Quantity {
            nanos: i128::from(bytes) * NANO,
            format: Format::BinarySI,
        }
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// Parses a quantity string exactly (upstream `ParseQuantity`: no surrounding
/// whitespace; JSON decoding trims it first).
pub fn parse(input: &str) -> Result<Quantity, QuantityError> {
    let err = |reason| QuantityError {
        input: input.to_string(),
        reason,
    };
    if input.is_empty() {
        return Err(err("empty"));
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
    let suffix = &input[i..];
    let (exp10, exp2, format): (i32, u32, Format) = match suffix {
        "" => (0, 0, Format::DecimalSI),
        "n" => (-9, 0, Format::DecimalSI),
        "u" => (-6, 0, Format::DecimalSI),
        "m" => (-3, 0, Format::DecimalSI),
        "k" => (3, 0, Format::DecimalSI),
        "M" => (6, 0, Format::DecimalSI),
        "G" => (9, 0, Format::DecimalSI),
        "T" => (12, 0, Format::DecimalSI),
        "P" => (15, 0, Format::DecimalSI),
        "E" => (18, 0, Format::DecimalSI),
        "Ki" => (0, 10, Format::BinarySI),
        "Mi" => (0, 20, Format::BinarySI),
        "Gi" => (0, 30, Format::BinarySI),
        "Ti" => (0, 40, Format::BinarySI),
        "Pi" => (0, 50, Format::BinarySI),
        "Ei" => (0, 60, Format::BinarySI),
        s if s.len() > 1 && s.starts_with(['e', 'E']) => {
            let exp = parse_exponent(&s[1..]).ok_or_else(|| err("bad suffix"))?;
            (exp, 0, Format::DecimalExponent)
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
    let binary = format == Format::BinarySI;
    let frac_len = i32::try_from(frac_digits.len()).map_err(|_| err("too many digits"))?;
    let scaled = mantissa.checked_mul(1i128 << exp2).and_then(|value| {
        let scale = 9 - frac_len + exp10;
        if scale >= 0 {
            value.checked_mul(pow10(scale)?)
        } else {
            // Finer than a nano: round up, as upstream rounds to its smallest scale.
            Some(match pow10(-scale) {
                Some(div) => value / div + i128::from(value % div != 0),
                None => i128::from(value != 0),
            })
        }
    });
    let value = match scaled {
        Some(v) if v <= MAX_NANOS => v,
        // Upstream caps binary quantities at 2^63-1 units and keeps decimal ones
        // in arbitrary precision, which we do not.
        _ if binary => MAX_NANOS,
        _ => return Err(err("too large")),
    };
    // Binary between 0 and 1 is shown decimal, as upstream switches it.
    let format = if binary && value != 0 && value < NANO {
        Format::DecimalSI
    } else {
        format
    };
    Ok(Quantity {
        nanos: if negative { -value } else { value },
        format,
    })
}

fn parse_exponent(s: &str) -> Option<i32> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = s.parse().ok()?;
    // Anything past ±1000 is beyond our range (too large) or rounds to 1n.
    Some(n.clamp(-1000, 1000) as i32)
}

fn pow10(exp: i32) -> Option<i128> {
    10i128.checked_pow(u32::try_from(exp).ok()?)
}

const DECIMAL_SUFFIXES: [(i32, &str); 10] = [
    (-9, "n"),
    (-6, "u"),
    (-3, "m"),
    (0, ""),
    (3, "k"),
    (6, "M"),
    (9, "G"),
    (12, "T"),
    (15, "P"),
    (18, "E"),
];

const BINARY_SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

impl fmt::Display for Quantity {
    /// The canonical form (upstream `Quantity.String()`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let sign = if self.nanos < 0 { "-" } else { "" };
        let abs = self.nanos.unsigned_abs();
        let whole = abs.is_multiple_of(NANO as u128);
        if self.format == Format::BinarySI && abs >= 1024 * NANO as u128 && whole {
            let units = abs / NANO as u128;
            let mut k = 0;
            while k + 1 < BINARY_SUFFIXES.len() && units.is_multiple_of(1u128 << (10 * (k + 1))) {
                k += 1;
            }
            return write!(f, "{sign}{}{}", units >> (10 * k), BINARY_SUFFIXES[k]);
        }
        // Decimal: the largest exponent (a multiple of 3, at most 18) that leaves
        // an integer mantissa.
        let mut exp = -9;
        let mut mantissa = abs;
        while exp < 18 && mantissa.is_multiple_of(1000) {
            mantissa /= 1000;
            exp += 3;
        }
        if self.format == Format::DecimalExponent {
            if exp == 0 {
                write!(f, "{sign}{mantissa}")
            } else {
                write!(f, "{sign}{mantissa}e{exp}")
            }
        } else {
            let suffix = DECIMAL_SUFFIXES
                .iter()
                .find(|(e, _)| *e == exp)
                .map(|(_, s)| *s)
                .expect("exponent is a multiple of 3 in -9..=18");
            write!(f, "{sign}{mantissa}{suffix}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> i128 {
        parse(s).unwrap().ceil_units()
    }

    fn canonical(s: &str) -> String {
        parse(s).unwrap_or_else(|e| panic!("{e}")).to_string()
    }

    #[test]
    fn units_and_forms() {
        assert_eq!(bytes("10Gi"), 10 << 30);
        assert_eq!(bytes("1Ki"), 1024);
        assert_eq!(bytes("1Pi"), 1 << 50);
        assert_eq!(bytes("1Ei"), 1 << 60);
        assert_eq!(bytes("1G"), 1_000_000_000);
        assert_eq!(bytes("1E"), 1_000_000_000_000_000_000);
        assert_eq!(bytes("1e3"), 1000);
        assert_eq!(bytes("1E3"), 1000);
        assert_eq!(bytes("1.5Gi"), 3 << 29);
        assert_eq!(bytes(".5Ki"), 512);
        assert_eq!(bytes("5."), 5);
        assert_eq!(bytes("1.G"), 1_000_000_000);
        assert_eq!(bytes("+7"), 7);
        assert_eq!(bytes("12e-1"), 2, "1.2 rounds up to 2 whole units");
        assert_eq!(parse("100m").unwrap().nanos(), 100_000_000);
        assert_eq!(parse("1n").unwrap().nanos(), 1);
        assert_eq!(parse("1e-10").unwrap().nanos(), 1, "sub-nano rounds up");
        assert_eq!(parse("-1e-10").unwrap().nanos(), -1, "away from zero");
        assert_eq!(parse("0").unwrap(), Quantity::from_units(0));
        assert!(parse("-1Gi").unwrap().is_negative());
        assert!(parse("1Gi").unwrap() > parse("1G").unwrap());
        assert_eq!(parse("1024Mi").unwrap(), parse("1Gi").unwrap());
        assert_eq!(parse("1Ki").unwrap(), parse("1024").unwrap());
        assert_eq!(
            bytes("000000000000000000000000000000000000000000000000001Ki"),
            1024
        );
    }

    #[test]
    fn empty_numbers_are_zero_as_upstream_scans_them() {
        for zero in ["Gi", "+", "-", ".", "-.", "e3", "0Ki", "00", "-0", "0.000"] {
            assert!(parse(zero).unwrap().is_zero(), "{zero:?}");
        }
    }

    #[test]
    fn binary_values_cap_at_upstreams_maximum() {
        let max = parse("9223372036854775807").unwrap();
        assert_eq!(parse("16Ei").unwrap(), max);
        assert_eq!(parse("99999999999999999999Ei").unwrap(), max);
        assert_eq!(parse("-16Ei").unwrap().nanos(), -max.nanos());
        assert_eq!(parse("1e19").unwrap_err().reason, "too large");
        assert_eq!(parse("10E").unwrap_err().reason, "too large");
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "", "10Gx", "1K", "1KB", "1.2.3", "1 Gi", "1gi", "1KiB", "1e", "1e+", "1ee3", "1Ee3",
            "--1", "+-1", "1e99999", "0x10", " 1", "1Gi ", "1.5e1.5", "1i", ".5i", "1mi", "1am",
            "aoeu", "1Ki5", "1E+", "1.1.M", "1+1.0M",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(
            parse("10Gx").unwrap_err().to_string(),
            "invalid quantity \"10Gx\": bad suffix"
        );
    }

    /// Canonical forms as upstream's `String()` prints them (quantity_test.go's
    /// round-trip expectations).
    #[test]
    fn canonical_strings() {
        for (input, want) in [
            ("0", "0"),
            ("0Gi", "0"),
            ("-0.0", "0"),
            ("1", "1"),
            ("1Ki", "1Ki"),
            ("1024", "1024"),
            ("1024Mi", "1Gi"),
            ("1.5Gi", "1536Mi"),
            ("0.5Gi", "512Mi"),
            ("1.5Ki", "1536"),
            ("1023Ki", "1023Ki"),
            ("0.5Ki", "512"),
            ("1.1Ki", "1126400m"),
            ("0.1Ki", "102400m"),
            ("-1Ki", "-1Ki"),
            ("-1023", "-1023"),
            ("1Pi", "1Pi"),
            ("1Ei", "1Ei"),
            ("8Ei", "9223372036854775807"),
            ("100m", "100m"),
            ("0.1", "100m"),
            ("1000m", "1"),
            ("1000", "1k"),
            ("1500", "1500"),
            ("1.5k", "1500"),
            ("1500000", "1500k"),
            ("1000000000", "1G"),
            ("1E", "1E"),
            ("9E", "9E"),
            ("12e-1", "1200e-3"),
            ("1n", "1n"),
            ("1u", "1u"),
            ("0.000001", "1u"),
            ("1.0000000001", "1000000001n"),
            ("1e3", "1e3"),
            ("1E6", "1e6"),
            ("1000e0", "1e3"),
            ("15e2", "1500"),
            ("1e-3", "1e-3"),
            ("1e-10", "1e-9"),
            ("-1e3", "-1e3"),
            ("-1500m", "-1500m"),
            ("+1M", "1M"),
        ] {
            assert_eq!(canonical(input), want, "{input:?}");
        }
        assert_eq!(Quantity::from_bytes(3 << 29).to_string(), "1536Mi");
        assert_eq!(Quantity::from_bytes(1000).to_string(), "1k");
        assert_eq!(Quantity::from_units(2048).to_string(), "2048");
    }

    proptest::proptest! {
        /// Any string: parse never panics.
        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,24}") {
            let _ = parse(&s);
        }

        /// Strings over the grammar's own alphabet: never panics, and whatever
        /// parses prints a canonical form that parses back to the same value and
        /// prints the same again.
        #[test]
        fn canonical_form_round_trips(s in "[-+]?[0-9]{0,12}(\\.[0-9]{0,10})?(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][-+]?[0-9]{1,2})?") {
            if let Ok(q) = parse(&s) {
                let text = q.to_string();
                let back = parse(&text).unwrap();
                proptest::prop_assert_eq!(back, q, "{} -> {}", s, text);
                proptest::prop_assert_eq!(back.to_string(), text);
            }
        }

        /// Well-formed quantities parse to exactly the value their parts say.
        #[test]
        fn grammar_values_are_exact(
            int in 0u64..1_000_000,
            frac in proptest::option::of(0u32..1000),
            unit in 0usize..9,
        ) {
            let (suffix, mult): (&str, i128) = [
                ("", 1), ("k", 1_000), ("M", 1_000_000), ("G", 1_000_000_000),
                ("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("e3", 1_000), ("Pi", 1 << 50),
            ][unit];
            let text = match frac {
                Some(f) => format!("{int}.{f:03}{suffix}"),
                None => format!("{int}{suffix}"),
            };
            let q = parse(&text).unwrap();
            // value * 1e9 = (int * 1000 + frac) * mult * 1e6
            let want = (i128::from(int) * 1000 + i128::from(frac.unwrap_or(0))) * mult * 1_000_000;
            proptest::prop_assert_eq!(q.nanos(), want.min(MAX_NANOS), "{}", text);
        }
    }
}
