//! Duration flags: milliseconds, seconds, or a number with a unit.

use std::time::Duration;

pub fn parse_millis(raw: &str) -> Result<Duration, String> {
    raw.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("expected a whole number of milliseconds, got {raw:?}"))
}

pub fn parse_seconds(raw: &str) -> Result<Duration, String> {
    match raw.parse::<f64>() {
        Ok(s) if s > 0.0 => {
            Duration::try_from_secs_f64(s).map_err(|_| format!("{raw:?} seconds is out of range"))
        }
        _ => Err(format!(
            "expected a positive number of seconds, got {raw:?}"
        )),
    }
}

/// The longest duration the duration flags take.
const LONGEST_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A duration such as `10s`, `500ms`, `2m` or `1h`; a bare number is seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let text = raw.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => f64::NAN,
    };
    match number.parse::<f64>().map(|n| n * scale) {
        Ok(secs) if secs.is_finite() && secs >= 0.001 && secs <= LONGEST_DURATION.as_secs_f64() => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!(
            "expected a duration between 1ms and 24h such as 10s, 500ms or 2m, got {raw:?}"
        )),
    }
}

/// A positive number of seconds, at most a day.
pub fn parse_http_timeout(raw: &str) -> Result<Duration, String> {
    let max = taskstream_api::server::MAX_TIMEOUT;
    let duration = parse_seconds(raw)?;
    if duration > max {
        return Err(format!("at most {} seconds, got {raw:?}", max.as_secs()));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        let ok = [
            ("10", 10_000),
            ("10s", 10_000),
            ("1.5s", 1_500),
            ("500ms", 500),
            ("2m", 120_000),
            ("1h", 3_600_000),
            (" 3s ", 3_000),
        ];
        for (raw, ms) in ok {
            assert_eq!(parse_duration(raw), Ok(Duration::from_millis(ms)), "{raw}");
        }
        for bad in [
            "",
            "0",
            "0s",
            "0.0001s",
            "-1",
            "s",
            "10 parsecs",
            "1e3",
            "25h",
            "NaN",
            "inf",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
