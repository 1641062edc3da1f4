//! Cluster leases, for replicas sharing one store: which replica decides a cluster, until
//! when, under which fencing token; and which replicas are alive and where they listen.
//!
//! A replica decides a cluster only while it holds the cluster's lease. Taking a lease
//! (a new cluster, a free one, or one whose holder stopped renewing it) raises the
//! cluster's [`LeaseToken`]; the store refuses writes carrying an older token, so a holder
//! that was paused or cut off past its lease can never write again after another replica
//! took over (see `docs/replicas.md`). Expiry is judged by the database's clock only, so
//! the replicas' clocks need not agree.

use crate::store::{BoxFuture, LeaseToken, StoreError, StoredCluster};
use std::time::Duration;

/// Leases a replica holds: each cluster with its token.
pub type HeldLeases = Vec<(String, LeaseToken)>;

/// A replica: its id and the base URL other replicas forward requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Unique among the replicas sharing a store (`--replica-id`).
    pub id: String,
    /// Base URL, e.g. `http://10.0.0.5:8080` (`--advertise`).
    pub url: String,
}

/// The outcome of trying to take a cluster's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This replica holds the lease now, under a token no earlier holder had.
    Granted(LeaseToken),
    /// Another replica holds it, for `remaining` more unless it renews.
    Held {
        /// The holder (its URL is empty when it has no live registration).
        holder: Replica,
        /// Time left on its lease.
        remaining: Duration,
    },
}

/// What the store knows of one cluster's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// Whether the cluster is stored (created by some replica).
    pub stored: bool,
    /// The holder and the time left on its lease, when the lease is held and not expired.
    pub held: Option<(Replica, Duration)>,
}

/// A stored cluster nobody holds: its lease is free (released, or never taken) or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The cluster.
    pub cluster: String,
    /// How long ago the lease expired (zero for a released or never-taken lease).
    pub expired_for: Duration,
}

/// Lease operations of a store shared by replicas (implemented by
/// [`crate::postgres::PostgresStore`]).
pub trait Leases: Send + Sync + std::fmt::Debug {
    /// This replica.
    fn replica(&self) -> &Replica;

    /// How long a lease lasts without renewal.
    fn lease_duration(&self) -> Duration;

    /// Records that this replica is alive (and where it listens); returns every live
    /// replica, this one included, by id.
    fn heartbeat(&self) -> BoxFuture<'_, Result<Vec<Replica>, StoreError>>;

    /// The lease of `cluster` as the store sees it now.
    fn view(&self, cluster: &str) -> BoxFuture<'_, Result<LeaseView, StoreError>>;

    /// Takes the lease of `cluster` when it is free, expired, or already this replica's
    /// (each grant is a new token, which fences every earlier one).
    fn acquire(&self, cluster: &str) -> BoxFuture<'_, Result<Acquired, StoreError>>;

    /// Extends the leases this replica holds under these tokens; returns the clusters
    /// whose lease was extended (the others were taken over).
    fn renew(&self, held: HeldLeases) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;

    /// Gives leases up at once (graceful shutdown, or a lease taken for a cluster that
    /// was never created), so other replicas need not wait for them to expire.
    fn release(&self, held: HeldLeases) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Removes this replica's registration (graceful shutdown).
    fn leave(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Stored clusters that no replica holds.
    fn orphans(&self) -> BoxFuture<'_, Result<Vec<Orphan>, StoreError>>;

    /// Everything stored about one cluster, to rebuild it after taking its lease.
    fn load_cluster(
        &self,
        cluster: &str,
    ) -> BoxFuture<'_, Result<Option<StoredCluster>, StoreError>>;
}

/// The replica that should decide `cluster` among `live` ones: the highest hash of
/// (cluster, replica id), so clusters spread evenly and a replica that leaves moves only
/// its own clusters (rendezvous hashing). `None` when `live` is empty.
pub fn preferred<'a>(cluster: &str, live: &'a [Replica]) -> Option<&'a Replica> {
    live.iter()
        .max_by_key(|r| (affinity(cluster, &r.id), &r.id))
}

/// FNV-1a over `cluster`, a separator and `replica`, then a final mix: stable across
/// builds and platforms (unlike `std`'s hasher), which replicas of different versions
/// must agree on.
fn affinity(cluster: &str, replica: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in cluster.bytes().chain([0xff]).chain(replica.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(n: usize) -> Vec<Replica> {
        (0..n)
            .map(|i| Replica {
                id: format!("replica-{i}"),
                url: format!("http://127.0.0.1:{}", 9000 + i),
            })
            .collect()
    }

    #[test]
    fn preferred_replica_spreads_clusters_and_moves_only_the_leavers_clusters() {
        let three = replicas(3);
        let clusters: Vec<String> = (0..300).map(|i| format!("cluster-{i}")).collect();
        let owner = |live: &[Replica], c: &str| preferred(c, live).unwrap().id.clone();
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for c in &clusters {
            *counts.entry(owner(&three, c)).or_default() += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(
            counts.values().all(|&n| (70..=130).contains(&n)),
            "{counts:?}"
        );
        // replica-1 leaves: only its clusters move.
        let two: Vec<Replica> = three
            .iter()
            .filter(|r| r.id != "replica-1")
            .cloned()
            .collect();
        for c in &clusters {
            let before = owner(&three, c);
            if before != "replica-1" {
                assert_eq!(owner(&two, c), before, "{c} moved");
            }
        }
        assert_eq!(preferred("c", &[]), None);
    }
}
