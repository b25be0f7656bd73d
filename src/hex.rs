//! Hex digits: the encoder of session ids, their storage keys and response ETags, and the
//! decoders: a table (routing tokens, whose positions `format!` writes) and eight digits
//! at a time (session ids).

#[cfg(any(feature = "session", feature = "cache", feature = "jobs"))]
const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Each byte's two digits: one lookup per byte.
#[cfg(any(feature = "session", feature = "cache", feature = "jobs"))]
const PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
        i += 1;
    }
    t
};

/// `bytes` as lowercase hex digits, written over `out`, two a byte (as far as both go).
#[cfg(any(feature = "session", feature = "cache", feature = "jobs"))]
pub(crate) fn encode_to(bytes: &[u8], out: &mut [u8]) {
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(b)]);
    }
}

/// `bytes` as lowercase hex digits, appended to `out`.
#[cfg(any(feature = "session", feature = "cache", feature = "jobs"))]
pub(crate) fn encode_into(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    // Sized once, then written a pair at a time: no capacity check per digit.
    out.resize(start + bytes.len() * 2, 0);
    encode_to(bytes, &mut out[start..]);
}

/// `bytes` as lowercase hex digits.
#[cfg(any(feature = "session", feature = "jobs"))]
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    encode_into(bytes, &mut out);
    // Hex digits are ASCII: the check always passes.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(feature = "session")]
const ONES: u64 = 0x0101_0101_0101_0101;
#[cfg(feature = "session")]
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte lane set where the byte is at least `lo`; exact for lanes
/// below 0x80 (no carry crosses a lane), which is all that [`decode8`] accepts.
#[cfg(feature = "session")]
const fn at_least(lanes: u64, lo: u8) -> u64 {
    lanes.wrapping_add(ONES * (0x80 - lo as u64)) & HIGH
}

/// Eight lowercase hex digits (the lanes of a little-endian `u64`, first digit lowest) as
/// four bytes, and a mask that is nonzero if any lane is not such a digit.
#[cfg(feature = "session")]
pub(crate) const fn decode8(lanes: u64) -> ([u8; 4], u64) {
    let digit = at_least(lanes, b'0') & !at_least(lanes, b'9' + 1);
    let letter = at_least(lanes, b'a') & !at_least(lanes, b'f' + 1);
    let bad = (lanes & HIGH) | ((digit | letter) ^ HIGH);
    // Each digit's value: its low four bits, plus 9 for a letter (bit 6 set).
    let n = (lanes & 0x0f0f_0f0f_0f0f_0f0f) + ((lanes >> 6) & ONES) * 9;
    // Pairs of lanes into bytes (first digit high), then the bytes side by side.
    let mut t = ((n & 0x00ff_00ff_00ff_00ff) << 4) | ((n >> 8) & 0x00ff_00ff_00ff_00ff);
    t = (t | (t >> 8)) & 0x0000_ffff_0000_ffff;
    t = (t | (t >> 16)) & 0xffff_ffff;
    ((t as u32).to_le_bytes(), bad)
}

/// Lowercase hex digits as bytes; `None` for an odd length or a byte that is not one.
#[cfg(feature = "jobs")]
pub(crate) fn decode(s: &str) -> Option<Vec<u8>> {
    const T: [u8; 256] = digits(false);
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 2);
    let mut bad = 0u8;
    for pair in s.chunks_exact(2) {
        let (hi, lo) = (T[usize::from(pair[0])], T[usize::from(pair[1])]);
        bad |= hi | lo;
        out.push((hi << 4) | (lo & 0x0f));
    }
    (bad & 0x80 == 0).then_some(out)
}

/// Hex digit values for a byte: 0x80 for anything that is not a digit (lowercase letters
/// only unless `upper`), so that a run of lookups needs one check at the end.
#[cfg(any(feature = "db-route", feature = "jobs"))]
pub(crate) const fn digits(upper: bool) -> [u8; 256] {
    let mut t = [0x80u8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        if upper {
            t[b'A' as usize + i] = 10 + i as u8;
        }
        i += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes() {
        assert_eq!(encode(&[0x00, 0x9f, 0xa0, 0xff]), "009fa0ff");
        let mut tag = b"W/\"".to_vec();
        encode_into(&[0x01, 0xfe], &mut tag);
        assert_eq!(tag, b"W/\"01fe", "appends after what is there");
        let lower = digits(false);
        let any = digits(true);
        for (c, v) in "0123456789abcdef".bytes().zip(0u8..) {
            assert_eq!((lower[usize::from(c)], any[usize::from(c)]), (v, v));
        }
        assert_eq!(
            (lower[usize::from(b'A')], any[usize::from(b'A')]),
            (0x80, 10)
        );
        assert_eq!(
            (lower[usize::from(b'g')], any[usize::from(b'g')]),
            (0x80, 0x80)
        );
    }

    #[cfg(feature = "jobs")]
    #[test]
    fn decodes_what_it_encodes_and_refuses_the_rest() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)).unwrap(), all);
        for bad in ["0", "0g", "AB", "zz", "é0"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
