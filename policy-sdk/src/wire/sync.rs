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

/// Encodes `SyncMessageRef::Full(snapshot)` with the hosts (most of the bytes) encoded in
/// `parts` contiguous parts at once by `run` (e.g. on several threads): a message that
/// decodes to the same snapshot as [`codec::encode`](crate::wire::codec::encode) of it,
/// since a bincode message is its fields end to end and a sequence is its length then its
/// elements. Each part starts with a whole CPU flag list (a host's list may only refer to
/// the previous host's, and a part cannot see the previous part's), so the message is a few
/// lists longer; with one part it is the same bytes.
pub fn encode_full_in_parts(
    snapshot: &Snapshot,
    parts: usize,
    run: impl FnOnce(Vec<&[Host]>) -> Vec<Vec<u8>>,
) -> Result<Vec<u8>, crate::wire::codec::CodecError> {
    use crate::wire::codec::encode_append;
    let mut out = Vec::new();
    // The variant index of `Full`, then the snapshot's fields in declaration order.
    encode_append(&0u32, &mut out)?;
    encode_append(&snapshot.epoch, &mut out)?;
    encode_append(&snapshot.time_unix, &mut out)?;
    encode_append(&snapshot.cluster, &mut out)?;
    encode_append(&(snapshot.hosts.len() as u64), &mut out)?;
    let size = snapshot.hosts.len().div_ceil(parts.max(1)).max(1);
    for part in run(snapshot.hosts.chunks(size).collect()) {
        out.extend_from_slice(&part);
    }
    encode_append(&snapshot.vms, &mut out)?;
    Ok(out)
}

/// The encoding of some hosts end to end (one part of [`encode_full_in_parts`]).
pub fn encode_hosts(hosts: &[Host]) -> Vec<u8> {
    let mut out = Vec::new();
    crate::wire::codec::encode_append(&EndToEnd(hosts), &mut out).expect("a host always encodes");
    out
}

/// Hosts encoded end to end in one message (a tuple: no length), so that a host's CPU flags
/// may refer to the previous host's.
struct EndToEnd<'a>(&'a [Host]);

impl Serialize for EndToEnd<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = serializer.serialize_tuple(self.0.len())?;
        for host in self.0 {
            tuple.serialize_element(host)?;
        }
        tuple.end()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{host, snapshot, vm};
    use crate::wire::codec;

    #[test]
    fn a_full_snapshot_encoded_in_parts_decodes_to_the_same_snapshot() {
        let s = snapshot()
            .hosts((0..7).map(|i| {
                let flags: &[&str] = if i < 4 { &["aes", "avx2"] } else { &["vmx"] };
                host(&alloc::format!("h{i}")).cpu(2, 4, 2).cpu_flags(flags)
            }))
            .vm(vm("v").current_host("h1").build())
            .build();
        let whole = codec::encode(&SyncMessageRef::Full(&s)).unwrap();
        let decoded = |bytes: &[u8]| match codec::decode::<SyncMessage>(bytes).unwrap() {
            SyncMessage::Full(full) => full,
            other => panic!("{other:?}"),
        };
        assert_eq!(decoded(&whole), s);
        for parts in [1, 2, 3, 7, 10] {
            let split = encode_full_in_parts(&s, parts, |chunks| {
                chunks.into_iter().map(encode_hosts).collect()
            })
            .unwrap();
            // Each part starts with a whole flag list, so a split message is as long as the
            // whole one or longer by the lists that the parts repeat.
            assert!(split.len() >= whole.len(), "{parts} parts");
            assert_eq!(decoded(&split), s, "{parts} parts");
            if parts == 1 {
                assert_eq!(split, whole);
            }
        }
        let empty = Snapshot::default();
        let split = encode_full_in_parts(&empty, 2, |c| c.into_iter().map(encode_hosts).collect());
        assert_eq!(
            split.unwrap(),
            codec::encode(&SyncMessageRef::Full(&empty)).unwrap()
        );
    }
}
