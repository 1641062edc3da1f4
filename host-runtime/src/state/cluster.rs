//! A cluster's live state: the current snapshot, its epoch, a bounded log of recent
//! changes so that unit instances can catch up with small deltas instead of re-decoding the
//! whole snapshot (see "Snapshot sync" in `policy-sdk/ABI.md`), and the cluster's pending
//! resources (see [`crate::pending`] and the lifecycle methods in `lifecycle.rs`).
//!
//! Every mutation goes through one per-cluster lock (the *ledger*): it orders the pending
//! records and the snapshot epochs, so the aggregate published for a host is always the sum
//! of its records. Readers never take it: a decision works on an immutable [`ClusterView`].

use super::ledger::Ledger;
use super::memory_change::{
    MemoryChangeDone, MemoryChangeKind, MemoryChangeRecord, MemoryInFlight, MemoryInFlightKind,
};
use super::pending::{Changed, HostPending, PendingRecord, PendingResource, ResourceKey};
use super::placement::{
    add_resource_usage, add_usage, records_of, remove_usage, without_records, FailedPlacement,
    HostRemoved, PendingRules, Placement, PlacementKind, PreparedReservation, Release, Reservation,
    Retry,
};
use super::validate::{check_cluster, check_host, check_vm, Fault};
use crate::error::{Error, Result};
use crate::files;
use policy_sdk::model::flags::CpuFlags;
use policy_sdk::model::index::{SnapshotIndex, Touched};
use policy_sdk::wire::sync::Change;
use policy_sdk::{Host, HostIndex, HostStatus, HostUsage, MemoryDevice, Snapshot, Vm, VmStatus};
use std::any::Any;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// Epoch batches kept for delta sync; an instance further behind gets a full snapshot.
const LOG_CAPACITY: usize = 1024;

/// Earlier snapshots and their indexes kept for reuse (see [`State::spares`]): enough for
/// a few threads deciding on one cluster while another commits.
const MAX_SPARES: usize = 2;

/// How long a thread that finds the ledger lock held waits for it without sleeping: about
/// what a reservation holds it for.
pub(super) const LEDGER_SPIN: std::time::Duration = std::time::Duration::from_micros(40);

/// Rounds in which [`Cluster::reserve_decided`] judges a host again outside the ledger
/// lock before it does so under the lock.
const RECHECKS_OUTSIDE_THE_LOCK: usize = 4;

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
    /// The full snapshot in the form the engine sends to guests (its type), made once per
    /// epoch: epoch, form.
    full_cache: Mutex<Option<(u64, Arc<dyn Any + Send + Sync>)>>,
    /// The last encoded delta (from epoch, to epoch, bytes), shared by every instance
    /// that catches up over the same epochs.
    delta_cache: Mutex<Option<CachedDelta>>,
    /// Serializes every mutation; holds the pending resources. Lock order: ledger, then
    /// state.
    ledger: Mutex<Ledger>,
    /// A copy of the ledger's pending rules, written with them under the ledger lock: a
    /// reservation reads it to work out its records before it takes the lock (see
    /// [`Cluster::reserve_decided`]).
    rules: RwLock<PendingRules>,
}

/// An encoded delta: from epoch, to epoch, bytes.
type CachedDelta = (u64, u64, Arc<Vec<u8>>);

#[derive(Debug)]
struct State {
    snapshot: Arc<Snapshot>,
    log: VecDeque<LogEntry>,
    /// Host id -> index, kept in step with the snapshot's host list.
    index: HashMap<String, HostIndex>,
    /// Data derived from the snapshot for native units (host CPU flags as bit sets), kept
    /// in step like the guests keep theirs.
    derived: Arc<SnapshotIndex>,
    /// Snapshots of earlier epochs with their indexes, kept after a commit found the
    /// current one held by a view: the next commit that finds the current one held takes
    /// a spare no view holds any more and brings it up to date with the change log (as a
    /// guest catches up with a delta) instead of copying the whole snapshot and index.
    /// This is what lets decisions run on several threads while reservations commit.
    spares: Vec<Spare>,
    /// Times a commit copied the whole index because a view held it and no spare was
    /// free (for tests).
    #[cfg(test)]
    index_copies: u64,
}

/// A snapshot of an earlier epoch and its index (what a view holds), kept for reuse.
#[derive(Debug)]
struct Spare {
    snapshot: Arc<Snapshot>,
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

/// Gives a host coming in at `at` the CPU flag list of the host before or after it when
/// they are equal (see [`CpuFlags::share_equal`]).
fn share_flags_with_a_neighbour(snapshot: &Snapshot, at: usize, value: &mut Host) {
    let neighbours = [at.checked_sub(1), Some(at + 1)];
    for host in neighbours
        .into_iter()
        .flatten()
        .filter_map(|i| snapshot.hosts.get(i))
    {
        if host.cpu_flags.same_as(&value.cpu_flags) {
            value.cpu_flags = host.cpu_flags.clone();
            return;
        }
    }
}

#[derive(Debug)]
struct LogEntry {
    epoch: u64,
    changes: Vec<Change>,
}

/// A spare snapshot that no view holds, with its index, brought to epoch `to` by replaying
/// the change log (`None` when every spare is held or the log no longer reaches back to
/// one). The index forgets what the replayed changes touched, in one refresh.
fn take_spare(spares: &mut Vec<Spare>, log: &VecDeque<LogEntry>, to: u64) -> Option<Spare> {
    let first = log.front().map_or(u64::MAX, |e| e.epoch);
    let position = spares.iter_mut().position(|s| {
        let epoch = s.snapshot.epoch;
        Arc::get_mut(&mut s.snapshot).is_some() && epoch <= to && epoch.saturating_add(1) >= first
    })?;
    let mut spare = spares.remove(position);
    let snapshot = Arc::get_mut(&mut spare.snapshot)?;
    let from = snapshot.epoch;
    let mut touched = Touched::default();
    if from < to {
        let skip = (from + 1 - first) as usize;
        for entry in log.iter().skip(skip) {
            for change in &entry.changes {
                change
                    .apply_copy(snapshot)
                    .expect("logged changes applied to this epoch before");
            }
            touched.add(&entry.changes);
            snapshot.epoch = entry.epoch;
        }
    }
    debug_assert_eq!(snapshot.epoch, to);
    if touched.any() {
        // In place: a view holds its snapshot and index together, and no view holds
        // this snapshot.
        Arc::make_mut(&mut spare.derived).refresh(snapshot, &touched);
    }
    Some(spare)
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

    /// Data derived from the snapshot (see [`policy_sdk::model::index`]), what native units get.
    pub fn derived(&self) -> &SnapshotIndex {
        &self.derived
    }

    /// The epoch of the snapshot.
    pub fn epoch(&self) -> u64 {
        self.snapshot.epoch
    }

    /// The index of a host of this view by id. The cluster's id index is of its latest
    /// epoch, which may have moved on from the view's: it is taken when it points at the
    /// host in this view too, else the view's hosts are searched.
    pub fn host_index(&self, host_id: &str) -> Option<HostIndex> {
        let latest = self
            .shared
            .state
            .read()
            .unwrap()
            .index
            .get(host_id)
            .copied();
        latest
            .filter(|&i| {
                self.snapshot
                    .hosts
                    .get(i as usize)
                    .is_some_and(|h| h.id == host_id)
            })
            .or_else(|| self.snapshot.host_index(host_id))
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
                    spares: Vec::new(),
                    #[cfg(test)]
                    index_copies: 0,
                }),
                full_cache: Mutex::new(None),
                delta_cache: Mutex::new(None),
                ledger: Mutex::new(Ledger::default()),
                rules: RwLock::new(PendingRules::default()),
            }),
            derived: Arc::new(SnapshotIndex::build(&snapshot)),
            snapshot: Arc::new(snapshot),
        }
    }

    /// Runs `f` over the changes that bring a copy of this cluster at epoch `from` to this
    /// view's epoch, in order, when the change log still holds them all (`None` otherwise:
    /// the copy is too far behind and needs the whole snapshot).
    pub(crate) fn with_changes_since<R>(
        &self,
        from: u64,
        f: impl FnOnce(Vec<&Change>) -> R,
    ) -> Option<R> {
        let to = self.snapshot.epoch;
        let state = self.shared.state.read().unwrap();
        // The log holds consecutive epochs: the batches after `from` up to `to` are a
        // range of it, found by arithmetic rather than a scan.
        let first = state.log.front().map_or(u64::MAX, |e| e.epoch);
        let last = state.log.back().map_or(0, |e| e.epoch);
        if from >= to || first > from + 1 || to > last {
            return None;
        }
        let range = (from + 1 - first) as usize..(to - first + 1) as usize;
        let changes = state
            .log
            .range(range)
            .flat_map(|e| e.changes.iter())
            .collect();
        Some(f(changes))
    }

    /// The changes from epoch `from` to this view's epoch in a form made once for every
    /// reader (the encoded delta the engine sends to guests): `make` runs over the changes
    /// when the cluster's cached one is of other epochs. `None` when the change log no
    /// longer holds them all or `make` declines.
    pub(crate) fn delta_encoding(
        &self,
        from: u64,
        make: impl FnOnce(Vec<&Change>) -> Option<Arc<Vec<u8>>>,
    ) -> Option<Arc<Vec<u8>>> {
        let to = self.snapshot.epoch;
        let mut cache = self.shared.delta_cache.lock().unwrap();
        if let Some((f, t, bytes)) = cache.as_ref() {
            if (*f, *t) == (from, to) {
                return Some(bytes.clone());
            }
        }
        let bytes = self.with_changes_since(from, make)??;
        *cache = Some((from, to, bytes.clone()));
        Some(bytes)
    }

    /// This view's snapshot in a form made once per epoch for every reader (the engine's
    /// encoded full snapshot, which it may still be filling while others read it): `make`
    /// runs only when the cluster's cached form is of another epoch or type, under the
    /// cache's lock, so it should only set the form up. Returns the form and whether this
    /// call made it (the caller then fills it).
    pub(crate) fn full_encoding<T: Any + Send + Sync>(
        &self,
        make: impl FnOnce() -> T,
    ) -> (Arc<T>, bool) {
        let epoch = self.snapshot.epoch;
        let mut cache = self.shared.full_cache.lock().unwrap();
        if let Some((cached, form)) = cache.as_ref() {
            if let (true, Ok(form)) = (*cached == epoch, form.clone().downcast::<T>()) {
                return (form, false);
            }
        }
        let form = Arc::new(make());
        *cache = Some((epoch, form.clone()));
        (form, true)
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
        CpuFlags::share_equal(snapshot.hosts.iter_mut().map(|h| &mut h.cpu_flags));
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
                    spares: Vec::new(),
                    #[cfg(test)]
                    index_copies: 0,
                }),
                full_cache: Mutex::new(None),
                delta_cache: Mutex::new(None),
                ledger: Mutex::new(Ledger::default()),
                rules: RwLock::new(PendingRules::default()),
            }),
        };
        for vm in waiting {
            let host = vm.current_host.clone().unwrap_or_default();
            cluster
                .reserve(&vm, &host, PlacementKind::Start)
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
    /// Pending aggregates belong to the pending resource manager: `SetPending` and
    /// `AddPending` are refused, and a host given by `ReplaceHost`/`AddHost` gets its
    /// aggregate from the records. Remove hosts with [`Cluster::remove_host`], which also
    /// clears their records.
    pub fn apply(&self, mut changes: Vec<Change>) -> Result<u64> {
        let ledger = self.ledger();
        let snapshot = self.snapshot();
        let refused =
            |variant: &str, why: &str| Err(Error::input("changes", Some(variant.into()), why));
        const PENDING_FROM_RECORDS: &str = "pending aggregates are computed from pending \
                                            records; record them with Cluster::reserve or \
                                            Cluster::add_pending";
        for change in &mut changes {
            match change {
                Change::SetPending { .. } => return refused("SetPending", PENDING_FROM_RECORDS),
                Change::AddPending { .. } => return refused("AddPending", PENDING_FROM_RECORDS),
                Change::RemoveHost { .. } => {
                    return refused(
                        "RemoveHost",
                        "remove hosts with Cluster::remove_host (it clears their pending \
                         resources)",
                    )
                }
                Change::ReplaceHost { host, value } => {
                    if let Some(old) = snapshot.host(*host) {
                        if old.id != value.id {
                            return Err(Error::input(
                                "changes",
                                Some("ReplaceHost.value.id".into()),
                                format!(
                                    "cannot change a host's id ({:?} -> {:?}); remove the \
                                     host and add the new one",
                                    old.id, value.id
                                ),
                            ));
                        }
                    }
                    value.pending = ledger.pending.host_aggregate(&value.id);
                    share_flags_with_a_neighbour(&snapshot, *host as usize, value);
                }
                Change::AddHost(value) => {
                    value.pending = ledger.pending.host_aggregate(&value.id);
                    share_flags_with_a_neighbour(&snapshot, snapshot.hosts.len(), value);
                }
                _ => {}
            }
        }
        drop(snapshot); // let the commit update it in place
        self.commit(&ledger, changes)
    }

    /// Applies a host statistics refresh (what engines send every few seconds): new usage
    /// figures (CPU %, free memory, free swap, running VMs) for the hosts named, as one
    /// epoch. Guests get it as one compact [`Change::SetUsage`] (a few numbers per host),
    /// not as whole hosts. Fails, changing nothing, when a host id is unknown.
    pub fn update_usage<'a>(
        &self,
        usage: impl IntoIterator<Item = (&'a str, HostUsage)>,
    ) -> Result<u64> {
        let ledger = self.ledger();
        let indexed = {
            let state = self.shared.state.read().unwrap();
            let hosts = &state.snapshot.hosts;
            // An engine reports its hosts in the order it listed them in the snapshot: the
            // host after the one matched last is compared first, and only a report out of
            // that order is looked up by id (at 10,000 hosts, hashing every id and comparing
            // it with its entry was most of this call).
            let mut next = 0;
            usage
                .into_iter()
                .map(|(id, u)| {
                    let i = match hosts.get(next) {
                        Some(host) if host.id == id => next as HostIndex,
                        _ => *state.index.get(id).ok_or_else(|| {
                            Error::input(
                                "usage",
                                Some(id.to_string()),
                                "no host with this id in the cluster",
                            )
                        })?,
                    };
                    next = i as usize + 1;
                    Ok((i, u))
                })
                .collect::<Result<Vec<_>>>()?
        };
        self.commit(&ledger, vec![Change::SetUsage(indexed)])
    }

    /// Takes the per-cluster mutation lock.
    ///
    /// A reservation holds the lock for some microseconds. A thread that finds it held
    /// first waits that long without sleeping ([`LEDGER_SPIN`]): going to sleep and being
    /// woken costs both threads system calls, and on a virtual machine the wake-up of a
    /// sleeping vCPU alone can take longer than the wait.
    pub(crate) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        let mutex = &self.shared.ledger;
        let mut started: Option<std::time::Instant> = None;
        loop {
            match mutex.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
            let since = *started.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= LEDGER_SPIN {
                return mutex.lock().unwrap_or_else(|e| e.into_inner());
            }
            for _ in 0..32 {
                std::hint::spin_loop();
            }
        }
    }

    /// Times a commit copied the whole index because a view held it and no spare was free.
    #[cfg(test)]
    pub(super) fn index_copies(&self) -> u64 {
        self.shared.state.read().unwrap().index_copies
    }

    /// Whether some thread holds the ledger lock (for tests that check what runs outside
    /// it; never blocks).
    #[cfg(test)]
    pub(super) fn ledger_is_held(&self) -> bool {
        self.shared.ledger.try_lock().is_err()
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
        // Hosts whose aggregate the batch set so far, and whether it moved host indices.
        let mut pending_set: Vec<HostIndex> = Vec::new();
        let mut reshaped = false;
        for change in &changes {
            if let Change::AddPending { host, added } = change {
                // What the ledger publishes for a host that only gained records, first in
                // its batch: checked against the aggregate it grows.
                if reshaped || pending_set.contains(host) {
                    return Err(Error::conflict(format!(
                        "AddPending on host index {host} must come before any other change \
                         of the host's aggregate or of the host list in its batch"
                    )));
                }
                // (An index out of range is reported below.)
                if let Some(on_host) = state.snapshot.hosts.get(*host as usize) {
                    on_host.pending.check_merge(added).map_err(|e| {
                        Error::conflict(format!("pending resources on host index {host}: {e}"))
                    })?;
                }
            }
            match change {
                Change::SetPending { host, .. } | Change::AddPending { host, .. } => {
                    pending_set.push(*host)
                }
                Change::AddHost(_) | Change::RemoveHost { .. } => reshaped = true,
                _ => {}
            }
            match change {
                Change::SetPending { host, .. }
                | Change::AddPending { host, .. }
                | Change::SetHostStatus { host, .. }
                | Change::ReplaceHost { host, .. }
                | Change::RemoveHost { host } => {
                    if *host as usize >= count {
                        return Err(Error::input(
                            "changes",
                            None,
                            format!(
                                "change names host index {host}, the cluster has {count} hosts"
                            ),
                        ));
                    }
                    if matches!(change, Change::RemoveHost { .. }) {
                        count -= 1;
                        ids = None;
                    }
                }
                Change::SetUsage(usage) => {
                    if let Some((host, _)) = usage.iter().find(|(h, _)| *h as usize >= count) {
                        return Err(Error::input(
                            "changes",
                            Some("SetUsage".into()),
                            format!(
                                "change names host index {host}, the cluster has {count} hosts"
                            ),
                        ));
                    }
                }
                Change::AddHost(host) => {
                    let ids = ids.get_or_insert_with(|| state.index.keys().cloned().collect());
                    if host.id.is_empty() || !ids.insert(host.id.clone()) {
                        return Err(Error::conflict(format!(
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
        if Arc::get_mut(&mut state.snapshot).is_none() {
            // A view holds the current snapshot: continue on a spare, else on a copy.
            let current = Spare {
                snapshot: state.snapshot.clone(),
                derived: state.derived.clone(),
            };
            let epoch = current.snapshot.epoch;
            if let Some(spare) = take_spare(&mut state.spares, &state.log, epoch) {
                state.snapshot = spare.snapshot;
                state.derived = spare.derived;
            }
            state.spares.push(current);
            if state.spares.len() > MAX_SPARES {
                state.spares.remove(0);
            }
        }
        // In place when no view holds the snapshot, else copy-on-write.
        let snapshot = Arc::make_mut(&mut state.snapshot);
        for change in &changes {
            // The log keeps the original for deltas; the snapshot gets a copy.
            change
                .apply_copy(snapshot)
                .expect("host indices and added pending totals were checked above");
        }
        snapshot.epoch += 1;
        let epoch = snapshot.epoch;
        if reindex {
            state.index = index_hosts(snapshot);
        }
        let touched = Touched::of(&changes);
        if touched.any() {
            #[cfg(test)]
            if Arc::get_mut(&mut state.derived).is_none() {
                state.index_copies += 1;
            }
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
            .ok_or_else(|| Error::not_found("host", host_id))
    }

    /// The rules pending resources follow on this cluster.
    pub fn pending_rules(&self) -> PendingRules {
        self.ledger().rules.clone()
    }

    /// Changes the rules (future reservations and releases use them).
    pub fn set_pending_rules(&self, rules: PendingRules) {
        let mut ledger = self.ledger();
        *self.shared.rules.write().unwrap_or_else(|e| e.into_inner()) = rules.clone();
        ledger.rules = rules;
    }

    /// The pending aggregate of a host, summed from its records.
    pub fn pending_on_host(&self, host_id: &str) -> policy_sdk::PendingAggregate {
        self.ledger().pending.host_aggregate(host_id)
    }

    /// The pending aggregate of a VM (over every host), summed from its records.
    pub fn pending_of_vm(&self, vm_id: &str) -> policy_sdk::PendingAggregate {
        self.ledger().pending.vm_aggregate(vm_id)
    }

    /// The pending records on a host.
    pub fn pending_records_on_host(&self, host_id: &str) -> Vec<PendingRecord> {
        self.ledger().pending.records_on_host(host_id)
    }

    /// The pending records of a VM.
    pub fn pending_records_of_vm(&self, vm_id: &str) -> Vec<PendingRecord> {
        self.ledger().pending.records_of_vm(vm_id)
    }

    /// Number of pending records in the cluster.
    pub fn pending_record_count(&self) -> usize {
        self.ledger().pending.len()
    }

    /// Hosts with pending records and their aggregates, by host id.
    pub fn pending_by_host(&self) -> Vec<(String, policy_sdk::PendingAggregate)> {
        let ledger = self.ledger();
        ledger
            .pending
            .hosts()
            .into_iter()
            .map(|h| {
                let agg = ledger.pending.host_aggregate(&h);
                (h, agg)
            })
            .collect()
    }

    /// Where a VM is placed and not yet started, if anywhere.
    pub fn placement(&self, vm_id: &str) -> Option<Placement> {
        self.ledger().placements.get(vm_id).cloned()
    }

    /// Records the pending resources of placing `vm` on `host_id` (per the cluster's
    /// [`PendingRules`]) and publishes the host's new aggregate. A VM already placed
    /// elsewhere is moved: its old records are released first. `Policy::schedule` (the
    /// scheduling layer) calls this for the host it chose; engines that place VMs
    /// themselves can call it directly.
    pub fn reserve(&self, vm: &Vm, host_id: &str, kind: PlacementKind) -> Result<Reservation> {
        let mut ledger = self.ledger();
        self.reserve_locked(&mut ledger, vm, host_id, kind, false)
    }

    /// Reserves for a decision made on `decided_epoch`: at once if nothing changed since,
    /// else only if `still_fits` accepts the host on the latest view. `None`: it did not.
    ///
    /// The host is judged again outside the ledger lock (a unit call can take tens of
    /// microseconds, and every other thread's reservation waits on that lock), and reserved
    /// under it only if nothing was committed since the epoch it was judged on; otherwise
    /// it is judged again on the newer view. After [`RECHECKS_OUTSIDE_THE_LOCK`] such
    /// rounds the last check runs under the lock.
    ///
    /// The records are worked out before the lock too, on the view the host was judged on
    /// ([`PreparedReservation`]); under the lock they are recorded as they are when the
    /// epoch, the pending rules and the VM's (absent) records are what they were made for.
    pub(crate) fn reserve_decided(
        &self,
        decided_epoch: u64,
        vm: &Vm,
        host_id: &str,
        kind: PlacementKind,
        mut still_fits: impl FnMut(&ClusterView) -> Result<bool>,
    ) -> Result<Option<Reservation>> {
        let mut judged_on = decided_epoch;
        for _ in 0..RECHECKS_OUTSIDE_THE_LOCK {
            let latest = self.view();
            if latest.epoch() != judged_on {
                judged_on = latest.epoch();
                if !still_fits(&latest)? {
                    return Ok(None);
                }
            }
            let prepared = self.prepare_reservation(&latest, vm, host_id, &kind)?;
            // Not held while committing: that would force a copy of the snapshot.
            drop(latest);
            let mut ledger = self.ledger();
            if self.epoch() == judged_on {
                let revalidated = judged_on != decided_epoch;
                return self
                    .reserve_prepared(&mut ledger, prepared, revalidated)
                    .map(Some);
            }
        }
        let mut ledger = self.ledger();
        if self.epoch() != judged_on && !still_fits(&self.view())? {
            return Ok(None);
        }
        self.reserve_locked(&mut ledger, vm, host_id, kind, true)
            .map(Some)
    }

    /// The records of placing `vm` on `host_id` at `view`'s epoch under the pending rules
    /// of now, made without the ledger lock.
    pub(super) fn prepare_reservation(
        &self,
        view: &ClusterView,
        vm: &Vm,
        host_id: &str,
        kind: &PlacementKind,
    ) -> Result<PreparedReservation> {
        let snapshot = view.snapshot();
        let index = view
            .host_index(host_id)
            .ok_or_else(|| Error::not_found("host", host_id))?;
        let rules = self
            .shared
            .rules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let resources = rules.resources_for(
            vm,
            &snapshot.hosts[index as usize],
            kind,
            snapshot.cluster.count_threads_as_cores,
        );
        Ok(PreparedReservation {
            records: records_of(vm, host_id, &resources),
            rules,
            placement: Placement {
                vm: vm.clone(),
                host: host_id.to_string(),
                kind: kind.clone(),
            },
        })
    }

    /// Records a prepared reservation; the caller holds the ledger lock and checked that
    /// the epoch is the one it was prepared on. When the rules changed since, or the VM
    /// holds records (placed meanwhile by another caller), its records are made again here.
    pub(super) fn reserve_prepared(
        &self,
        ledger: &mut MutexGuard<'_, Ledger>,
        prepared: PreparedReservation,
        revalidated: bool,
    ) -> Result<Reservation> {
        let PreparedReservation {
            records,
            rules,
            placement,
        } = prepared;
        if ledger.rules != rules || ledger.pending.holds_vm(&placement.vm.id) {
            let Placement { vm, host, kind } = placement;
            return self.reserve_locked(ledger, &vm, &host, kind, revalidated);
        }
        self.record_reservation(ledger, placement, records, revalidated)
    }

    pub(crate) fn reserve_locked(
        &self,
        ledger: &mut MutexGuard<'_, Ledger>,
        vm: &Vm,
        host_id: &str,
        kind: PlacementKind,
        revalidated: bool,
    ) -> Result<Reservation> {
        let index = self.require_host(host_id)?;
        let resources = {
            // Scoped: holding the snapshot while committing would force a copy of it.
            let snapshot = self.snapshot();
            let host = &snapshot.hosts[index as usize];
            let own = ledger.pending.records_of_vm(&vm.id);
            let host = if own.iter().any(|r| r.host == host_id) {
                // Re-placed on the same host: its own records must not count against it.
                Cow::Owned(without_records(host, &own))
            } else {
                Cow::Borrowed(host)
            };
            ledger
                .rules
                .resources_for(vm, &host, &kind, snapshot.cluster.count_threads_as_cores)
        };
        let placement = Placement {
            vm: vm.clone(),
            host: host_id.to_string(),
            kind,
        };
        let records = records_of(vm, host_id, &resources);
        self.record_reservation(ledger, placement, records, revalidated)
    }

    /// Records a placement's pending records, its placement and start attempt, and
    /// publishes its host's new aggregate (the caller holds the ledger lock).
    fn record_reservation(
        &self,
        ledger: &mut MutexGuard<'_, Ledger>,
        placement: Placement,
        records: Vec<PendingRecord>,
        revalidated: bool,
    ) -> Result<Reservation> {
        let resources = records.iter().map(|r| r.resource.clone()).collect();
        let vm_id = placement.vm.id.clone();
        let changed = ledger.pending.replace_vm(&vm_id, records)?;
        if placement.kind == PlacementKind::Start {
            let tried = ledger.attempts.entry(vm_id.clone()).or_default();
            tried.push(placement.host.clone());
        }
        let host = placement.host.clone();
        ledger.placements.insert(vm_id, placement);
        let epoch = self
            .publish_changed(ledger, changed, Vec::new())?
            .expect("a reservation always changes its host");
        Ok(Reservation {
            host,
            epoch,
            resources,
            revalidated,
        })
    }

    /// Adds records as they are (for resources the engine derives itself, e.g. devices or
    /// pinned pCPUs chosen outside the units). All or nothing: on error nothing changes.
    pub fn add_pending(&self, records: Vec<PendingRecord>) -> Result<Option<u64>> {
        let mut ledger = self.ledger();
        for record in &records {
            self.require_host(&record.host)?;
        }
        let changed = ledger.pending.add_all(records)?;
        self.publish_changed(&mut ledger, changed, Vec::new())
    }

    /// Releases every pending record of a VM and forgets its placement, without any other
    /// change (the VM was cancelled). Releasing twice releases nothing the second time.
    pub fn release_vm(&self, vm_id: &str) -> Result<Release> {
        let mut ledger = self.ledger();
        ledger.placements.remove(vm_id);
        ledger.attempts.remove(vm_id);
        self.release_locked(&mut ledger, vm_id, Vec::new())
    }

    /// Forgets a VM's placement and releases its records, keeping its attempt history (it
    /// is about to be placed again). A no-op for a VM without records.
    pub(crate) fn unplace(&self, vm_id: &str) -> Result<()> {
        let mut ledger = self.ledger();
        let placed = ledger.placements.remove(vm_id).is_some();
        if placed || !ledger.pending.hosts_of_vm(vm_id).is_empty() {
            self.release_locked(&mut ledger, vm_id, Vec::new())?;
        }
        Ok(())
    }

    fn release_locked(
        &self,
        ledger: &mut MutexGuard<'_, Ledger>,
        vm_id: &str,
        extra: Vec<Change>,
    ) -> Result<Release> {
        let records = ledger.pending.clear_vm(vm_id);
        let hosts: BTreeSet<String> = records.iter().map(|r| r.host.clone()).collect();
        let epoch = self.publish(ledger, hosts, extra)?;
        Ok(Release { records, epoch })
    }

    /// The VM reached powering-up/up on the host it was placed on: its pending resources
    /// are released and (per [`PendingRules::account_started_vms`]) added to the host's
    /// usage; the VM is recorded as up there. An unknown VM is a no-op.
    pub fn vm_started(&self, vm_id: &str) -> Result<Release> {
        let mut ledger = self.ledger();
        let Some(placement) = ledger.placements.remove(vm_id) else {
            tracing::debug!(vm = vm_id, "vm_started: the VM has no placement");
            return self.release_locked(&mut ledger, vm_id, Vec::new());
        };
        ledger.attempts.remove(vm_id);
        self.finish_locked(&mut ledger, placement)
    }

    /// A migration finished: like [`Cluster::vm_started`] on the destination, and the VM's
    /// usage leaves the source host.
    pub fn migration_finished(&self, vm_id: &str) -> Result<Release> {
        self.vm_started(vm_id)
    }

    fn finish_locked(
        &self,
        ledger: &mut MutexGuard<'_, Ledger>,
        placement: Placement,
    ) -> Result<Release> {
        let vm_id = placement.vm.id.clone();
        let records = ledger.pending.clear_vm(&vm_id);
        let snapshot = self.snapshot();
        let mut hosts: BTreeSet<String> = records.iter().map(|r| r.host.clone()).collect();
        let mut changes = Vec::new();
        // A host whose usage figures change: replaced whole, its aggregate included.
        let mut replace = |host_id: &str, update: &dyn Fn(&mut Host)| {
            if let Some(index) = self.host_index(host_id) {
                let mut host = snapshot.hosts[index as usize].clone();
                update(&mut host);
                host.pending = ledger.pending.host_aggregate(host_id);
                hosts.remove(host_id);
                changes.push(Change::ReplaceHost {
                    host: index,
                    value: host,
                });
            }
        };
        if ledger.rules.account_started_vms {
            let mine: Vec<&PendingResource> = records
                .iter()
                .filter(|r| r.host == placement.host)
                .map(|r| &r.resource)
                .collect();
            replace(&placement.host, &|host| add_usage(host, &mine));
            if let PlacementKind::Migration { source } = &placement.kind {
                let threads_as_cores = snapshot.cluster.count_threads_as_cores;
                replace(source, &|host| {
                    remove_usage(host, &placement.vm, &ledger.rules, threads_as_cores)
                });
            }
        }
        drop(snapshot); // let the commit update it in place
        let mut vm = placement.vm;
        vm.status = VmStatus::Up;
        vm.current_host = Some(placement.host);
        changes.push(Change::UpsertVm(vm));
        let epoch = self.publish(ledger, hosts, changes)?;
        Ok(Release { records, epoch })
    }

    /// A VM failed to start (or to migrate): its pending resources are released and its
    /// attempt history is forgotten. A failed migration leaves the VM on its source; a VM
    /// the snapshot lists as waiting for launch goes back to down. Nothing is scheduled
    /// again here (`Policy::vm_failed` also places a failed start anew). An unknown VM is a
    /// no-op.
    pub fn vm_failed(&self, vm_id: &str) -> Result<FailedPlacement> {
        self.fail_placement(vm_id, false).map(|(failed, _)| failed)
    }

    /// The state part of a failed start or migration. With `retry`, a failed start keeps
    /// its attempt history while it has attempts left ([`PendingRules::max_start_attempts`])
    /// and the hosts it was tried on are returned, for the caller to decide again without
    /// them.
    pub(crate) fn fail_placement(
        &self,
        vm_id: &str,
        retry: bool,
    ) -> Result<(FailedPlacement, Retry)> {
        let mut ledger = self.ledger();
        let placement = ledger.placements.remove(vm_id);
        let mut extra = Vec::new();
        let is_start = placement
            .as_ref()
            .is_some_and(|p| p.kind == PlacementKind::Start);
        if is_start {
            // A VM the snapshot lists as waiting for launch goes back to down.
            let waiting = self.snapshot().vms.iter().find(|v| v.id == vm_id).cloned();
            if let Some(mut vm) = waiting.filter(|v| v.status == VmStatus::WaitForLaunch) {
                vm.status = VmStatus::Down;
                vm.current_host = None;
                extra.push(Change::UpsertVm(vm));
            }
        } else if placement.is_none() {
            tracing::debug!(vm = vm_id, "vm_failed: the VM has no placement");
        }
        let release = self.release_locked(&mut ledger, vm_id, extra)?;
        let next = if retry && is_start {
            let tried = ledger.attempts.get(vm_id).cloned().unwrap_or_default();
            if tried.len() >= ledger.rules.max_start_attempts as usize {
                Retry::GaveUp(tried)
            } else {
                Retry::Allowed(tried)
            }
        } else {
            Retry::No
        };
        // The history stays for a start about to be decided again, and for a migration
        // (the VM's start attempts are not its business).
        let migrating = placement
            .as_ref()
            .is_some_and(|p| !is_start && p.kind != PlacementKind::Start);
        if !matches!(next, Retry::Allowed(_)) && !migrating {
            ledger.attempts.remove(vm_id);
        }
        let failed = FailedPlacement {
            vm: vm_id.to_string(),
            placement,
            release,
        };
        Ok((failed, next))
    }

    /// Forgets a VM's start attempts (its retry found no host).
    pub(crate) fn forget_attempts(&self, vm_id: &str) {
        self.ledger().attempts.remove(vm_id);
    }

    /// A migration failed: the destination's pending resources are released and the VM
    /// stays on its source. An unknown VM is a no-op.
    pub fn migration_failed(&self, vm_id: &str) -> Result<Release> {
        let mut ledger = self.ledger();
        ledger.placements.remove(vm_id);
        self.release_locked(&mut ledger, vm_id, Vec::new())
    }

    /// Removes a host from the cluster, releasing its pending records. VMs placed there and
    /// not started are returned (they need a new decision); VMs that ran there are marked
    /// down. Removing an unknown host is a no-op.
    pub fn remove_host(&self, host_id: &str) -> Result<HostRemoved> {
        let mut ledger = self.ledger();
        let Some(index) = self.host_index(host_id) else {
            tracing::debug!(host = host_id, "remove_host: unknown host");
            return Ok(HostRemoved {
                release: Release::default(),
                displaced: Vec::new(),
                stopped: Vec::new(),
            });
        };
        let records = ledger.pending.clear_host(host_id);
        let displaced_ids: Vec<String> = ledger
            .placements
            .iter()
            .filter(|(_, p)| p.host == host_id)
            .map(|(id, _)| id.clone())
            .collect();
        let mut displaced = Vec::new();
        for id in &displaced_ids {
            if let Some(p) = ledger.placements.remove(id) {
                // Its records elsewhere (if any) go too: the placement is void.
                ledger.pending.clear_vm(id);
                displaced.push(p);
            }
        }
        displaced.sort_by(|a, b| a.vm.id.cmp(&b.vm.id));
        let mut changes = vec![Change::RemoveHost { host: index }];
        let mut stopped = Vec::new();
        for vm in self.snapshot().vms.iter() {
            if vm.current_host.as_deref() == Some(host_id) {
                let mut vm = vm.clone();
                vm.status = VmStatus::Down;
                vm.current_host = None;
                stopped.push(vm.id.clone());
                changes.push(Change::UpsertVm(vm));
            }
        }
        let epoch = self.commit(&ledger, changes)?;
        Ok(HostRemoved {
            release: Release {
                records,
                epoch: Some(epoch),
            },
            displaced,
            stopped,
        })
    }

    /// A host went down (or non-operational): its status changes and every VM placed there
    /// and not started is failed ([`Cluster::vm_failed`]), in VM id order.
    pub fn host_down(&self, host_id: &str, status: HostStatus) -> Result<Vec<FailedPlacement>> {
        self.set_host_status(host_id, status)?;
        self.placed_on(host_id)
            .iter()
            .map(|vm| self.vm_failed(vm))
            .collect()
    }

    /// The VMs placed on a host and not started (starts and incoming migrations), by id.
    pub(crate) fn placed_on(&self, host_id: &str) -> Vec<String> {
        let ledger = self.ledger();
        let mut ids: Vec<String> = ledger
            .placements
            .iter()
            .filter(|(_, p)| p.host == host_id)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Publishes the aggregates of `hosts` (ids; unknown ones skipped) plus `extra` changes
    /// as one epoch. `None` when there was nothing to publish.
    pub(crate) fn publish(
        &self,
        ledger: &mut MutexGuard<'_, Ledger>,
        hosts: impl IntoIterator<Item = String>,
        extra: Vec<Change>,
    ) -> Result<Option<u64>> {
        let changed = ledger.pending.summed_afresh(hosts);
        self.publish_changed(ledger, changed, extra)
    }

    /// [`Cluster::publish`] of hosts whose new aggregates are known (the ledger's change
    /// computed them).
    pub(crate) fn publish_changed(
        &self,
        ledger: &mut MutexGuard<'_, Ledger>,
        changed: Changed,
        mut extra: Vec<Change>,
    ) -> Result<Option<u64>> {
        let mut changes: Vec<Change> = changed
            .into_iter()
            .filter_map(|(id, pending)| {
                let host = self.host_index(&id)?;
                Some(match pending {
                    HostPending::Added(added) => Change::AddPending { host, added },
                    HostPending::Whole(pending) => Change::SetPending { host, pending },
                })
            })
            .collect();
        changes.append(&mut extra);
        if changes.is_empty() {
            return Ok(None);
        }
        self.commit(ledger, changes).map(Some)
    }

    /// Records a planned memory hot plug (the caller holds the ledger lock and planned it on
    /// the current snapshot): the DIMM's memory is pending on the host until
    /// [`Cluster::confirm_memory_change`] or [`Cluster::fail_memory_change`]. Returns the
    /// epoch published.
    pub(crate) fn record_memory_plug(
        &self,
        ledger: &mut MutexGuard<'_, Ledger>,
        vm_id: &str,
        host_id: &str,
        device: MemoryDevice,
        pending: PendingResource,
    ) -> Result<u64> {
        let changed = ledger.pending.add(PendingRecord {
            host: host_id.to_string(),
            vm: vm_id.to_string(),
            resource: pending,
        })?;
        let epoch = self
            .publish_changed(ledger, changed, Vec::new())?
            .expect("a hot plug record changes its host");
        ledger.memory.insert(
            vm_id.to_string(),
            MemoryInFlight {
                host: host_id.to_string(),
                kind: MemoryInFlightKind::Plug { device },
            },
        );
        Ok(epoch)
    }

    /// Records a planned memory unplug: `updated` is the VM with the DIMMs marked
    /// `unplugging`, until confirmed or failed. Returns the epoch published.
    pub(crate) fn record_memory_unplug(
        &self,
        ledger: &mut MutexGuard<'_, Ledger>,
        updated: Vm,
        host_id: &str,
        devices: Vec<String>,
    ) -> Result<u64> {
        let vm_id = updated.id.clone();
        let epoch = self.commit(ledger, vec![Change::UpsertVm(updated)])?;
        ledger.memory.insert(
            vm_id,
            MemoryInFlight {
                host: host_id.to_string(),
                kind: MemoryInFlightKind::Unplug { devices },
            },
        );
        Ok(epoch)
    }

    /// The memory change in flight for `vm_id` succeeded. A plug: its pending record is
    /// released, the DIMM joins the VM (memory, devices, vNUMA node) and, per
    /// [`PendingRules::account_started_vms`](crate::PendingRules::account_started_vms),
    /// its memory moves into the host's usage figures. An unplug: the DIMMs leave the VM and
    /// their memory leaves the host's usage. `None` when nothing was in flight (confirming
    /// twice changes nothing the second time).
    pub fn confirm_memory_change(&self, vm_id: &str) -> Result<Option<MemoryChangeDone>> {
        self.finish_memory_change(vm_id, true)
    }

    /// The memory change in flight for `vm_id` failed: a plug's pending record is released
    /// (the VM keeps its size); an unplug's DIMMs stop being `unplugging`. `None` when
    /// nothing was in flight.
    pub fn fail_memory_change(&self, vm_id: &str) -> Result<Option<MemoryChangeDone>> {
        self.finish_memory_change(vm_id, false)
    }

    /// Memory changes in flight, as (VM id, host id, `plug`/`unplug`), by VM id.
    pub fn memory_changes_in_flight(&self) -> Vec<(String, String, &'static str)> {
        let ledger = self.ledger();
        let mut out: Vec<_> = ledger
            .memory
            .iter()
            .map(|(vm, f)| (vm.clone(), f.host.clone(), f.kind.name()))
            .collect();
        out.sort();
        out
    }

    /// The memory change in flight for `vm_id` as a record a durable store can keep;
    /// `None` when nothing is in flight.
    pub fn memory_change(&self, vm_id: &str) -> Option<MemoryChangeRecord> {
        let ledger = self.ledger();
        let flight = ledger.memory.get(vm_id)?;
        let change = match &flight.kind {
            MemoryInFlightKind::Plug { device } => MemoryChangeKind::Plug {
                device: device.clone(),
                pending: ledger
                    .pending
                    .records_of_vm(vm_id)
                    .into_iter()
                    .find(|r| r.resource.key() == ResourceKey::HotplugMemory)?
                    .resource,
            },
            MemoryInFlightKind::Unplug { devices } => MemoryChangeKind::Unplug {
                devices: devices.clone(),
            },
        };
        Some(MemoryChangeRecord {
            vm: vm_id.to_string(),
            host: flight.host.clone(),
            change,
        })
    }

    /// Puts a stored memory change back in flight (after a restart; an unplug's VM is
    /// expected in the snapshot with its DIMMs marked `unplugging`): a plug's memory is
    /// pending on its host again. Fails (changing nothing) on an unknown host or when a
    /// change is already in flight for the VM.
    pub fn restore_memory_change(&self, record: MemoryChangeRecord) -> Result<()> {
        let mut ledger = self.ledger();
        self.require_host(&record.host)?;
        if ledger.memory.contains_key(&record.vm) {
            return Err(Error::conflict(format!(
                "VM {:?} already has a memory change in flight",
                record.vm
            )));
        }
        match record.change {
            MemoryChangeKind::Plug { device, pending } => {
                self.record_memory_plug(&mut ledger, &record.vm, &record.host, device, pending)?;
            }
            MemoryChangeKind::Unplug { devices } => {
                ledger.memory.insert(
                    record.vm,
                    MemoryInFlight {
                        host: record.host,
                        kind: MemoryInFlightKind::Unplug { devices },
                    },
                );
            }
        }
        Ok(())
    }

    fn finish_memory_change(
        &self,
        vm_id: &str,
        succeeded: bool,
    ) -> Result<Option<MemoryChangeDone>> {
        let mut ledger = self.ledger();
        let Some(flight) = ledger.memory.remove(vm_id) else {
            tracing::debug!(vm = vm_id, "no memory change in flight");
            return Ok(None);
        };
        let record = match flight.kind {
            MemoryInFlightKind::Plug { .. } => {
                ledger.pending.remove(vm_id, &ResourceKey::HotplugMemory)
            }
            MemoryInFlightKind::Unplug { .. } => None,
        };
        let snapshot = self.snapshot();
        let mut vm = snapshot.vms.iter().find(|v| v.id == vm_id).cloned();
        let mut changes = Vec::new();
        let mut touched: BTreeSet<String> = record.iter().map(|r| r.host.clone()).collect();
        let mut usage: Vec<PendingResource> = Vec::new();
        let devices = match &flight.kind {
            MemoryInFlightKind::Plug { device } => {
                if let (true, Some(vm)) = (succeeded, vm.as_mut()) {
                    vm.memory_mb = vm.memory_mb.saturating_add(device.size_mb);
                    if let Some(node) = vm.numa_nodes.iter_mut().find(|n| n.index == device.node) {
                        node.memory_mb = node.memory_mb.saturating_add(device.size_mb);
                    }
                    vm.memory_devices.push(device.clone());
                    if let Some(r) = &record {
                        usage.push(r.resource.clone());
                    }
                }
                vec![device.id.clone()]
            }
            MemoryInFlightKind::Unplug { devices } => {
                if let Some(vm) = vm.as_mut() {
                    let mut freed = 0u64;
                    for d in vm.memory_devices.iter_mut() {
                        if devices.contains(&d.id) {
                            d.unplugging = false;
                        }
                    }
                    if succeeded {
                        let (gone, kept): (Vec<MemoryDevice>, Vec<MemoryDevice>) = vm
                            .memory_devices
                            .drain(..)
                            .partition(|d| devices.contains(&d.id));
                        vm.memory_devices = kept;
                        for d in &gone {
                            freed = freed.saturating_add(d.size_mb);
                            if let Some(node) = vm.numa_nodes.iter_mut().find(|n| n.index == d.node)
                            {
                                node.memory_mb = node.memory_mb.saturating_sub(d.size_mb);
                            }
                        }
                        vm.memory_mb = vm.memory_mb.saturating_sub(freed);
                    }
                    if succeeded && freed > 0 && ledger.rules.account_started_vms {
                        if let Some(index) = self.host_index(&flight.host) {
                            let mut host = snapshot.hosts[index as usize].clone();
                            host.memory.committed_mb =
                                host.memory.committed_mb.saturating_sub(freed);
                            if vm.hugepage_size_kb.is_none() {
                                host.memory.free_mb = host
                                    .memory
                                    .free_mb
                                    .saturating_add(freed)
                                    .min(host.memory.physical_mb.max(host.memory.free_mb));
                            }
                            host.pending = ledger.pending.host_aggregate(&flight.host);
                            changes.push(Change::ReplaceHost {
                                host: index,
                                value: host,
                            });
                        }
                    }
                }
                devices.clone()
            }
        };
        if !usage.is_empty() && ledger.rules.account_started_vms {
            if let Some(index) = self.host_index(&flight.host) {
                let mut host = snapshot.hosts[index as usize].clone();
                for resource in &usage {
                    add_resource_usage(&mut host, resource);
                }
                host.pending = ledger.pending.host_aggregate(&flight.host);
                touched.remove(&flight.host);
                changes.push(Change::ReplaceHost {
                    host: index,
                    value: host,
                });
            }
        }
        drop(snapshot);
        let memory_mb = vm.as_ref().map_or(0, |v| v.memory_mb);
        if let Some(vm) = vm {
            changes.push(Change::UpsertVm(vm));
        }
        let epoch = self.publish(&mut ledger, touched, changes)?;
        Ok(Some(MemoryChangeDone {
            vm: vm_id.to_string(),
            kind: flight.kind.name(),
            devices,
            memory_mb,
            release: Release {
                records: record.into_iter().collect(),
                epoch,
            },
        }))
    }
}

fn validate(snapshot: &Snapshot, source: &str) -> Result<()> {
    let at = |prefix: String| {
        move |fault: Fault| {
            Error::input(
                source,
                Some(format!("{prefix}{}", fault.field)),
                fault.message,
            )
        }
    };
    check_cluster(&snapshot.cluster).map_err(at("cluster.".into()))?;
    if snapshot.hosts.is_empty() {
        return Err(Error::input(
            source,
            Some("hosts".into()),
            "the cluster has no hosts (a cluster document is an object with a `hosts` list)",
        ));
    }
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
        check_host(host).map_err(at(format!("hosts[{i}].")))?;
        if !ids.insert(host.id.as_str()) {
            return Err(Error::input(
                source,
                Some(format!("hosts[{i}].id")),
                format!("duplicate host id {:?}", host.id),
            ));
        }
    }
    if snapshot.hosts.len() > u32::MAX as usize / 2 {
        return Err(Error::input(source, Some("hosts".into()), "too many hosts"));
    }
    let mut vm_ids = HashSet::new();
    for (i, vm) in snapshot.vms.iter().enumerate() {
        check_vm(vm).map_err(at(format!("vms[{i}].")))?;
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
