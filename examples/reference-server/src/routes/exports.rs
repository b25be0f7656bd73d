//! `POST /exports` and `GET /exports/{job}`: the catalogue as CSV, made off the request
//! path by a worker of any instance.
//!
//! The POST enqueues a job on the `exports` queue (in Redis with `REDIS_URL`, so any
//! instance's worker may run it, and another finishes it if that one dies) and answers
//! `202` with the job's `Location`. A worker reads the catalogue page by page from a
//! replica (through the same `DbRouter` the product routes use), reports its progress,
//! and stores the file as the job's result, kept for [`RETENTION`]. The GET answers the
//! job's state and progress until then, and the file after.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower_scale::db_route::{DbRouter, ReadRoute};
use tower_scale::jobs::{JobContext, JobError, JobId, JobState, Queue, Worker, WorkerHandle};

use crate::catalog::{Database, DbError, Product};
use crate::error::ApiError;
use crate::state::Shared;

/// The queue's name (its Redis keys carry it as their hash tag).
pub const QUEUE: &str = "exports";

/// How long a finished export's file and status are kept.
pub const RETENTION: Duration = Duration::from_secs(3600);

/// Rows read per page.
const PAGE: i64 = 100;

/// An export job's payload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExportJob {
    /// Always `csv` for now; kept so jobs enqueued by a newer instance that adds formats
    /// are refused (dead-lettered) rather than run wrong by an older one.
    pub format: ExportFormat,
}

/// The file formats an export writes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// RFC 4180 CSV with a header row.
    #[default]
    Csv,
}

/// A finished export: the job's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportFile {
    /// Product rows in the file.
    pub rows: i64,
    /// `replica` or `primary`: where the catalogue was read.
    pub read_from: String,
    /// The file.
    pub csv: String,
}

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/exports", post(create))
        .route("/exports/{job}", get(status))
}

async fn create(State(s): State<Arc<Shared>>) -> Response {
    match s.exports.enqueue(&ExportJob::default()).await {
        Ok(id) => {
            let location = format!("/exports/{id}");
            let mut res =
                (StatusCode::ACCEPTED, Json(json!({ "job": id.as_str() }))).into_response();
            res.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_str(&location).expect("hex digits"),
            );
            res
        }
        Err(e) => store_failed(e),
    }
}

async fn status(State(s): State<Arc<Shared>>, Path(job): Path<String>) -> Response {
    let Some(id) = JobId::parse(&job) else {
        return not_found();
    };
    let status = match s.exports.status(&id).await {
        Ok(Some(st)) => st,
        Ok(None) => return not_found(),
        Err(e) => return store_failed(e),
    };
    if status.state == JobState::Succeeded {
        return match status.result_as::<ExportFile>() {
            Ok(file) => (
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"products-{id}.csv\""),
                    ),
                ],
                file.csv,
            )
                .into_response(),
            Err(e) => ApiError::internal(e).into_response(),
        };
    }
    let mut body = json!({
        "job": id.as_str(),
        "state": status.state.as_str(),
        "progress": status.progress.unwrap_or(0),
        "attempts": status.attempts,
    });
    if let Some(e) = &status.error {
        body["error"] = json!(e);
    }
    let mut res = Json(body).into_response();
    if !status.state.is_finished() {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    res
}

fn not_found() -> Response {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such export: unknown, or finished more than an hour ago".into(),
    )
    .into_response()
}

fn store_failed(e: JobError) -> Response {
    tracing::warn!(error = %e, "export queue unavailable");
    ApiError::unavailable("the export queue is unavailable; try again shortly", 1)
}

/// Starts `n` export workers in this process (none for 0).
pub(crate) fn spawn_workers(
    queue: &Queue<ExportJob>,
    db: DbRouter<Database>,
    n: usize,
    page_delay: Duration,
) -> Option<WorkerHandle> {
    (n > 0).then(|| {
        Worker::builder(queue.clone())
            .concurrency(n)
            .spawn(move |job| export(db.clone(), page_delay, job))
    })
}

/// Writes the catalogue as CSV, page by page, from a replica when there is a healthy one.
async fn export(
    db: DbRouter<Database>,
    page_delay: Duration,
    job: JobContext<ExportJob>,
) -> Result<ExportFile, String> {
    let ExportFormat::Csv = job.payload().format;
    let route = db.route_read(None, 0);
    let reader = db.handle(route).clone();
    let failed = |e: DbError| format!("reading the catalogue failed: {e}");
    let total = reader.count().await.map_err(failed)?.max(1);
    let mut csv = String::from("id,name,price_cents,version\r\n");
    let mut rows = 0;
    loop {
        let page = reader.list(PAGE, rows).await.map_err(failed)?;
        if page.is_empty() {
            break;
        }
        rows += page.len() as i64;
        for p in &page {
            write_row(&mut csv, p);
        }
        let percent = (rows.saturating_mul(100) / total).clamp(0, 99) as u8;
        job.progress(percent).await;
        if page_delay.is_zero() {
            // The embedded database and the in-process queue answer without waiting, so
            // without this an export would hold its thread from first page to last while
            // requests queue behind it.
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(page_delay).await;
        }
    }
    Ok(ExportFile {
        rows,
        read_from: match route {
            ReadRoute::Replica(_) => "replica",
            _ => "primary",
        }
        .to_owned(),
        csv,
    })
}

/// One CSV row (RFC 4180). A name that a spreadsheet would run as a formula (starting
/// with `=`, `+`, `-`, `@`, tab or CR) is prefixed with `'`, as OWASP advises for CSV
/// files users open.
fn write_row(out: &mut String, p: &Product) {
    use std::fmt::Write;
    let _ = write!(out, "{},", p.id);
    let name = p.name.as_str();
    let formula = name.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = formula || name.contains([',', '"', '\n', '\r']);
    if quote {
        out.push('"');
        if formula {
            out.push('\'');
        }
        out.push_str(&name.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(name);
    }
    let _ = write!(out, ",{},{}\r\n", p.price_cents, p.version);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str) -> String {
        let mut s = String::new();
        write_row(
            &mut s,
            &Product {
                id: 7,
                name: name.into(),
                price_cents: 250,
                version: 3,
            },
        );
        s
    }

    #[test]
    fn rows_are_rfc_4180_and_formula_safe() {
        assert_eq!(row("Plain"), "7,Plain,250,3\r\n");
        assert_eq!(row("a,b"), "7,\"a,b\",250,3\r\n");
        assert_eq!(row("say \"hi\""), "7,\"say \"\"hi\"\"\",250,3\r\n");
        assert_eq!(row("two\nlines"), "7,\"two\nlines\",250,3\r\n");
        assert_eq!(row("=SUM(A1)"), "7,\"'=SUM(A1)\",250,3\r\n");
        assert_eq!(row("@cmd"), "7,\"'@cmd\",250,3\r\n");
        assert_eq!(row("Ünïcödé"), "7,Ünïcödé,250,3\r\n");
    }
}
