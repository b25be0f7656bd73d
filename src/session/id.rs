//! Session ids: 256 random bits, sent as 64 hex digits, stored only under hashes of them.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::cookie::find_in;

/// A session id: 32 bytes from the operating system's CSPRNG.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SessionId([u8; 32]);

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print an id: it is a bearer credential.
        f.write_str("SessionId(..)")
    }
}

impl SessionId {
    /// A fresh id.
    ///
    /// # Panics
    ///
    /// If the operating system has no random source, which no supported platform lacks.
    pub(crate) fn random() -> Self {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).expect("the OS random source is available");
        SessionId(b)
    }

    /// The id that replaces this one on a login or `cycle_id`: the first 128 bits kept
    /// (they choose the session's Redis Cluster slot, so the old and new keys share it and
    /// the rename is one atomic script), the last 128 bits fresh from the CSPRNG. The
    /// first half is no secret after a cycle (a planted id's owner knows it); the fresh
    /// half alone is beyond guessing.
    ///
    /// # Panics
    ///
    /// As [`random`](Self::random).
    pub(crate) fn cycled(&self) -> Self {
        let mut b = self.0;
        getrandom::fill(&mut b[16..]).expect("the OS random source is available");
        SessionId(b)
    }

    /// The cookie value: 64 lowercase hex digits.
    pub(crate) fn to_cookie(&self) -> String {
        crate::hex::encode(&self.0)
    }

    /// Reads a cookie value: exactly 64 lowercase hex digits, else `None`.
    pub(crate) fn from_cookie(v: &[u8]) -> Option<Self> {
        if v.len() != 64 {
            return None;
        }
        let mut b = [0u8; 32];
        let mut bad = 0;
        // Eight digits at a time, as the lanes of a `u64`.
        for (out, digits) in b.chunks_exact_mut(4).zip(v.chunks_exact(8)) {
            let lanes = u64::from_le_bytes(std::array::from_fn(|i| digits[i]));
            let (bytes, invalid) = crate::hex::decode8(lanes);
            out.copy_from_slice(&bytes);
            bad |= invalid;
        }
        // One check at the end instead of one per digit.
        (bad == 0).then_some(SessionId(b))
    }

    /// What the store keeps instead of the id, as 64 hex digits: 16 of a 64-bit mix of the
    /// id's first half (the lineage: the same for an id and the ids cycled from it, so a
    /// store can keep them on one Redis Cluster slot), then 48 of the SHA-256 of the whole
    /// id. Someone who reads the store learns no id they could send back as a cookie: the
    /// lineage says at most 64 bits of the first half (which a planted id's owner knows
    /// anyway after a cycle), and the second half's 128 bits only go through SHA-256. The
    /// mix costs a few instructions where a second SHA-256 cost some 3,400 per lookup.
    pub(crate) fn storage_key(&self) -> String {
        self.storage_key_digits().as_str().to_owned()
    }

    /// [`storage_key`](Self::storage_key) on the stack, for a lookup.
    pub(crate) fn storage_key_digits(&self) -> StorageKey {
        let mut digits = [0; 64];
        let half = |i: usize| u64::from_le_bytes(std::array::from_fn(|j| self.0[i + j]));
        let lineage = mix(half(0) ^ mix(half(8)));
        crate::hex::encode_to(&lineage.to_be_bytes(), &mut digits[..16]);
        crate::hex::encode_to(&Sha256::digest(self.0)[..24], &mut digits[16..]);
        StorageKey(digits)
    }
}

/// SplitMix64's finaliser: a fixed, well-spread mix of 64 bits (fixed forever: stored keys
/// depend on it).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A storage key (64 hex digits) that needs no allocation.
pub(crate) struct StorageKey([u8; 64]);

impl StorageKey {
    pub(crate) fn as_str(&self) -> &str {
        // Hex digits are ASCII: the check always passes.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The request's `Cookie` header, kept as it came and read only if the session is used,
/// so a request that never touches its session never parses it.
pub(crate) enum RawCookies {
    /// No `Cookie` header.
    None,
    /// One header, kept (for a request read by hyper, a reference count on its buffer).
    One(http::HeaderValue),
    /// Several headers (HTTP/2 sends cookies as separate fields): parsed when the request
    /// came.
    Parsed(Option<SessionId>),
}

impl RawCookies {
    pub(crate) fn from_headers(headers: &http::HeaderMap, name: &str) -> Self {
        let all = headers.get_all(http::header::COOKIE);
        let mut values = all.iter();
        match (values.next(), values.next()) {
            (None, _) => RawCookies::None,
            (Some(v), None) => RawCookies::One(v.clone()),
            _ => RawCookies::Parsed(
                find_in(all.iter().map(http::HeaderValue::as_bytes), name)
                    .and_then(SessionId::from_cookie),
            ),
        }
    }

    /// The well-formed session id among them, if any.
    pub(crate) fn id(&self, name: &str) -> Option<SessionId> {
        match self {
            RawCookies::None => None,
            RawCookies::One(v) => find_in([v.as_bytes()], name).and_then(SessionId::from_cookie),
            RawCookies::Parsed(id) => id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cookie::find_cookie;
    use proptest::prelude::*;

    fn headers(cookies: &[&[u8]]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for c in cookies {
            h.append(
                http::header::COOKIE,
                http::HeaderValue::from_bytes(c).unwrap(),
            );
        }
        h
    }

    #[test]
    fn ids_round_trip_and_hash() {
        let id = SessionId::random();
        let c = id.to_cookie();
        assert_eq!(c.len(), 64);
        assert_eq!(SessionId::from_cookie(c.as_bytes()), Some(id.clone()));
        assert_ne!(id.storage_key(), c, "the store never holds the id");
        assert_eq!(id.storage_key_digits().as_str(), id.storage_key());
        // The stored form: 16 hex digits of the lineage mix of the first 16 bytes, then 48
        // of the SHA-256 of all 32 (keys written before must stay valid).
        assert_eq!(
            SessionId([0; 32]).storage_key(),
            "a706dd2f4d197e6f66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3"
        );
        // A cycled id keeps the lineage and nothing else.
        let next = id.cycled();
        assert_ne!(next, id);
        assert_eq!(next.0[..16], id.0[..16]);
        assert_eq!(next.storage_key()[..16], id.storage_key()[..16]);
        assert_ne!(next.storage_key()[16..], id.storage_key()[16..]);
        assert_ne!(SessionId::random(), id);
        assert_eq!(format!("{id:?}"), "SessionId(..)");
    }

    #[test]
    fn cookie_table() {
        let good = "ab".repeat(32);
        let find = |cs: &[&str]| {
            let bytes: Vec<&[u8]> = cs.iter().map(|c| c.as_bytes()).collect();
            let h = headers(&bytes);
            find_cookie(&h, "sid").map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(find(&[&format!("sid={good}")]), Some(good.clone()));
        assert_eq!(
            find(&[&format!("a=1; sid={good}; b=2")]),
            Some(good.clone())
        );
        assert_eq!(
            find(&["a=1", &format!("sid=\"{good}\"")]),
            Some(good.clone())
        );
        assert_eq!(find(&["sidx=1; xsid=2"]), None);
        assert_eq!(find(&["sid=1", "sid=2"]), None, "duplicates are refused");
        assert_eq!(find(&["garbage;;; =; sid"]), None);
        assert!(SessionId::from_cookie(b"AB").is_none());
        assert!(
            SessionId::from_cookie("AB".repeat(32).as_bytes()).is_none(),
            "uppercase"
        );
        assert!(SessionId::from_cookie("zz".repeat(32).as_bytes()).is_none());
        let huge = format!("sid={}", "x".repeat(8192));
        assert_eq!(find(&[&huge]).map(|v| v.len()), Some(8192));
        assert!(
            SessionId::from_cookie(huge.as_bytes()).is_none(),
            "8 KiB is no id"
        );
    }

    /// The definition: 64 digits of `0-9a-f`, two to a byte, first digit high.
    fn reference(v: &[u8]) -> Option<SessionId> {
        let s = std::str::from_utf8(v).ok()?;
        if s.len() != 64 || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut b = [0u8; 32];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(SessionId(b))
    }

    #[test]
    fn every_byte_in_every_lane_decodes_as_defined() {
        let good = b"0123456789abcdef".repeat(4);
        assert_eq!(SessionId::from_cookie(&good), reference(&good));
        assert!(reference(&good).is_some());
        for pos in 0..16 {
            for byte in 0..=255u8 {
                let mut v = good.clone();
                v[pos] = byte;
                assert_eq!(
                    SessionId::from_cookie(&v),
                    reference(&v),
                    "{pos}: {byte:#x}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn ids_decode_as_defined(
            id in proptest::collection::vec(proptest::sample::select(b"0123456789abcdef".to_vec()), 64),
            spoilt in proptest::collection::vec(
                (0..64usize, proptest::sample::select(b"ABCDEFgz/:`@G\x80\xff ".to_vec())),
                0..3,
            ),
        ) {
            let mut v = id;
            for (pos, byte) in spoilt {
                v[pos] = byte;
            }
            prop_assert_eq!(SessionId::from_cookie(&v), reference(&v));
        }

        #[test]
        fn any_id_round_trips(bytes in any::<[u8; 32]>()) {
            let id = SessionId(bytes);
            prop_assert_eq!(SessionId::from_cookie(id.to_cookie().as_bytes()), Some(id));
        }

        #[test]
        fn any_cookie_header_is_safe(bytes in proptest::collection::vec(0x20u8..0x7f, 0..512)) {
            if let Ok(v) = http::HeaderValue::from_bytes(&bytes) {
                let mut h = http::HeaderMap::new();
                h.insert(http::header::COOKIE, v);
                if let Some(v) = find_cookie(&h, "sid") {
                    let _ = SessionId::from_cookie(v);
                }
            }
        }

        #[test]
        fn only_well_formed_ids_parse(s in "[0-9a-f]{60,68}") {
            prop_assert_eq!(SessionId::from_cookie(s.as_bytes()).is_some(), s.len() == 64);
        }
    }
}
