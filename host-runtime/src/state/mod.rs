//! The state layer: a cluster's snapshots over epochs, the pending ledger (records,
//! placements, start attempts), lifecycle releases and memory-change records.
//!
//! It knows neither the wasm engine nor scheduling: everything here is plain data and the
//! transitions between its states. The engine reads [`ClusterView`]s to sync guests; the
//! scheduling layer decides and then records its choices here.

mod cluster;
mod ledger;
mod memory_change;
pub(crate) mod pending;
mod placement;
mod validate;

pub use cluster::{Cluster, ClusterView};
pub use memory_change::{MemoryChangeDone, MemoryChangeKind, MemoryChangeRecord};
pub use pending::{PendingRecord, PendingResource};
pub(crate) use placement::Retry;
pub use placement::{
    FailedPlacement, HostRemoved, PendingRules, Placement, PlacementKind, Release, Reservation,
};
pub(crate) use validate::check_vm;

#[cfg(test)]
mod tests;
