//! Durations as Kubernetes, CEL and the command lines write them (Go's syntax: `500ms`, `30s`, `1m30s`, `1.5h`).
//! The CRDs store them as strings, the API server checks them with CEL's `duration()`, and the
//! controller converts them here.

use std::time::Duration;

/// A text that is not a duration; holds the text as written (trimmed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration such as 500ms, 30s, 2m or 1m30s")]
pub struct InvalidDuration(pub String);

/// Parses a Go-style duration; a bare number means seconds (for flags).
pub fn parse(text: &str) -> Result<Duration, InvalidDuration> {
    let text = text.trim();
    let invalid = || InvalidDuration(text.to_owned());
    if text.is_empty() {
        return Err(invalid());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, tail) = rest.split_at(number_end);
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        total += value * scale;
        rest = tail;
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        for (text, ms) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("45", 45_000),
            ("2m", 120_000),
            ("1m30s", 90_000),
            ("1.5s", 1500),
            ("1h", 3_600_000),
            ("168h", 604_800_000),
        ] {
            assert_eq!(parse(text).map(|d| d.as_millis()), Ok(ms), "{text}");
        }
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in ["", "s", "2d", "-1s", "1s2", "ms500", "1..2s"] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
