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
    /// The start of a full snapshot sent in parts (version 10), for a large snapshot: its
    /// epoch, time and cluster settings, and how many hosts follow in
    /// [`SyncMessage::FullHosts`] parts before [`SyncMessage::FullEnd`].
    FullBegin {
        /// Epoch of the snapshot.
        epoch: u64,
        /// Its wall-clock time.
        time_unix: u64,
        /// Its cluster settings.
        cluster: ClusterInfo,
        /// Its number of hosts.
        hosts: u32,
    },
    /// The next hosts of a full snapshot sent in parts, from index `first` (version 10).
    FullHosts {
        /// Index of the first host: the number of hosts sent before.
        first: u32,
        /// The hosts.
        hosts: Vec<Host>,
    },
    /// The end of a full snapshot sent in parts: its VMs (version 10). The guest holds
    /// the snapshot once it has every host.
    FullEnd(Vec<Vm>),
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
    /// Pending resources were added to a host's aggregate (a reservation): merged in with
    /// [`PendingAggregate::merge`]. The engine sends it for a reservation instead of a
    /// [`Change::SetPending`] of the whole aggregate, so a reservation costs its own size,
    /// not its host's. ABI version 11.
    AddPending {
        /// Host index.
        host: HostIndex,
        /// What was added.
        added: PendingAggregate,
    },
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
            Change::ReplaceHost { host, value } => *host_mut(snapshot, host)? = value,
            Change::AddHost(host) => snapshot.hosts.push(host),
            Change::UpsertVm(vm) => match snapshot.vms.iter_mut().find(|v| v.id == vm.id) {
                Some(existing) => *existing = vm,
                None => snapshot.vms.push(vm),
            },
            Change::SetCluster(info) => snapshot.cluster = info,
            // The snapshot keeps nothing of these changes' data: read where it is.
            read @ (Change::AddPending { .. }
            | Change::SetHostStatus { .. }
            | Change::RemoveHost { .. }
            | Change::RemoveVm(_)
            | Change::SetTime { .. }
            | Change::SetUsage(_)) => read.apply_copy(snapshot)?,
        }
        Ok(())
    }

    /// [`Change::apply`] of a change that is kept (a log's): copies only what the
    /// snapshot keeps. A change whose data the snapshot keeps nothing of (pending
    /// resources merged in, usage figures written into hosts, a status, a removal, the
    /// time) is read where it is; a host, a VM, a pending aggregate or cluster settings
    /// put into the snapshot are copied.
    pub fn apply_copy(&self, snapshot: &mut Snapshot) -> Result<(), String> {
        match self {
            Change::AddPending { host, added } => add_pending(snapshot, *host, added)?,
            Change::SetHostStatus { host, status } => host_mut(snapshot, *host)?.status = *status,
            Change::RemoveHost { host } => {
                host_mut(snapshot, *host)?;
                snapshot.hosts.remove(*host as usize);
            }
            Change::RemoveVm(id) => {
                if let Some(pos) = snapshot.vms.iter().position(|v| v.id == *id) {
                    snapshot.vms.remove(pos);
                }
            }
            Change::SetTime { time_unix } => snapshot.time_unix = *time_unix,
            Change::SetUsage(usage) => {
                let len = snapshot.hosts.len();
                if let Some((host, _)) = usage.iter().find(|(h, _)| *h as usize >= len) {
                    return Err(format!(
                        "change names host index {host}, snapshot has {len}"
                    ));
                }
                for (host, usage) in usage {
                    usage.apply_to(&mut snapshot.hosts[*host as usize]);
                }
            }
            moved @ (Change::SetPending { .. }
            | Change::ReplaceHost { .. }
            | Change::AddHost(_)
            | Change::UpsertVm(_)
            | Change::SetCluster(_)) => moved.clone().apply(snapshot)?,
        }
        Ok(())
    }
}

/// Merges pending resources added to a host into its aggregate.
fn add_pending(
    snapshot: &mut Snapshot,
    host: HostIndex,
    added: &PendingAggregate,
) -> Result<(), String> {
    host_mut(snapshot, host)?
        .pending
        .merge(added)
        .map_err(|e| format!("pending resources added to host index {host}: {e}"))
}

/// The changes that bring a snapshot from one epoch to the next: a
/// [`SyncMessage::Delta`] as [`decode_sync_into`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    /// Epoch the snapshot must hold.
    pub from_epoch: u64,
    /// Epoch after applying the changes.
    pub to_epoch: u64,
    /// Changes, in order.
    pub changes: Vec<Change>,
}

impl Delta {
    /// Applies the changes to `snapshot`, which must hold `from_epoch`.
    pub fn apply(self, snapshot: &mut Snapshot) -> Result<(), String> {
        if snapshot.epoch != self.from_epoch {
            return Err(format!(
                "delta from epoch {} but the guest holds epoch {}",
                self.from_epoch, snapshot.epoch
            ));
        }
        for change in self.changes {
            change.apply(snapshot)?;
        }
        snapshot.epoch = self.to_epoch;
        Ok(())
    }
}

/// What [`decode_sync_into`] found in a sync message.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A whole snapshot, now in the snapshot.
    Full,
    /// Changes, to apply with [`Delta::apply`].
    Delta(Delta),
    /// The start of a snapshot sent in parts: its epoch, time and cluster settings are in
    /// the snapshot, which keeps at most its first `hosts` hosts (their storage is reused).
    FullBegin {
        /// Hosts the snapshot has.
        hosts: u32,
    },
    /// Hosts `first..first + count` of a snapshot sent in parts, now in the snapshot.
    FullHosts {
        /// Index of the first host of the part.
        first: u32,
        /// Hosts in the part.
        count: u32,
    },
    /// The end of a snapshot sent in parts: its VMs are in the snapshot.
    FullEnd,
}

/// Decodes the sync message in `bytes` into the snapshot it changes. A full snapshot, or a
/// part of one, is decoded straight into `snapshot`, reusing its storage (the hosts'
/// vectors and strings) instead of building a new snapshot and then dropping the old one;
/// a delta is returned to be applied. After an error, or until the end of a snapshot sent
/// in parts, `snapshot` may hold part of a full snapshot: the caller must treat it as
/// holding nothing.
pub fn decode_sync_into(
    bytes: &[u8],
    snapshot: &mut Snapshot,
) -> Result<Received, crate::wire::codec::CodecError> {
    crate::wire::codec::decode_seed(SyncInto(snapshot), bytes)
}

/// Where a guest is in a full snapshot sent in parts: how many of its hosts it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartsReceived {
    /// Hosts received so far (the next part starts there).
    pub hosts: u32,
    /// Hosts the snapshot has.
    pub total: u32,
}

impl PartsReceived {
    /// The start of a snapshot of `total` hosts.
    pub fn begin(total: u32) -> Self {
        PartsReceived { hosts: 0, total }
    }

    /// Takes the hosts `first..first + count`: they must be the next ones.
    pub fn took(&mut self, first: u32, count: u32) -> Result<(), String> {
        let end = first.checked_add(count).filter(|&end| end <= self.total);
        match end {
            Some(end) if first == self.hosts => {
                self.hosts = end;
                Ok(())
            }
            _ => Err(format!(
                "hosts {first}..{} of a full snapshot, but the guest holds {} of its {} hosts",
                u64::from(first) + u64::from(count),
                self.hosts,
                self.total
            )),
        }
    }

    /// Checks at the end of the snapshot that every host came.
    pub fn end(self) -> Result<(), String> {
        if self.hosts == self.total {
            Ok(())
        } else {
            Err(format!(
                "end of a full snapshot after {} of its {} hosts",
                self.hosts, self.total
            ))
        }
    }
}

/// The variant names of [`SyncMessage`], in order.
const SYNC_VARIANTS: &[&str] = &["Full", "Delta", "FullBegin", "FullHosts", "FullEnd"];

/// Decodes a [`SyncMessage`], a full snapshot or part of one into the snapshot it holds.
struct SyncInto<'a>(&'a mut Snapshot);

impl<'de> serde::de::DeserializeSeed<'de> for SyncInto<'_> {
    type Value = Received;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Received, D::Error> {
        deserializer.deserialize_enum("SyncMessage", SYNC_VARIANTS, self)
    }
}

impl<'de> serde::de::Visitor<'de> for SyncInto<'_> {
    type Value = Received;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a full snapshot, a part of one, or a delta")
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Received, A::Error> {
        use serde::de::{Error, VariantAccess};
        let (variant, access) = data.variant::<u32>()?;
        match variant {
            0 => access
                .newtype_variant_seed(InPlace(self.0))
                .map(|()| Received::Full),
            1 => access
                .struct_variant(&["from_epoch", "to_epoch", "changes"], DeltaFields)
                .map(Received::Delta),
            2 => access.struct_variant(
                &["epoch", "time_unix", "cluster", "hosts"],
                BeginFields(self.0),
            ),
            3 => access.struct_variant(&["first", "hosts"], HostsFields(&mut self.0.hosts)),
            4 => access
                .newtype_variant_seed(InPlace(&mut self.0.vms))
                .map(|()| Received::FullEnd),
            other => Err(A::Error::custom(format!(
                "unknown sync message form {other}"
            ))),
        }
    }
}

/// Decodes a value into the one it holds (`Deserialize::deserialize_in_place`).
struct InPlace<'a, T>(&'a mut T);

impl<'de, T: Deserialize<'de>> serde::de::DeserializeSeed<'de> for InPlace<'_, T> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        T::deserialize_in_place(deserializer, self.0)
    }
}

/// The element `i` of a sequence of `what`, which must be there.
fn element<'de, A: serde::de::SeqAccess<'de>, T: Deserialize<'de>>(
    seq: &mut A,
    i: usize,
    what: &'static str,
) -> Result<T, A::Error> {
    element_with(seq, core::marker::PhantomData, i, what)
}

/// [`element`] decoded by `seed`.
fn element_with<'de, A: serde::de::SeqAccess<'de>, S: serde::de::DeserializeSeed<'de>>(
    seq: &mut A,
    seed: S,
    i: usize,
    what: &'static str,
) -> Result<S::Value, A::Error> {
    seq.next_element_seed(seed)?
        .ok_or_else(|| serde::de::Error::invalid_length(i, &what))
}

/// The fields of [`SyncMessage::Delta`], in order.
struct DeltaFields;

impl<'de> serde::de::Visitor<'de> for DeltaFields {
    type Value = Delta;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a delta's epochs and changes")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Delta, A::Error> {
        const WHAT: &str = "a delta's 3 fields";
        Ok(Delta {
            from_epoch: element(&mut seq, 0, WHAT)?,
            to_epoch: element(&mut seq, 1, WHAT)?,
            changes: element(&mut seq, 2, WHAT)?,
        })
    }
}

/// The fields of [`SyncMessage::FullBegin`], in order, into the snapshot.
struct BeginFields<'a>(&'a mut Snapshot);

impl<'de> serde::de::Visitor<'de> for BeginFields<'_> {
    type Value = Received;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("the epoch, time, cluster and host count of a snapshot")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Received, A::Error> {
        const WHAT: &str = "a snapshot start's 4 fields";
        self.0.epoch = element(&mut seq, 0, WHAT)?;
        self.0.time_unix = element(&mut seq, 1, WHAT)?;
        element_with(&mut seq, InPlace(&mut self.0.cluster), 2, WHAT)?;
        let hosts: u32 = element(&mut seq, 3, WHAT)?;
        self.0.hosts.truncate(hosts as usize);
        Ok(Received::FullBegin { hosts })
    }
}

/// The fields of [`SyncMessage::FullHosts`], in order: the hosts decoded over the ones
/// held from index `first` on (appended past the end).
struct HostsFields<'a>(&'a mut Vec<Host>);

impl<'de> serde::de::Visitor<'de> for HostsFields<'_> {
    type Value = Received;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("the index of a first host and hosts")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Received, A::Error> {
        const WHAT: &str = "a hosts part's 2 fields";
        let first: u32 = element(&mut seq, 0, WHAT)?;
        if first as usize > self.0.len() {
            return Err(serde::de::Error::custom(format!(
                "hosts part from index {first}, but the guest holds {} hosts",
                self.0.len()
            )));
        }
        let hosts = HostsFrom {
            hosts: self.0,
            first: first as usize,
        };
        let count = element_with(&mut seq, hosts, 1, WHAT)?;
        Ok(Received::FullHosts { first, count })
    }
}

/// A sequence of hosts decoded over `hosts[first..]`; the value is how many there were.
struct HostsFrom<'a> {
    hosts: &'a mut Vec<Host>,
    first: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for HostsFrom<'_> {
    type Value = u32;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<u32, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for HostsFrom<'_> {
    type Value = u32;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("hosts")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<u32, A::Error> {
        let too_many = || serde::de::Error::custom("too many hosts in one part");
        let mut count: u32 = 0;
        // Over the hosts held from `first` on, then appended.
        for host in &mut self.hosts[self.first..] {
            if seq.next_element_seed(InPlace(host))?.is_none() {
                return Ok(count);
            }
            count = count.checked_add(1).ok_or_else(too_many)?;
        }
        while let Some(host) = seq.next_element()? {
            self.hosts.push(host);
            count = count.checked_add(1).ok_or_else(too_many)?;
        }
        Ok(count)
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
    /// [`SyncMessage::FullBegin`].
    FullBegin {
        /// Epoch of the snapshot.
        epoch: u64,
        /// Its wall-clock time.
        time_unix: u64,
        /// Its cluster settings.
        cluster: &'a ClusterInfo,
        /// Its number of hosts.
        hosts: u32,
    },
    /// [`SyncMessage::FullHosts`].
    FullHosts {
        /// Index of the first host.
        first: u32,
        /// The hosts.
        hosts: &'a [Host],
    },
    /// [`SyncMessage::FullEnd`].
    FullEnd(&'a [Vm]),
}

/// The messages that send `snapshot` in parts, each encoded and handed to `each` as soon
/// as it is made: [`SyncMessage::FullBegin`], one [`SyncMessage::FullHosts`] per
/// `hosts_per_part` hosts, and [`SyncMessage::FullEnd`]. A guest decodes the first parts
/// while the host still encodes the next ones. Each part is a message of its own, so its
/// first host carries its whole CPU flag list.
pub fn encode_full_parts(
    snapshot: &Snapshot,
    hosts_per_part: usize,
    mut each: impl FnMut(Vec<u8>),
) -> Result<(), crate::wire::codec::CodecError> {
    use crate::wire::codec::encode;
    let count = u32::try_from(snapshot.hosts.len())
        .map_err(|_| crate::wire::codec::CodecError("more than 2^32 hosts".into()))?;
    each(encode(&SyncMessageRef::FullBegin {
        epoch: snapshot.epoch,
        time_unix: snapshot.time_unix,
        cluster: &snapshot.cluster,
        hosts: count,
    })?);
    for (i, hosts) in snapshot.hosts.chunks(hosts_per_part.max(1)).enumerate() {
        // Room for a typical host's 150-odd bytes, so the part is not copied as it grows.
        let mut part = Vec::with_capacity(hosts.len() * 192);
        let message = SyncMessageRef::FullHosts {
            first: (i * hosts_per_part.max(1)) as u32,
            hosts,
        };
        crate::wire::codec::encode_into(&message, &mut part)?;
        each(part);
    }
    each(encode(&SyncMessageRef::FullEnd(&snapshot.vms))?);
    Ok(())
}

/// The guest's answer to a sync message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SyncResponse {
    /// The guest now holds this epoch.
    Synced {
        /// Epoch now held.
        epoch: u64,
    },
    /// The guest took a part of a full snapshot sent in parts and waits for the next
    /// (version 10).
    Receiving {
        /// Hosts of the snapshot the guest holds so far.
        hosts: u32,
    },
    /// The message could not be applied; the host must send a full snapshot.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{host, snapshot, vm};
    use crate::wire::codec;

    /// A snapshot of `hosts` hosts whose shapes vary with `seed` (names, NUMA nodes, CPU
    /// lists, hugepages, flags, pending figures), so that decoding one into another
    /// overwrites longer and shorter vectors and strings.
    fn varied(hosts: usize, seed: usize) -> Snapshot {
        snapshot()
            .hosts((0..hosts).map(|i| {
                let k = i + seed;
                let flags: &[&str] = match k % 3 {
                    0 => &["aes", "avx2", "sse4_2"],
                    1 => &["vmx"],
                    _ => &[],
                };
                let mut h = host(&alloc::format!("host-{}-{}", "x".repeat(k % 5), i))
                    .cpu(1 + (k % 2) as u32, 4, 2)
                    .cpu_flags(flags)
                    .dedicated_cpus(0..(k % 4) as u32)
                    .pending_memory_mb((k * 512) as u64);
                for node in 0..(k % 3) as u32 {
                    h = h
                        .numa_node(node, node * 4..node * 4 + 4, 1_024 * (k as u64 + 1))
                        .node_hugepages(node, 2_048, k as u64);
                }
                if k.is_multiple_of(2) {
                    h = h.pending_pinned_cpus([1, 3]).hugepages(1_048_576, 4);
                }
                h
            }))
            .vm(vm(&alloc::format!("v{seed}"))
                .current_host("host--0")
                .build())
            .build()
    }

    #[test]
    fn a_full_snapshot_decoded_into_the_held_one_equals_a_fresh_decode() {
        for (held, sent) in [(0, 5), (9, 4), (4, 9), (6, 6)] {
            let mut snapshot = varied(held, 1);
            snapshot.epoch = 3;
            let mut full = varied(sent, 2);
            full.epoch = 8;
            let bytes = codec::encode(&SyncMessageRef::Full(&full)).unwrap();
            assert_eq!(decode_sync_into(&bytes, &mut snapshot), Ok(Received::Full));
            assert_eq!(snapshot, full, "{held} hosts held, {sent} sent");
        }
    }

    /// Sends `full` in parts of `per_part` hosts into `held` as a guest takes them.
    fn send_in_parts(full: &Snapshot, per_part: usize, held: &mut Snapshot) -> Result<(), String> {
        let mut parts = Vec::new();
        encode_full_parts(full, per_part, |bytes| parts.push(bytes)).unwrap();
        assert_eq!(parts.len(), 2 + full.hosts.len().div_ceil(per_part));
        let mut receiving = None;
        for bytes in parts {
            match decode_sync_into(&bytes, held).map_err(|e| e.0)? {
                Received::FullBegin { hosts } => receiving = Some(PartsReceived::begin(hosts)),
                Received::FullHosts { first, count } => {
                    receiving.as_mut().unwrap().took(first, count)?
                }
                Received::FullEnd => receiving.take().unwrap().end()?,
                other => panic!("{other:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn a_snapshot_sent_in_parts_into_the_held_one_equals_the_snapshot() {
        for (held, sent, per_part) in [
            (0, 7, 3),
            (9, 4, 2),
            (4, 9, 4),
            (6, 6, 1),
            (3, 5, 10),
            (5, 0, 4),
        ] {
            let mut snapshot = varied(held, 1);
            let mut full = varied(sent, 2);
            full.epoch = 8;
            full.time_unix = 99;
            full.cluster.name = "parts".into();
            send_in_parts(&full, per_part, &mut snapshot).unwrap();
            assert_eq!(snapshot, full, "{held} held, {sent} sent by {per_part}");
        }
    }

    #[test]
    fn parts_must_come_in_order_and_all_of_them() {
        /// Hosts, the parts taken as (first, count), and how the snapshot ends.
        type Case = (u32, &'static [(u32, u32)], Result<(), &'static str>);
        let cases: [Case; 6] = [
            (5, &[(0, 2), (2, 3)], Ok(())),
            (0, &[], Ok(())),
            (
                5,
                &[(0, 2), (3, 2)],
                Err("hosts 3..5 of a full snapshot, but the guest holds 2 of its 5 hosts"),
            ),
            (
                5,
                &[(0, 2), (0, 2)],
                Err("hosts 0..2 of a full snapshot, but the guest holds 2 of its 5 hosts"),
            ),
            (
                5,
                &[(0, 6)],
                Err("hosts 0..6 of a full snapshot, but the guest holds 0 of its 5 hosts"),
            ),
            (
                5,
                &[(0, 4)],
                Err("end of a full snapshot after 4 of its 5 hosts"),
            ),
        ];
        for (total, parts, want) in cases {
            let mut received = PartsReceived::begin(total);
            let got = parts
                .iter()
                .try_for_each(|&(first, count)| received.took(first, count))
                .and_then(|()| received.end());
            assert_eq!(got, want.map_err(String::from), "{total} hosts, {parts:?}");
        }
        // A part that starts past the hosts held is refused before it is decoded.
        let bytes = codec::encode(&SyncMessageRef::FullHosts {
            first: 3,
            hosts: &varied(1, 0).hosts,
        })
        .unwrap();
        let err = decode_sync_into(&bytes, &mut varied(2, 0)).unwrap_err();
        assert!(
            err.0
                .contains("hosts part from index 3, but the guest holds 2 hosts"),
            "{err}"
        );
    }

    #[test]
    fn a_delta_decoded_against_the_held_snapshot_is_returned_untouched() {
        let mut held = varied(3, 0);
        let before = held.clone();
        let changes = [
            Change::SetTime { time_unix: 42 },
            Change::RemoveHost { host: 1 },
        ];
        let from_epoch = held.epoch;
        let bytes = codec::encode(&SyncMessageRef::Delta {
            from_epoch,
            to_epoch: from_epoch + 1,
            changes: changes.iter().collect(),
        })
        .unwrap();
        let Received::Delta(delta) = decode_sync_into(&bytes, &mut held).unwrap() else {
            panic!("not a delta");
        };
        assert_eq!(held, before, "decoding a delta changes nothing");
        assert_eq!(
            delta,
            Delta {
                from_epoch,
                to_epoch: from_epoch + 1,
                changes: changes.to_vec()
            }
        );
        delta.apply(&mut held).unwrap();
        assert_eq!(
            (held.epoch, held.time_unix, held.hosts.len()),
            (from_epoch + 1, 42, 2)
        );
    }

    /// A kept change applied with `apply_copy` changes a snapshot as the change itself
    /// applied does, error included, for every kind of change, and each does what it says
    /// (a host index out of range changes nothing).
    #[test]
    fn apply_copy_changes_a_snapshot_as_apply_does() {
        let base = varied(4, 3);
        let added = PendingAggregate {
            memory_mb: 64,
            hugepages: alloc::vec![crate::model::HugePages {
                size_kb: 1_048_576,
                count: 2,
            }],
            vms: alloc::vec!["added".into()],
            ..Default::default()
        };
        let usage = HostUsage {
            cpu_usage_percent: 50,
            free_mb: 1,
            swap_free_mb: 2,
            running_vms: 3,
        };
        // Each change with what it does, checked on its own: `apply` reads some kinds of
        // change through `apply_copy`, so agreeing with each other alone proves nothing
        // for those.
        type Effect = fn(&Snapshot, &Snapshot, &Result<(), String>) -> bool;
        let changes: [(Change, Effect); 13] = [
            (
                Change::AddPending {
                    host: 2,
                    added: added.clone(),
                },
                |base, s, r| {
                    r.is_ok()
                        && s.hosts[2].pending.memory_mb == base.hosts[2].pending.memory_mb + 64
                },
            ),
            (
                Change::AddPending {
                    host: 9,
                    added: added.clone(),
                },
                |base, s, r| r.is_err() && s == base,
            ),
            (
                Change::SetPending {
                    host: 1,
                    pending: added,
                },
                |_, s, r| r.is_ok() && s.hosts[1].pending.memory_mb == 64,
            ),
            (
                Change::SetHostStatus {
                    host: 0,
                    status: HostStatus::Maintenance,
                },
                |_, s, r| r.is_ok() && s.hosts[0].status == HostStatus::Maintenance,
            ),
            (
                Change::ReplaceHost {
                    host: 3,
                    value: base.hosts[0].clone(),
                },
                |base, s, r| r.is_ok() && s.hosts[3] == base.hosts[0],
            ),
            (Change::AddHost(base.hosts[1].clone()), |base, s, r| {
                r.is_ok() && s.hosts.len() == 5 && s.hosts[4] == base.hosts[1]
            }),
            (Change::RemoveHost { host: 1 }, |base, s, r| {
                r.is_ok() && s.hosts.len() == 3 && s.hosts[1] == base.hosts[2]
            }),
            (Change::RemoveHost { host: 4 }, |base, s, r| {
                r.is_err() && s == base
            }),
            (Change::UpsertVm(vm("new").build()), |base, s, r| {
                r.is_ok() && s.vms.len() == base.vms.len() + 1
            }),
            (Change::RemoveVm("v3".into()), |base, s, r| {
                r.is_ok() && s.vms.len() + 1 == base.vms.len() && s.vms.iter().all(|v| v.id != "v3")
            }),
            (Change::SetTime { time_unix: 7 }, |_, s, r| {
                r.is_ok() && s.time_unix == 7
            }),
            (Change::SetUsage(alloc::vec![(2, usage)]), |base, s, r| {
                let host = &s.hosts[2];
                r.is_ok()
                    && (
                        host.cpu_usage_percent,
                        host.memory.free_mb,
                        host.running_vms,
                    ) == (50, 1, 3)
                    && s.hosts[3] == base.hosts[3]
            }),
            (
                Change::SetUsage(alloc::vec![(2, usage), (5, usage)]),
                |base, s, r| r.is_err() && s == base,
            ),
        ];
        for (change, effect) in changes {
            let (mut by_copy, mut by_value) = (base.clone(), base.clone());
            let copied = change.apply_copy(&mut by_copy);
            let applied = change.clone().apply(&mut by_value);
            assert_eq!(copied, applied, "{change:?}");
            assert_eq!(by_copy, by_value, "{change:?}");
            assert!(effect(&base, &by_copy, &copied), "{change:?}: {copied:?}");
        }
    }

    #[test]
    fn a_cut_or_padded_sync_message_is_an_error_not_a_snapshot() {
        let full = codec::encode(&SyncMessageRef::Full(&varied(4, 0))).unwrap();
        for bytes in [&full[..full.len() / 2], &full[..1], &[][..]] {
            let mut held = varied(2, 1);
            assert!(
                decode_sync_into(bytes, &mut held).is_err(),
                "{} bytes",
                bytes.len()
            );
        }
        let mut padded = full.clone();
        padded.push(0);
        let err = decode_sync_into(&padded, &mut varied(2, 1)).unwrap_err();
        assert!(err.0.contains("1 trailing bytes"), "{err}");
        let err = decode_sync_into(&[7], &mut Snapshot::default()).unwrap_err();
        assert!(err.0.contains("unknown sync message form 7"), "{err}");
    }

    #[test]
    fn the_host_and_guest_forms_of_every_sync_message_are_the_same_bytes() {
        let s = varied(3, 0);
        let owned = [
            SyncMessage::Full(s.clone()),
            SyncMessage::FullBegin {
                epoch: s.epoch,
                time_unix: s.time_unix,
                cluster: s.cluster.clone(),
                hosts: 3,
            },
            SyncMessage::FullHosts {
                first: 1,
                hosts: s.hosts[1..].to_vec(),
            },
            SyncMessage::FullEnd(s.vms.clone()),
        ];
        let borrowed = [
            SyncMessageRef::Full(&s),
            SyncMessageRef::FullBegin {
                epoch: s.epoch,
                time_unix: s.time_unix,
                cluster: &s.cluster,
                hosts: 3,
            },
            SyncMessageRef::FullHosts {
                first: 1,
                hosts: &s.hosts[1..],
            },
            SyncMessageRef::FullEnd(&s.vms),
        ];
        for (owned, borrowed) in owned.iter().zip(&borrowed) {
            let bytes = codec::encode(borrowed).unwrap();
            assert_eq!(codec::encode(owned).unwrap(), bytes, "{borrowed:?}");
            assert_eq!(&codec::decode::<SyncMessage>(&bytes).unwrap(), owned);
        }
    }
}
