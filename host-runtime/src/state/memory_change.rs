//! Memory hot plug and unplug records: a change planned for a running VM waits here until the
//! engine confirms it or reports its failure (see `Cluster::confirm_memory_change`).

use super::placement::Release;
use policy_sdk::MemoryDevice;
use serde::Serialize;

/// A memory change recorded in the ledger, waiting for confirmation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MemoryInFlight {
    /// The host the VM runs on.
    pub(crate) host: String,
    /// Plug or unplug.
    pub(crate) kind: MemoryInFlightKind,
}

/// What is in flight.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MemoryInFlightKind {
    /// One DIMM being plugged.
    Plug { device: MemoryDevice },
    /// DIMMs being unplugged, by id.
    Unplug { devices: Vec<String> },
}

impl MemoryInFlightKind {
    /// `plug` or `unplug`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            MemoryInFlightKind::Plug { .. } => "plug",
            MemoryInFlightKind::Unplug { .. } => "unplug",
        }
    }
}

/// What [`Cluster::confirm_memory_change`](super::Cluster::confirm_memory_change) or
/// [`Cluster::fail_memory_change`](super::Cluster::fail_memory_change) did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryChangeDone {
    /// VM id.
    pub vm: String,
    /// `plug` or `unplug`.
    pub kind: &'static str,
    /// The devices plugged or unplugged (or, after a failure, left as they were).
    pub devices: Vec<String>,
    /// The VM's memory now, in MiB.
    pub memory_mb: u64,
    /// The pending record released (a plug) and the epoch published.
    pub release: Release,
}
