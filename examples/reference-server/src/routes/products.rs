//! `GET /products`, `GET /products/{id}`, `PUT /products/{id}`: the catalogue, through
//! the response cache and database routing.

use std::collections::HashMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;

use axum::extract::Request;
use axum::handler::Handler;
use axum::routing::get_service;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tower::Service;
use tower_scale::db_route::Db;
use tower_scale::session::Session;

use crate::catalog::Database;
use crate::error::ApiError;
use crate::state::{AppState, Shared};

/// The product routes, behind the response cache and, inside it, database routing: a
/// hit never reaches the database; a miss is routed.
///
/// The two layers wrap each handler as a service rather than the router (`Router::layer`):
/// axum boxes a route once per `layer` call, and on every request it clones each box the
/// request passes through, with every box inside it. This box and `serve`'s body-timeout
/// box, taken out together, took a cached read from 45 allocations to 37
/// (`docs/benchmarks.md`).
pub(crate) fn router(state: &AppState) -> Router<std::sync::Arc<Shared>> {
    Router::new()
        .route(
            "/products",
            get_service(behind_cache(state, list.with_state(()))),
        )
        .route(
            "/products/{id}",
            get_service(behind_cache(state, get_one.with_state(())))
                .put_service(behind_cache(state, put.with_state(()))),
        )
}

/// `handler` behind the response cache and, inside it, database routing.
fn behind_cache<T>(
    state: &AppState,
    handler: T,
) -> impl Service<Request, Response: IntoResponse + 'static, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static
where
    T: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    T::Future: Send + 'static,
{
    tower::ServiceBuilder::new()
        .layer(state.layers.cache.clone())
        .layer(state.layers.db_route.clone())
        .service(handler)
}

/// Product ids are 1..=MAX_PRODUCT_ID, which bounds what a client can add to the
/// catalogue.
pub const MAX_PRODUCT_ID: i64 = 1_000_000;

/// The `{id}` of a product route; a bad one is a JSON 400, whatever bytes the path holds.
pub(crate) struct ProductId(pub(crate) i64);

impl<S: Send + Sync> FromRequestParts<S> for ProductId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        // One spelling per product: `08`, `+8` or `%38` would each be cached under a key
        // of its own that `PUT /products/8` does not invalidate.
        let as_sent = parts.uri.path().split('/').nth(2).unwrap_or_default();
        if parts.uri.query().is_some_and(|q| !q.is_empty()) {
            return Err(ApiError::bad_request(
                "product routes take no query parameters",
            ));
        }
        raw.parse::<i64>()
            .ok()
            .filter(|id| (1..=MAX_PRODUCT_ID).contains(id))
            .filter(|id| as_sent == id.to_string() && raw == as_sent)
            .map(ProductId)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "product id must be a whole number in 1..={MAX_PRODUCT_ID}, written plainly (8, not 08, +8 or %38)"
                ))
            })
    }
}

/// A read on this request's reader; if it fails on a replica because the replica is
/// unusable (down, shutting down, behind the schema), once more on the primary (and the
/// replica is out of rotation until its next health check), so losing a replica loses no
/// request. Other failures (a bad query) are answered as they are.
async fn read<'a, T, F, Fut>(db: &'a Db<Database>, query: F) -> Result<T, ApiError>
where
    F: Fn(&'a Database) -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::catalog::DbError>>,
{
    match query(db.reader()).await {
        Ok(v) => Ok(v),
        Err(e) if !crate::catalog::server_unusable(&e) => Err(ApiError::internal(e)),
        Err(e) => match db.reader_after_failure() {
            Some(primary) => {
                tracing::warn!(error = %e, "replica read failed; reading from the primary");
                query(primary).await.map_err(ApiError::internal)
            }
            None => Err(ApiError::internal(e)),
        },
    }
}

async fn get_one(ProductId(id): ProductId, db: Db<Database>) -> Result<Response, ApiError> {
    match read(&db, |d| d.get(id)).await? {
        Some(p) => Ok(Json(p).into_response()),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no product {id}"))),
    }
}

async fn list(
    db: Db<Database>,
    uri: http::Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    // As sent, each at most once, with nothing encoded: one spelling per page.
    let pairs: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .collect();
    let plain = pairs
        .iter()
        .all(|p| p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'='));
    if !plain || pairs.len() != q.len() {
        return Err(ApiError::bad_request(
            "write limit and offset once each, as plain numbers: /products?limit=20&offset=40",
        ));
    }
    // Only these parameters, each written plainly: every other spelling of the same page
    // would be a cache entry of its own.
    if let Some(other) = q.keys().find(|k| *k != "limit" && *k != "offset") {
        return Err(ApiError::bad_request(format!(
            "unknown parameter `{}`; use limit and offset",
            other.chars().take(40).collect::<String>()
        )));
    }
    let number = |name: &str, default: i64, min: i64, max: i64| -> Result<i64, ApiError> {
        match q.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (min..=max).contains(n) && *v == n.to_string())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "`{name}` must be a whole number in {min}..={max}"
                    ))
                }),
        }
    };
    let limit = number("limit", 20, 1, 100)?;
    let offset = number("offset", 0, 0, i64::from(i32::MAX))?;
    let products = read(&db, |d| d.list(limit, offset)).await?;
    Ok(Json(json!({ "products": products, "limit": limit, "offset": offset })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductInput {
    name: String,
    price_cents: i64,
}

async fn put(
    session: Session,
    ProductId(id): ProductId,
    db: Db<Database>,
    body: Result<Json<ProductInput>, JsonRejection>,
) -> Result<Response, Response> {
    if session
        .user()
        .await
        .map_err(IntoResponse::into_response)?
        .is_none()
    {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "log in first (POST /login)".into(),
        )
        .into_response());
    }
    let Json(input) = body.map_err(|e| ApiError::rejected(&e).into_response())?;
    let name = input.name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "`name` must be 1..=200 characters, none of them control characters",
        )
        .into_response());
    }
    if input.price_cents < 0 {
        return Err(ApiError::bad_request("`price_cents` must be >= 0").into_response());
    }
    let p = db
        .writer()
        .upsert(id, name, input.price_cents)
        .await
        .map_err(|e| ApiError::internal(e).into_response())?;
    Ok(Json(p).into_response())
}
