//! Durations as people write them in configuration: `500ms`, `30s`, `15m`, `1h`, `2d`.
//! Quotas (`100/15m`) and the reference server's settings are read with [`parse`].

use std::time::Duration;

use crate::ConfigError;

/// Parses a positive whole number followed by a unit: `ms`, `s`, `m`, `h` or `d`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(tower_scale::duration::parse("15m").unwrap(), Duration::from_secs(900));
/// assert!(tower_scale::duration::parse("15").is_err());
/// ```
///
/// # Errors
///
/// A [`ConfigError`] (setting `duration`) saying what is wrong: no unit, an unknown unit,
/// not a whole number, zero, or too large.
pub fn parse(s: &str) -> Result<Duration, ConfigError> {
    let err = |m: String| ConfigError::new("duration", m);
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        err(format!(
            "`{s}` has no unit; write e.g. 500ms, 30s, 15m or 1h"
        ))
    })?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| err(format!("`{s}` does not start with a whole number")))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| err(format!("`{s}` is too long")))
    };
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => secs(1)?,
        "m" => secs(60)?,
        "h" => secs(3600)?,
        "d" => secs(86_400)?,
        _ => {
            return Err(err(format!(
                "`{s}` has unknown unit `{unit}`; use ms, s, m, h or d"
            )));
        }
    };
    if d.is_zero() {
        return Err(err(format!("`{s}` is zero; use a positive duration")));
    }
    Ok(d)
}

/// Writes a duration in the largest unit that divides it: `15m`, `1h`, `1500ms`.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}us", d.as_micros());
    }
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Whole microseconds, saturating at `u64::MAX` (`as_micros` is u128): how the in-process
/// state machines and the Redis scripts count time.
#[cfg(any(
    feature = "rate-limit",
    feature = "circuit-breaker",
    feature = "retry",
    feature = "session",
    feature = "cache"
))]
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Whole milliseconds, saturating at `u64::MAX`: how Redis expiries and routing tokens
/// count time.
#[cfg(any(
    all(feature = "redis", any(feature = "cache", feature = "session")),
    feature = "db-route"
))]
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            (" 15m ", Duration::from_secs(900)),
            ("1h", Duration::from_secs(3600)),
            ("2d", Duration::from_secs(172_800)),
        ];
        for (s, want) in ok {
            assert_eq!(parse(s).unwrap(), want, "{s}");
        }
        for bad in [
            "",
            "15",
            "m",
            "15x",
            "0s",
            "-1s",
            "1.5s",
            "99999999999999999999999s",
            "999999999999999999d",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.setting(), "duration", "{bad}");
        }
    }

    #[test]
    fn format_keeps_sub_millisecond_precision() {
        assert_eq!(format(Duration::from_micros(1500)), "1500us");
        assert_ne!(
            format(Duration::from_micros(1500)),
            format(Duration::from_millis(1))
        );
    }

    #[test]
    fn format_round_trips() {
        for s in ["500ms", "30s", "15m", "1h", "2d", "90s", "1500ms"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }

    proptest::proptest! {
        /// Any input: an answer, never a panic; what is accepted formats back to itself.
        #[test]
        fn any_text_parses_or_is_refused_and_accepted_text_round_trips(s in "\\PC{0,12}|[0-9]{1,22}(ms|s|m|h|d|us|x)?") {
            if let Ok(d) = parse(&s) {
                proptest::prop_assert!(!d.is_zero());
                proptest::prop_assert_eq!(parse(&format(d)).unwrap(), d);
            }
        }
    }
}
