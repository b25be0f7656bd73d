//! [`Clock`]: where in-process state machines (the rate limiter's store, circuit breakers)
//! read the time.

use std::fmt;

/// A monotonic time source in microseconds, for the in-process rate-limit store and circuit
/// breakers.
///
/// - [`Clock::system`] (the default) reads the CPU's counter through `quanta`, as governor
///   does: the time-stamp counter on x86 when the CPU reports it invariant (the same rate
///   on every core, in every power state), the generic timer on aarch64, the OS monotonic
///   clock elsewhere. It is the cheapest read there is. If a read ever comes out before the
///   clock's start (a counter that is not in step across cores, which an invariant counter
///   rules out), it reads as the start. It does not follow Tokio's paused time.
/// - [`Clock::monotonic`] reads `std::time::Instant` (the OS monotonic clock): a system
///   call's worth of cost per read, for machines whose counter cannot be trusted.
/// - [`Clock::tokio`] reads `tokio::time::Instant`, so a test that pauses and advances
///   Tokio's time (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`) moves the
///   limiter's time with it. Outside a paused runtime it is the OS monotonic clock, read
///   through Tokio.
///
/// Times are counted from when the `Clock` was made. The Redis rate-limit store does not
/// use it: Redis's own `TIME` is the clock there, so instances agree whatever their clocks
/// say.
#[derive(Clone)]
pub struct Clock {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    System { clock: quanta::Clock, epoch: u64 },
    Monotonic { epoch: std::time::Instant },
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
            Kind::Monotonic { .. } => "Clock::monotonic",
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

    /// The OS monotonic clock (`std::time::Instant`).
    pub fn monotonic() -> Self {
        Self {
            kind: Kind::Monotonic {
                epoch: std::time::Instant::now(),
            },
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
    pub fn now_us(&self) -> u64 {
        match &self.kind {
            Kind::System { clock, epoch } => {
                (clock.delta_as_nanos(*epoch, clock.raw()) / 1_000).saturating_add(1)
            }
            // Plus one, like the counter above: no reading is ever zero.
            Kind::Monotonic { epoch } => crate::duration::micros(epoch.elapsed()).saturating_add(1),
            Kind::Tokio { epoch } => crate::duration::micros(epoch.elapsed()).saturating_add(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn real_clocks_move_forward_in_microseconds() {
        for c in [Clock::system(), Clock::monotonic()] {
            let a = c.now_us();
            std::thread::sleep(Duration::from_millis(20));
            let b = c.now_us();
            assert!(a >= 1);
            assert!(
                (15_000..2_000_000).contains(&(b - a)),
                "{c:?}: 20 ms read as {} µs",
                b - a
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_time_follows_advance() {
        let c = Clock::tokio();
        let a = c.now_us();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(c.now_us() - a, 1_500_000);
    }
}
