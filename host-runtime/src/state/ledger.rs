//! The per-cluster state behind the mutation lock: pending records, placements, start
//! attempts, the pending rules and memory changes in flight. Every lifecycle transition of
//! a [`Cluster`](super::Cluster) holds it, which orders the records and the snapshot epochs.

use super::memory_change::MemoryInFlight;
use super::pending::PendingResources;
use super::placement::{PendingRules, Placement};
use std::collections::HashMap;

/// The per-cluster state behind the mutation lock.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) pending: PendingResources,
    pub(crate) placements: HashMap<String, Placement>,
    /// Hosts each starting VM was placed on, in order (for the retry blacklist).
    pub(crate) attempts: HashMap<String, Vec<String>>,
    pub(crate) rules: PendingRules,
    /// Memory hot plugs and unplugs in flight, by VM id.
    pub(crate) memory: HashMap<String, MemoryInFlight>,
}
