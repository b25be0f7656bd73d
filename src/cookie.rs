//! Reading one cookie from a request's `Cookie` headers: shared by the layers that keep
//! state in cookies (sessions, the database routing token).

/// The value of cookie `name` in the request's `Cookie` headers, if present exactly once
/// and well formed. Malformed headers and pairs are skipped, never an error: an attacker's
/// bytes can at worst mean "no session".
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
pub(crate) fn find_in<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
    name: &str,
) -> Option<&'a [u8]> {
    let mut found = None;
    for value in values {
        for pair in value.split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            let Some(rest) = pair
                .strip_prefix(name.as_bytes())
                .and_then(|r| r.strip_prefix(b"="))
            else {
                continue;
            };
            let v = rest.trim_ascii();
            let v = v
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v);
            if found.is_some() {
                // Two cookies of one name: someone planted one (e.g. from a sibling
                // domain). Trust neither.
                return None;
            }
            found = Some(v);
        }
    }
    found
}
