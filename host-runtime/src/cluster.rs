//! A cluster's live state: the current snapshot, its epoch, a bounded log of recent
//! changes so that unit instances can catch up with small deltas instead of re-decoding the
//! whole snapshot (see "Snapshot sync" in `policy-sdk/ABI.md`), and the cluster's pending
//! resources (see [`crate::pending`] and the lifecycle methods in `lifecycle.rs`).
//!
//! Every mutation goes through one per-cluster lock (the *ledger*): it orders the pending
//! records and the snapshot epochs, so the aggregate published for a host is always the sum
//! of its records. Readers never take it: a decision works on an immutable [`ClusterView`].

use crate::abi::SyncMessageRef;
use crate::error::{Error, Result};
use crate::files;
use crate::lifecycle::Ledger;
use policy_sdk::abi::Change;
use policy_sdk::codec;
use policy_sdk::index::{SnapshotIndex, Touched};
use policy_sdk::{HostIndex, HostStatus, Snapshot};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// Epoch batches kept for delta sync; an instance further behind gets a full snapshot.
const LOG_CAPACITY: usize = 1024;

static NEXT_CLUSTER_UID: AtomicU64 = AtomicU64::new(1);

/// A cluster whose snapshot changes over time. Cheap to share (`Clone` is an `Arc` clone);
/// `Send + Sync`. Decisions take a [`ClusterView`] and finish on the epoch they started with.
#[derive(Debug, Clone)]
pub struct Cluster {
    shared: Arc<ClusterShared>,
}

#[derive(Debug)]
pub(crate) struct ClusterShared {
    uid: u64,
    state: RwLock<State>,
    full_cache: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    /// Serializes every mutation; holds the pending resources. Lock order: ledger, then
    /// state.
    ledger: Mutex<Ledger>,
}

#[derive(Debug)]
struct State {
    snapshot: Arc<Snapshot>,
    log: VecDeque<LogEntry>,
    /// Host id -> index, kept in step with the snapshot's host list.
    index: HashMap<String, HostIndex>,
    /// Data derived from the snapshot for native units (host CPU flags as bit sets), kept
    /// in step like the guests keep theirs.
    derived: Arc<SnapshotIndex>,
}

fn index_hosts(snapshot: &Snapshot) -> HashMap<String, HostIndex> {
    snapshot
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.id.clone(), i as HostIndex))
        .collect()
}

#[derive(Debug)]
struct LogEntry {
    epoch: u64,
    changes: Vec<Change>,
}

/// A consistent, immutable view of a cluster at one epoch.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub(crate) shared: Arc<ClusterShared>,
    snapshot: Arc<Snapshot>,
    derived: Arc<SnapshotIndex>,
}

impl ClusterView {
    /// The snapshot.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Data derived from the snapshot (see [`policy_sdk::index`]), what native units get.
    pub fn derived(&self) -> &SnapshotIndex {
        &self.derived
    }

    /// The epoch of the snapshot.
    pub fn epoch(&self) -> u64 {
        self.snapshot.epoch
    }

    pub(crate) fn uid(&self) -> u64 {
        self.shared.uid
    }

    /// A view of a what-if snapshot that belongs to no cluster (a fresh cluster uid, no
    /// change log): instances get it as a full snapshot and never mistake it for an epoch
    /// of a real cluster. Used to run filters over a hypothetical state (a VM grown by a
    /// memory hot plug).
    pub(crate) fn detached(snapshot: Snapshot) -> Self {
        ClusterView {
            shared: Arc::new(ClusterShared {
                uid: NEXT_CLUSTER_UID.fetch_add(1, Ordering::Relaxed),
                state: RwLock::new(State {
                    index: index_hosts(&snapshot),
                    snapshot: Arc::new(Snapshot::default()),
                    log: VecDeque::new(),
                    derived: Arc::default(),
                }),
                full_cache: Mutex::new(None),
                ledger: Mutex::new(Ledger::default()),
            }),
            derived: Arc::new(SnapshotIndex::build(&snapshot)),
            snapshot: Arc::new(snapshot),
        }
    }

    /// The encoded sync message that brings an instance holding `from` (this cluster's
    /// epoch, if it holds this cluster at all) to this view's epoch. Returns the bytes and
    /// whether they are a full snapshot.
    pub(crate) fn sync_message(&self, from: Option<u64>) -> (Arc<Vec<u8>>, bool) {
        let to = self.snapshot.epoch;
        if let Some(from) = from.filter(|&f| f < to) {
            let state = self.shared.state.read().unwrap();
            // The log holds consecutive epochs: the batches after `from` up to `to` are a
            // range of it, found by arithmetic rather than a scan.
            let first = state.log.front().map_or(u64::MAX, |e| e.epoch);
            let last = state.log.back().map_or(0, |e| e.epoch);
            if first <= from + 1 && to <= last {
                let range = (from + 1 - first) as usize..(to - first + 1) as usize;
                let changes = state
                    .log
                    .range(range)
                    .flat_map(|e| e.changes.iter())
                    .collect();
                let message = SyncMessageRef::Delta {
                    from_epoch: from,
                    to_epoch: to,
                    changes,
                };
                if let Ok(bytes) = codec::encode(&message) {
                    return (Arc::new(bytes), false);
                }
            }
        }
        let mut cache = self.shared.full_cache.lock().unwrap();
        if let Some((epoch, bytes)) = cache.as_ref() {
            if *epoch == to {
                return (bytes.clone(), true);
            }
        }
        let bytes = Arc::new(
            codec::encode(&SyncMessageRef::Full(&self.snapshot))
                .expect("a snapshot always encodes"),
        );
        *cache = Some((to, bytes.clone()));
        (bytes, true)
    }
}

impl Cluster {
    /// A cluster from a snapshot, after checking it (unique host ids, VMs on known hosts,
    /// no hand-written pending aggregates). `source` names the snapshot in errors (a file
    /// name, or `<inline>`).
    ///
    /// VMs listed with status `wait_for_launch` and a current host are taken as placed but
    /// not started: their pending resources are recorded on that host.
    pub fn new(mut snapshot: Snapshot, source: &str) -> Result<Self> {
        validate(&snapshot, source)?;
        snapshot.epoch = snapshot.epoch.max(1);
        let waiting: Vec<policy_sdk::Vm> = snapshot
            .vms
            .iter()
            .filter(|vm| vm.status == policy_sdk::VmStatus::WaitForLaunch)
            .filter(|vm| vm.current_host.is_some())
            .cloned()
            .collect();
        let cluster = Self {
            shared: Arc::new(ClusterShared {
                uid: NEXT_CLUSTER_UID.fetch_add(1, Ordering::Relaxed),
                state: RwLock::new(State {
                    index: index_hosts(&snapshot),
                    derived: Arc::new(SnapshotIndex::build(&snapshot)),
                    snapshot: Arc::new(snapshot),
                    log: VecDeque::new(),
                }),
                full_cache: Mutex::new(None),
                ledger: Mutex::new(Ledger::default()),
            }),
        };
        for vm in waiting {
            let host = vm.current_host.clone().unwrap_or_default();
            cluster
                .reserve(&vm, &host, crate::lifecycle::PlacementKind::Start)
                .map_err(|e| {
                    Error::input(
                        source,
                        Some(format!("vms[id={}]", vm.id)),
                        format!("cannot record it as pending: {e}"),
                    )
                })?;
        }
        Ok(cluster)
    }

    /// Reads a cluster file (JSON, or TOML by extension).
    pub fn from_file(path: &Path) -> Result<Self> {
        let snapshot: Snapshot = files::read_document(path)?;
        Self::new(snapshot, &path.display().to_string())
    }

    /// A consistent view at the current epoch.
    pub fn view(&self) -> ClusterView {
        let state = self.shared.state.read().unwrap();
        ClusterView {
            shared: self.shared.clone(),
            snapshot: state.snapshot.clone(),
            derived: state.derived.clone(),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.state.read().unwrap().snapshot.clone()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.shared.state.read().unwrap().snapshot.epoch
    }

    /// Applies a batch of changes as one new epoch and returns it. The batch is checked
    /// first; on error nothing changes.
    ///
    /// Pending aggregates belong to the pending resource manager: `SetPending` is refused,
    /// and a host given by `ReplaceHost`/`AddHost` gets its aggregate from the records.
    /// Remove hosts with [`Cluster::remove_host`], which also clears their records.
    pub fn apply(&self, mut changes: Vec<Change>) -> Result<u64> {
        let ledger = self.ledger();
        let snapshot = self.snapshot();
        for change in &mut changes {
            match change {
                Change::SetPending { .. } => {
                    return Err(Error::Request(
                        "pending aggregates are computed from pending records; record them \
                         with Cluster::reserve or Cluster::add_pending"
                            .into(),
                    ))
                }
                Change::RemoveHost { .. } => {
                    return Err(Error::Request(
                        "remove hosts with Cluster::remove_host (it clears their pending \
                         resources)"
                            .into(),
                    ))
                }
                Change::ReplaceHost { host, value } => {
                    if let Some(old) = snapshot.host(*host) {
                        if old.id != value.id {
                            return Err(Error::Request(format!(
                                "ReplaceHost cannot change a host's id ({:?} -> {:?}); remove \
                                 the host and add the new one",
                                old.id, value.id
                            )));
                        }
                    }
                    value.pending = ledger.pending.host_aggregate(&value.id);
                }
                Change::AddHost(value) => {
                    value.pending = ledger.pending.host_aggregate(&value.id);
                }
                _ => {}
            }
        }
        drop(snapshot); // let the commit update it in place
        self.commit(&ledger, changes)
    }

    /// Takes the per-cluster mutation lock.
    pub(crate) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.shared.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies changes as one epoch. The caller holds the ledger lock (the guard is passed
    /// to prove it).
    pub(crate) fn commit(
        &self,
        _ledger: &MutexGuard<'_, Ledger>,
        changes: Vec<Change>,
    ) -> Result<u64> {
        let mut state = self.shared.state.write().unwrap();
        // Check every host index against the host count at that point of the batch, so
        // that applying cannot fail halfway.
        let hosts = state.snapshot.hosts.len();
        let mut count = hosts;
        let mut ids: Option<HashSet<String>> = None;
        for change in &changes {
            match change {
                Change::SetPending { host, .. }
                | Change::SetHostStatus { host, .. }
                | Change::ReplaceHost { host, .. }
                | Change::RemoveHost { host } => {
                    if *host as usize >= count {
                        return Err(Error::Request(format!(
                            "change names host index {host}, the cluster has {count} hosts"
                        )));
                    }
                    if matches!(change, Change::RemoveHost { .. }) {
                        count -= 1;
                        ids = None;
                    }
                }
                Change::AddHost(host) => {
                    let ids = ids.get_or_insert_with(|| state.index.keys().cloned().collect());
                    if host.id.is_empty() || !ids.insert(host.id.clone()) {
                        return Err(Error::Request(format!(
                            "AddHost: host id {:?} is empty or already in the cluster",
                            host.id
                        )));
                    }
                    count += 1;
                }
                _ => {}
            }
        }
        let reindex = changes
            .iter()
            .any(|c| matches!(c, Change::AddHost(_) | Change::RemoveHost { .. }));
        let state = &mut *state;
        // In place when no view holds the snapshot, else copy-on-write.
        let snapshot = Arc::make_mut(&mut state.snapshot);
        for change in &changes {
            // The log keeps the original for deltas; the snapshot gets a copy.
            change
                .clone()
                .apply(snapshot)
                .expect("host indices were checked above");
        }
        snapshot.epoch += 1;
        let epoch = snapshot.epoch;
        if reindex {
            state.index = index_hosts(snapshot);
        }
        let touched = Touched::of(&changes);
        if touched.rebuild || !touched.replaced.is_empty() {
            Arc::make_mut(&mut state.derived).refresh(snapshot, &touched);
        }
        debug_assert!(state.log.back().is_none_or(|e| e.epoch + 1 == epoch));
        state.log.push_back(LogEntry { epoch, changes });
        while state.log.len() > LOG_CAPACITY {
            state.log.pop_front();
        }
        Ok(epoch)
    }

    /// The index of a host by id.
    pub fn host_index(&self, host_id: &str) -> Option<HostIndex> {
        self.shared
            .state
            .read()
            .unwrap()
            .index
            .get(host_id)
            .copied()
    }

    /// Sets a host's status (a new epoch).
    pub fn set_host_status(&self, host_id: &str, status: HostStatus) -> Result<u64> {
        let host = self.require_host(host_id)?;
        self.apply(vec![Change::SetHostStatus { host, status }])
    }

    /// Sets the snapshot's wall-clock time in Unix seconds (a new epoch).
    pub fn set_time(&self, time_unix: u64) -> Result<u64> {
        self.apply(vec![Change::SetTime { time_unix }])
    }

    pub(crate) fn require_host(&self, host_id: &str) -> Result<HostIndex> {
        self.host_index(host_id)
            .ok_or_else(|| Error::Request(format!("unknown host {host_id:?}")))
    }
}

fn validate(snapshot: &Snapshot, source: &str) -> Result<()> {
    let mut ids = HashSet::new();
    for (i, host) in snapshot.hosts.iter().enumerate() {
        if !host.pending.is_empty() {
            return Err(Error::input(
                source,
                Some(format!("hosts[{i}].pending")),
                "pending aggregates are computed by the engine from pending records; remove \
                 the field (VMs in `wait_for_launch` with a `current_host` are recorded as \
                 pending there)",
            ));
        }
        if host.id.is_empty() {
            return Err(Error::input(
                source,
                Some(format!("hosts[{i}].id")),
                "must not be empty",
            ));
        }
        if !ids.insert(host.id.as_str()) {
            return Err(Error::input(
                source,
                Some(format!("hosts[{i}].id")),
                format!("duplicate host id {:?}", host.id),
            ));
        }
        if host.cpu.sockets == 0 || host.cpu.cores_per_socket == 0 || host.cpu.threads_per_core == 0
        {
            return Err(Error::input(
                source,
                Some(format!("hosts[{i}].cpu")),
                "sockets, cores_per_socket and threads_per_core must be at least 1",
            ));
        }
    }
    if snapshot.hosts.len() > u32::MAX as usize / 2 {
        return Err(Error::input(source, Some("hosts".into()), "too many hosts"));
    }
    let mut vm_ids = HashSet::new();
    for (i, vm) in snapshot.vms.iter().enumerate() {
        if vm.id.is_empty() {
            return Err(Error::input(
                source,
                Some(format!("vms[{i}].id")),
                "must not be empty",
            ));
        }
        if !vm_ids.insert(vm.id.as_str()) {
            return Err(Error::input(
                source,
                Some(format!("vms[{i}].id")),
                format!("duplicate VM id {:?}", vm.id),
            ));
        }
        if let Some(host) = &vm.current_host {
            if !ids.contains(host.as_str()) {
                return Err(Error::input(
                    source,
                    Some(format!("vms[{i}].current_host")),
                    format!("unknown host {host:?}"),
                ));
            }
        }
    }
    Ok(())
}
