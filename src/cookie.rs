//! Reading one cookie from a request's `Cookie` headers: shared by the layers that keep
//! state in cookies (sessions, the database routing token).

/// The value of cookie `name` in the request's `Cookie` headers, if present exactly once
/// and well formed. Malformed headers and pairs are skipped, never an error: an attacker's
/// bytes can at worst mean "no cookie" (no session, no routing token).
#[cfg(feature = "db-route")]
pub(crate) fn find_cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    find_in(
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(http::HeaderValue::as_bytes),
        name,
    )
}

/// [`find_cookie`] over raw `Cookie` header values.
///
/// A pair is what lies between two `;`, less ASCII whitespace at both ends; it is this
/// cookie if it starts with `name=`. The value is what follows, without surrounding
/// double quotes. One pass over the bytes: a pair that does not start with the name is
/// skipped to its `;` without being trimmed or split further.
pub(crate) fn find_in<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
    name: &str,
) -> Option<&'a [u8]> {
    let name = name.as_bytes();
    let mut found = None;
    for value in values {
        let mut i = 0;
        while i < value.len() {
            // The start of a pair: past its leading whitespace.
            while i < value.len() && value[i].is_ascii_whitespace() {
                i += 1;
            }
            let end = memchr::memchr(b';', &value[i..]).map_or(value.len(), |p| i + p);
            let pair = &value[i..end];
            if pair.len() > name.len() && pair[name.len()] == b'=' && pair.starts_with(name) {
                let v = unquote(pair[name.len() + 1..].trim_ascii());
                if found.is_some() {
                    // Two cookies of one name: someone planted one (e.g. from a sibling
                    // domain). Trust neither.
                    return None;
                }
                found = Some(v);
            }
            i = end + 1;
        }
    }
    found
}

/// True for a valid cookie name: a non-empty HTTP token (RFC 6265 with RFC 9110's
/// `tchar`).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `SameSite` for a cookie a layer sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SameSite {
    /// Sent on top-level navigations from other sites, not on their subrequests (default).
    #[default]
    Lax,
    /// Never sent from other sites.
    Strict,
    /// Always sent (requires `Secure`).
    None,
}

/// How a layer writes its cookie: `name=value` and the attributes, which are fixed (and
/// validated) when the layer is built, so each response only formats the value.
#[derive(Debug)]
pub(crate) struct SetCookie {
    name: String,
    /// What follows `name=value`, before any `Max-Age`.
    attributes: String,
}

impl SetCookie {
    /// A cookie `name` (a token, see [`is_token`]) for `path` and `domain` (no `;`, `,`
    /// or whitespace), always `HttpOnly`.
    pub(crate) fn new(
        name: String,
        path: &str,
        same_site: SameSite,
        secure: bool,
        domain: Option<&str>,
    ) -> Self {
        let mut attributes = format!("; Path={path}; HttpOnly");
        attributes.push_str(match same_site {
            SameSite::Lax => "; SameSite=Lax",
            SameSite::Strict => "; SameSite=Strict",
            SameSite::None => "; SameSite=None",
        });
        if secure {
            attributes.push_str("; Secure");
        }
        if let Some(d) = domain {
            attributes.push_str("; Domain=");
            attributes.push_str(d);
        }
        Self { name, attributes }
    }

    /// The cookie's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// `Set-Cookie: name=value; attributes[; Max-Age=N]` (`Some(0)` removes the cookie).
    /// `value` must be cookie-safe (the layers send hex digits, `.` and `-`).
    pub(crate) fn header(&self, value: &str, max_age: Option<u64>) -> http::HeaderValue {
        let mut c =
            String::with_capacity(self.name.len() + value.len() + self.attributes.len() + 20);
        c.push_str(&self.name);
        c.push('=');
        c.push_str(value);
        c.push_str(&self.attributes);
        if let Some(secs) = max_age {
            c.push_str("; Max-Age=");
            c.push_str(&secs.to_string());
        }
        http::HeaderValue::try_from(c).expect("a cookie of validated parts and a safe value")
    }
}

/// A cookie value without the double quotes around it, if it has them.
fn unquote(v: &[u8]) -> &[u8] {
    v.strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition the fast scan must agree with: split on `;`, trim, match the name.
    fn by_definition<'a>(values: &[&'a [u8]], name: &str) -> Option<&'a [u8]> {
        let mut found = None;
        for value in values {
            for pair in value.split(|b| *b == b';') {
                let Some(rest) = pair
                    .trim_ascii()
                    .strip_prefix(name.as_bytes())
                    .and_then(|r| r.strip_prefix(b"="))
                else {
                    continue;
                };
                let v = unquote(rest.trim_ascii());
                if found.is_some() {
                    return None;
                }
                found = Some(v);
            }
        }
        found
    }

    #[test]
    fn set_cookie_writes_every_attribute() {
        let c = SetCookie::new(
            "sid".into(),
            "/app",
            SameSite::Strict,
            true,
            Some("example.com"),
        );
        assert_eq!(
            c.header("abc", Some(60)),
            "sid=abc; Path=/app; HttpOnly; SameSite=Strict; Secure; Domain=example.com; Max-Age=60"
        );
        let c = SetCookie::new("db_pos".into(), "/", SameSite::Lax, false, None);
        assert_eq!(
            c.header("", None),
            "db_pos=; Path=/; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn table() {
        let cases: [(&[&str], Option<&str>); 14] = [
            (&["sid=abc"], Some("abc")),
            (&["a=1; sid=abc; b=2"], Some("abc")),
            (&["a=1;sid=abc;b=2"], Some("abc")),
            (&["  sid = x"], None),
            (&["sid=  abc  ; b"], Some("abc")),
            (&["sid=\"abc\""], Some("abc")),
            (&["sid=\""], Some("\"")),
            (&["sid="], Some("")),
            (&["a=1", "sid=abc"], Some("abc")),
            (&["sid=1", "sid=2"], None),
            (&["sid=1; sid=1"], None),
            (&["xsid=1; sidx=2; a=sid=3"], None),
            (&["garbage;;; =; sid"], None),
            (&[";;;", ""], None),
        ];
        for (values, want) in cases {
            let bytes: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
            assert_eq!(
                find_in(bytes.iter().copied(), "sid"),
                want.map(str::as_bytes),
                "case {values:?}"
            );
            assert_eq!(
                by_definition(&bytes, "sid"),
                want.map(str::as_bytes),
                "definition, case {values:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_definition(
            parts in proptest::collection::vec(
                proptest::sample::select(&["sid", "=", ";", " ", "\t", "\"", "x", "1"][..]),
                0..24,
            ),
            b in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            // Built from tokens, so that `sid=` turns up often, beside noise.
            let a = parts.concat().into_bytes();
            let values: [&[u8]; 2] = [&a, &b];
            prop_assert_eq!(find_in(values.iter().copied(), "sid"), by_definition(&values, "sid"));
            prop_assert_eq!(find_in([&a[..]], "sid"), by_definition(&[&a], "sid"));
        }
    }
}
