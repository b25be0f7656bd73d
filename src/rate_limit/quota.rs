//! [`Quota`]: how many requests, over what period, with what burst.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::gcra::Gcra;
use crate::ConfigError;
use crate::duration::{format as format_duration, parse as parse_duration};

/// Ten years in microseconds: the longest burst capacity a quota may have.
const MAX_CAPACITY_US: u64 = 10 * 366 * 86_400 * 1_000_000;

/// `limit` requests per `period`, of which up to `burst` may arrive at once (default: all
/// of them, so `100/15m` admits 100 at once, then one every 9 s).
///
/// A quota has a name: it identifies the policy in the `RateLimit` and `RateLimit-Policy`
/// headers and in metrics, and separates the quotas' state in the store. It defaults to the
/// quota's own text (`100/15m`).
///
/// ```
/// use std::time::Duration;
/// use tower_scale::rate_limit::Quota;
///
/// let api: Quota = "100/15m".parse().unwrap();
/// assert_eq!(api.limit(), 100);
/// assert_eq!(api.period(), Duration::from_secs(900));
///
/// let export = Quota::new(10, Duration::from_secs(3600)).unwrap().burst(2).unwrap().named("export").unwrap();
/// assert_eq!(export.to_string(), "export: 10/1h, burst 2");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    name: Arc<str>,
    limit: u32,
    period: Duration,
    burst: u32,
}

impl Quota {
    /// `limit` per `period`, burst `limit`.
    ///
    /// # Errors
    ///
    /// A zero limit, a period shorter than a millisecond or longer than a year, or more
    /// than one request per microsecond.
    pub fn new(limit: u32, period: Duration) -> Result<Self, ConfigError> {
        if limit == 0 {
            return Err(ConfigError::new(
                "quota",
                "a limit of 0 refuses everything; use at least 1",
            ));
        }
        if period < Duration::from_millis(1) || period > Duration::from_secs(366 * 86_400) {
            return Err(ConfigError::new(
                "quota",
                "the period must be between 1ms and a year",
            ));
        }
        if u128::from(limit) > period.as_micros() {
            return Err(ConfigError::new(
                "quota",
                format!(
                    "{limit} per {} is more than one request per microsecond, the finest this limiter keeps",
                    format_duration(period)
                ),
            ));
        }
        Self {
            name: Arc::from(format!("{limit}/{}", format_duration(period))),
            limit,
            period,
            burst: limit,
        }
        .checked()
    }

    /// A burst's worth of time must stay well inside the range where the Redis script's
    /// numbers (doubles) are exact integers.
    fn checked(self) -> Result<Self, ConfigError> {
        if self
            .gcra()
            .emission_us
            .saturating_mul(u64::from(self.burst))
            > MAX_CAPACITY_US
        {
            return Err(ConfigError::new(
                "burst",
                format!("{self} allows a burst lasting more than ten years; lower the burst"),
            ));
        }
        Ok(self)
    }

    /// How many may arrive at once (1..=limit is usual; more than the limit is allowed).
    ///
    /// # Errors
    ///
    /// A zero burst, or one lasting more than ten years (burst × period / limit).
    pub fn burst(mut self, burst: u32) -> Result<Self, ConfigError> {
        if burst == 0 {
            return Err(ConfigError::new(
                "burst",
                "a burst of 0 refuses everything; use at least 1",
            ));
        }
        self.burst = burst;
        self.checked()
    }

    /// Names the quota. Names are written into headers and store keys: 1..=64 characters
    /// from `A-Z a-z 0-9 - _ . /`.
    ///
    /// # Errors
    ///
    /// An empty name, or one with other characters.
    pub fn named(mut self, name: &str) -> Result<Self, ConfigError> {
        let ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
        if !ok {
            return Err(ConfigError::new(
                "quota name",
                format!("`{name}` must be 1..=64 characters from A-Z a-z 0-9 - _ . /"),
            ));
        }
        self.name = Arc::from(name);
        Ok(self)
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests per period.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// How many may arrive at once.
    pub fn burst_size(&self) -> u32 {
        self.burst
    }

    /// This quota scaled to a share of it (at least 1 request), for a per-instance
    /// fallback when the shared store is down.
    pub(crate) fn share(&self, share: f64) -> Quota {
        let scale = |n: u32| ((f64::from(n) * share).floor() as u32).max(1);
        Quota {
            name: Arc::clone(&self.name),
            limit: scale(self.limit),
            period: self.period,
            burst: scale(self.burst),
        }
    }

    pub(crate) fn gcra(&self) -> Gcra {
        let period_us = crate::duration::micros(self.period);
        Gcra::new(u64::from(self.limit), period_us, u64::from(self.burst))
    }
}

impl FromStr for Quota {
    type Err = ConfigError;

    /// `N/DURATION`, e.g. `100/15m`, `10/1h`, `5/500ms`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let (n, d) = s.trim().split_once('/').ok_or_else(|| {
            ConfigError::new(
                "quota",
                format!("`{s}` is not N/DURATION; write e.g. 100/15m"),
            )
        })?;
        let limit: u32 = n.trim().parse().map_err(|_| {
            ConfigError::new("quota", format!("`{n}` is not a whole number of requests"))
        })?;
        let period = parse_duration(d).map_err(|e| ConfigError::new("quota", e.to_string()))?;
        Quota::new(limit, period)
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = format!("{}/{}", self.limit, format_duration(self.period));
        if *self.name != *text {
            write!(f, "{}: ", self.name)?;
        }
        f.write_str(&text)?;
        if self.burst != self.limit {
            write!(f, ", burst {}", self.burst)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let q: Quota = "100/15m".parse().unwrap();
        assert_eq!(
            (q.limit(), q.period(), q.burst_size(), q.name()),
            (100, Duration::from_secs(900), 100, "100/15m")
        );
        assert_eq!(q.to_string(), "100/15m");
        for bad in [
            "",
            "100",
            "0/1m",
            "x/1m",
            "10/",
            "10/1y",
            "10/0s",
            "-1/1s",
            "5000000000/1s",
        ] {
            assert!(bad.parse::<Quota>().is_err(), "{bad}");
        }
        assert!(Quota::new(1, Duration::from_micros(10)).is_err());
        assert!(q.clone().burst(0).is_err());
        // A day per unit, 100,000 at once: a burst of 273 years.
        assert!("1/1d".parse::<Quota>().unwrap().burst(100_000).is_err());
        assert!(
            "1000000/1s"
                .parse::<Quota>()
                .unwrap()
                .burst(u32::MAX)
                .is_ok()
        );
        assert!(q.clone().named("").is_err());
        assert!(q.clone().named("has space").is_err());
        assert!(q.clone().named("quote\"").is_err());
        assert_eq!(q.named("api").unwrap().to_string(), "api: 100/15m");
    }

    #[test]
    fn share_never_drops_to_zero() {
        let q: Quota = "10/1m".parse().unwrap();
        assert_eq!(q.share(0.25).limit(), 2);
        assert_eq!(q.share(0.01).limit(), 1);
        assert_eq!(q.share(1.0), q);
    }

    #[test]
    fn emission_interval() {
        let q: Quota = "100/15m".parse().unwrap();
        assert_eq!(q.gcra().emission_us, 9_000_000);
        assert_eq!(q.gcra().burst, 100);
    }

    proptest::proptest! {
        /// Any input: a quota or an error naming the setting, never a panic; an accepted
        /// quota's text reads back as the same quota.
        #[test]
        fn any_text_is_a_quota_or_an_error(s in "\\PC{0,16}|[0-9]{1,12}/[0-9]{1,12}(ms|s|m|h|d)?") {
            match s.parse::<Quota>() {
                Ok(q) => {
                    let again: Quota = q.to_string().parse().unwrap();
                    proptest::prop_assert_eq!((again.limit(), again.period()), (q.limit(), q.period()));
                }
                Err(e) => proptest::prop_assert_eq!(e.setting(), "quota"),
            }
        }
    }
}
