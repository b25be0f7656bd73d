//! The test rig itself: the services the other tests rely on are real. The replica is a
//! physical streaming replica of the primary, not a second independent database.

mod support;

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(conn);
    client
}

async fn visible_on(client: &Client, table: &str, id: i32) -> bool {
    // The table itself arrives by replication; before it does, the query errors.
    client
        .query_opt(&format!("SELECT 1 FROM {table} WHERE id = $1"), &[&id])
        .await
        .map(|r| r.is_some())
        .unwrap_or(false)
}

/// Resumes replay even if the test fails half-way, so other tests see a live replica.
struct ResumeOnDrop(String);
impl Drop for ResumeOnDrop {
    fn drop(&mut self) {
        let url = self.0.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async move {
                    if let Ok((c, conn)) = tokio_postgres::connect(&url, NoTls).await {
                        tokio::spawn(conn);
                        let _ = c.execute("SELECT pg_wal_replay_resume()", &[]).await;
                    }
                })
        })
        .join();
    }
}

#[tokio::test]
async fn replica_streams_from_primary_and_pauses() {
    let primary = connect(&support::pg_primary_url()).await;
    let replica = connect(&support::pg_replica_url()).await;

    let in_recovery: bool = replica
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "the replica must be a standby");
    let primary_in_recovery: bool = primary
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!primary_in_recovery, "the primary must accept writes");

    let schema = support::unique("rig");
    let table = format!("{schema}.items");
    primary
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; CREATE TABLE {table} (id int primary key)"
        ))
        .await
        .unwrap();

    // A row written on the primary reaches the replica.
    primary
        .execute(&format!("INSERT INTO {table} VALUES (1)"), &[])
        .await
        .unwrap();
    support::eventually("row 1 on the replica", Duration::from_secs(10), || async {
        visible_on(&replica, &table, 1).await.then_some(())
    })
    .await;

    // With replay paused, a new row is held back; after resume it arrives.
    let _resume = ResumeOnDrop(support::pg_replica_url());
    support::pause_replay(&support::pg_replica_url()).await;
    primary
        .execute(&format!("INSERT INTO {table} VALUES (2)"), &[])
        .await
        .unwrap();
    // The insert position, not pg_current_wal_lsn(): that is the *write* position, which
    // trails a commit until the WAL writer runs (synchronous_commit = off here).
    let written: String = primary
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    // The WAL reaches the replica (received) but is not applied (replayed).
    support::eventually(
        "WAL received by the replica",
        Duration::from_secs(10),
        || async {
            let received: bool = replica
                .query_one(
                    "SELECT pg_last_wal_receive_lsn() >= $1::text::pg_lsn",
                    &[&written],
                )
                .await
                .unwrap()
                .get(0);
            received.then_some(())
        },
    )
    .await;
    assert!(
        !visible_on(&replica, &table, 2).await,
        "row 2 must be held back while replay is paused"
    );
    let behind: bool = replica
        .query_one(
            "SELECT pg_last_wal_replay_lsn() < $1::text::pg_lsn",
            &[&written],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        behind,
        "the replica's replay position must be behind the primary's write"
    );

    replica
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    support::eventually(
        "row 2 on the replica after resume",
        Duration::from_secs(10),
        || async { visible_on(&replica, &table, 2).await.then_some(()) },
    )
    .await;

    primary
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// The private pair fault tests use: a real streaming replica that a test may stop and
/// start without touching the shared one.
#[tokio::test]
async fn a_private_pair_replicates_and_its_replica_can_be_stopped_and_started() {
    let pair = support::PgPair::start();
    let primary = connect(&pair.primary_url()).await;
    primary
        .batch_execute("CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let replica = connect(&pair.replica_url()).await;
    support::eventually(
        "row 1 on the private replica",
        Duration::from_secs(10),
        || async { visible_on(&replica, "t", 1).await.then_some(()) },
    )
    .await;

    pair.stop_replica();
    assert!(
        tokio_postgres::connect(&pair.replica_url(), NoTls)
            .await
            .is_err(),
        "a stopped replica refuses connections"
    );
    primary
        .execute("INSERT INTO t VALUES (2)", &[])
        .await
        .unwrap();
    pair.start_replica();
    let replica = connect(&pair.replica_url()).await;
    support::eventually(
        "row 2 after the restart",
        Duration::from_secs(10),
        || async { visible_on(&replica, "t", 2).await.then_some(()) },
    )
    .await;
}
