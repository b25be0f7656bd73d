//! The product catalogue and the databases it lives on.
//!
//! [`Database`] is one handle type for both: the embedded SQLite (in memory, or a file
//! the instances on one machine share; seeded at start, a primary with no replicas) and
//! PostgreSQL (a primary and its streaming
//! replicas). Both sit behind the same `DbRouter<Database>`, so a handler reads through
//! `Db::reader` and writes through `Db::writer` whichever is configured.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sqlx::PgPool;
use tower_scale::db_route::{Lsn, PositionSource, ReplicaPosition};

/// Products seeded at start: ids 1..=SEED_PRODUCTS.
pub const SEED_PRODUCTS: i64 = 1000;

/// The advisory lock key `prepare` holds ("tsprep" as an integer).
const PREPARE_LOCK: i64 = 0x7473_7072_6570;

/// A product as the routes answer it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub price_cents: i64,
    pub version: i64,
}

/// A database failure (the cause is logged; the client sees 500).
pub type DbError = Box<dyn std::error::Error + Send + Sync>;

/// Whether `e` says the server that answered is unusable (unreachable, shutting down,
/// refusing connections, or a replica behind the schema or cancelling for recovery),
/// rather than something the query itself would meet on any server (a bad query, a
/// constraint). A pool that found no connection in time counts as unusable: a replica
/// that is down shows as that, once its pooled connections are gone; so does a replica
/// too busy to hand one out, whose reads then go to the primary until its next health
/// check (a second here).
pub fn server_unusable(e: &DbError) -> bool {
    match e.downcast_ref::<sqlx::Error>() {
        Some(
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed,
        ) => true,
        Some(sqlx::Error::Database(db)) => db.code().is_some_and(|c| {
            // 08: connection exceptions; 57P01-03: shutdown, crash, cannot connect now;
            // 53300: too many connections; 40001: a standby cancelling for recovery;
            // 42P01: a table a replica has not replayed yet.
            c.starts_with("08")
                || ["57P01", "57P02", "57P03", "53300", "40001", "42P01"].contains(&&*c)
        }),
        _ => false,
    }
}

type DbFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DbError>> + Send + 'a>>;

/// What the routes ask of a database, and what the router asks for read-your-writes.
trait Store: Send + Sync + 'static {
    fn get(&self, id: i64) -> DbFuture<'_, Option<Product>>;
    fn list(&self, limit: i64, offset: i64) -> DbFuture<'_, Vec<Product>>;
    fn upsert<'a>(&'a self, id: i64, name: &'a str, price_cents: i64) -> DbFuture<'a, Product>;
    fn ping(&self) -> DbFuture<'_, ()>;
    fn count(&self) -> DbFuture<'_, i64>;
    fn write_position(&self) -> DbFuture<'_, Lsn>;
    fn replica_position(&self) -> DbFuture<'_, ReplicaPosition>;
}

/// One database (a primary or a replica): cheap to clone.
#[derive(Clone)]
pub struct Database(Arc<dyn Store>);

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Database")
    }
}

impl Database {
    /// The embedded database: SQLite in memory, created and seeded.
    ///
    /// # Errors
    ///
    /// SQLite could not create or seed it.
    pub fn embedded() -> Result<Self, DbError> {
        Ok(Self(Arc::new(Embedded::open(None)?)))
    }

    /// The embedded database in an SQLite file, which every instance on this machine may
    /// open at once (write-ahead log, waits up to 5 s for another writer): created and
    /// seeded if missing, rows already there kept.
    ///
    /// # Errors
    ///
    /// SQLite could not open, create or seed it.
    pub fn embedded_file(path: &std::path::Path) -> Result<Self, DbError> {
        Ok(Self(Arc::new(Embedded::open(Some(path))?)))
    }

    /// A PostgreSQL pool.
    pub fn postgres(pool: PgPool) -> Self {
        Self(Arc::new(Postgres(pool)))
    }

    /// Creates the schema on a PostgreSQL primary and seeds it (rows already there are
    /// kept, so instances sharing the database start in any order). Nothing to do for the
    /// embedded database.
    ///
    /// Instances started together on an empty database prepare it one at a time: two
    /// concurrent `CREATE TABLE IF NOT EXISTS` can both miss the table and one then fails
    /// on PostgreSQL's catalogue (`pg_type_typname_nsp_index`). The statements run as one
    /// implicit transaction holding a transaction-level advisory lock.
    ///
    /// # Errors
    ///
    /// The primary could not be reached or refused the schema.
    pub async fn prepare(pool: &PgPool) -> Result<(), DbError> {
        sqlx::raw_sql(&format!(
            "SELECT pg_advisory_xact_lock({PREPARE_LOCK});
             CREATE TABLE IF NOT EXISTS products (
                 id BIGINT PRIMARY KEY,
                 name TEXT NOT NULL,
                 price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
                 version BIGINT NOT NULL DEFAULT 1
             );
             INSERT INTO products (id, name, price_cents, version)
             SELECT i, 'Product ' || i, 100 + (i * 37) % 9900, 1
             FROM generate_series(1, {SEED_PRODUCTS}) AS i
             ON CONFLICT (id) DO NOTHING;"
        ))
        .execute(pool)
        .await?;
        Ok(())
    }

    /// The product `id`, if it exists.
    pub async fn get(&self, id: i64) -> Result<Option<Product>, DbError> {
        self.0.get(id).await
    }

    /// Products by id, `limit` of them from `offset`.
    pub async fn list(&self, limit: i64, offset: i64) -> Result<Vec<Product>, DbError> {
        self.0.list(limit, offset).await
    }

    /// Inserts or updates a product, bumping its version; returns the stored row.
    pub async fn upsert(&self, id: i64, name: &str, price_cents: i64) -> Result<Product, DbError> {
        self.0.upsert(id, name, price_cents).await
    }

    /// How many products there are.
    pub async fn count(&self) -> Result<i64, DbError> {
        self.0.count().await
    }

    /// Is the database answering?
    pub async fn ping(&self) -> Result<(), DbError> {
        self.0.ping().await
    }
}

impl PositionSource for Database {
    async fn write_position(&self) -> Result<Lsn, DbError> {
        self.0.write_position().await
    }

    async fn replica_position(&self) -> Result<ReplicaPosition, DbError> {
        self.0.replica_position().await
    }
}

const PG_COLUMNS: &str = "id, name, price_cents, version";

type Row = (i64, String, i64, i64);

fn from_row((id, name, price_cents, version): Row) -> Product {
    Product {
        id,
        name,
        price_cents,
        version,
    }
}

struct Postgres(PgPool);

impl Store for Postgres {
    fn get(&self, id: i64) -> DbFuture<'_, Option<Product>> {
        Box::pin(async move {
            Ok(sqlx::query_as::<_, Row>(&format!(
                "SELECT {PG_COLUMNS} FROM products WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&self.0)
            .await?
            .map(from_row))
        })
    }

    fn list(&self, limit: i64, offset: i64) -> DbFuture<'_, Vec<Product>> {
        Box::pin(async move {
            Ok(sqlx::query_as::<_, Row>(&format!(
                "SELECT {PG_COLUMNS} FROM products ORDER BY id LIMIT $1 OFFSET $2"
            ))
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.0)
            .await?
            .into_iter()
            .map(from_row)
            .collect())
        })
    }

    fn upsert<'a>(&'a self, id: i64, name: &'a str, price_cents: i64) -> DbFuture<'a, Product> {
        Box::pin(async move {
            Ok(from_row(
                sqlx::query_as::<_, Row>(&format!(
                    "INSERT INTO products (id, name, price_cents, version) VALUES ($1, $2, $3, 1)
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                         price_cents = excluded.price_cents, version = products.version + 1
                     RETURNING {PG_COLUMNS}"
                ))
                .bind(id)
                .bind(name)
                .bind(price_cents)
                .fetch_one(&self.0)
                .await?,
            ))
        })
    }

    fn ping(&self) -> DbFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.0).await?;
            Ok(())
        })
    }

    fn count(&self) -> DbFuture<'_, i64> {
        Box::pin(async move {
            Ok(
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM products")
                    .fetch_one(&self.0)
                    .await?,
            )
        })
    }

    fn write_position(&self) -> DbFuture<'_, Lsn> {
        Box::pin(self.0.write_position())
    }

    fn replica_position(&self) -> DbFuture<'_, ReplicaPosition> {
        Box::pin(self.0.replica_position())
    }
}

/// The embedded catalogue. Queries on SQLite take microseconds, less than a hop to a
/// blocking thread would, so they run inline under one lock (for a shared file, a write
/// may wait for another instance's, which takes as long).
struct Embedded {
    conn: Mutex<Connection>,
    /// A file other processes write too: a statement may wait for their lock.
    shared_file: bool,
}

impl Embedded {
    /// Opens it (in memory, or the file at `path`), creates the schema and seeds it.
    fn open(path: Option<&std::path::Path>) -> rusqlite::Result<Self> {
        let conn = match path {
            None => Connection::open_in_memory()?,
            Some(p) => {
                let conn = Connection::open(p)?;
                // Several processes: a write-ahead log (readers never wait for a writer)
                // and a wait, not an error, when another instance holds the write lock.
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                conn.pragma_update(None, "journal_mode", "WAL")?;
                conn.pragma_update(None, "synchronous", "NORMAL")?;
                conn
            }
        };
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS products (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
                version INTEGER NOT NULL DEFAULT 1
            );",
        )?;
        {
            // Instances starting together seed once: rows already there are kept.
            let tx = rusqlite::Transaction::new_unchecked(
                &conn,
                rusqlite::TransactionBehavior::Immediate,
            )?;
            {
                let mut insert = tx.prepare(
                    "INSERT OR IGNORE INTO products (id, name, price_cents, version) VALUES (?1, ?2, ?3, 1)",
                )?;
                for id in 1..=SEED_PRODUCTS {
                    // Deterministic prices so tests and benchmarks know what to expect.
                    insert.execute(params![id, format!("Product {id}"), 100 + (id * 37) % 9900])?;
                }
            }
            tx.commit()?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
            shared_file: path.is_some(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (each statement is
        // atomic), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get_now(&self, id: i64) -> rusqlite::Result<Option<Product>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT id, name, price_cents, version FROM products WHERE id = ?1")?;
        stmt.query_row([id], row_to_product).optional()
    }

    fn list_now(&self, limit: i64, offset: i64) -> rusqlite::Result<Vec<Product>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, price_cents, version FROM products ORDER BY id LIMIT ?1 OFFSET ?2",
        )?;
        let rows = stmt.query_map([limit, offset], row_to_product)?;
        rows.collect()
    }

    fn upsert_now(&self, id: i64, name: &str, price_cents: i64) -> rusqlite::Result<Product> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "INSERT INTO products (id, name, price_cents, version) VALUES (?1, ?2, ?3, 1)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents,
                 version = products.version + 1
             RETURNING id, name, price_cents, version",
        )?;
        stmt.query_row(params![id, name, price_cents], row_to_product)
    }
}

impl Embedded {
    /// Runs `f` inline: it takes microseconds. A write to a shared file may wait for
    /// another instance's write lock (up to the busy timeout), so on a multi-threaded
    /// runtime it tells Tokio to move this worker's other tasks elsewhere meanwhile (which
    /// costs tens of µs, so reads, which never wait in write-ahead-log mode, do not).
    fn run<T: Send + 'static>(
        &self,
        may_wait: bool,
        f: impl FnOnce(&Self) -> rusqlite::Result<T>,
    ) -> DbFuture<'_, T> {
        let call = || f(self).map_err(DbError::from);
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let r = if may_wait && self.shared_file && multi_thread {
            tokio::task::block_in_place(call)
        } else {
            call()
        };
        Box::pin(std::future::ready(r))
    }
}

impl Store for Embedded {
    fn get(&self, id: i64) -> DbFuture<'_, Option<Product>> {
        self.run(false, |e| e.get_now(id))
    }

    fn list(&self, limit: i64, offset: i64) -> DbFuture<'_, Vec<Product>> {
        self.run(false, |e| e.list_now(limit, offset))
    }

    fn upsert<'a>(&'a self, id: i64, name: &'a str, price_cents: i64) -> DbFuture<'a, Product> {
        self.run(true, |e| e.upsert_now(id, name, price_cents))
    }

    fn ping(&self) -> DbFuture<'_, ()> {
        self.run(false, |e| e.lock().query_row("SELECT 1", [], |_| Ok(())))
    }

    fn count(&self) -> DbFuture<'_, i64> {
        self.run(false, |e| {
            e.lock()
                .query_row("SELECT count(*) FROM products", [], |r| r.get(0))
        })
    }

    fn write_position(&self) -> DbFuture<'_, Lsn> {
        // Never asked: the router sets no token without replicas.
        Box::pin(std::future::ready(Err(
            "the embedded database has no replicas and no WAL position".into(),
        )))
    }

    fn replica_position(&self) -> DbFuture<'_, ReplicaPosition> {
        Box::pin(std::future::ready(Err(
            "the embedded database cannot be a replica".into(),
        )))
    }
}

fn row_to_product(row: &rusqlite::Row<'_>) -> rusqlite::Result<Product> {
    Ok(Product {
        id: row.get(0)?,
        name: row.get(1)?,
        price_cents: row.get(2)?,
        version: row.get(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn seeded_and_upsert_bumps_version() {
        let c = Database::embedded().unwrap();
        assert_eq!(c.get(1).await.unwrap().unwrap().version, 1);
        assert_eq!(
            c.list(5, 10)
                .await
                .unwrap()
                .iter()
                .map(|p| p.id)
                .collect::<Vec<_>>(),
            vec![11, 12, 13, 14, 15]
        );
        assert!(c.get(SEED_PRODUCTS + 1).await.unwrap().is_none());
        let p = c.upsert(1, "New", 5).await.unwrap();
        assert_eq!((p.name.as_str(), p.price_cents, p.version), ("New", 5, 2));
        let fresh = c.upsert(5000, "Fresh", 0).await.unwrap();
        assert_eq!(fresh.version, 1);
        assert!(c.upsert(2, "Negative", -1).await.is_err());
        assert!(c.ping().await.is_ok());
        assert_eq!(c.count().await.unwrap(), SEED_PRODUCTS + 1);
    }
}
