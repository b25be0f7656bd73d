//! The product catalogue: on the embedded database (SQLite, in memory, seeded at start),
//! or on PostgreSQL with replicas through `db_route` (reads on the request's routed handle,
//! writes on the primary).

use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sqlx::PgPool;
use tower_scale::db_route::{Db, DbRouter};

/// Products seeded at start: ids 1..=SEED_PRODUCTS.
pub const SEED_PRODUCTS: i64 = 1000;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub price_cents: i64,
    pub version: i64,
}

pub type DbError = Box<dyn std::error::Error + Send + Sync>;

/// Where the products live.
pub enum Catalog {
    Embedded(Embedded),
    Postgres(DbRouter<PgPool>),
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

impl Catalog {
    /// Creates the PostgreSQL schema on the primary and seeds it (rows already there are
    /// kept, so instances sharing the database start in any order).
    pub async fn postgres(router: DbRouter<PgPool>) -> Result<Self, DbError> {
        sqlx::raw_sql(&format!(
            "CREATE TABLE IF NOT EXISTS products (
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
        .execute(router.writer())
        .await?;
        Ok(Self::Postgres(router))
    }

    /// The handle a read uses: the request's routed one, else the primary.
    fn reader<'a>(router: &'a DbRouter<PgPool>, db: Option<&'a Db<PgPool>>) -> &'a PgPool {
        db.map_or(router.writer(), Db::reader)
    }

    pub async fn get(&self, db: Option<&Db<PgPool>>, id: i64) -> Result<Option<Product>, DbError> {
        match self {
            Self::Embedded(e) => Ok(e.get(id)?),
            Self::Postgres(r) => Ok(sqlx::query_as::<_, Row>(&format!(
                "SELECT {PG_COLUMNS} FROM products WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(Self::reader(r, db))
            .await?
            .map(from_row)),
        }
    }

    pub async fn list(
        &self,
        db: Option<&Db<PgPool>>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Product>, DbError> {
        match self {
            Self::Embedded(e) => Ok(e.list(limit, offset)?),
            Self::Postgres(r) => Ok(sqlx::query_as::<_, Row>(&format!(
                "SELECT {PG_COLUMNS} FROM products ORDER BY id LIMIT $1 OFFSET $2"
            ))
            .bind(limit)
            .bind(offset)
            .fetch_all(Self::reader(r, db))
            .await?
            .into_iter()
            .map(from_row)
            .collect()),
        }
    }

    pub async fn upsert(
        &self,
        db: Option<&Db<PgPool>>,
        id: i64,
        name: &str,
        price_cents: i64,
    ) -> Result<Product, DbError> {
        match self {
            Self::Embedded(e) => Ok(e.upsert(id, name, price_cents)?),
            Self::Postgres(r) => {
                let writer = db.map_or(r.writer(), Db::writer);
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
                    .fetch_one(writer)
                    .await?,
                ))
            }
        }
    }

    /// Is the database answering (the primary, for PostgreSQL)?
    pub async fn ping(&self) -> Result<(), DbError> {
        match self {
            Self::Embedded(e) => Ok(e.ping()?),
            Self::Postgres(r) => {
                sqlx::query("SELECT 1").execute(r.writer()).await?;
                Ok(())
            }
        }
    }
}

/// The embedded catalogue. Queries on an in-memory SQLite take microseconds, less than a
/// hop to a blocking thread would, so they run inline under one lock.
#[derive(Clone)]
pub struct Embedded {
    conn: Arc<Mutex<Connection>>,
}

impl Embedded {
    /// Creates the schema and seeds it.
    pub fn open() -> rusqlite::Result<Self> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(
            "CREATE TABLE products (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
                version INTEGER NOT NULL DEFAULT 1
            );",
        )?;
        {
            let tx = conn.unchecked_transaction()?;
            {
                let mut insert = tx.prepare(
                    "INSERT INTO products (id, name, price_cents, version) VALUES (?1, ?2, ?3, 1)",
                )?;
                for id in 1..=SEED_PRODUCTS {
                    // Deterministic prices so tests and benchmarks know what to expect.
                    insert.execute(params![id, format!("Product {id}"), 100 + (id * 37) % 9900])?;
                }
            }
            tx.commit()?;
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (each statement is
        // atomic), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: i64) -> rusqlite::Result<Option<Product>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT id, name, price_cents, version FROM products WHERE id = ?1")?;
        stmt.query_row([id], row_to_product).optional()
    }

    pub fn list(&self, limit: i64, offset: i64) -> rusqlite::Result<Vec<Product>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, price_cents, version FROM products ORDER BY id LIMIT ?1 OFFSET ?2",
        )?;
        let rows = stmt.query_map([limit, offset], row_to_product)?;
        rows.collect()
    }

    /// Inserts or updates a product, bumping its version; returns the stored row.
    pub fn upsert(&self, id: i64, name: &str, price_cents: i64) -> rusqlite::Result<Product> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "INSERT INTO products (id, name, price_cents, version) VALUES (?1, ?2, ?3, 1)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents,
                 version = products.version + 1
             RETURNING id, name, price_cents, version",
        )?;
        stmt.query_row(params![id, name, price_cents], row_to_product)
    }

    /// A trivial query: is the database answering?
    pub fn ping(&self) -> rusqlite::Result<()> {
        self.lock().query_row("SELECT 1", [], |_| Ok(()))
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

    #[test]
    fn seeded_and_upsert_bumps_version() {
        let c = Embedded::open().unwrap();
        assert_eq!(c.get(1).unwrap().unwrap().version, 1);
        assert_eq!(
            c.list(5, 10)
                .unwrap()
                .iter()
                .map(|p| p.id)
                .collect::<Vec<_>>(),
            vec![11, 12, 13, 14, 15]
        );
        assert!(c.get(SEED_PRODUCTS + 1).unwrap().is_none());
        let p = c.upsert(1, "New", 5).unwrap();
        assert_eq!((p.name.as_str(), p.price_cents, p.version), ("New", 5, 2));
        let fresh = c.upsert(5000, "Fresh", 0).unwrap();
        assert_eq!(fresh.version, 1);
        assert!(c.upsert(2, "Negative", -1).is_err());
    }
}
