//! GCRA (the generic cell rate algorithm), as pure integer arithmetic with no I/O.
//!
//! A quota of `limit` requests per `period` with a burst of `burst` is enforced by keeping
//! one number per key: the *theoretical arrival time* (TAT), when the key's bucket would be
//! empty again. Each admitted request of cost `c` moves the TAT `c` emission intervals
//! (`period / limit`) into the future; a request is admitted if the TAT it would leave is
//! no more than `burst` intervals ahead of now.
//!
//! Times are whole microseconds. The Redis script performs exactly these operations on the
//! same integers (exact in Lua's doubles below 2^53 µs, about 285 years), so the in-process
//! and Redis backends reach the same decisions for the same inputs.
//!
//! Several quotas are evaluated together by [`check_all`]: a request is admitted only if
//! every quota admits it, and a refused request changes no quota's state.

/// One quota's constants, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Microseconds one unit of cost occupies: `ceil(period / limit)`.
    pub emission_us: u64,
    /// How many units may be taken at once.
    pub burst: u64,
}

/// The verdict of one quota (or of all quotas together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// Microseconds until the request could be admitted (0 if it was). `u64::MAX` if it
    /// never can (its cost exceeds the burst).
    pub retry_after_us: u64,
    /// Microseconds until the bucket is full again.
    pub reset_us: u64,
}

impl Verdict {
    /// Units still available right after this decision, under the quota that gave it:
    /// what fits between the bucket's level and its capacity. Derived, not stored, since
    /// only headers need it and it costs a division.
    pub fn remaining(&self, quota: &Gcra) -> u64 {
        quota.capacity_us().saturating_sub(self.reset_us) / quota.emission_us
    }
}

impl Gcra {
    /// The constants for `limit` per `period_us` with `burst` (all non-zero).
    pub fn new(limit: u64, period_us: u64, burst: u64) -> Self {
        debug_assert!(limit > 0 && period_us > 0 && burst > 0);
        Self {
            emission_us: period_us.div_ceil(limit).max(1),
            burst,
        }
    }

    fn capacity_us(&self) -> u64 {
        self.emission_us.saturating_mul(self.burst)
    }

    /// The quota as it stands at `now_us`, taking nothing: for reporting a quota whose
    /// request another quota refused.
    pub fn state(&self, tat_us: Option<u64>, now_us: u64) -> Verdict {
        let tat = tat_us.unwrap_or(now_us).max(now_us);
        Verdict {
            allowed: true,
            retry_after_us: 0,
            reset_us: tat - now_us,
        }
    }

    /// The TAT to store if a request of `cost` at `now_us` is admitted, `None` if it is
    /// not: [`check`](Self::check) without the verdict, for the admit fast path.
    #[inline]
    pub fn admit(&self, tat_us: Option<u64>, now_us: u64, cost: u64) -> Option<u64> {
        if cost > self.burst {
            return None;
        }
        let tat = tat_us.unwrap_or(now_us).max(now_us);
        let new_tat = tat.saturating_add(cost.saturating_mul(self.emission_us));
        (new_tat.saturating_sub(self.capacity_us()) <= now_us).then_some(new_tat)
    }

    /// Decides a request of `cost` at `now_us` for a key whose stored TAT is `tat_us`
    /// (`None` or anything in the past means a full bucket). Returns the verdict and, if
    /// admitted, the TAT to store.
    pub fn check(&self, tat_us: Option<u64>, now_us: u64, cost: u64) -> (Verdict, Option<u64>) {
        let tat = tat_us.unwrap_or(now_us).max(now_us);
        let cap = self.capacity_us();
        if cost > self.burst {
            let v = Verdict {
                allowed: false,
                retry_after_us: u64::MAX,
                reset_us: tat - now_us,
            };
            return (v, None);
        }
        let new_tat = tat.saturating_add(cost.saturating_mul(self.emission_us));
        let allow_at = new_tat.saturating_sub(cap);
        if now_us < allow_at {
            let v = Verdict {
                allowed: false,
                retry_after_us: allow_at - now_us,
                reset_us: tat - now_us,
            };
            (v, None)
        } else {
            let v = Verdict {
                allowed: true,
                retry_after_us: 0,
                reset_us: new_tat - now_us,
            };
            (v, Some(new_tat))
        }
    }
}

/// Evaluates every quota for one request, as every store must: admitted only if all admit,
/// and then the returned TATs are to be stored. Refused: nothing is stored, the quotas that
/// would have admitted it are reported as they stand ([`Gcra::state`]), and the longest
/// `retry_after_us` among the refusing quotas is when the same request will be admitted
/// (refusals change no state).
pub fn check_all(
    quotas: &[Gcra],
    tats: &[Option<u64>],
    now_us: u64,
    cost: u64,
) -> (Vec<Verdict>, Option<Vec<u64>>) {
    let results: Vec<(Verdict, Option<u64>)> = quotas
        .iter()
        .zip(tats)
        .map(|(q, t)| q.check(*t, now_us, cost))
        .collect();
    if results.iter().all(|(v, _)| v.allowed) {
        let verdicts = results.iter().map(|(v, _)| *v).collect();
        let new_tats = results.iter().map(|(_, t)| t.unwrap_or(now_us)).collect();
        (verdicts, Some(new_tats))
    } else {
        let verdicts = results
            .iter()
            .zip(quotas.iter().zip(tats))
            .map(|((v, _), (q, t))| if v.allowed { q.state(*t, now_us) } else { *v })
            .collect();
        (verdicts, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000;

    #[test]
    fn burst_then_steady_rate() {
        // 10 per second, burst 10.
        let q = Gcra::new(10, S, 10);
        let mut tat = None;
        for i in 0..10 {
            let (v, t) = q.check(tat, 0, 1);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining(&q), 9 - i);
            tat = t;
        }
        let (v, t) = q.check(tat, 0, 1);
        assert!(!v.allowed && t.is_none());
        assert_eq!(v.retry_after_us, 100_000, "one emission interval");
        assert_eq!(v.reset_us, S);
        // Exactly at the retry time it is admitted.
        let (v, _) = q.check(tat, 100_000, 1);
        assert!(v.allowed);
        let (v, _) = q.check(tat, 99_999, 1);
        assert!(!v.allowed);
    }

    #[test]
    fn costs_and_impossible_costs() {
        let q = Gcra::new(10, S, 10);
        let (v, tat) = q.check(None, 0, 7);
        assert!(v.allowed && v.remaining(&q) == 3);
        let (v, _) = q.check(tat, 0, 4);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_us, 100_000);
        let (v, _) = q.check(None, 0, 11);
        assert!(!v.allowed && v.retry_after_us == u64::MAX && v.remaining(&q) == 10);
    }

    #[test]
    fn idle_key_is_full_again() {
        let q = Gcra::new(100, 900 * S, 100);
        let (_, tat) = q.check(None, 0, 100);
        let (v, _) = q.check(tat, 900 * S, 1);
        assert!(v.allowed && v.remaining(&q) == 99);
    }

    #[test]
    fn refused_quota_consumes_nothing_of_the_others() {
        let a = Gcra::new(100, 900 * S, 100);
        let b = Gcra::new(1, 3600 * S, 1);
        let (_, tb) = b.check(None, 0, 1);
        let (verdicts, stored) = check_all(&[a, b], &[None, tb], 10, 1);
        assert!(stored.is_none());
        assert!(verdicts[0].allowed && !verdicts[1].allowed);
        assert_eq!(
            verdicts[0].remaining(&a),
            100,
            "the admitting quota is reported untouched"
        );
    }

    proptest! {
        // Over any window, a key never gets more than burst + elapsed/emission units.
        #[test]
        fn never_over_admits(limit in 1u64..50, period_s in 1u64..100, burst in 1u64..50,
                             gaps in proptest::collection::vec(0u64..2_000_000, 1..200),
                             costs in proptest::collection::vec(1u64..5, 200)) {
            let q = Gcra::new(limit, period_s * S, burst);
            let (mut now, mut tat, mut admitted) = (0u64, None, 0u64);
            for (gap, cost) in gaps.iter().zip(&costs) {
                now += gap;
                let (v, t) = q.check(tat, now, *cost);
                if v.allowed { admitted += cost; tat = t; }
                prop_assert!(admitted <= burst + now / q.emission_us, "admitted {} by {}", admitted, now);
            }
        }

        // The admit fast path agrees with the full check, to the stored TAT.
        #[test]
        fn admit_agrees_with_check(limit in 1u64..50, burst in 1u64..20, tat in proptest::option::of(0u64..5_000_000),
                                   now in 0u64..5_000_000, cost in 0u64..25) {
            let q = Gcra::new(limit, S, burst);
            let (v, t) = q.check(tat, now, cost);
            prop_assert_eq!(q.admit(tat, now, cost), if v.allowed { t } else { None });
        }

        // Retry-After is honest: waiting exactly that long admits the same request, and a
        // microsecond less does not.
        #[test]
        fn retry_after_is_exact(limit in 1u64..50, burst in 1u64..20, taken in 0u64..40, cost in 1u64..20) {
            prop_assume!(cost <= burst);
            let q = Gcra::new(limit, S, burst);
            let mut tat = None;
            for _ in 0..taken { if let (v, Some(t)) = q.check(tat, 0, 1) && v.allowed { tat = Some(t); } }
            let (v, _) = q.check(tat, 0, cost);
            if !v.allowed {
                prop_assert!(q.check(tat, v.retry_after_us, cost).0.allowed);
                prop_assert!(!q.check(tat, v.retry_after_us - 1, cost).0.allowed);
            }
        }
    }
}
