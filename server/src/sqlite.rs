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
use crate::store::{
    BoxFuture, LeaseToken, PolicySpec, Store, StoreError, StoredCluster, StoredDoc,
    StoredPlacement, Write,
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

/// The writer task's connection, and the last placement sequence number.
struct SqliteWriter {
    conn: SqliteConnection,
    seq: i64,
}

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
        let seq = sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM placements")
            .fetch_one(&mut conn)
            .await
            .map_err(db)?
            .get::<i64, _>(0);
        Ok(Self {
            queue: CommitQueue::start(SqliteWriter { conn, seq }, metrics),
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
            cluster.placements = sqlx::query(
                "SELECT vm, host, kind, vm_doc FROM placements WHERE cluster = ? ORDER BY seq",
            )
            .bind(&cluster.id)
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?
            .into_iter()
            .map(|row| StoredPlacement {
                vm: row.get(0),
                host: row.get(1),
                kind: row.get(2),
                vm_doc: row.get(3),
            })
            .collect();
            cluster.hosts = Self::read_docs(conn, "host_docs", "host", &cluster.id).await?;
            cluster.vms = Self::read_docs(conn, "vm_docs", "vm", &cluster.id).await?;
            cluster.memory_changes =
                sqlx::query("SELECT record FROM memory_changes WHERE cluster = ? ORDER BY vm")
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
        Ok(sqlx::query(&format!(
            "SELECT {key}, doc FROM {table} WHERE cluster = ? ORDER BY {key}"
        ))
        .bind(cluster)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?
        .into_iter()
        .map(|row| StoredDoc {
            id: row.get(0),
            doc: row.get(1),
        })
        .collect())
    }

    async fn commit(
        conn: &mut SqliteConnection,
        group: &[Submission],
        seq: &mut i64,
    ) -> Result<(), sqlx::Error> {
        let mut tx = conn.begin().await?;
        for write in group.iter().flat_map(|submission| &submission.writes) {
            match write {
                Write::PutCluster {
                    cluster,
                    snapshot,
                    policy,
                } => {
                    sqlx::query(
                        "INSERT INTO clusters (id, snapshot, policy) VALUES (?, ?, ?) \
                         ON CONFLICT(id) DO UPDATE SET snapshot = excluded.snapshot, \
                         policy = excluded.policy",
                    )
                    .bind(cluster)
                    .bind(snapshot)
                    .bind(serde_json::to_string(policy).unwrap_or_default())
                    .execute(&mut *tx)
                    .await?;
                    Self::clear_docs(&mut tx, cluster).await?;
                }
                Write::PutSnapshot { cluster, snapshot } => {
                    sqlx::query("UPDATE clusters SET snapshot = ? WHERE id = ?")
                        .bind(snapshot)
                        .bind(cluster)
                        .execute(&mut *tx)
                        .await?;
                    Self::clear_docs(&mut tx, cluster).await?;
                }
                Write::PutPolicy { cluster, policy } => {
                    sqlx::query("UPDATE clusters SET policy = ? WHERE id = ?")
                        .bind(serde_json::to_string(policy).unwrap_or_default())
                        .bind(cluster)
                        .execute(&mut *tx)
                        .await?;
                }
                Write::Reserve { cluster, placement } => {
                    *seq += 1;
                    sqlx::query(
                        "INSERT INTO placements (cluster, vm, host, kind, vm_doc, seq) \
                         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(cluster, vm) DO UPDATE SET \
                         host = excluded.host, kind = excluded.kind, \
                         vm_doc = excluded.vm_doc, seq = excluded.seq",
                    )
                    .bind(cluster)
                    .bind(&placement.vm)
                    .bind(&placement.host)
                    .bind(&placement.kind)
                    .bind(&placement.vm_doc)
                    .bind(*seq)
                    .execute(&mut *tx)
                    .await?;
                }
                Write::Release { cluster, vm } => {
                    sqlx::query("DELETE FROM placements WHERE cluster = ? AND vm = ?")
                        .bind(cluster)
                        .bind(vm)
                        .execute(&mut *tx)
                        .await?;
                }
                Write::PutHost { cluster, host } => {
                    Self::put_doc(&mut tx, "host_docs", "host", cluster, host).await?;
                }
                Write::PutVm { cluster, vm } => {
                    Self::put_doc(&mut tx, "vm_docs", "vm", cluster, vm).await?;
                }
                Write::PutMemoryChange {
                    cluster,
                    vm,
                    record: Some(record),
                } => {
                    sqlx::query(
                        "INSERT INTO memory_changes (cluster, vm, record) VALUES (?, ?, ?) \
                         ON CONFLICT(cluster, vm) DO UPDATE SET record = excluded.record",
                    )
                    .bind(cluster)
                    .bind(vm)
                    .bind(record)
                    .execute(&mut *tx)
                    .await?;
                }
                Write::PutMemoryChange {
                    cluster,
                    vm,
                    record: None,
                } => {
                    sqlx::query("DELETE FROM memory_changes WHERE cluster = ? AND vm = ?")
                        .bind(cluster)
                        .bind(vm)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await
    }

    /// Creates or replaces one document of `cluster` in `table` (keyed by `key`).
    async fn put_doc(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        table: &str,
        key: &str,
        cluster: &str,
        doc: &StoredDoc,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "INSERT INTO {table} (cluster, {key}, doc) VALUES (?, ?, ?) \
             ON CONFLICT(cluster, {key}) DO UPDATE SET doc = excluded.doc"
        ))
        .bind(cluster)
        .bind(&doc.id)
        .bind(&doc.doc)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// A whole snapshot was written: the host and VM documents written before it are in it.
    async fn clear_docs(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        cluster: &str,
    ) -> Result<(), sqlx::Error> {
        for table in ["host_docs", "vm_docs"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE cluster = ?"))
                .bind(cluster)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
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
            SqliteStore::commit(&mut self.conn, group, &mut self.seq)
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
