//! The durable state of the service behind one trait: what a cluster is (snapshot and
//! policy) and which VMs hold pending reservations where.
//!
//! The service acknowledges a reservation only after [`Store::submit`]'s future resolved
//! `Ok`. Writes are submitted in the order the service decided them (the call itself
//! enqueues; the returned future only waits for the commit), so a store applies them in
//! that order; an implementation may group several submissions into one transaction
//! (group commit).
//!
//! Two implementations: [`crate::sqlite`] (one process, the default) and
//! [`crate::postgres`] (several replicas sharing one database). A shared store is written
//! only under a cluster's lease: every submission carries the lease's [`LeaseToken`] and
//! the database refuses it ([`StoreError::Fenced`]) once another replica took the lease
//! (see `docs/replicas.md`).

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;

/// A boxed future, so that `Store` stays object safe (`Arc<dyn Store>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the store could not do what it was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed (I/O, corruption, a full disk).
    #[error("store: {0}")]
    Database(String),
    /// A stored document could not be read back.
    #[error("store: cluster {cluster:?}: {message}")]
    Corrupt {
        /// The cluster whose data is unreadable.
        cluster: String,
        /// What is wrong.
        message: String,
    },
    /// The store was closed (the service is shutting down).
    #[error("store: closed")]
    Closed,
    /// The submission's lease token is no longer the cluster's: another replica took the
    /// cluster over (this replica was paused, cut off or too slow to renew). Nothing of
    /// the submission was written.
    #[error(
        "store: cluster {cluster:?}: lease lost (this replica wrote with token {token}, the \
         cluster's lease is now {current}); nothing written"
    )]
    Fenced {
        /// The cluster.
        cluster: String,
        /// The token the submission carried (0: none).
        token: i64,
        /// The cluster's current token (0: no lease).
        current: i64,
    },
}

/// The fencing token of a cluster's lease: it grows each time a replica takes the lease,
/// and a shared store accepts a cluster's writes only with its current token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseToken(pub i64);

/// How a cluster's policy was given: a builtin by name or a policy document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicySpec {
    /// A builtin policy (`wasmsched units` lists them), e.g. `"none"`, `"power_saving"`.
    Builtin(String),
    /// A policy document (the format of a policy file).
    Document {
        /// The document's text.
        text: String,
        /// `toml` (default) or `json`.
        #[serde(default = "default_format")]
        format: String,
    },
}

fn default_format() -> String {
    "toml".into()
}

impl Default for PolicySpec {
    fn default() -> Self {
        PolicySpec::Builtin("default".into())
    }
}

/// One VM's pending placement as stored: enough to call `Cluster::reserve` again.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPlacement {
    /// The VM's id.
    pub vm: String,
    /// The host it is placed on.
    pub host: String,
    /// The VM document (JSON) as it was scheduled.
    pub vm_doc: String,
    /// The placement kind (JSON of `wasmsched::PlacementKind`).
    pub kind: String,
}

/// One host or VM document written since the cluster's snapshot was last stored whole: it
/// replaces the snapshot's entry with the same id (a VM not in the snapshot is added).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDoc {
    /// The host's or VM's id.
    pub id: String,
    /// Its JSON document (a host's pending aggregate cleared).
    pub doc: String,
}

/// A cluster as stored: its snapshot without pending aggregates, the host and VM documents
/// written since, its policy, the placements and memory changes to re-apply.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCluster {
    /// The cluster's id.
    pub id: String,
    /// The snapshot (JSON), pending aggregates cleared.
    pub snapshot: String,
    /// Hosts written since the snapshot (usage updates, lifecycle accounting), by id.
    pub hosts: Vec<StoredDoc>,
    /// VMs written since the snapshot (started, failed, memory changes), by id.
    pub vms: Vec<StoredDoc>,
    /// The policy.
    pub policy: PolicySpec,
    /// Pending placements, in the order they were written.
    pub placements: Vec<StoredPlacement>,
    /// Memory changes in flight (JSON of `wasmsched::MemoryChangeRecord`), by VM id.
    pub memory_changes: Vec<String>,
}

/// One write. A submission of several writes is atomic.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Create or replace a cluster's snapshot and policy (its placements stay).
    PutCluster {
        /// Cluster id.
        cluster: String,
        /// Snapshot JSON, pending aggregates cleared.
        snapshot: String,
        /// Policy.
        policy: PolicySpec,
    },
    /// Replace a cluster's snapshot only (the host and VM documents written since the
    /// previous snapshot are part of it and go).
    PutSnapshot {
        /// Cluster id.
        cluster: String,
        /// Snapshot JSON, pending aggregates cleared.
        snapshot: String,
    },
    /// Replace a cluster's policy only.
    PutPolicy {
        /// Cluster id.
        cluster: String,
        /// Policy.
        policy: PolicySpec,
    },
    /// A VM is placed (replaces any earlier placement of the VM).
    Reserve {
        /// Cluster id.
        cluster: String,
        /// The placement.
        placement: StoredPlacement,
    },
    /// A VM no longer holds pending resources (started, failed, released, moved).
    Release {
        /// Cluster id.
        cluster: String,
        /// VM id.
        vm: String,
    },
    /// One host's document changed (usage figures, lifecycle accounting).
    PutHost {
        /// Cluster id.
        cluster: String,
        /// The host's document (JSON, pending aggregate cleared).
        host: StoredDoc,
    },
    /// One VM's snapshot document changed (started, failed, memory).
    PutVm {
        /// Cluster id.
        cluster: String,
        /// The VM's document (JSON).
        vm: StoredDoc,
    },
    /// A VM's memory change in flight: `record` (JSON of `wasmsched::MemoryChangeRecord`),
    /// or `None` when none is in flight any more.
    PutMemoryChange {
        /// Cluster id.
        cluster: String,
        /// VM id.
        vm: String,
        /// The record, or `None` to clear it.
        record: Option<String>,
    },
}

/// Durable state of the service. `Send + Sync`; shared as `Arc<dyn Store>`.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Everything stored, to rebuild the clusters at start-up.
    fn load(&self) -> BoxFuture<'_, Result<Vec<StoredCluster>, StoreError>>;

    /// Enqueues `writes` (atomically, after every earlier submission) and returns a future
    /// that resolves once they are durable. Enqueueing happens in this call, so callers
    /// that order their calls order their writes.
    ///
    /// `lease` is the token under which the writes' cluster is held. A store shared by
    /// several replicas requires it, requires every write of the submission to be about
    /// that one cluster, and refuses the whole submission with [`StoreError::Fenced`] when
    /// the token is no longer the cluster's; a single-process store ignores it.
    fn submit(
        &self,
        lease: Option<LeaseToken>,
        writes: Vec<Write>,
    ) -> BoxFuture<'static, Result<(), StoreError>>;

    /// Waits for every submitted write and closes the store; later submissions fail with
    /// [`StoreError::Closed`].
    fn close(&self) -> BoxFuture<'_, ()>;
}

impl Write {
    /// The cluster the write is about.
    pub fn cluster(&self) -> &str {
        match self {
            Write::PutCluster { cluster, .. }
            | Write::PutSnapshot { cluster, .. }
            | Write::PutPolicy { cluster, .. }
            | Write::Reserve { cluster, .. }
            | Write::Release { cluster, .. }
            | Write::PutHost { cluster, .. }
            | Write::PutVm { cluster, .. }
            | Write::PutMemoryChange { cluster, .. } => cluster,
        }
    }
}
