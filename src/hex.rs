//! Hex digits: the one encoder and the one decoding table, for session ids and their
//! storage keys, routing tokens and response ETags.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Each byte's two digits: one lookup per byte.
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
pub(crate) fn encode_to(bytes: &[u8], out: &mut [u8]) {
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(b)]);
    }
}

/// `bytes` as lowercase hex digits, appended to `out`.
pub(crate) fn encode_into(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    // Sized once, then written a pair at a time: no capacity check per digit.
    out.resize(start + bytes.len() * 2, 0);
    encode_to(bytes, &mut out[start..]);
}

/// `bytes` as lowercase hex digits.
#[cfg_attr(not(feature = "session"), allow(dead_code))]
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    encode_into(bytes, &mut out);
    // Hex digits are ASCII: the check always passes.
    String::from_utf8(out).unwrap_or_default()
}

/// Hex digit values for a byte: 0x80 for anything that is not a digit (lowercase letters
/// only unless `upper`), so that a run of lookups needs one check at the end.
#[cfg_attr(not(any(feature = "session", feature = "db-route")), allow(dead_code))]
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
}
