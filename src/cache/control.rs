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
    /// `no-cache` without a field list: every reuse needs a successful revalidation.
    pub no_cache: bool,
    /// `no-cache="field, ..."`: the response may be reused, but not these fields.
    pub no_cache_fields: Vec<HeaderName>,
    /// `private` without a field list: a shared cache does not store the response.
    pub private: bool,
    /// `private="field, ..."`: a shared cache may store the response without these fields.
    pub private_fields: Vec<HeaderName>,
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
            match arg.and_then(field_names) {
                Some(names) => extend_unique(&mut self.no_cache_fields, names),
                None => self.no_cache = true,
            }
        } else if name.eq_ignore_ascii_case(b"private") {
            match arg.and_then(field_names) {
                Some(names) => extend_unique(&mut self.private_fields, names),
                None => self.private = true,
            }
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

    /// The directives this cache follows for a response: those of the first targeted
    /// field (RFC 9213) in `targeted` that the response carries with a valid value,
    /// else its `Cache-Control`. Returns the targeted field used, if any.
    pub fn for_response<'a>(
        headers: &http::HeaderMap,
        targeted: &'a [HeaderName],
    ) -> (Self, Option<&'a HeaderName>) {
        for name in targeted {
            if headers.contains_key(name) {
                let cc = Self::parse(headers.get_all(name));
                if !cc.invalid {
                    return (cc, Some(name));
                }
            }
        }
        (
            Self::parse(headers.get_all(http::header::CACHE_CONTROL)),
            None,
        )
    }

    /// The freshness lifetime a shared cache gives the response: `s-maxage`, else
    /// `max-age`, else `None` (the cache's configured TTL applies).
    pub fn shared_max_age(&self) -> Option<u32> {
        self.s_maxage.or(self.max_age)
    }
}

/// The field names of a qualified `no-cache="..."` or `private="..."`; `None` when the
/// list is empty or names something that is not a field name, so the directive is read
/// unqualified (the conservative reading).
fn field_names(list: &[u8]) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for part in split_list(list) {
        names.push(HeaderName::from_bytes(part).ok()?);
    }
    (!names.is_empty()).then_some(names)
}

fn extend_unique(into: &mut Vec<HeaderName>, names: Vec<HeaderName>) {
    for n in names {
        if !into.contains(&n) {
            into.push(n);
        }
    }
}

/// The `Age` of a response (RFC 9111 §5.1): `Some(0)` without one, `Some(seconds)` for a
/// single non-negative integer (saturating), `None` for anything else (`old, 0`, two
/// lines, `-1`), which makes the response stale.
pub fn age<'a>(fields: impl IntoIterator<Item = &'a HeaderValue>) -> Option<u64> {
    let mut fields = fields.into_iter();
    let Some(first) = fields.next() else {
        return Some(0);
    };
    if fields.next().is_some() {
        return None;
    }
    let digits = trim(first.as_bytes());
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, &b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// An HTTP date (RFC 9110 §5.6.7) in any of its three formats (IMF-fixdate, the obsolete
/// RFC 850 and asctime ones), read leniently as §5.6.7 allows: the day and month names
/// and `GMT` in any case, spaces around the value. `None` if it is not a date.
pub fn http_date(value: &HeaderValue) -> Option<std::time::SystemTime> {
    crate::http_date::parse(value.to_str().ok()?)
}

/// Request fields whose values are comma-separated lists of case-insensitive tokens: for
/// `Vary`, values that differ only in case, spacing or line splitting select the same
/// response (RFC 9111 §4.1). `Accept-Encoding` lists are also sorted: their order carries
/// no meaning (RFC 9110 §12.5.3).
const CASELESS_LISTS: [&str; 4] = [
    "accept-encoding",
    "accept-language",
    "accept-charset",
    "accept",
];

/// Appends the values of a request's `name` fields to a cache key in a normal form, so
/// that requests that select the same response by RFC 9111 §4.1 share an entry: every
/// line combined with `,`, the spaces around list elements dropped, and, for the
/// `Accept` family, case folded (and `Accept-Encoding` sorted).
pub(crate) fn push_selecting_value<'a>(
    key: &mut String,
    name: &HeaderName,
    values: impl IntoIterator<Item = &'a HeaderValue>,
) {
    let list = CASELESS_LISTS.contains(&name.as_str());
    let mut first = true;
    let mut push = |key: &mut String, part: &[u8]| {
        if !first {
            key.push(',');
        }
        first = false;
        let text = String::from_utf8_lossy(part);
        if list {
            key.extend(text.chars().map(|c| c.to_ascii_lowercase()));
        } else {
            key.push_str(&text);
        }
    };
    if *name == http::header::ACCEPT_ENCODING {
        // Sorted without allocating for the usual handful of codings (more go to the heap).
        let items = values.into_iter().flat_map(|v| split_list(v.as_bytes()));
        let mut small: [&[u8]; 16] = [&[]; 16];
        let mut n = 0;
        let mut more: Vec<&[u8]> = Vec::new();
        for part in items {
            if n < small.len() {
                small[n] = part;
                n += 1;
            } else {
                more.push(part);
            }
        }
        let fold = |a: &&[u8], b: &&[u8]| {
            a.iter()
                .map(u8::to_ascii_lowercase)
                .cmp(b.iter().map(u8::to_ascii_lowercase))
        };
        if more.is_empty() {
            small[..n].sort_unstable_by(fold);
            for part in &small[..n] {
                push(key, part);
            }
        } else {
            more.extend_from_slice(&small[..n]);
            more.sort_unstable_by(fold);
            for part in &more {
                push(key, part);
            }
        }
        return;
    }
    for value in values {
        let bytes = value.as_bytes();
        if !list {
            push(key, trim(bytes));
            continue;
        }
        for part in split_list(bytes) {
            push(key, part);
        }
    }
}

/// Whether a stored response last modified at `last_modified` satisfies a request's
/// `If-Modified-Since` (RFC 9110 §13.1.3): true when it was not modified after that date.
/// A field that is not a date, or a date in the future, is ignored, so the full response
/// is sent.
pub fn not_modified_since(
    if_modified_since: &HeaderValue,
    last_modified: std::time::SystemTime,
) -> bool {
    http_date(if_modified_since)
        .is_some_and(|since| last_modified <= since && since <= std::time::SystemTime::now())
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
                    private_fields: vec![
                        HeaderName::from_static("set-cookie"),
                        HeaderName::from_static("x-a"),
                    ],
                    no_store: true,
                    ..Default::default()
                },
            },
            Case {
                name: "qualified no-cache names fields; a bad list reads unqualified",
                lines: &["no-cache=\"X-Secret\"", "private=\"bad name\""],
                want: CacheControl {
                    no_cache_fields: vec![HeaderName::from_static("x-secret")],
                    private: true,
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

    #[test]
    fn age_table() {
        let cases: [(&str, &[&str], Option<u64>); 8] = [
            ("absent", &[], Some(0)),
            ("integer", &["30"], Some(30)),
            ("spaces", &[" 7 "], Some(7)),
            (
                "huge saturates",
                &["99999999999999999999999"],
                Some(u64::MAX),
            ),
            ("list", &["old, 0"], None),
            ("negative", &["-1"], None),
            ("two lines", &["1", "2"], None),
            ("empty", &[""], None),
        ];
        for (name, lines, want) in cases {
            let values: Vec<_> = lines.iter().map(|l| hv(l)).collect();
            assert_eq!(age(&values), want, "case {name}");
        }
    }

    #[test]
    fn http_dates_in_every_format_and_case() {
        let want = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "sun, 06 nov 1994 08:49:37 gmt",
            "SUN, 06 NOV 1994 08:49:37 GMT",
            " Sun, 06 Nov 1994 08:49:37 GMT ",
        ] {
            assert_eq!(http_date(&hv(text)), Some(want), "{text}");
        }
        for bad in ["0", "", "yesterday", "Sun, 06 Nov 1994 25:49:37 GMT"] {
            assert_eq!(http_date(&hv(bad)), None, "{bad}");
        }
        assert!(not_modified_since(
            &hv("Sun, 06 Nov 1994 08:49:37 GMT"),
            want
        ));
        assert!(!not_modified_since(
            &hv("Sun, 06 Nov 1994 08:49:36 GMT"),
            want
        ));
        assert!(!not_modified_since(&hv("garbage"), want));
    }

    #[test]
    fn selecting_values_are_normalised() {
        let norm = |name: &'static str, lines: &[&str]| {
            let values: Vec<_> = lines.iter().map(|l| hv(l)).collect();
            let mut key = String::new();
            push_selecting_value(&mut key, &HeaderName::from_static(name), &values);
            key
        };
        let enc = norm("accept-encoding", &["gzip, br"]);
        assert_eq!(enc, "br,gzip");
        assert_eq!(norm("accept-encoding", &["BR,gzip"]), enc);
        assert_eq!(norm("accept-encoding", &["gzip", " br "]), enc);
        // More codings than the stack buffer holds are sorted all the same.
        let many: Vec<String> = (0..20).map(|i| format!("c{i:02}")).collect();
        let forward = many.join(", ");
        let backward = many.iter().rev().cloned().collect::<Vec<_>>().join(",");
        let values = |s: &str| vec![HeaderValue::from_str(s).unwrap()];
        let (mut a, mut b) = (String::new(), String::new());
        push_selecting_value(&mut a, &http::header::ACCEPT_ENCODING, &values(&forward));
        push_selecting_value(&mut b, &http::header::ACCEPT_ENCODING, &values(&backward));
        assert_eq!(a, b);
        assert_eq!(a, many.join(","));
        let lang = norm("accept-language", &["en-GB, fr;q=0.5"]);
        assert_eq!(lang, "en-gb,fr;q=0.5");
        assert_eq!(norm("accept-language", &["en-gb ,  FR;q=0.5"]), lang);
        assert_ne!(norm("accept-language", &["fr;q=0.5, en-gb"]), lang);
        // Other fields keep case and inner spacing; only the edges are trimmed.
        assert_eq!(norm("x-tenant", &[" Acme, Inc "]), "Acme, Inc");
        assert_eq!(norm("x-tenant", &["a", "b"]), "a,b");
    }

    #[test]
    fn a_targeted_field_wins_over_cache_control() {
        let mut h = http::HeaderMap::new();
        h.insert("cache-control", hv("no-store"));
        h.insert("cdn-cache-control", hv("max-age=60"));
        let targeted = [HeaderName::from_static("cdn-cache-control")];
        let (cc, used) = CacheControl::for_response(&h, &targeted);
        assert_eq!(cc.max_age, Some(60));
        assert!(!cc.no_store);
        assert_eq!(used, Some(&targeted[0]));
        // An invalid targeted field is ignored (RFC 9213 §2.1).
        h.insert("cdn-cache-control", hv("max-age=soon"));
        let (cc, used) = CacheControl::for_response(&h, &targeted);
        assert!(cc.no_store);
        assert_eq!(used, None);
        let (cc, _) = CacheControl::for_response(&h, &[]);
        assert!(cc.no_store);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                let cc = CacheControl::parse([&v]);
                // Whatever was parsed, the freshness rules can be applied to it.
                let _ = cc.shared_max_age();
                let _ = Vary::parse([&v]);
                let _ = if_none_match([&v], b"\"abc\"");
                let _ = age([&v]);
                let _ = http_date(&v);
                let mut key = String::new();
                push_selecting_value(&mut key, &http::header::ACCEPT_ENCODING, [&v]);
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
