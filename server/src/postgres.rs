//! The shared store: PostgreSQL, for several `wasmsched serve` replicas
//! (`--store postgres://...`).
//!
//! Why PostgreSQL: state that outlives any one replica belongs in an existing, proven
//! database, not in a home-made consensus, and PostgreSQL is the database the reference
//! virtualization manager itself runs on. Its row locks give the fencing the replicas
//! need: every write transaction locks the lease rows of the clusters it writes
//! (`FOR SHARE`) and checks their tokens, and taking a lease updates that row; so a write
//! commits either before a takeover (and the new holder reads it when it rebuilds the
//! cluster) or not at all.
//!
//! Writes go through one writer task and one connection, like the SQLite store: every
//! submission waiting in the queue goes into one transaction (group commit). Lease work
//! (heartbeats, renewals, takeovers, rebuilding a cluster) uses a small pool beside it.
//! The schema lives in `server/migrations/postgres/`, applied at start.

use crate::commit::{CommitQueue, Committer, Submission};
use crate::lease::{Acquired, HeldLeases, LeaseView, Leases, Orphan, Replica};
use crate::metrics::Metrics;
use crate::sql;
use crate::store::{BoxFuture, LeaseToken, PolicySpec, Store, StoreError, StoredCluster, Write};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Row};
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// The schema, in order: (version, name, SQL). A database whose recorded version is
/// newer than the last one here is refused (an older binary must not write to it).
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "initial",
    include_str!("../migrations/postgres/0001_initial.sql"),
)];

/// Numbers a new placement after every earlier one, over every replica.
const NEXT_SEQ: &str = "nextval('placement_seq')";

/// Key of the advisory lock that serializes replicas migrating at the same time.
const MIGRATION_LOCK: i64 = 0x7761_736d_7363_6864; // "wasmschd"

/// How to reach the database and who this replica is.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/database` (or `?host=/socket/dir`).
    pub url: String,
    /// This replica: its id and the URL other replicas forward to.
    pub replica: Replica,
    /// How long a lease lasts without renewal (the takeover time after a crash).
    pub lease: Duration,
}

/// The PostgreSQL store and lease keeper of one replica.
#[derive(Debug)]
pub struct PostgresStore {
    pool: PgPool,
    replica: Replica,
    lease: Duration,
    queue: CommitQueue,
}

/// The writer task's connection.
struct PostgresWriter {
    conn: PgConnection,
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A duration from milliseconds as PostgreSQL computed them (negative: zero).
fn from_millis(ms: f64) -> Duration {
    Duration::from_secs_f64((ms / 1000.0).max(0.0))
}

impl PostgresStore {
    /// Connects, applies the schema migrations this binary knows, and starts the writer
    /// task on the current tokio runtime.
    pub async fn open(options: PostgresOptions, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(&options.url)
            .map_err(|e| StoreError::Database(format!("--store: {e}")))?
            .application_name(&format!("wasmsched {}", options.replica.id))
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(connect.clone())
            .await
            .map_err(|e| StoreError::Database(format!("--store: connecting: {e}")))?;
        Self::migrate(&pool).await?;
        let conn = PgConnection::connect_with(&connect).await.map_err(db)?;
        Ok(Self {
            pool,
            replica: options.replica,
            lease: options.lease,
            queue: CommitQueue::start(PostgresWriter { conn }, metrics),
        })
    }

    /// Applies the migrations not yet applied, in one transaction under an advisory lock
    /// (replicas starting together apply each migration once).
    async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
        let mut tx = pool.begin().await.map_err(db)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS wasmsched_migrations (
                version INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                applied TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let applied: Vec<i32> = sqlx::query("SELECT version FROM wasmsched_migrations")
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if let Some(newer) = applied.iter().find(|&&v| v > known) {
            return Err(StoreError::Database(format!(
                "the database's schema is at version {newer}, newer than this binary knows \
                 ({known}); upgrade wasmsched before serving from it"
            )));
        }
        for (version, name, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            sqlx::raw_sql(sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::Database(format!("migration {version} ({name}): {e}")))?;
            sqlx::query("INSERT INTO wasmsched_migrations (version, name) VALUES ($1, $2)")
                .bind(version)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            tracing::info!(version, name, "database schema migrated");
        }
        tx.commit().await.map_err(db)
    }

    /// What can be said of each submission before asking the database: every write of a
    /// submission must be about one cluster, under a lease token.
    fn fence(group: &[Submission]) -> Vec<Result<(), StoreError>> {
        group
            .iter()
            .map(|Submission { lease, writes }| {
                let Some(first) = writes.first() else {
                    return Ok(());
                };
                let cluster = first.cluster();
                if let Some(other) = writes.iter().find(|w| w.cluster() != cluster) {
                    return Err(StoreError::Database(format!(
                        "one submission wrote clusters {cluster:?} and {:?} (a lease \
                         covers one cluster)",
                        other.cluster()
                    )));
                }
                match lease {
                    Some(_) => Ok(()),
                    None => Err(StoreError::Fenced {
                        cluster: cluster.to_string(),
                        token: 0,
                        current: 0,
                    }),
                }
            })
            .collect()
    }

    /// One transaction: locks the lease rows of the group's clusters, refuses the
    /// submissions whose token is not current, applies the others; returns each
    /// submission's verdict once committed.
    async fn commit(
        conn: &mut PgConnection,
        group: &[Submission],
        mut verdicts: Vec<Result<(), StoreError>>,
    ) -> Result<Vec<Result<(), StoreError>>, sqlx::Error> {
        let mut tx = conn.begin().await?;
        let clusters: Vec<String> = group
            .iter()
            .zip(&verdicts)
            .filter(|(_, verdict)| verdict.is_ok())
            .filter_map(|(submission, _)| {
                submission.writes.first().map(|w| w.cluster().to_string())
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let current: HashMap<String, i64> = sqlx::query(
            "SELECT cluster, token FROM leases WHERE cluster = ANY($1) ORDER BY cluster \
             FOR SHARE",
        )
        .bind(&clusters)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
        for (Submission { lease, writes }, verdict) in group.iter().zip(verdicts.iter_mut()) {
            let (Ok(()), Some(first), Some(token)) = (&verdict, writes.first(), lease) else {
                continue;
            };
            let cluster = first.cluster();
            let now = current.get(cluster).copied().unwrap_or(0);
            if now != token.0 {
                *verdict = Err(StoreError::Fenced {
                    cluster: cluster.to_string(),
                    token: token.0,
                    current: now,
                });
                continue;
            }
            for write in writes {
                Self::apply(&mut tx, write).await?;
            }
        }
        tx.commit().await?;
        Ok(verdicts)
    }

    async fn apply(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        write: &Write,
    ) -> Result<(), sqlx::Error> {
        for statement in sql::statements(write, NEXT_SEQ) {
            let mut query = sqlx::query(&statement.sql);
            for param in &statement.params {
                query = query.bind(param.as_ref());
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Reads one cluster in one consistent snapshot of the database.
    async fn read_cluster(&self, id: &str) -> Result<Option<StoredCluster>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let Some(row) = sqlx::query("SELECT snapshot, policy FROM clusters WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
        else {
            return Ok(None);
        };
        let policy: PolicySpec =
            serde_json::from_str(row.get::<&str, _>(1)).map_err(|e| StoreError::Corrupt {
                cluster: id.to_string(),
                message: format!("policy: {e}"),
            })?;
        let snapshot: String = row.get(0);
        let placements = sqlx::query(sql::SELECT_PLACEMENTS)
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?
            .into_iter()
            .map(|row| sql::placement_of(&row))
            .collect();
        let mut docs = BTreeMap::new();
        for (table, key) in [("host_docs", "host"), ("vm_docs", "vm")] {
            let rows = sqlx::query(&sql::select_docs(table, key))
                .bind(id)
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?;
            docs.insert(
                table,
                rows.into_iter()
                    .map(|row| sql::doc_of(&row))
                    .collect::<Vec<_>>(),
            );
        }
        let memory_changes = sqlx::query(sql::SELECT_MEMORY_CHANGES)
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?
            .into_iter()
            .map(|row| row.get(0))
            .collect();
        tx.commit().await.map_err(db)?;
        Ok(Some(StoredCluster {
            id: id.to_string(),
            snapshot,
            hosts: docs.remove("host_docs").unwrap_or_default(),
            vms: docs.remove("vm_docs").unwrap_or_default(),
            policy,
            placements,
            memory_changes,
        }))
    }

    /// Who holds `cluster`'s lease (when held and not expired), read in `executor`.
    async fn holder<'e>(
        executor: impl sqlx::PgExecutor<'e>,
        cluster: &str,
    ) -> Result<(bool, Option<(Replica, Duration)>), StoreError> {
        let row = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM clusters WHERE id = $1), l.holder, \
             COALESCE(r.url, ''), \
             (EXTRACT(EPOCH FROM (l.expires - now())) * 1000)::float8 \
             FROM (SELECT 1) AS one \
             LEFT JOIN leases l ON l.cluster = $1 \
             LEFT JOIN replicas r ON r.id = l.holder",
        )
        .bind(cluster)
        .fetch_one(executor)
        .await
        .map_err(db)?;
        let stored: bool = row.get(0);
        let holder: Option<String> = row.get(1);
        let remaining: Option<f64> = row.get(3);
        let held = match (holder, remaining) {
            (Some(id), Some(ms)) if ms > 0.0 => Some((
                Replica {
                    id,
                    url: row.get(2),
                },
                from_millis(ms),
            )),
            _ => None,
        };
        Ok((stored, held))
    }
}

impl Store for PostgresStore {
    /// Nothing: a replica rebuilds a cluster when it takes its lease
    /// ([`Leases::load_cluster`]), not at start.
    fn load(&self) -> BoxFuture<'_, Result<Vec<StoredCluster>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn submit(
        &self,
        lease: Option<LeaseToken>,
        writes: Vec<Write>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.queue.submit(lease, writes)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.queue.close()
    }
}

impl Leases for PostgresStore {
    fn replica(&self) -> &Replica {
        &self.replica
    }

    fn lease_duration(&self) -> Duration {
        self.lease
    }

    fn heartbeat(&self) -> BoxFuture<'_, Result<Vec<Replica>, StoreError>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO replicas (id, url, heartbeat) VALUES ($1, $2, now()) \
                 ON CONFLICT (id) DO UPDATE SET url = excluded.url, heartbeat = now()",
            )
            .bind(&self.replica.id)
            .bind(&self.replica.url)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            let rows = sqlx::query(
                "SELECT id, url FROM replicas \
                 WHERE heartbeat > now() - ($1::float8 * interval '1 millisecond') ORDER BY id",
            )
            .bind(millis(self.lease))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            Ok(rows
                .into_iter()
                .map(|row| Replica {
                    id: row.get(0),
                    url: row.get(1),
                })
                .collect())
        })
    }

    fn view(&self, cluster: &str) -> BoxFuture<'_, Result<LeaseView, StoreError>> {
        let cluster = cluster.to_string();
        Box::pin(async move {
            let (stored, held) = Self::holder(&self.pool, &cluster).await?;
            Ok(LeaseView { stored, held })
        })
    }

    fn acquire(&self, cluster: &str) -> BoxFuture<'_, Result<Acquired, StoreError>> {
        let cluster = cluster.to_string();
        Box::pin(async move {
            let mut tx = self.pool.begin().await.map_err(db)?;
            let granted = sqlx::query(
                "INSERT INTO leases (cluster, holder, token, expires) \
                 VALUES ($1, $2, 1, now() + ($3::float8 * interval '1 millisecond')) \
                 ON CONFLICT (cluster) DO UPDATE SET holder = excluded.holder, \
                 token = leases.token + 1, expires = excluded.expires \
                 WHERE leases.holder IS NULL OR leases.expires < now() \
                 OR leases.holder = excluded.holder \
                 RETURNING token",
            )
            .bind(&cluster)
            .bind(&self.replica.id)
            .bind(millis(self.lease))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            let acquired = match granted {
                Some(row) => Acquired::Granted(LeaseToken(row.get(0))),
                None => match Self::holder(&mut *tx, &cluster).await?.1 {
                    Some((holder, remaining)) => Acquired::Held { holder, remaining },
                    // Expired between the two statements: the next attempt takes it.
                    None => Acquired::Held {
                        holder: Replica {
                            id: String::new(),
                            url: String::new(),
                        },
                        remaining: Duration::ZERO,
                    },
                },
            };
            tx.commit().await.map_err(db)?;
            Ok(acquired)
        })
    }

    fn renew(&self, held: HeldLeases) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            if held.is_empty() {
                return Ok(Vec::new());
            }
            let (clusters, tokens): (Vec<String>, Vec<i64>) =
                held.into_iter().map(|(c, t)| (c, t.0)).unzip();
            let rows = sqlx::query(
                "UPDATE leases AS l \
                 SET expires = now() + ($1::float8 * interval '1 millisecond') \
                 FROM UNNEST($2::text[], $3::bigint[]) AS h(cluster, token) \
                 WHERE l.cluster = h.cluster AND l.token = h.token AND l.holder = $4 \
                 RETURNING l.cluster",
            )
            .bind(millis(self.lease))
            .bind(&clusters)
            .bind(&tokens)
            .bind(&self.replica.id)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            Ok(rows.into_iter().map(|row| row.get(0)).collect())
        })
    }

    fn release(&self, held: HeldLeases) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (clusters, tokens): (Vec<String>, Vec<i64>) =
                held.into_iter().map(|(c, t)| (c, t.0)).unzip();
            sqlx::query(
                "UPDATE leases AS l SET holder = NULL, expires = now() \
                 FROM UNNEST($1::text[], $2::bigint[]) AS h(cluster, token) \
                 WHERE l.cluster = h.cluster AND l.token = h.token AND l.holder = $3",
            )
            .bind(&clusters)
            .bind(&tokens)
            .bind(&self.replica.id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(())
        })
    }

    fn leave(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM replicas WHERE id = $1")
                .bind(&self.replica.id)
                .execute(&self.pool)
                .await
                .map_err(db)?;
            Ok(())
        })
    }

    fn orphans(&self) -> BoxFuture<'_, Result<Vec<Orphan>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT c.id, CASE WHEN l.holder IS NULL THEN 0 ELSE \
                 (EXTRACT(EPOCH FROM (now() - l.expires)) * 1000)::float8 END \
                 FROM clusters c LEFT JOIN leases l ON l.cluster = c.id \
                 WHERE l.cluster IS NULL OR l.holder IS NULL OR l.expires < now() \
                 ORDER BY c.id",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            Ok(rows
                .into_iter()
                .map(|row| Orphan {
                    cluster: row.get(0),
                    expired_for: from_millis(row.get(1)),
                })
                .collect())
        })
    }

    fn load_cluster(
        &self,
        cluster: &str,
    ) -> BoxFuture<'_, Result<Option<StoredCluster>, StoreError>> {
        let cluster = cluster.to_string();
        Box::pin(async move { self.read_cluster(&cluster).await })
    }
}

impl Committer for PostgresWriter {
    fn commit<'a>(
        &'a mut self,
        group: &'a [Submission],
    ) -> BoxFuture<'a, Result<Vec<Result<(), StoreError>>, StoreError>> {
        Box::pin(async move {
            let verdicts = PostgresStore::fence(group);
            PostgresStore::commit(&mut self.conn, group, verdicts)
                .await
                .map_err(db)
        })
    }

    fn close(self) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = self.conn.close().await;
        })
    }
}
