//! One breaker's state machine: closed → open → half-open, with its sliding window. No I/O;
//! the time comes in as microseconds from the caller's [`Clock`](crate::clock::Clock).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::ConfigError;

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls pass; outcomes are recorded.
    Closed,
    /// Calls are refused until the open duration has passed.
    Open,
    /// A limited number of probe calls pass; their outcomes decide between closed and open.
    HalfOpen,
}

impl State {
    /// `"closed"`, `"open"` or `"half_open"`: the label written into metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    fn code(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }

    fn from_code(c: u64) -> State {
        match c & 3 {
            0 => State::Closed,
            1 => State::Open,
            _ => State::HalfOpen,
        }
    }
}

/// How the calls a breaker judges are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Window {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last `d` (kept in one-second buckets; at least 1 s, at most 1 h).
    Time(Duration),
}

/// A breaker's settings. Built by
/// [`CircuitBreakerLayer::builder`](super::CircuitBreakerLayer::builder).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) window: Window,
    pub(crate) failure_rate: f64,
    pub(crate) slow_rate: f64,
    pub(crate) slow_call_us: Option<u64>,
    pub(crate) minimum_calls: u32,
    pub(crate) open_us: u64,
    pub(crate) open_backoff: f64,
    pub(crate) max_open_us: u64,
    pub(crate) probes: u32,
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let rate = |name: &'static str, r: f64| {
            if r > 0.0 && r <= 1.0 {
                Ok(())
            } else {
                Err(ConfigError::new(
                    name,
                    format!("{r} is not a rate; use 0 < rate <= 1 (e.g. 0.5 for 50%)"),
                ))
            }
        };
        rate("failure_rate", self.failure_rate)?;
        rate("slow_call_rate", self.slow_rate)?;
        match self.window {
            Window::Count(n) if n == 0 || n > 100_000 => {
                return Err(ConfigError::new(
                    "window",
                    format!("a count window of {n} calls; use 1..=100000"),
                ));
            }
            Window::Time(d) if d < Duration::from_secs(1) || d > Duration::from_secs(3600) => {
                return Err(ConfigError::new(
                    "window",
                    format!("a time window of {d:?}; use 1 s to 1 h"),
                ));
            }
            _ => {}
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::new("minimum_calls", "must be at least 1"));
        }
        if let Window::Count(n) = self.window
            && self.minimum_calls > n
        {
            return Err(ConfigError::new(
                "minimum_calls",
                format!(
                    "{} is more than the window's {n} calls, so the breaker could never open; \
                     lower it or widen the window",
                    self.minimum_calls
                ),
            ));
        }
        if self.probes == 0 {
            return Err(ConfigError::new("half_open_probes", "must be at least 1"));
        }
        if self.open_us == 0 {
            return Err(ConfigError::new(
                "open_duration",
                "must be longer than zero",
            ));
        }
        if !(self.open_backoff >= 1.0 && self.open_backoff.is_finite()) {
            return Err(ConfigError::new(
                "open_backoff",
                format!(
                    "{} is not a multiplier; use 1.0 (none) or more",
                    self.open_backoff
                ),
            ));
        }
        if self.max_open_us < self.open_us {
            return Err(ConfigError::new(
                "max_open_duration",
                "must be at least the open duration",
            ));
        }
        Ok(())
    }

    /// True if judging a call needs its start time.
    pub(crate) fn times_calls(&self) -> bool {
        self.slow_call_us.is_some()
    }

    /// True if recording a call needs the time (a time window, or a state other than
    /// closed, which only the record path can know cheaply: it reads the clock then).
    pub(crate) fn windowed_by_time(&self) -> bool {
        matches!(self.window, Window::Time(_))
    }
}

/// Permission to make one call, from [`Breaker::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Permit {
    pub(crate) generation: u64,
    pub(crate) probe: bool,
}

/// A refused call: how long until the breaker lets a probe through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) retry_after_us: u64,
}

/// What a finished call was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success {
        slow: bool,
    },
    Failure {
        slow: bool,
    },
    /// The caller gave up before an outcome (the future was dropped).
    Cancelled,
}

/// A state change, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: State,
    pub(crate) to: State,
}

/// One breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    /// `generation << 2 | state`: read without the lock on every call.
    bits: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    generation: u64,
    window: Counts,
    /// Open: when a probe may pass.
    open_until_us: u64,
    /// Consecutive trips without closing in between, for the open backoff.
    trips: u32,
    half_open: Probes,
    /// When the breaker last half-opened.
    half_open_since_us: u64,
    /// A forced state stays until forced otherwise or reset.
    forced: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Probes {
    started: u32,
    done: u32,
    failures: u32,
    slow: u32,
}

/// The sliding window's counts.
#[derive(Debug)]
enum Counts {
    Count {
        ring: Box<[u8]>,
        next: usize,
        len: usize,
        failures: u32,
        slow: u32,
    },
    Time {
        /// (second, calls, failures, slow) per bucket.
        buckets: Box<[(u64, u32, u32, u32)]>,
    },
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;

impl Counts {
    fn new(window: Window) -> Self {
        match window {
            Window::Count(n) => Counts::Count {
                ring: vec![0; n as usize].into_boxed_slice(),
                next: 0,
                len: 0,
                failures: 0,
                slow: 0,
            },
            Window::Time(d) => Counts::Time {
                buckets: vec![(u64::MAX, 0, 0, 0); d.as_secs().max(1) as usize].into_boxed_slice(),
            },
        }
    }

    fn clear(&mut self) {
        match self {
            Counts::Count {
                ring,
                next,
                len,
                failures,
                slow,
            } => {
                ring.fill(0);
                (*next, *len, *failures, *slow) = (0, 0, 0, 0);
            }
            Counts::Time { buckets } => buckets.fill((u64::MAX, 0, 0, 0)),
        }
    }

    /// Adds a call; returns (calls, failures, slow) in the window.
    fn add(&mut self, now_us: u64, failed: bool, was_slow: bool) -> (u32, u32, u32) {
        let bits = (u8::from(failed) * FAILED) | (u8::from(was_slow) * SLOW);
        match self {
            Counts::Count {
                ring,
                next,
                len,
                failures,
                slow,
            } => {
                if *len == ring.len() {
                    let old = ring[*next];
                    *failures -= u32::from(old & FAILED != 0);
                    *slow -= u32::from(old & SLOW != 0);
                } else {
                    *len += 1;
                }
                ring[*next] = bits;
                *failures += u32::from(failed);
                *slow += u32::from(was_slow);
                *next = (*next + 1) % ring.len();
                (*len as u32, *failures, *slow)
            }
            Counts::Time { buckets } => {
                let sec = now_us / 1_000_000;
                let n = buckets.len() as u64;
                let b = &mut buckets[(sec % n) as usize];
                if b.0 != sec {
                    *b = (sec, 0, 0, 0);
                }
                b.1 += 1;
                b.2 += u32::from(failed);
                b.3 += u32::from(was_slow);
                let oldest = sec.saturating_sub(n - 1);
                buckets
                    .iter()
                    .filter(|b| b.0 != u64::MAX && b.0 >= oldest && b.0 <= sec)
                    .fold((0, 0, 0), |(c, f, s), b| (c + b.1, f + b.2, s + b.3))
            }
        }
    }
}

fn pack(generation: u64, state: State) -> u64 {
    generation << 2 | state.code()
}

impl Breaker {
    pub(crate) fn new(config: &Config) -> Self {
        Breaker {
            bits: AtomicU64::new(pack(0, State::Closed)),
            inner: Mutex::new(Inner {
                state: State::Closed,
                generation: 0,
                window: Counts::new(config.window),
                open_until_us: 0,
                trips: 0,
                half_open: Probes::default(),
                half_open_since_us: 0,
                forced: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state as last published (without the lock).
    pub(crate) fn state(&self) -> State {
        State::from_code(self.bits.load(Ordering::Acquire))
    }

    /// True if closed: the fast path needs nothing else.
    #[inline]
    pub(crate) fn closed_generation(&self) -> Option<u64> {
        let bits = self.bits.load(Ordering::Acquire);
        (bits & 3 == 0).then_some(bits >> 2)
    }

    /// Asks to make a call at `now_us`. `now_us` is only read when the breaker is not
    /// closed, so callers may pass a lazily read clock.
    pub(crate) fn acquire(
        &self,
        config: &Config,
        now_us: impl FnOnce() -> u64,
    ) -> Result<(Permit, Option<Transition>), Refusal> {
        if let Some(generation) = self.closed_generation() {
            return Ok((
                Permit {
                    generation,
                    probe: false,
                },
                None,
            ));
        }
        let now = now_us();
        let mut s = self.lock();
        let mut transition = None;
        if s.state == State::Open && !s.forced && now >= s.open_until_us {
            transition = Some(self.set(&mut s, State::HalfOpen));
            s.half_open_since_us = now;
        } else if s.state == State::HalfOpen
            && s.half_open.started >= config.probes
            && now.saturating_sub(s.half_open_since_us) >= config.open_us
        {
            // Probes out for a whole open duration without an answer (an inner call with no
            // timeout that hangs): start over with fresh probes, a new generation, so the
            // stragglers' answers are ignored.
            transition = Some(self.set(&mut s, State::HalfOpen));
            s.half_open_since_us = now;
        }
        match s.state {
            State::Closed => Ok((
                Permit {
                    generation: s.generation,
                    probe: false,
                },
                transition,
            )),
            State::Open => Err(Refusal {
                retry_after_us: if s.forced {
                    config.open_us
                } else {
                    s.open_until_us.saturating_sub(now).max(1)
                },
            }),
            State::HalfOpen => {
                if s.half_open.started < config.probes {
                    s.half_open.started += 1;
                    Ok((
                        Permit {
                            generation: s.generation,
                            probe: true,
                        },
                        transition,
                    ))
                } else {
                    // Every probe is out: the answer comes when they finish; until then
                    // a client should wait about as long as one probe takes. A second is
                    // the smallest `Retry-After` there is.
                    Err(Refusal {
                        retry_after_us: 1_000_000,
                    })
                }
            }
        }
    }

    /// Records a call made under `permit`. Calls from an older generation (made before the
    /// last state change) are ignored, so a slow call started while closed cannot reopen a
    /// breaker that has since recovered, nor be counted as a probe.
    pub(crate) fn record(
        &self,
        config: &Config,
        permit: Permit,
        outcome: Outcome,
        now_us: impl Fn() -> u64,
    ) -> Option<Transition> {
        let mut s = self.lock();
        if s.generation != permit.generation {
            return None;
        }
        match (s.state, outcome) {
            (State::Closed, Outcome::Cancelled) => None,
            (State::Closed, Outcome::Success { slow } | Outcome::Failure { slow }) => {
                let failed = matches!(outcome, Outcome::Failure { .. });
                let now = if config.windowed_by_time() {
                    now_us()
                } else {
                    0
                };
                let (calls, failures, slows) = s.window.add(now, failed, slow);
                if !s.forced
                    && calls >= config.minimum_calls
                    && trips(config, calls, failures, slows)
                {
                    Some(self.trip(&mut s, config, now_us()))
                } else {
                    None
                }
            }
            (State::HalfOpen, Outcome::Cancelled) if permit.probe => {
                // The probe never answered: let another take its place.
                s.half_open.started = s.half_open.started.saturating_sub(1);
                None
            }
            (State::HalfOpen, Outcome::Success { slow } | Outcome::Failure { slow })
                if permit.probe =>
            {
                s.half_open.done += 1;
                s.half_open.failures += u32::from(matches!(outcome, Outcome::Failure { .. }));
                s.half_open.slow += u32::from(slow);
                let p = s.half_open;
                if p.done < config.probes {
                    return None;
                }
                if trips(config, p.done, p.failures, p.slow) {
                    Some(self.trip(&mut s, config, now_us()))
                } else {
                    s.trips = 0;
                    Some(self.set(&mut s, State::Closed))
                }
            }
            _ => None,
        }
    }

    fn trip(&self, s: &mut Inner, config: &Config, now_us: u64) -> Transition {
        let factor = config.open_backoff.powi(s.trips.min(64) as i32);
        let open = ((config.open_us as f64) * factor).min(config.max_open_us as f64) as u64;
        s.trips = s.trips.saturating_add(1);
        s.open_until_us = now_us.saturating_add(open);
        self.set(s, State::Open)
    }

    /// Moves to `to`, starting a new generation with a fresh window and probe count.
    fn set(&self, s: &mut Inner, to: State) -> Transition {
        let from = s.state;
        s.state = to;
        s.generation += 1;
        s.window.clear();
        s.half_open = Probes::default();
        self.bits.store(pack(s.generation, to), Ordering::Release);
        Transition { from, to }
    }

    /// Forces `to` (open or closed) until forced otherwise or reset; `None` resets to a
    /// fresh closed breaker that judges calls again.
    pub(crate) fn force(&self, config: &Config, to: Option<State>, now_us: u64) -> Transition {
        let mut s = self.lock();
        s.trips = 0;
        match to {
            Some(State::Open) => {
                s.forced = true;
                s.open_until_us = now_us.saturating_add(config.open_us);
                self.set(&mut s, State::Open)
            }
            Some(State::Closed) => {
                s.forced = true;
                self.set(&mut s, State::Closed)
            }
            Some(State::HalfOpen) | None => {
                s.forced = false;
                self.set(&mut s, State::Closed)
            }
        }
    }

    /// True if the breaker holds nothing worth keeping: closed, not forced, no failure and
    /// no slow call in its live window (so it is not on its way to opening). Keyed breakers
    /// drop such entries when they run out of room.
    pub(crate) fn is_idle(&self, now_us: u64) -> bool {
        let s = self.lock();
        s.state == State::Closed
            && !s.forced
            && match &s.window {
                Counts::Count { failures, slow, .. } => *failures == 0 && *slow == 0,
                Counts::Time { buckets } => {
                    let sec = now_us / 1_000_000;
                    let oldest = sec.saturating_sub(buckets.len() as u64 - 1);
                    buckets
                        .iter()
                        .filter(|b| b.0 != u64::MAX && b.0 >= oldest && b.0 <= sec)
                        .all(|b| b.2 == 0 && b.3 == 0)
                }
            }
    }
}

fn trips(config: &Config, calls: u32, failures: u32, slow: u32) -> bool {
    let calls = f64::from(calls.max(1));
    f64::from(failures) / calls >= config.failure_rate
        || f64::from(slow) / calls >= config.slow_rate
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn config() -> Config {
        Config {
            window: Window::Count(10),
            failure_rate: 0.5,
            slow_rate: 1.0,
            slow_call_us: None,
            minimum_calls: 4,
            open_us: 10 * S,
            open_backoff: 1.0,
            max_open_us: 10 * S,
            probes: 2,
        }
    }

    fn call(b: &Breaker, c: &Config, now: u64, o: Outcome) -> Result<Option<Transition>, Refusal> {
        let (p, _) = b.acquire(c, || now)?;
        Ok(b.record(c, p, o, || now))
    }

    const OK: Outcome = Outcome::Success { slow: false };
    const FAIL: Outcome = Outcome::Failure { slow: false };

    /// Table: (name, config change, outcomes, expected state after).
    #[test]
    fn thresholds_table() {
        struct Case {
            name: &'static str,
            tweak: fn(&mut Config),
            outcomes: &'static [Outcome],
            want: State,
        }
        let cases = [
            Case {
                name: "below minimum calls never trips",
                tweak: |_| {},
                outcomes: &[FAIL, FAIL, FAIL],
                want: State::Closed,
            },
            Case {
                name: "at minimum, rate at threshold trips",
                tweak: |_| {},
                outcomes: &[OK, OK, FAIL, FAIL],
                want: State::Open,
            },
            Case {
                name: "at minimum, rate below threshold stays",
                tweak: |_| {},
                outcomes: &[OK, OK, OK, FAIL],
                want: State::Closed,
            },
            Case {
                name: "count window forgets old failures",
                tweak: |c| c.window = Window::Count(4),
                outcomes: &[FAIL, OK, OK, OK, OK, FAIL, OK],
                want: State::Closed,
            },
            Case {
                name: "slow calls trip on their own rate",
                tweak: |c| {
                    c.slow_rate = 0.5;
                    c.slow_call_us = Some(1)
                },
                outcomes: &[
                    Outcome::Success { slow: true },
                    Outcome::Success { slow: true },
                    OK,
                    OK,
                ],
                want: State::Open,
            },
            Case {
                name: "slow rate below threshold stays",
                tweak: |c| {
                    c.slow_rate = 0.75;
                    c.slow_call_us = Some(1)
                },
                outcomes: &[
                    Outcome::Success { slow: true },
                    Outcome::Success { slow: true },
                    OK,
                    OK,
                ],
                want: State::Closed,
            },
            Case {
                name: "cancelled calls are not counted",
                tweak: |_| {},
                outcomes: &[FAIL, FAIL, Outcome::Cancelled, Outcome::Cancelled, OK],
                want: State::Closed,
            },
        ];
        for case in cases {
            let mut c = config();
            (case.tweak)(&mut c);
            c.validate().unwrap();
            let b = Breaker::new(&c);
            for o in case.outcomes {
                let _ = call(&b, &c, 0, *o);
            }
            assert_eq!(b.state(), case.want, "{}", case.name);
        }
    }

    #[test]
    fn time_window_forgets_calls_older_than_it() {
        let mut c = config();
        c.window = Window::Time(Duration::from_secs(10));
        let b = Breaker::new(&c);
        call(&b, &c, 0, FAIL).unwrap();
        call(&b, &c, 0, FAIL).unwrap();
        // 11 s later those two have left the window. Counted, they would trip the breaker
        // at the second success here (2 of 4 failed).
        for o in [OK, OK, FAIL, OK] {
            call(&b, &c, 11 * S, o).unwrap();
        }
        assert_eq!(b.state(), State::Closed);
        // Calls within the window do count: 3 of 6 failed.
        call(&b, &c, 12 * S, FAIL).unwrap();
        assert_eq!(b.state(), State::Closed);
        call(&b, &c, 12 * S, FAIL).unwrap();
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn open_then_half_open_probes_then_close() {
        let c = config();
        let b = Breaker::new(&c);
        for _ in 0..4 {
            let _ = call(&b, &c, 0, FAIL);
        }
        assert_eq!(b.state(), State::Open);
        let r = b.acquire(&c, || 3 * S).unwrap_err();
        assert_eq!(r.retry_after_us, 7 * S, "time until half-open");
        // After the open duration: exactly `probes` calls pass.
        let (p1, t) = b.acquire(&c, || 10 * S).unwrap();
        assert_eq!(
            t,
            Some(Transition {
                from: State::Open,
                to: State::HalfOpen
            })
        );
        let (p2, _) = b.acquire(&c, || 10 * S).unwrap();
        assert!(p1.probe && p2.probe);
        assert!(b.acquire(&c, || 10 * S).is_err(), "a third call is refused");
        assert_eq!(b.record(&c, p1, OK, || 10 * S), None);
        assert_eq!(
            b.record(&c, p2, OK, || 10 * S),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Closed
            })
        );
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn failed_probes_reopen_with_backoff_capped() {
        let mut c = config();
        c.open_backoff = 2.0;
        c.max_open_us = 30 * S;
        let b = Breaker::new(&c);
        for _ in 0..4 {
            let _ = call(&b, &c, 0, FAIL);
        }
        let mut now = 0;
        for want_open in [20 * S, 30 * S, 30 * S] {
            // Wait out the current open period, then fail both probes.
            let r = b.acquire(&c, || now).unwrap_err();
            now += r.retry_after_us;
            for _ in 0..2 {
                let (p, _) = b.acquire(&c, || now).unwrap();
                b.record(&c, p, FAIL, || now);
            }
            assert_eq!(b.state(), State::Open);
            let r = b.acquire(&c, || now).unwrap_err();
            assert_eq!(r.retry_after_us, want_open, "backoff doubles up to the cap");
        }
        // Success closes and resets the backoff.
        now += 30 * S;
        for _ in 0..2 {
            let (p, _) = b.acquire(&c, || now).unwrap();
            b.record(&c, p, OK, || now);
        }
        assert_eq!(b.state(), State::Closed);
        for _ in 0..4 {
            let _ = call(&b, &c, now, FAIL);
        }
        assert_eq!(b.acquire(&c, || now).unwrap_err().retry_after_us, 10 * S);
    }

    #[test]
    fn results_from_an_older_generation_are_ignored() {
        let c = config();
        let b = Breaker::new(&c);
        // A slow call starts while closed...
        let (old, _) = b.acquire(&c, || 0).unwrap();
        for _ in 0..4 {
            let _ = call(&b, &c, 0, FAIL);
        }
        // ...the breaker trips, half-opens and closes again...
        for _ in 0..2 {
            let (p, _) = b.acquire(&c, || 10 * S).unwrap();
            b.record(&c, p, OK, || 10 * S);
        }
        assert_eq!(b.state(), State::Closed);
        // ...and its failure, arriving now, counts for nothing.
        assert_eq!(b.record(&c, old, FAIL, || 10 * S), None);
        for _ in 0..3 {
            let _ = call(&b, &c, 10 * S, FAIL);
        }
        assert_eq!(b.state(), State::Closed, "3 failures after closing, not 4");
    }

    #[test]
    fn a_cancelled_probe_frees_its_place() {
        let c = config();
        let b = Breaker::new(&c);
        for _ in 0..4 {
            let _ = call(&b, &c, 0, FAIL);
        }
        let (p1, _) = b.acquire(&c, || 10 * S).unwrap();
        let (_p2, _) = b.acquire(&c, || 10 * S).unwrap();
        assert!(b.acquire(&c, || 10 * S).is_err());
        b.record(&c, p1, Outcome::Cancelled, || 10 * S);
        assert!(
            b.acquire(&c, || 10 * S).is_ok(),
            "the cancelled probe's place is free"
        );
    }

    #[test]
    fn forced_states_hold_until_reset() {
        let c = config();
        let b = Breaker::new(&c);
        b.force(&c, Some(State::Open), 0);
        assert!(
            b.acquire(&c, || 100 * S).is_err(),
            "forced open does not half-open"
        );
        b.force(&c, Some(State::Closed), 100 * S);
        for _ in 0..10 {
            let _ = call(&b, &c, 100 * S, FAIL);
        }
        assert_eq!(b.state(), State::Closed, "forced closed does not trip");
        b.force(&c, None, 100 * S);
        for _ in 0..4 {
            let _ = call(&b, &c, 100 * S, FAIL);
        }
        assert_eq!(b.state(), State::Open, "reset judges again");
    }

    #[test]
    fn probes_that_never_answer_are_replaced() {
        let c = config();
        let b = Breaker::new(&c);
        for _ in 0..4 {
            let _ = call(&b, &c, 0, FAIL);
        }
        let (hung1, _) = b.acquire(&c, || 10 * S).unwrap();
        let (_hung2, _) = b.acquire(&c, || 10 * S).unwrap();
        assert!(
            b.acquire(&c, || 15 * S).is_err(),
            "probes out, not yet overdue"
        );
        // A whole open duration later, fresh probes pass...
        let (p, _) = b.acquire(&c, || 20 * S).unwrap();
        assert!(p.probe);
        // ...and a straggler answering now is from an old generation: ignored.
        assert_eq!(b.record(&c, hung1, FAIL, || 20 * S), None);
        assert_eq!(b.state(), State::HalfOpen);
    }

    #[test]
    fn idle_means_nothing_against_it() {
        let c = config();
        let b = Breaker::new(&c);
        assert!(b.is_idle(0));
        call(&b, &c, 0, OK).unwrap();
        assert!(b.is_idle(0), "successes alone keep it evictable");
        call(&b, &c, 0, FAIL).unwrap();
        assert!(!b.is_idle(0));
        let mut t = config();
        t.window = Window::Time(Duration::from_secs(10));
        let b = Breaker::new(&t);
        call(&b, &t, 0, FAIL).unwrap();
        assert!(!b.is_idle(5 * S));
        assert!(b.is_idle(20 * S), "its failure has left the window");
    }

    #[test]
    fn bad_config_is_an_error() {
        let bad: [fn(&mut Config); 8] = [
            |c| c.minimum_calls = 11,
            |c| c.failure_rate = 0.0,
            |c| c.slow_rate = 1.5,
            |c| c.window = Window::Count(0),
            |c| c.window = Window::Time(Duration::from_millis(10)),
            |c| c.probes = 0,
            |c| c.open_backoff = 0.5,
            |c| c.max_open_us = 1,
        ];
        for tweak in bad {
            let mut c = config();
            tweak(&mut c);
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
