//! A cluster's live state: the current snapshot, its epoch, and a bounded log of recent
//! changes so that unit instances can catch up with small deltas instead of re-decoding the
//! whole snapshot (see "Snapshot sync" in `policy-sdk/ABI.md`).

use crate::abi::SyncMessageRef;
use crate::error::{Error, Result};
use crate::files;
use policy_sdk::abi::Change;
use policy_sdk::codec;
use policy_sdk::{HostIndex, HostStatus, PendingAggregate, Snapshot};
use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

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
}

#[derive(Debug)]
struct State {
    snapshot: Arc<Snapshot>,
    log: VecDeque<LogEntry>,
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
}

impl ClusterView {
    /// The snapshot.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The epoch of the snapshot.
    pub fn epoch(&self) -> u64 {
        self.snapshot.epoch
    }

    pub(crate) fn uid(&self) -> u64 {
        self.shared.uid
    }

    /// The encoded sync message that brings an instance holding `from` (this cluster's
    /// epoch, if it holds this cluster at all) to this view's epoch. Returns the bytes and
    /// whether they are a full snapshot.
    pub(crate) fn sync_message(&self, from: Option<u64>) -> (Arc<Vec<u8>>, bool) {
        let to = self.snapshot.epoch;
        if let Some(from) = from.filter(|&f| f < to) {
            let state = self.shared.state.read().unwrap();
            let contiguous = state
                .log
                .front()
                .is_some_and(|first| first.epoch <= from + 1)
                && state.log.iter().any(|e| e.epoch == to);
            if contiguous {
                let changes = state
                    .log
                    .iter()
                    .filter(|e| e.epoch > from && e.epoch <= to)
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
    /// A cluster from a snapshot, after checking it (unique host ids, VMs on known hosts).
    /// `source` names the snapshot in errors (a file name, or `<inline>`).
    pub fn new(mut snapshot: Snapshot, source: &str) -> Result<Self> {
        validate(&snapshot, source)?;
        snapshot.epoch = snapshot.epoch.max(1);
        Ok(Self {
            shared: Arc::new(ClusterShared {
                uid: NEXT_CLUSTER_UID.fetch_add(1, Ordering::Relaxed),
                state: RwLock::new(State {
                    snapshot: Arc::new(snapshot),
                    log: VecDeque::new(),
                }),
                full_cache: Mutex::new(None),
            }),
        })
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
    pub fn apply(&self, changes: Vec<Change>) -> Result<u64> {
        let mut state = self.shared.state.write().unwrap();
        let hosts = state.snapshot.hosts.len();
        let mut added = 0usize;
        for change in &changes {
            let index = match change {
                Change::SetPending { host, .. }
                | Change::SetHostStatus { host, .. }
                | Change::ReplaceHost { host, .. } => Some(*host),
                Change::AddHost(_) => {
                    added += 1;
                    None
                }
                _ => None,
            };
            if let Some(index) = index {
                if index as usize >= hosts + added {
                    return Err(Error::Request(format!(
                        "change names host index {index}, the cluster has {hosts} hosts"
                    )));
                }
            }
        }
        let snapshot = Arc::make_mut(&mut state.snapshot);
        for change in &changes {
            // The log keeps the original for deltas; the snapshot gets a copy.
            change
                .clone()
                .apply(snapshot)
                .map_err(|e| Error::Request(format!("cannot apply change: {e}")))?;
        }
        snapshot.epoch += 1;
        let epoch = snapshot.epoch;
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
            .snapshot
            .host_index(host_id)
    }

    /// Sets a host's status (a new epoch).
    pub fn set_host_status(&self, host_id: &str, status: HostStatus) -> Result<u64> {
        let host = self.require_host(host_id)?;
        self.apply(vec![Change::SetHostStatus { host, status }])
    }

    /// Sets a host's pending aggregate (a new epoch).
    pub fn set_pending(&self, host_id: &str, pending: PendingAggregate) -> Result<u64> {
        let host = self.require_host(host_id)?;
        self.apply(vec![Change::SetPending { host, pending }])
    }

    fn require_host(&self, host_id: &str) -> Result<HostIndex> {
        self.host_index(host_id)
            .ok_or_else(|| Error::Request(format!("unknown host {host_id:?}")))
    }
}

fn validate(snapshot: &Snapshot, source: &str) -> Result<()> {
    let mut ids = HashSet::new();
    for (i, host) in snapshot.hosts.iter().enumerate() {
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
