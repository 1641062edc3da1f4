//! Snapshot sync messages: how a guest's copy of the snapshot is brought up to an epoch,
//! a full snapshot or a delta of [`Change`]s (see "Snapshot sync" in `ABI.md`).

use crate::model::{
    ClusterInfo, Host, HostIndex, HostStatus, HostUsage, PendingAggregate, Snapshot, Vm,
};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Brings a guest's copy of the snapshot up to date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SyncMessage {
    /// Replace the whole snapshot.
    Full(Snapshot),
    /// Apply changes to the snapshot at `from_epoch`, giving the snapshot at `to_epoch`.
    Delta {
        /// Epoch the guest must hold.
        from_epoch: u64,
        /// Epoch after applying the changes.
        to_epoch: u64,
        /// Changes, in order.
        changes: Vec<Change>,
    },
}

/// One change to a snapshot. Host and guest apply changes with the same function
/// ([`Change::apply`]), so both sides hold the same snapshot after the same changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// A host's pending aggregate changed.
    SetPending {
        /// Host index.
        host: HostIndex,
        /// New aggregate.
        pending: PendingAggregate,
    },
    /// A host's status changed.
    SetHostStatus {
        /// Host index.
        host: HostIndex,
        /// New status.
        status: HostStatus,
    },
    /// A host's data changed (any field).
    ReplaceHost {
        /// Host index.
        host: HostIndex,
        /// New host data.
        value: Host,
    },
    /// A host joined the cluster (appended; existing indices stay valid).
    AddHost(Host),
    /// A host left the cluster (later hosts move down one index).
    RemoveHost {
        /// Host index.
        host: HostIndex,
    },
    /// A VM was added or changed (matched by id; appended when new).
    UpsertVm(Vm),
    /// A VM left the cluster (by id; later VMs move down one index).
    RemoveVm(String),
    /// Cluster settings changed.
    SetCluster(ClusterInfo),
    /// The snapshot's wall-clock time ([`Snapshot::time_unix`]) moved.
    SetTime {
        /// Unix seconds.
        time_unix: u64,
    },
    /// Usage figures of some hosts changed (the engine's periodic host stats refresh):
    /// a few numbers per host instead of a [`Change::ReplaceHost`] of the whole host.
    /// ABI version 5.
    SetUsage(Vec<(HostIndex, HostUsage)>),
}

fn host_mut(snapshot: &mut Snapshot, host: HostIndex) -> Result<&mut Host, String> {
    let len = snapshot.hosts.len();
    snapshot
        .hosts
        .get_mut(host as usize)
        .ok_or_else(|| format!("change names host index {host}, snapshot has {len}"))
}

impl Change {
    /// Applies this change to `snapshot`, moving its data in. Fails (without changing
    /// anything) when the change names a host index the snapshot lacks.
    pub fn apply(self, snapshot: &mut Snapshot) -> Result<(), String> {
        match self {
            Change::SetPending { host, pending } => host_mut(snapshot, host)?.pending = pending,
            Change::SetHostStatus { host, status } => host_mut(snapshot, host)?.status = status,
            Change::ReplaceHost { host, value } => *host_mut(snapshot, host)? = value,
            Change::AddHost(host) => snapshot.hosts.push(host),
            Change::RemoveHost { host } => {
                host_mut(snapshot, host)?;
                snapshot.hosts.remove(host as usize);
            }
            Change::UpsertVm(vm) => match snapshot.vms.iter_mut().find(|v| v.id == vm.id) {
                Some(existing) => *existing = vm,
                None => snapshot.vms.push(vm),
            },
            Change::RemoveVm(id) => {
                if let Some(pos) = snapshot.vms.iter().position(|v| v.id == id) {
                    snapshot.vms.remove(pos);
                }
            }
            Change::SetCluster(info) => snapshot.cluster = info,
            Change::SetTime { time_unix } => snapshot.time_unix = time_unix,
            Change::SetUsage(usage) => {
                let len = snapshot.hosts.len();
                if let Some((host, _)) = usage.iter().find(|(h, _)| *h as usize >= len) {
                    return Err(format!(
                        "change names host index {host}, snapshot has {len}"
                    ));
                }
                for (host, usage) in usage {
                    usage.apply_to(&mut snapshot.hosts[host as usize]);
                }
            }
        }
        Ok(())
    }
}

/// Applies a sync message to a snapshot (the guest's copy, or a host-side mirror).
pub fn apply_sync(snapshot: &mut Snapshot, message: SyncMessage) -> Result<(), String> {
    match message {
        SyncMessage::Full(full) => {
            *snapshot = full;
            Ok(())
        }
        SyncMessage::Delta {
            from_epoch,
            to_epoch,
            changes,
        } => {
            if snapshot.epoch != from_epoch {
                return Err(format!(
                    "delta from epoch {from_epoch} but the guest holds epoch {}",
                    snapshot.epoch
                ));
            }
            for change in changes {
                change.apply(snapshot)?;
            }
            snapshot.epoch = to_epoch;
            Ok(())
        }
    }
}

/// Borrowed twin of [`SyncMessage`]: encodes to the same bytes without cloning the
/// snapshot or the changes (what the host sends).
#[derive(Debug, Serialize)]
pub enum SyncMessageRef<'a> {
    /// A whole snapshot.
    Full(&'a Snapshot),
    /// The changes from `from_epoch` to `to_epoch`.
    Delta {
        /// The epoch the guest holds.
        from_epoch: u64,
        /// The epoch the guest reaches.
        to_epoch: u64,
        /// The changes in between, in order.
        changes: Vec<&'a Change>,
    },
}

/// The guest's answer to a sync message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SyncResponse {
    /// The guest now holds this epoch.
    Synced {
        /// Epoch now held.
        epoch: u64,
    },
    /// The message could not be applied; the host must send a full snapshot.
    Failed(String),
}
