//! [`PreHashed`]: the hasher of maps whose keys are already seeded 64-bit hashes.

use std::hash::Hasher;

/// Passes a `u64` key through: the maps using it are keyed by outputs of a seeded hash
/// already, and hashing them again would only cost time.
#[derive(Default)]
pub(crate) struct PreHashed(u64);

impl Hasher for PreHashed {
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
