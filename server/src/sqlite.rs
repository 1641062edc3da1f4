//! The embedded store: one SQLite file under `--data`, through sqlx.
//!
//! Why SQLite: no setup, one file, transactions that survive `kill -9` and power loss,
//! and a format every operator can inspect with the `sqlite3` shell. The database runs in
//! WAL mode with `synchronous = FULL`: a commit returns only after the WAL is fsynced, so a
//! reservation the service acknowledged survives a power cut too, not only a process crash
//! (`NORMAL` would only protect against the latter). The fsync cost is shared by group
//! commit: one writer task takes every submission waiting in its queue and commits them
//! in one transaction.

use crate::commit::{CommitQueue, Committer, Submission};
use crate::metrics::Metrics;
use crate::sql;
use crate::store::{
    BoxFuture, LeaseToken, PolicySpec, Store, StoreError, StoredCluster, StoredDoc, Write,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, Row, SqliteConnection};
use std::path::Path;
use std::sync::{Arc, Mutex};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS clusters (
    id TEXT PRIMARY KEY NOT NULL,
    snapshot TEXT NOT NULL,
    policy TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS placements (
    cluster TEXT NOT NULL,
    vm TEXT NOT NULL,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    vm_doc TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (cluster, vm)
);
CREATE INDEX IF NOT EXISTS placements_seq ON placements (seq);
CREATE TABLE IF NOT EXISTS host_docs (
    cluster TEXT NOT NULL,
    host TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (cluster, host)
);
CREATE TABLE IF NOT EXISTS vm_docs (
    cluster TEXT NOT NULL,
    vm TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (cluster, vm)
);
CREATE TABLE IF NOT EXISTS memory_changes (
    cluster TEXT NOT NULL,
    vm TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (cluster, vm)
);
";

/// The SQLite store. Writes go through one writer task (group commit).
#[derive(Debug)]
pub struct SqliteStore {
    queue: CommitQueue,
    loaded: Mutex<Option<Vec<StoredCluster>>>,
}

/// The writer task's connection.
struct SqliteWriter {
    conn: SqliteConnection,
}

/// Numbers a new placement after every earlier one (a lookup in `placements_seq`).
const NEXT_SEQ: &str = "(SELECT COALESCE(MAX(seq), 0) + 1 FROM placements)";

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

impl SqliteStore {
    /// Opens (creating when missing) `dir/wasmsched.db`, reads everything stored, and
    /// starts the writer task on the current tokio runtime.
    pub async fn open(dir: &Path, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Database(format!("{}: {e}", dir.display())))?;
        let options = SqliteConnectOptions::new()
            .filename(dir.join("wasmsched.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(5));
        let mut conn = SqliteConnection::connect_with(&options).await.map_err(db)?;
        sqlx::raw_sql(SCHEMA).execute(&mut conn).await.map_err(db)?;
        let loaded = Self::read_all(&mut conn).await?;
        Ok(Self {
            queue: CommitQueue::start(SqliteWriter { conn }, metrics),
            loaded: Mutex::new(Some(loaded)),
        })
    }

    async fn read_all(conn: &mut SqliteConnection) -> Result<Vec<StoredCluster>, StoreError> {
        let mut clusters = Vec::new();
        for row in sqlx::query("SELECT id, snapshot, policy FROM clusters ORDER BY id")
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?
        {
            let id: String = row.get(0);
            let policy: PolicySpec =
                serde_json::from_str(row.get::<&str, _>(2)).map_err(|e| StoreError::Corrupt {
                    cluster: id.clone(),
                    message: format!("policy: {e}"),
                })?;
            clusters.push(StoredCluster {
                snapshot: row.get(1),
                hosts: Vec::new(),
                vms: Vec::new(),
                policy,
                placements: Vec::new(),
                memory_changes: Vec::new(),
                id,
            });
        }
        for cluster in &mut clusters {
            cluster.placements = sqlx::query(sql::SELECT_PLACEMENTS)
                .bind(&cluster.id)
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?
                .into_iter()
                .map(|row| sql::placement_of(&row))
                .collect();
            cluster.hosts = Self::read_docs(conn, "host_docs", "host", &cluster.id).await?;
            cluster.vms = Self::read_docs(conn, "vm_docs", "vm", &cluster.id).await?;
            cluster.memory_changes = sqlx::query(sql::SELECT_MEMORY_CHANGES)
                .bind(&cluster.id)
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?
                .into_iter()
                .map(|row| row.get(0))
                .collect();
        }
        Ok(clusters)
    }

    /// The documents of one cluster in `table` (keyed by `key`), by id.
    async fn read_docs(
        conn: &mut SqliteConnection,
        table: &str,
        key: &str,
        cluster: &str,
    ) -> Result<Vec<StoredDoc>, StoreError> {
        Ok(sqlx::query(&sql::select_docs(table, key))
            .bind(cluster)
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?
            .into_iter()
            .map(|row| sql::doc_of(&row))
            .collect())
    }

    async fn commit(conn: &mut SqliteConnection, group: &[Submission]) -> Result<(), sqlx::Error> {
        let mut tx = conn.begin().await?;
        for write in group.iter().flat_map(|submission| &submission.writes) {
            for statement in sql::statements(write, NEXT_SEQ) {
                let mut query = sqlx::query(&statement.sql);
                for param in &statement.params {
                    query = query.bind(param.as_ref());
                }
                query.execute(&mut *tx).await?;
            }
        }
        tx.commit().await
    }
}

impl Store for SqliteStore {
    fn load(&self) -> BoxFuture<'_, Result<Vec<StoredCluster>, StoreError>> {
        // Read once at open (before the writer started), handed out here.
        let loaded = self.loaded.lock().unwrap().take().unwrap_or_default();
        Box::pin(async move { Ok(loaded) })
    }

    fn submit(
        &self,
        _lease: Option<LeaseToken>,
        writes: Vec<Write>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        // One process: no lease to check.
        self.queue.submit(None, writes)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.queue.close()
    }
}

impl Committer for SqliteWriter {
    fn commit<'a>(
        &'a mut self,
        group: &'a [Submission],
    ) -> BoxFuture<'a, Result<Vec<Result<(), StoreError>>, StoreError>> {
        Box::pin(async move {
            SqliteStore::commit(&mut self.conn, group)
                .await
                .map(|()| vec![Ok(()); group.len()])
                .map_err(db)
        })
    }

    fn close(self) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = self.conn.close().await;
        })
    }
}
