//! Pure HTTP caching rules: `Cache-Control` (RFC 9111 §5.2, RFC 5861), `Vary`, entity-tag
//! matching for `If-None-Match` (RFC 9110 §13.1.2). No I/O, so they are tested and fuzzed
//! alone. Every parser takes any bytes: malformed input reads as "not cacheable" or "no
//! match", never as a panic.

use http::HeaderValue;
use http::header::HeaderName;

/// The directives of one or more `Cache-Control` header lines that a cache acts on.
///
/// Delta-seconds that do not parse (`max-age=abc`, `max-age=-1`) make the directive
/// [`invalid`](Self::invalid): RFC 9111 §4.2.1 says to treat such a response as stale, so
/// it is not stored. Values beyond `u32::MAX` seconds saturate. Unknown directives are
/// ignored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (with or without a field list).
    pub no_cache: bool,
    /// `private` (with or without a field list).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate` or `proxy-revalidate`.
    pub must_revalidate: bool,
    /// `max-age`, seconds.
    pub max_age: Option<u32>,
    /// `s-maxage`, seconds (for shared caches, such as this one, it wins over `max-age`).
    pub s_maxage: Option<u32>,
    /// `stale-while-revalidate`, seconds (RFC 5861).
    pub stale_while_revalidate: Option<u32>,
    /// `stale-if-error`, seconds (RFC 5861).
    pub stale_if_error: Option<u32>,
    /// A directive this cache acts on had a malformed value.
    pub invalid: bool,
}

impl CacheControl {
    /// Parses every given `Cache-Control` line (a message may carry several).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Self {
        let mut cc = Self::default();
        for value in values {
            for part in split_list(value.as_bytes()) {
                cc.directive(part);
            }
        }
        cc
    }

    fn directive(&mut self, part: &[u8]) {
        let (name, arg) = match part.iter().position(|&b| b == b'=') {
            Some(i) => (trim(&part[..i]), Some(unquote(trim(&part[i + 1..])))),
            None => (part, None),
        };
        let seconds = |invalid: &mut bool| match arg.and_then(delta_seconds) {
            Some(s) => Some(s),
            None => {
                *invalid = true;
                None
            }
        };
        if name.eq_ignore_ascii_case(b"no-store") {
            self.no_store = true;
        } else if name.eq_ignore_ascii_case(b"no-cache") {
            self.no_cache = true;
        } else if name.eq_ignore_ascii_case(b"private") {
            self.private = true;
        } else if name.eq_ignore_ascii_case(b"public") {
            self.public = true;
        } else if name.eq_ignore_ascii_case(b"must-revalidate")
            || name.eq_ignore_ascii_case(b"proxy-revalidate")
        {
            self.must_revalidate = true;
        } else if name.eq_ignore_ascii_case(b"max-age") {
            self.max_age = min_opt(self.max_age, seconds(&mut self.invalid));
        } else if name.eq_ignore_ascii_case(b"s-maxage") {
            self.s_maxage = min_opt(self.s_maxage, seconds(&mut self.invalid));
        } else if name.eq_ignore_ascii_case(b"stale-while-revalidate") {
            self.stale_while_revalidate =
                min_opt(self.stale_while_revalidate, seconds(&mut self.invalid));
        } else if name.eq_ignore_ascii_case(b"stale-if-error") {
            self.stale_if_error = min_opt(self.stale_if_error, seconds(&mut self.invalid));
        }
    }

    /// The freshness lifetime a shared cache gives the response: `s-maxage`, else
    /// `max-age`, else `None` (the cache's configured TTL applies).
    pub fn shared_max_age(&self) -> Option<u32> {
        self.s_maxage.or(self.max_age)
    }
}

/// Repeated directives: the most conservative (smallest) value wins.
fn min_opt(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn delta_seconds(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        n = (n * 10 + u64::from(b - b'0')).min(u64::from(u32::MAX));
    }
    Some(n as u32)
}

/// Splits a comma-separated header list, trimming spaces and skipping empty elements.
/// Commas inside quoted strings do not split.
pub(crate) fn split_list(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let mut quoted = false;
            let mut escaped = false;
            let mut end = rest.len();
            for (i, &b) in rest.iter().enumerate() {
                if escaped {
                    escaped = false;
                } else if quoted && b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    quoted = !quoted;
                } else if b == b',' && !quoted {
                    end = i;
                    break;
                }
            }
            let item = trim(&rest[..end]);
            rest = if end < rest.len() {
                &rest[end + 1..]
            } else {
                &[]
            };
            if !item.is_empty() {
                return Some(item);
            }
        }
    })
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', tail @ ..] = s {
        s = tail;
    }
    while let [head @ .., b' ' | b'\t'] = s {
        s = head;
    }
    s
}

fn unquote(s: &[u8]) -> &[u8] {
    match s {
        [b'"', inner @ .., b'"'] => inner,
        _ => s,
    }
}

/// What a response's `Vary` says about the request headers that select it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vary {
    /// No `Vary`: one response for every request to the URI.
    None,
    /// `Vary: *`: the response depends on things outside the request headers; never store.
    Any,
    /// The response depends on these request headers (lowercase names).
    Headers(Vec<HeaderName>),
}

impl Vary {
    /// Parses every given `Vary` line. A name that is not a valid header name makes the
    /// whole field `Any` (unusable), so a malformed `Vary` is never stored.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Self {
        let mut names = Vec::new();
        for value in values {
            for part in split_list(value.as_bytes()) {
                if part == b"*" {
                    return Self::Any;
                }
                match HeaderName::from_bytes(part) {
                    Ok(name) => {
                        if !names.contains(&name) {
                            names.push(name);
                        }
                    }
                    Err(_) => return Self::Any,
                }
            }
        }
        if names.is_empty() {
            Self::None
        } else {
            Self::Headers(names)
        }
    }
}

/// Whether an `If-None-Match` field matches `etag` by the weak comparison RFC 9110 §13.1.2
/// prescribes for it (`W/"x"` matches `"x"`). `*` matches any stored response. A malformed
/// field matches nothing, so the full response is sent.
pub fn if_none_match<'a>(fields: impl IntoIterator<Item = &'a HeaderValue>, etag: &[u8]) -> bool {
    let Some(stored) = opaque_tag(etag) else {
        return false;
    };
    for field in fields {
        let bytes = field.as_bytes();
        if trim(bytes) == b"*" {
            return true;
        }
        let mut rest = trim(bytes);
        while !rest.is_empty() {
            let tag_start = if rest.starts_with(b"W/") {
                &rest[2..]
            } else {
                rest
            };
            // An entity tag is `"` etagc* `"`; find its closing quote.
            let Some(body) = tag_start.strip_prefix(b"\"") else {
                return false;
            };
            let Some(close) = body.iter().position(|&b| b == b'"') else {
                return false;
            };
            if &body[..close] == stored {
                return true;
            }
            rest = trim(&body[close + 1..]);
            match rest {
                [] => break,
                [b',', tail @ ..] => rest = trim(tail),
                _ => return false,
            }
        }
    }
    false
}

/// The opaque part of an entity tag (`"abc"` or `W/"abc"` gives `abc`).
fn opaque_tag(etag: &[u8]) -> Option<&[u8]> {
    let etag = etag.strip_prefix(b"W/").unwrap_or(etag);
    etag.strip_prefix(b"\"")?.strip_suffix(b"\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn cache_control_table() {
        struct Case {
            name: &'static str,
            lines: &'static [&'static str],
            want: CacheControl,
        }
        let cases = [
            Case {
                name: "empty",
                lines: &[""],
                want: CacheControl::default(),
            },
            Case {
                name: "max-age",
                lines: &["max-age=60"],
                want: CacheControl {
                    max_age: Some(60),
                    ..Default::default()
                },
            },
            Case {
                name: "mixed case, spaces, several lines",
                lines: &["Public , MAX-AGE=10", " s-maxage=\"30\",no-cache"],
                want: CacheControl {
                    public: true,
                    max_age: Some(10),
                    s_maxage: Some(30),
                    no_cache: true,
                    ..Default::default()
                },
            },
            Case {
                name: "private with field list and a quoted comma",
                lines: &["private=\"set-cookie, x-a\", no-store"],
                want: CacheControl {
                    private: true,
                    no_store: true,
                    ..Default::default()
                },
            },
            Case {
                name: "bad max-age is invalid",
                lines: &["max-age=abc"],
                want: CacheControl {
                    invalid: true,
                    ..Default::default()
                },
            },
            Case {
                name: "negative max-age is invalid",
                lines: &["max-age=-1"],
                want: CacheControl {
                    invalid: true,
                    ..Default::default()
                },
            },
            Case {
                name: "missing value is invalid",
                lines: &["max-age"],
                want: CacheControl {
                    invalid: true,
                    ..Default::default()
                },
            },
            Case {
                name: "huge value saturates",
                lines: &["max-age=99999999999999999999999999"],
                want: CacheControl {
                    max_age: Some(u32::MAX),
                    ..Default::default()
                },
            },
            Case {
                name: "repeated: smallest wins",
                lines: &["max-age=100, max-age=5"],
                want: CacheControl {
                    max_age: Some(5),
                    ..Default::default()
                },
            },
            Case {
                name: "rfc 5861",
                lines: &["max-age=1, stale-while-revalidate=30, stale-if-error=600"],
                want: CacheControl {
                    max_age: Some(1),
                    stale_while_revalidate: Some(30),
                    stale_if_error: Some(600),
                    ..Default::default()
                },
            },
            Case {
                name: "unknown and empty elements",
                lines: &[",,foo=bar, ,immutable,must-revalidate"],
                want: CacheControl {
                    must_revalidate: true,
                    ..Default::default()
                },
            },
        ];
        for case in cases {
            let values: Vec<_> = case.lines.iter().map(|l| hv(l)).collect();
            assert_eq!(
                CacheControl::parse(&values),
                case.want,
                "case {}",
                case.name
            );
        }
    }

    #[test]
    fn shared_max_age_prefers_s_maxage() {
        let cc = CacheControl::parse(&[hv("max-age=5, s-maxage=50")]);
        assert_eq!(cc.shared_max_age(), Some(50));
        let cc = CacheControl::parse(&[hv("max-age=5")]);
        assert_eq!(cc.shared_max_age(), Some(5));
    }

    #[test]
    fn vary_table() {
        let cases: [(&str, &[&str], Vary); 5] = [
            ("none", &[], Vary::None),
            ("star", &["accept, *"], Vary::Any),
            (
                "names, deduplicated, lowercased",
                &["Accept-Encoding, accept-language", "accept-encoding"],
                Vary::Headers(vec![
                    HeaderName::from_static("accept-encoding"),
                    HeaderName::from_static("accept-language"),
                ]),
            ),
            ("malformed name", &["acc ept"], Vary::Any),
            ("only commas", &[" , ,"], Vary::None),
        ];
        for (name, lines, want) in cases {
            let values: Vec<_> = lines.iter().map(|l| hv(l)).collect();
            assert_eq!(Vary::parse(&values), want, "case {name}");
        }
    }

    #[test]
    fn if_none_match_table() {
        let etag = b"\"abc\"";
        let cases: [(&str, &[&str], bool); 10] = [
            ("exact", &["\"abc\""], true),
            ("weak matches strong", &["W/\"abc\""], true),
            ("star", &["*"], true),
            ("list", &["\"x\", W/\"y\" , \"abc\""], true),
            ("second line", &["\"x\"", "\"abc\""], true),
            ("other", &["\"abd\""], false),
            ("unquoted", &["abc"], false),
            ("unterminated", &["\"abc"], false),
            ("garbage after", &["\"x\" junk, \"abc\""], false),
            ("empty", &[""], false),
        ];
        for (name, lines, want) in cases {
            let values: Vec<_> = lines.iter().map(|l| hv(l)).collect();
            assert_eq!(if_none_match(&values, etag), want, "case {name}");
        }
        assert!(!if_none_match(&[hv("*")], b"not-an-etag"));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                let cc = CacheControl::parse([&v]);
                // A parsed max-age is what the digits say, saturated.
                // Whatever was parsed, the freshness rules can be applied to it.
                let _ = cc.shared_max_age();
                let _ = Vary::parse([&v]);
                let _ = if_none_match([&v], b"\"abc\"");
            }
        }

        #[test]
        fn max_age_round_trips(n in 0u32..=u32::MAX, pad in 0usize..3) {
            let s = format!("{}max-age={n}{}", " ".repeat(pad), " ".repeat(pad));
            prop_assert_eq!(CacheControl::parse([&hv(&s)]).max_age, Some(n));
        }

        #[test]
        fn listed_etag_always_matches(tags in proptest::collection::vec("[a-z0-9]{1,8}", 1..6), pick in 0usize..6) {
            let pick = pick % tags.len();
            let field = tags.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
            let etag = format!("\"{}\"", tags[pick]);
            prop_assert!(if_none_match([&hv(&field)], etag.as_bytes()));
        }
    }
}
