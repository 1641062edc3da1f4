//! Memory hot plug and unplug records: a change planned for a running VM waits here until the
//! engine confirms it or reports its failure (see `Cluster::confirm_memory_change`).

use super::pending::PendingResource;
use super::placement::Release;
use policy_sdk::MemoryDevice;
use serde::{Deserialize, Serialize};

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

/// A memory change in flight as data, for a durable store to keep and give back with
/// [`Cluster::restore_memory_change`](super::Cluster::restore_memory_change) after a
/// restart (see [`Cluster::memory_change`](super::Cluster::memory_change)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryChangeRecord {
    /// VM id.
    pub vm: String,
    /// The host the VM runs on.
    pub host: String,
    /// Plug or unplug.
    pub change: MemoryChangeKind,
}

/// What a [`MemoryChangeRecord`] has in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MemoryChangeKind {
    /// One DIMM being plugged; its memory is pending on the host.
    Plug {
        /// The DIMM.
        device: MemoryDevice,
        /// The pending record's resource.
        pending: PendingResource,
    },
    /// DIMMs being unplugged, by id (the VM in the snapshot marks them `unplugging`).
    Unplug {
        /// Device ids.
        devices: Vec<String>,
    },
}
