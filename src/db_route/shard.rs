//! [`Shards`]: a stable mapping of keys to one of N databases.

use std::fmt;

/// N databases, each key always mapped to the same one: for data that outgrew one primary,
/// split by a key such as a user or tenant id.
///
/// This is the last resort for scaling writes: queries across shards, transactions that
/// span them and moving data between them are all the application's work. Exhaust the
/// cheaper steps first (caching, read replicas through [`DbRouter`](super::DbRouter), a
/// bigger primary).
///
/// The mapping is jump consistent hashing (Lamping and Veach) over FNV-1a, both fixed
/// algorithms: it is the same in every process, on every machine and in every version of
/// this crate. Growing from N to N+1 shards moves about 1/(N+1) of the keys, all of them
/// to the new shard.
///
/// # Examples
///
/// ```
/// use tower_scale::db_route::Shards;
///
/// let shards = Shards::new(vec!["db-0", "db-1", "db-2"]).unwrap();
/// let db = shards.for_key("user:42");
/// assert_eq!(db, shards.for_key("user:42"));
/// # let _ = db;
/// ```
pub struct Shards<P> {
    shards: Box<[P]>,
}

impl<P> fmt::Debug for Shards<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shards")
            .field("count", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl<P> Shards<P> {
    /// The shards, in their fixed order: the order is part of the mapping.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`](crate::ConfigError) for an empty list.
    pub fn new(shards: Vec<P>) -> Result<Self, crate::ConfigError> {
        if shards.is_empty() {
            return Err(crate::ConfigError::new(
                "shards",
                "list at least one database",
            ));
        }
        Ok(Self {
            shards: shards.into_boxed_slice(),
        })
    }

    /// The index of `key`'s shard.
    pub fn index_of(&self, key: impl AsRef<[u8]>) -> usize {
        jump(crate::hash::fnv1a(key.as_ref()), self.shards.len())
    }

    /// `key`'s shard.
    pub fn for_key(&self, key: impl AsRef<[u8]>) -> &P {
        &self.shards[self.index_of(key)]
    }

    /// Every shard, for queries that must visit them all.
    pub fn all(&self) -> &[P] {
        &self.shards
    }
}

/// Jump consistent hash: a bucket in `0..n` for `key`.
fn jump(mut key: u64, n: usize) -> usize {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    while j < n {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_is_fixed() {
        // Known values: a change here would move every user's data.
        assert_eq!(crate::hash::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(crate::hash::fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        // Computed apart from this code (FNV-1a, then jump consistent hash as published).
        let keys = ["user:1", "user:2", "user:3", "tenant:acme"];
        for (n, want) in [(3, [0, 2, 1, 1]), (10, [5, 7, 6, 1]), (11, [5, 7, 6, 1])] {
            let shards = Shards::new((0..n).collect()).unwrap();
            let got = keys.map(|k| shards.index_of(k));
            assert_eq!(got, want, "{n} shards");
        }
        assert!(Shards::<u8>::new(vec![]).is_err());
        assert_eq!(Shards::new(vec![7]).unwrap().for_key("anything"), &7);
    }

    #[test]
    fn keys_spread_evenly_and_growing_moves_few() {
        let n = 8;
        let keys: Vec<String> = (0..80_000).map(|i| format!("user:{i}")).collect();
        let eight = Shards::new((0..n).collect::<Vec<usize>>()).unwrap();
        let mut counts = vec![0usize; n];
        for k in &keys {
            counts[eight.index_of(k)] += 1;
        }
        for c in &counts {
            assert!((9_000..11_000).contains(c), "uneven: {counts:?}");
        }
        let nine = Shards::new((0..=n).collect::<Vec<usize>>()).unwrap();
        let mut moved = 0;
        for k in &keys {
            let (before, after) = (eight.index_of(k), nine.index_of(k));
            if before != after {
                assert_eq!(after, n, "a moved key goes to the new shard");
                moved += 1;
            }
        }
        // About 1/9 of the keys move.
        assert!((7_500..10_500).contains(&moved), "moved {moved}");
    }
}
