//! Decimal text to FP32 and FP64 in one pass: the numbers of CSV files and Step Functions
//! items. A field is checked against JSON's number grammar (what the protocols accept) while
//! its digits are read; the short numbers tables are made of (up to 7 significant digits and
//! a small exponent for FP32, 15 for FP64) are then exact integers scaled by an exact power
//! of ten, which IEEE arithmetic rounds correctly in one step. Longer ones go to the
//! standard library's parser, correctly rounded too. The 784-column MLP benchmark spent most
//! of its time in trimming, checking and parsing each field in separate passes.

/// A float type a column can be parsed into.
pub trait Float: Copy + std::str::FromStr + 'static {
    const NAN: Self;
    const INFINITY: Self;
    const NEG_INFINITY: Self;
    /// The largest integer this type holds exactly.
    const EXACT: u64;
    /// The powers of ten this type holds exactly, from 10^0.
    const POWERS: &'static [Self];

    fn from_exact(mantissa: u64) -> Self;
    fn times(self, power: Self) -> Self;
    fn divided(self, power: Self) -> Self;
    fn negated(self) -> Self;
    fn is_finite(self) -> bool;
}

macro_rules! float {
    ($t:ty, $exact:expr, [$($power:expr),*]) => {
        impl Float for $t {
            const NAN: Self = <$t>::NAN;
            const INFINITY: Self = <$t>::INFINITY;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const EXACT: u64 = $exact;
            const POWERS: &'static [Self] = &[$($power),*];

            fn from_exact(mantissa: u64) -> Self {
                mantissa as $t
            }
            fn times(self, power: Self) -> Self {
                self * power
            }
            fn divided(self, power: Self) -> Self {
                self / power
            }
            fn negated(self) -> Self {
                -self
            }
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
        }
    };
}

float!(f32, 1 << 24, [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10]);
float!(
    f64,
    1 << 53,
    [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22
    ]
);

/// Why a field is not a value of the column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Empty,
    NotANumber,
    /// A finite number beyond the type's range.
    OutOfRange,
}

/// A field as a float: a number in JSON's grammar (so `+1`, `.5`, `01` and `inf` are not),
/// or `NaN`, `Infinity`, `-Infinity`, with JSON's whitespace around it allowed.
pub fn parse<T: Float>(field: &[u8]) -> Result<T, Refusal> {
    let field = trim(field);
    if field.is_empty() {
        return Err(Refusal::Empty);
    }
    let Some(number) = scan(field) else {
        return match field {
            b"NaN" => Ok(T::NAN),
            b"Infinity" => Ok(T::INFINITY),
            b"-Infinity" => Ok(T::NEG_INFINITY),
            _ => Err(Refusal::NotANumber),
        };
    };
    let value = match number.exact::<T>() {
        Some(value) => value,
        // Valid JSON numbers are ASCII, and Rust's float grammar is wider than JSON's.
        None => std::str::from_utf8(field)
            .ok()
            .and_then(|text| text.parse::<T>().ok())
            .ok_or(Refusal::NotANumber)?,
    };
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Refusal::OutOfRange)
    }
}

/// `field` without JSON's whitespace at either end.
fn trim(mut field: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = field {
        if !is_json_space(*first) {
            break;
        }
        field = rest;
    }
    while let [rest @ .., last] = field {
        if !is_json_space(*last) {
            break;
        }
        field = rest;
    }
    field
}

fn is_json_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// A number's significant digits as an integer and its power of ten.
struct Scanned {
    negative: bool,
    mantissa: u64,
    /// Whether there were more digits than `mantissa` surely holds (19); it may have wrapped.
    long: bool,
    exponent: i64,
}

impl Scanned {
    /// The value, when mantissa and power of ten are both exact in `T`.
    fn exact<T: Float>(&self) -> Option<T> {
        if self.long || self.mantissa > T::EXACT {
            return None;
        }
        let power = *T::POWERS.get(usize::try_from(self.exponent.unsigned_abs()).ok()?)?;
        let magnitude = T::from_exact(self.mantissa);
        let value =
            if self.exponent < 0 { magnitude.divided(power) } else { magnitude.times(power) };
        Some(if self.negative { value.negated() } else { value })
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, JSON's number grammar, read into its
/// digits and power of ten; `None` when `text` does not follow it.
fn scan(text: &[u8]) -> Option<Scanned> {
    let negative = text.first() == Some(&b'-');
    let mut at = usize::from(negative);
    let mut mantissa = 0;
    let integer_digits = digits(text, &mut at, &mut mantissa);
    if integer_digits == 0 || (integer_digits > 1 && text[at - integer_digits] == b'0') {
        return None;
    }
    let mut fraction_digits = 0;
    if text.get(at) == Some(&b'.') {
        at += 1;
        fraction_digits = digits(text, &mut at, &mut mantissa);
        if fraction_digits == 0 {
            return None;
        }
    }
    let mut exponent = -(fraction_digits as i64);
    if matches!(text.get(at), Some(b'e' | b'E')) {
        at += 1;
        let sign = match text.get(at) {
            Some(b'-') => -1,
            Some(b'+') => 1,
            _ => 0,
        };
        at += usize::from(sign != 0);
        let start = at;
        let mut written: i64 = 0;
        while let Some(digit) = text.get(at).filter(|b| b.is_ascii_digit()) {
            // Beyond any float's range either way; the standard parser decides.
            written = (written * 10 + i64::from(digit - b'0')).min(1 << 40);
            at += 1;
        }
        if at == start {
            return None;
        }
        exponent += if sign < 0 { -written } else { written };
    }
    let long = integer_digits + fraction_digits > 19;
    (at == text.len()).then_some(Scanned { negative, mantissa, long, exponent })
}

/// Reads a run of decimal digits onto `mantissa` (wrapping: the caller counts the digits);
/// returns how many there were.
fn digits(text: &[u8], at: &mut usize, mantissa: &mut u64) -> usize {
    let start = *at;
    while let Some(digit) = text.get(*at).map(|b| b.wrapping_sub(b'0')).filter(|d| *d < 10) {
        *mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(digit));
        *at += 1;
    }
    *at - start
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every accepted field parses to the value Rust's correctly rounded parser gives, for
    /// both types, over many generated numbers of every shape the grammar allows.
    #[test]
    fn values_equal_the_standard_parser() {
        let mut next = crate::test_random();
        let mut exact_path = 0;
        for _ in 0..200_000 {
            let mut text = String::new();
            if next(2) == 0 {
                text.push('-');
            }
            let integer_digits = next(22);
            if integer_digits == 0 {
                text.push('0');
            } else {
                text.push(char::from(b'1' + next(9) as u8));
                (1..integer_digits).for_each(|_| text.push(char::from(b'0' + next(10) as u8)));
            }
            if next(3) > 0 {
                text.push('.');
                (0..=next(20)).for_each(|_| text.push(char::from(b'0' + next(10) as u8)));
            }
            if next(3) == 0 {
                text.push(['e', 'E'][next(2) as usize]);
                text.push_str(["", "+", "-"][next(3) as usize]);
                text.push_str(&next(60).to_string());
            }
            let number = scan(text.as_bytes()).expect(&text);
            exact_path += usize::from(number.exact::<f32>().is_some());
            check::<f32>(&text);
            check::<f64>(&text);
        }
        assert!(exact_path > 10_000, "the exact path ran {exact_path} times");
    }

    fn check<T: Float + PartialEq + std::fmt::Debug>(text: &str) {
        let Ok(expected) = text.parse::<T>() else { panic!("Rust refuses {text}") };
        match parse::<T>(text.as_bytes()) {
            Ok(value) => assert_eq!(value, expected, "{text}"),
            Err(refusal) => {
                assert_eq!(refusal, Refusal::OutOfRange, "{text}");
                assert!(!expected.is_finite(), "{text}");
            }
        }
    }

    #[test]
    fn the_grammar_is_json_s() {
        for text in ["0", "-0", "5.1", "-3.25e-2", "1E5", "1e+3", " 7 ", "\t8\r\n"] {
            assert!(parse::<f32>(text.as_bytes()).is_ok(), "{text:?}");
        }
        for text in ["01", "1.", ".5", "+1", "inf", "nan", "-", "1e", "1e+", "0x10", "1,5", "1_0"] {
            assert_eq!(parse::<f64>(text.as_bytes()), Err(Refusal::NotANumber), "{text:?}");
        }
        assert_eq!(parse::<f32>(b" "), Err(Refusal::Empty));
        // Only JSON's whitespace is trimmed, as the protocols' parser does.
        assert_eq!(parse::<f32>(b"\x0c5"), Err(Refusal::NotANumber));
        assert_eq!(parse::<f32>(b"1e39"), Err(Refusal::OutOfRange));
        assert_eq!(parse::<f64>(b"1e39"), Ok(1e39));
        assert_eq!(parse::<f64>(b"-1e400"), Err(Refusal::OutOfRange));
        assert_eq!(parse::<f32>(b"1e-50"), Ok(0.0));
        assert!(parse::<f32>(b"-0").unwrap().is_sign_negative());
        assert!(parse::<f64>(b"NaN").unwrap().is_nan());
        assert_eq!(parse::<f32>(b"-Infinity"), Ok(f32::NEG_INFINITY));
    }
}
