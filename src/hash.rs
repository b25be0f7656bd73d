//! Hashing and randomness shared by the layers, one copy each: a stable hash for names and
//! shard keys ([`fnv1a`], [`mix64`]), the pass-through hasher of maps keyed by hashes
//! already ([`PreHashed`]), and the cheap random source of TTL and backoff jitter
//! ([`Jitter`]).

/// FNV-1a: stable across processes, versions and machines, so it may decide where data
/// lives (a shard) or name state (a quota's salt). Not for keys a client chooses alone.
#[cfg(any(feature = "rate-limit", feature = "db-route"))]
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A 64-bit finaliser (MurmurHash3's `fmix64`): every output bit depends on every input
/// bit, as FNV's high bits alone do not.
#[cfg(feature = "rate-limit")]
pub(crate) fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Passes a `u64` key through: the maps using it are keyed by outputs of a seeded hash
/// already, and hashing them again would only cost time.
#[cfg(any(feature = "rate-limit", feature = "circuit-breaker"))]
#[derive(Default)]
pub(crate) struct PreHashed(u64);

#[cfg(any(feature = "rate-limit", feature = "circuit-breaker"))]
impl std::hash::Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Random numbers for jitter (spreading TTLs and retry backoffs): splitmix64 over an
/// atomic counter with a random seed. Cheap and shared across threads without a lock;
/// not for secrets.
#[cfg(any(feature = "cache", feature = "retry", feature = "jobs"))]
#[derive(Debug)]
pub(crate) struct Jitter {
    state: std::sync::atomic::AtomicU64,
}

#[cfg(any(feature = "cache", feature = "retry", feature = "jobs"))]
impl Jitter {
    /// A source seeded from the process's random hasher keys.
    #[cfg(any(feature = "retry", feature = "jobs"))]
    pub(crate) fn new() -> Self {
        use std::hash::BuildHasher;
        Self::with_seed(std::hash::RandomState::new().hash_one(0u8))
    }

    pub(crate) fn with_seed(seed: u64) -> Self {
        Self {
            state: std::sync::atomic::AtomicU64::new(seed),
        }
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&self) -> u64 {
        const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut z = self
            .state
            .fetch_add(GOLDEN, std::sync::atomic::Ordering::Relaxed)
            .wrapping_add(GOLDEN);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    #[cfg(feature = "cache")]
    pub(crate) fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n] (inclusive).
    #[cfg(any(feature = "retry", feature = "jobs"))]
    pub(crate) fn up_to(&self, n: u64) -> u64 {
        match n.checked_add(1) {
            Some(m) => self.next_u64() % m,
            None => self.next_u64(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(any(feature = "rate-limit", feature = "db-route"))]
    #[test]
    fn fnv1a_matches_the_published_vectors() {
        // From the FNV reference test suite (64-bit FNV-1a).
        assert_eq!(super::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(super::fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[cfg(any(feature = "cache", feature = "retry", feature = "jobs"))]
    #[test]
    fn jitter_spreads_over_its_range() {
        let j = super::Jitter::with_seed(7);
        let draws: Vec<u64> = (0..4096).map(|_| j.next_u64() % 16).collect();
        for bucket in 0..16 {
            let n = draws.iter().filter(|&&d| d == bucket).count();
            assert!((150..=370).contains(&n), "bucket {bucket}: {n} of 4096");
        }
    }
}
