//! A request as a job payload, and its response as the job's result: both plain serde
//! values, bodies kept byte for byte.

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use serde::{Deserialize, Serialize};

use crate::hex;

/// Bytes as a job stores them: UTF-8 text as it is, anything else as hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "enc", content = "data", rename_all = "lowercase")]
pub(crate) enum Blob {
    Utf8(String),
    Hex(String),
}

impl Blob {
    pub(crate) fn new(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(s) => Self::Utf8(s.to_owned()),
            Err(_) => Self::Hex(hex::encode(bytes)),
        }
    }

    fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            Self::Utf8(s) => Some(s.as_bytes().to_vec()),
            Self::Hex(h) => hex::decode(h),
        }
    }
}

/// A request the offload layer stored as a job: its method, path and query, the headers
/// its allow-list kept, and its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffloadedRequest {
    method: String,
    uri: String,
    headers: Vec<(String, Blob)>,
    body: Blob,
}

/// A response a worker stored as the job's result: what the status resource answers once
/// the job succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    status: u16,
    headers: Vec<(String, Blob)>,
    body: Blob,
}

/// Headers a stored response never carries: hop-by-hop headers, which described the
/// worker's connection, and `Set-Cookie`, which would hand the original client's cookie
/// to whoever polls the status resource.
const DROPPED: [HeaderName; 7] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::CONTENT_LENGTH,
    header::SET_COOKIE,
];

fn keep(headers: &HeaderMap, allow: impl Fn(&HeaderName) -> bool) -> Vec<(String, Blob)> {
    headers
        .iter()
        .filter(|(n, _)| allow(n))
        .map(|(n, v)| (n.as_str().to_owned(), Blob::new(v.as_bytes())))
        .collect()
}

fn restore(headers: &[(String, Blob)], into: &mut HeaderMap) -> Result<(), String> {
    for (n, v) in headers {
        let name = HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| format!("stored header name {n:?}"))?;
        let value = v
            .bytes()
            .and_then(|b| HeaderValue::from_bytes(&b).ok())
            .ok_or_else(|| format!("stored value of header {n}"))?;
        into.append(name, value);
    }
    Ok(())
}

impl OffloadedRequest {
    pub(crate) fn new(parts: &http::request::Parts, allow: &[HeaderName], body: &[u8]) -> Self {
        Self {
            method: parts.method.as_str().to_owned(),
            uri: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
            headers: keep(&parts.headers, |n| allow.contains(n)),
            body: Blob::new(body),
        }
    }

    /// The method.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path and query.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The request again, for the inner service.
    pub(crate) fn to_request(&self) -> Result<Request<Bytes>, String> {
        let method = Method::from_bytes(self.method.as_bytes())
            .map_err(|_| format!("stored method {:?}", self.method))?;
        let uri: Uri = self
            .uri
            .parse()
            .map_err(|_| format!("stored path {:?}", self.uri))?;
        let body = self.body.bytes().ok_or("stored request body")?;
        let mut req = Request::new(Bytes::from(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        restore(&self.headers, req.headers_mut())?;
        Ok(req)
    }
}

impl StoredResponse {
    pub(crate) fn new(parts: &http::response::Parts, body: &[u8]) -> Self {
        Self {
            status: parts.status.as_u16(),
            headers: keep(&parts.headers, |n| !DROPPED.contains(n)),
            body: Blob::new(body),
        }
    }

    /// What is kept instead of a response whose body is over the cap: a `502`.
    pub(crate) fn too_large(limit: usize) -> Self {
        let body = serde_json::json!({
            "error": format!("the response was over the {limit} bytes kept for a request run later")
        })
        .to_string();
        Self {
            status: 502,
            headers: vec![("content-type".into(), Blob::Utf8("application/json".into()))],
            body: Blob::Utf8(body),
        }
    }

    pub(crate) fn to_response(&self) -> Result<Response<Bytes>, String> {
        let status = StatusCode::from_u16(self.status)
            .map_err(|_| format!("stored status {}", self.status))?;
        let body = self.body.bytes().ok_or("stored response body")?;
        let mut res = Response::new(Bytes::from(body));
        *res.status_mut() = status;
        restore(&self.headers, res.headers_mut())?;
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip_byte_for_byte() {
        let (mut parts, ()) = Request::builder()
            .method("POST")
            .uri("http://h/reports?year=2026&q=%C3%A9")
            .header("content-type", "application/octet-stream")
            .header("x-custom", HeaderValue::from_bytes(b"caf\xe9").unwrap())
            .header("cookie", "secret=1")
            .body(())
            .unwrap()
            .into_parts();
        parts.extensions.insert(7u8);
        let allow = [header::CONTENT_TYPE, HeaderName::from_static("x-custom")];
        let body = [0u8, 159, 255, b'a'];
        let stored = OffloadedRequest::new(&parts, &allow, &body);
        let json = serde_json::to_string(&stored).unwrap();
        let back: OffloadedRequest = serde_json::from_str(&json).unwrap();
        let req = back.to_request().unwrap();
        assert_eq!(req.method(), "POST");
        assert_eq!(req.uri(), "/reports?year=2026&q=%C3%A9");
        assert_eq!(req.headers()["x-custom"].as_bytes(), b"caf\xe9");
        assert!(
            req.headers().get("cookie").is_none(),
            "not on the allow-list"
        );
        assert_eq!(req.body().as_ref(), body);

        let (parts, ()) = Response::builder()
            .status(201)
            .header("content-type", "text/plain")
            .header("set-cookie", "s=1")
            .header("connection", "close")
            .header("x-a", "1")
            .header("x-a", "2")
            .body(())
            .unwrap()
            .into_parts();
        let res = StoredResponse::new(&parts, "héllo".as_bytes())
            .to_response()
            .unwrap();
        assert_eq!(res.status(), 201);
        assert_eq!(res.body().as_ref(), "héllo".as_bytes());
        assert!(res.headers().get("set-cookie").is_none());
        assert!(res.headers().get("connection").is_none());
        assert_eq!(res.headers().get_all("x-a").iter().count(), 2);
    }

    #[test]
    fn tampered_payloads_are_errors_not_panics() {
        for json in [
            r#"{"method":"G ET","uri":"/","headers":[],"body":{"enc":"utf8","data":""}}"#,
            r#"{"method":"GET","uri":"no spaces allowed","headers":[],"body":{"enc":"utf8","data":""}}"#,
            r#"{"method":"GET","uri":"/","headers":[["bad name",{"enc":"utf8","data":"x"}]],"body":{"enc":"utf8","data":""}}"#,
            r#"{"method":"GET","uri":"/","headers":[],"body":{"enc":"hex","data":"zz"}}"#,
        ] {
            let r: OffloadedRequest = serde_json::from_str(json).unwrap();
            assert!(r.to_request().is_err(), "{json}");
        }
    }
}
