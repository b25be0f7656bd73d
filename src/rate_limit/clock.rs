//! [`Clock`]: where the in-process limiter reads the time.

use std::fmt;

/// The time source of a [`MemoryStore`](super::MemoryStore), in microseconds since the
/// store was made.
///
/// - [`Clock::system`] (the default) reads the CPU's time-stamp counter where it is
///   invariant, scaled to nanoseconds, and the OS monotonic clock elsewhere (through
///   `quanta`). It is the cheapest read there is, and it does not follow Tokio's paused
///   time.
/// - [`Clock::tokio`] reads `tokio::time::Instant`, so a test that pauses and advances
///   Tokio's time (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`) moves the
///   limiter's time with it. Outside a paused runtime it is the OS monotonic clock, read
///   through Tokio, which costs more per request than `system`.
///
/// The Redis store does not use it: Redis's own `TIME` is the clock there, so instances
/// agree whatever their clocks say.
#[derive(Clone)]
pub struct Clock {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    System { clock: quanta::Clock, epoch: u64 },
    Tokio { epoch: tokio::time::Instant },
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::System { .. } => "Clock::system",
            Kind::Tokio { .. } => "Clock::tokio",
        })
    }
}

impl Clock {
    /// The fastest monotonic clock of the machine (see the type's documentation).
    pub fn system() -> Self {
        let clock = quanta::Clock::new();
        let epoch = clock.raw();
        Self {
            kind: Kind::System { clock, epoch },
        }
    }

    /// Tokio's clock, which follows paused and advanced time in tests.
    pub fn tokio() -> Self {
        Self {
            kind: Kind::Tokio {
                epoch: tokio::time::Instant::now(),
            },
        }
    }

    /// Microseconds since this clock was made, plus one, so that no time is ever 0.
    #[inline]
    pub(crate) fn now_us(&self) -> u64 {
        match &self.kind {
            Kind::System { clock, epoch } => {
                (clock.delta_as_nanos(*epoch, clock.raw()) / 1_000).saturating_add(1)
            }
            Kind::Tokio { epoch } => {
                // u64 arithmetic (`as_micros` is u128).
                let d = epoch.elapsed();
                d.as_secs()
                    .saturating_mul(1_000_000)
                    .saturating_add(u64::from(d.subsec_micros()))
                    .saturating_add(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn system_time_moves_forward_in_microseconds() {
        let c = Clock::system();
        let a = c.now_us();
        std::thread::sleep(Duration::from_millis(20));
        let b = c.now_us();
        assert!(a >= 1);
        assert!(
            (15_000..2_000_000).contains(&(b - a)),
            "20 ms read as {} µs",
            b - a
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_time_follows_advance() {
        let c = Clock::tokio();
        let a = c.now_us();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(c.now_us() - a, 1_500_000);
    }
}
