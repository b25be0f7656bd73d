//! Cache-aside of application data: `get_user` reads through a two-tier cache (this
//! process's memory, and Redis when `REDIS_URL` is set, shared by every instance), loads
//! from the "database" on a miss (one load however many ask at once), and an update
//! invalidates the entry on every instance.
//!
//! Run: `cargo run --example cache_aside` (needs nothing; with `REDIS_URL` the cache is
//! shared), then `curl localhost:3004/users/1` twice (the second from the cache: the
//! `loads` count in the answer stays), `curl -X PUT -d 'Grace' localhost:3004/users/1`,
//! and `curl localhost:3004/users/1` again (the new name, loaded once more). The
//! "database" is a map in this process's memory, standing in for the one database a real
//! service's instances share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::{Router, routing::get};
use tower_scale::cache::{Cache, CacheEngine};
use tower_scale::redis::RedisBackend;

/// The slow source of truth the cache stands in front of.
#[derive(Default)]
struct Database {
    users: Mutex<HashMap<u32, String>>,
    loads: AtomicU64,
}

#[derive(Clone)]
struct App {
    db: Arc<Database>,
    users: Cache<u32, String>,
}

async fn get_user(State(app): State<App>, Path(id): Path<u32>) -> String {
    let db = Arc::clone(&app.db);
    let name = app
        .users
        .get_or_load(&id, move || async move {
            // Only on a miss: the database's cost.
            tokio::time::sleep(Duration::from_millis(50)).await;
            db.loads.fetch_add(1, Ordering::Relaxed);
            let name = db.users.lock().unwrap().get(&id).cloned();
            Ok::<_, std::io::Error>(name.unwrap_or_else(|| format!("user {id}")))
        })
        .await;
    let loads = app.db.loads.load(Ordering::Relaxed);
    match name {
        Ok(name) => format!("{name} (loads so far: {loads})\n"),
        Err(e) => format!("error: {e}\n"),
    }
}

async fn put_user(State(app): State<App>, Path(id): Path<u32>, name: String) -> &'static str {
    app.db.users.lock().unwrap().insert(id, name);
    // The write first, then the invalidation: every instance drops its copy.
    match app.users.invalidate(&id).await {
        Ok(()) => "updated\n",
        Err(_) => "updated; other instances keep their copy until it expires\n",
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut engine = CacheEngine::builder().ttl(Duration::from_secs(60));
    if let Ok(url) = std::env::var("REDIS_URL") {
        engine = engine.redis(RedisBackend::builder(url).prefix("example-cache").build()?);
    }
    let engine = engine.build()?;
    let app = App {
        db: Arc::default(),
        users: Cache::new(&engine, "users"),
    };
    let router = Router::new()
        .route("/users/{id}", get(get_user).put(put_user))
        .with_state(app);

    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3004".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}
