//! Go-style duration strings (`500ms`, `1s`, `10m`, `1h30m`, `1.5s`), the syntax the CRDs use.

use std::time::Duration;

/// A duration string that does not parse; the message says why and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidDuration(String);

/// Parses a duration string into a [`Duration`]. Accepts the units ms, s, m and h, which may repeat
/// (`1h30m`) and carry a fraction (`1.5s`); rejects empty strings, signs and unknown units.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidDuration> {
    if text.is_empty() {
        return Err(InvalidDuration(
            "empty duration; use a number and a unit, for example 1s or 500ms".to_owned(),
        ));
    }
    let mut rest = text;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() {
            return Err(InvalidDuration(format!(
                "invalid duration {text:?}: expected a number at {rest:?}"
            )));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(InvalidDuration(format!(
                    "invalid duration {text:?}: missing unit (ms, s, m or h)"
                )));
            }
            other => {
                return Err(InvalidDuration(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m or h)"
                )));
            }
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(InvalidDuration(format!(
                "invalid duration {text:?}: expected a number"
            )));
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| {
                InvalidDuration(format!("invalid duration {text:?}: number too large"))
            })?
        };
        let mut fraction_nanos: u128 = 0;
        let mut scale = unit_nanos;
        for digit in fraction.bytes() {
            if !digit.is_ascii_digit() {
                return Err(InvalidDuration(format!(
                    "invalid duration {text:?}: malformed number"
                )));
            }
            scale /= 10;
            fraction_nanos += u128::from(digit - b'0') * scale;
        }
        total_nanos = whole
            .checked_mul(unit_nanos)
            .and_then(|n| n.checked_add(fraction_nanos))
            .and_then(|n| n.checked_add(total_nanos))
            .ok_or_else(|| InvalidDuration(format!("invalid duration {text:?}: too large")))?;
        rest = next;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000)
        .map_err(|_| InvalidDuration(format!("invalid duration {text:?}: too large")))?;
    // The remainder of a division by 1e9 always fits in u32.
    let nanos = u32::try_from(total_nanos % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_malformed_input_with_a_reason() {
        for bad in ["", "1", "s", "1d", "-1s", "1.2.3s", "1 s"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.to_string().contains("duration"), "{bad}: {err}");
        }
    }
}
