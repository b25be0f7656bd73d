//! `POST /login`, `GET /me`, `POST /logout`: sessions through the `Session` extractor.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tower_scale::session::Session;

use crate::error::ApiError;
use crate::state::Shared;

pub(crate) fn router() -> Router<std::sync::Arc<Shared>> {
    Router::new()
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/logout", post(logout))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginInput {
    user: String,
}

async fn login(
    session: Session,
    body: Result<Json<LoginInput>, JsonRejection>,
) -> Result<Response, Response> {
    let Json(input) = body.map_err(|e| ApiError::rejected(&e).into_response())?;
    let user = input.user.trim();
    if user.is_empty() || user.chars().count() > 64 || user.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "`user` must be 1..=64 characters, none of them control characters",
        )
        .into_response());
    }
    // A new id whatever the client sent: a session planted before login is worthless.
    session
        .login(user)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Json(json!({ "user": user })).into_response())
}

async fn me(session: Session) -> Result<Response, Response> {
    let Some(user) = session.user().await.map_err(IntoResponse::into_response)? else {
        return Err(
            ApiError(StatusCode::UNAUTHORIZED, "no session; POST /login".into()).into_response(),
        );
    };
    let visits = session
        .increment("visits", 1)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Json(json!({ "user": user, "visits": visits })).into_response())
}

async fn logout(session: Session) -> StatusCode {
    session.destroy().await;
    StatusCode::NO_CONTENT
}
