//! What the reference server's tests share: requests to a running process (by base URL)
//! or to the app in process (a `Router`, with `oneshot`), answered the same way.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use reference_server::{AppState, Config};
use serde_json::Value;
use tower::ServiceExt;

/// A response, read whole.
pub struct Resp {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }
}

/// Where a request goes: a server's base URL, or the app itself.
pub trait Target {
    fn send(&self, req: Request<Full<Bytes>>) -> impl Future<Output = Resp>;
}

async fn read(resp: http::Response<impl http_body::Body<Error: std::fmt::Debug>>) -> Resp {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

impl Target for str {
    async fn send(&self, req: Request<Full<Bytes>>) -> Resp {
        let (mut parts, body) = req.into_parts();
        parts.uri = format!("{self}{}", parts.uri).parse().unwrap();
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        read(
            client
                .request(Request::from_parts(parts, body))
                .await
                .unwrap(),
        )
        .await
    }
}

impl Target for String {
    async fn send(&self, req: Request<Full<Bytes>>) -> Resp {
        self.as_str().send(req).await
    }
}

/// The client address the in-process app sees, as `axum::serve` would give it.
pub const CLIENT: ([u8; 4], u16) = ([192, 0, 2, 10], 40_000);

impl Target for Router {
    async fn send(&self, req: Request<Full<Bytes>>) -> Resp {
        let (mut parts, body) = req.into_parts();
        parts
            .extensions
            .insert(ConnectInfo(SocketAddr::from(CLIENT)));
        let req = Request::from_parts(parts, axum::body::Body::new(body));
        read(self.clone().oneshot(req).await.unwrap()).await
    }
}

/// The app in process, configured by `env` (the server's variables) and named `it-a`.
pub async fn app(env: &[(&str, &str)]) -> Router {
    app_and_workers(env).await.0
}

/// [`app`] with its export workers running (until the handle is shut down or dropped).
pub async fn app_and_workers(
    env: &[(&str, &str)],
) -> (Router, Option<tower_scale::jobs::WorkerHandle>) {
    let config = Config::from_lookup(|var| {
        env.iter()
            .find(|(k, _)| *k == var)
            .map(|(_, v)| (*v).to_owned())
    })
    .unwrap();
    let state = AppState::build(&config, "it-a").await.unwrap();
    let workers = state.spawn_export_workers();
    (reference_server::app(state), workers)
}

pub async fn call<T: Target + ?Sized>(
    target: &T,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if !body.is_empty() {
        // As a client on the wire would send them.
        b = b
            .header("content-type", "application/json")
            .header("content-length", body.len());
    }
    target
        .send(b.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
}

pub async fn get<T: Target + ?Sized>(target: &T, path: &str) -> Resp {
    call(target, Method::GET, path, &[], "").await
}

pub fn cache_status(r: &Resp) -> String {
    r.headers
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// An embedded catalogue file the instances of one test share (`DATABASE_FILE`), as
/// instances sharing Redis must; removed on drop.
pub struct CatalogFile(String);

impl CatalogFile {
    pub fn path(&self) -> &str {
        &self.0
    }
}

impl Drop for CatalogFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0));
        }
    }
}

pub fn catalog_file() -> CatalogFile {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!(
        "tower-scale-catalog-{}-{n}-{nanos}.sqlite",
        std::process::id()
    );
    CatalogFile(
        std::env::temp_dir()
            .join(name)
            .to_string_lossy()
            .into_owned(),
    )
}

/// Logs in as `user`; the session cookie (`name=value`).
pub async fn login<T: Target + ?Sized>(target: &T, user: &str) -> String {
    let r = call(
        target,
        Method::POST,
        "/login",
        &[],
        &format!(r#"{{"user":"{user}"}}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let set = r.headers["set-cookie"].to_str().unwrap().to_owned();
    set.split(';').next().unwrap().to_owned()
}

/// `PUT /products/{id}` as the session in `cookie`.
pub async fn put_product<T: Target + ?Sized>(
    target: &T,
    cookie: &str,
    id: i64,
    name: &str,
    price_cents: i64,
) -> Resp {
    call(
        target,
        Method::PUT,
        &format!("/products/{id}"),
        &[("cookie", cookie)],
        &format!(r#"{{"name":"{name}","price_cents":{price_cents}}}"#),
    )
    .await
}

/// The first `name=value` of a response's `Set-Cookie` headers for `name`.
pub fn set_cookie(r: &Resp, name: &str) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
        .find(|c| c.starts_with(&format!("{name}=")))
}

/// The value of the Prometheus sample whose line starts with `series` (name and labels),
/// 0 when there is none yet.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}
