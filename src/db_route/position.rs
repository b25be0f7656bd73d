//! WAL positions and the consistency token a client carries after a write. Pure: no I/O.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A PostgreSQL WAL position (`pg_lsn`), written `16/B374D848`. Ordered: a replica whose
/// replayed position is at or past a write's position has that write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// A text that is not a WAL position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLsn;

impl fmt::Display for BadLsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a WAL position; expected two hex numbers such as `16/B374D848`")
    }
}

impl std::error::Error for BadLsn {}

impl FromStr for Lsn {
    type Err = BadLsn;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s.split_once('/').ok_or(BadLsn)?;
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BadLsn);
            }
            u32::from_str_radix(h, 16).map_err(|_| BadLsn)
        };
        Ok(Self((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// What a client carries after a request that wrote: the primary's WAL position after the
/// write (none for drivers that cannot tell), and when the token was issued.
///
/// A client's read may go to a replica only once that replica has replayed past `lsn`;
/// without a position, reads go to the primary for the router's time pin. A token is
/// honoured for at most its maximum age, so a forged or garbage one can at worst send its
/// client to the primary for that long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsistencyToken {
    /// The primary's position after the write.
    pub lsn: Option<Lsn>,
    /// When it was issued, milliseconds since the Unix epoch.
    pub issued_ms: u64,
}

/// The wall clock in milliseconds since the Unix epoch, as tokens carry it.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, crate::duration::millis)
}

/// How far in the future a token's issue time may be (clocks of instances differ).
const SKEW_MS: u64 = 5_000;

impl ConsistencyToken {
    /// `1.<lsn as 16 hex digits, or ->.<issued ms>`: short, cookie-safe.
    pub fn encode(&self) -> String {
        match self.lsn {
            Some(l) => format!("1.{:016x}.{}", l.0, self.issued_ms),
            None => format!("1.-.{}", self.issued_ms),
        }
    }

    /// Reads a token, or `None` for anything malformed, older than `max_age`, or issued
    /// more than a few seconds in the future. Never fails otherwise, whatever the input.
    pub fn decode(s: &str, now_ms: u64, max_age: Duration) -> Option<Self> {
        Self::decode_bytes(s.as_bytes(), now_ms, max_age)
    }

    /// [`decode`](Self::decode) on bytes (a cookie value as it arrived).
    pub fn decode_bytes(b: &[u8], now_ms: u64, max_age: Duration) -> Option<Self> {
        Self::parse_bytes(b).filter(|t| t.is_current(now_ms, max_age))
    }

    /// Whether the token is honoured at `now_ms`: issued at most `max_age` ago and not more
    /// than a few seconds in the future (clocks of instances differ).
    pub fn is_current(&self, now_ms: u64, max_age: Duration) -> bool {
        let max_age_ms = crate::duration::millis(max_age);
        self.issued_ms <= now_ms.saturating_add(SKEW_MS)
            && now_ms.saturating_sub(self.issued_ms) <= max_age_ms
    }

    /// The token's form alone, its age unchecked: `None` for anything malformed.
    pub(crate) fn parse_bytes(b: &[u8]) -> Option<Self> {
        if b.len() > 64 {
            return None;
        }
        let rest = b.strip_prefix(b"1.")?;
        let (lsn, rest) = match rest.strip_prefix(b"-.") {
            Some(rest) => (None, rest),
            None => {
                if rest.len() < 17 || rest[16] != b'.' {
                    return None;
                }
                // Digits map to their value, anything else to 0x80: one check at the end.
                let (mut v, mut bad) = (0u64, 0u8);
                for &c in &rest[..16] {
                    let d = HEX[usize::from(c)];
                    bad |= d;
                    v = (v << 4) | u64::from(d & 15);
                }
                if bad & 0x80 != 0 {
                    return None;
                }
                (Some(Lsn(v)), &rest[17..])
            }
        };
        Some(Self {
            lsn,
            issued_ms: decimal(rest)?,
        })
    }
}

/// Hex digit values (either case); 0x80 for anything else.
const HEX: [u8; 256] = crate::hex::digits(true);

/// 1 to 20 decimal digits as a `u64`; `None` for anything else or a value past `u64::MAX`.
fn decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    // Nineteen digits cannot overflow: check each digit, not each step.
    let head = &b[..b.len().min(19)];
    let (mut v, mut bad) = (0u64, false);
    for &c in head {
        let d = c.wrapping_sub(b'0');
        bad |= d > 9;
        v = v.wrapping_mul(10).wrapping_add(u64::from(d));
    }
    if bad {
        return None;
    }
    match b.get(19) {
        None => Some(v),
        Some(&c) if c.is_ascii_digit() => v.checked_mul(10)?.checked_add(u64::from(c - b'0')),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lsn_table() {
        let cases: [(&str, Option<u64>); 9] = [
            ("0/0", Some(0)),
            ("16/B374D848", Some(0x16_B374_D848)),
            ("FFFFFFFF/FFFFFFFF", Some(u64::MAX)),
            ("a/b", Some(0xa_0000_000b)),
            ("", None),
            ("16", None),
            ("/1", None),
            ("1FFFFFFFF/0", None),
            ("g/0", None),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Lsn>().ok().map(|l| l.0), want, "case {text:?}");
        }
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert!(Lsn(5) < Lsn(6));
    }

    #[test]
    fn token_table() {
        let now = 1_000_000_000;
        let age = Duration::from_secs(30);
        let good = ConsistencyToken {
            lsn: Some(Lsn(0x16_B374_D848)),
            issued_ms: now - 1_000,
        };
        assert_eq!(
            ConsistencyToken::decode(&good.encode(), now, age),
            Some(good)
        );
        let pin = ConsistencyToken {
            lsn: None,
            issued_ms: now,
        };
        assert_eq!(ConsistencyToken::decode(&pin.encode(), now, age), Some(pin));
        let mixed = ConsistencyToken::decode("1.00000000000000aA.00000000000999999000", now, age);
        assert_eq!(
            mixed,
            Some(ConsistencyToken {
                lsn: Some(Lsn(0xaa)),
                issued_ms: 999_999_000
            }),
            "either case, twenty digits"
        );
        let huge = "x".repeat(10_000);
        let bad = [
            ("empty", ""),
            ("garbage", "hello"),
            ("wrong version", "2.0000000000000001.999999000"),
            ("short lsn", "1.16.999999000"),
            ("non-hex lsn", "1.zzzzzzzzzzzzzzzz.999999000"),
            ("no time", "1.0000000000000001."),
            ("negative time", "1.0000000000000001.-5"),
            ("extra part", "1.0000000000000001.999999000.1"),
            ("too old", "1.0000000000000001.900000000"),
            ("far future", "1.0000000000000001.1000010000"),
            ("huge", &huge),
            ("high byte in lsn", "1.000000000000000\u{e9}.999999000"),
            ("time past u64", "1.0000000000000001.18446744073709551616"),
            ("21 digits", "1.0000000000000001.000000000000999999000"),
        ];
        for (name, text) in bad {
            assert_eq!(
                ConsistencyToken::decode(text, now, age),
                None,
                "case {name}"
            );
        }
    }

    proptest! {
        #[test]
        fn lsn_round_trips(n in any::<u64>()) {
            prop_assert_eq!(Lsn(n).to_string().parse::<Lsn>(), Ok(Lsn(n)));
        }

        #[test]
        fn token_round_trips_within_its_age(lsn in proptest::option::of(any::<u64>()), back in 0u64..30_000) {
            let now = 2_000_000_000_000;
            let t = ConsistencyToken { lsn: lsn.map(Lsn), issued_ms: now - back };
            prop_assert_eq!(ConsistencyToken::decode(&t.encode(), now, Duration::from_secs(30)), Some(t));
        }

        #[test]
        fn decimal_agrees_with_parse(s in "[0-9]{1,21}|[0-9]{0,19}[^0-9][0-9]{0,3}") {
            // `parse` also takes a leading `+`, which a token never carries.
            let digits = s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
            let want = if digits { s.parse::<u64>().ok() } else { None };
            prop_assert_eq!(decimal(s.as_bytes()), want);
        }

        #[test]
        fn any_text_decodes_or_is_refused_without_panic(s in ".{0,80}") {
            let _ = ConsistencyToken::decode(&s, 1_000_000, Duration::from_secs(30));
            let _ = s.parse::<Lsn>();
        }
    }
}
