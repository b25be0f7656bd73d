//! The one HTTP-date reader (RFC 9110 §5.6.7), shared by the cache (`Expires`, `Date`,
//! `Last-Modified`, `If-Modified-Since`) and retries (`Retry-After`).

use std::time::SystemTime;

/// An HTTP date in any of its three formats (IMF-fixdate, the obsolete RFC 850 and
/// asctime ones), read leniently as §5.6.7 allows: the day and month names and `GMT` in
/// any case, spaces around the text. `None` if it is not a date.
pub(crate) fn parse(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if let Ok(t) = httpdate::parse_http_date(text) {
        return Some(t);
    }
    // Words as the grammar spells them: `Tue`, `Dec`, `Tuesday`, `GMT`.
    let mut fixed = String::with_capacity(text.len());
    let mut word_start = true;
    for c in text.chars() {
        if c.is_ascii_alphabetic() {
            fixed.push(if word_start {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
            word_start = false;
        } else {
            fixed.push(c);
            word_start = true;
        }
    }
    let fixed = fixed.replace("Gmt", "GMT");
    httpdate::parse_http_date(&fixed).ok()
}
