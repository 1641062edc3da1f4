//! The service without HTTP: clusters by id, their policies, the durable store, and every
//! operation the API offers. Work runs on blocking threads (wasm is CPU work); each cluster
//! has its own locks and its own decision worker for schedule requests, so clusters never
//! wait on each other. Every change is journaled (see `Touched`) and acknowledged only once
//! the store made it durable.

use crate::error::ApiError;
use crate::lease::{Acquired, HeldLeases, Leases};
use crate::metrics::{Gauges, Metrics, ShadowGauge};
use crate::replica::{Replication, Route};
use crate::store::{
    BoxFuture, LeaseToken, PolicySpec, Store, StoreError, StoredCluster, StoredDoc,
    StoredPlacement, Write,
};
use axum::http::StatusCode;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use wasmsched::sdk::wire::sync::Change;
use wasmsched::sdk::{Host, HostStatus, HostUsage as UsageFigures, Snapshot, Vm};
use wasmsched::shadow::ShadowStatus;
use wasmsched::{
    Cluster, Decision, Format, MemoryChangeRecord, MigrationTrigger, PlacementKind, Policy,
    Runtime, ScheduleRequest,
};

/// A lifecycle report about one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEvent {
    /// The VM reached powering-up/up on the host it was placed on.
    Started,
    /// The VM failed to start (or migrate); a failed start is placed again when
    /// `reschedule` is set.
    Failed {
        /// Place a failed start again, avoiding the hosts it was tried on.
        reschedule: bool,
    },
    /// A migration finished on its destination.
    MigrationFinished,
    /// A migration failed; the VM stays on its source.
    MigrationFailed,
    /// The VM was cancelled: its pending resources are released.
    Release,
}

/// One host's usage figures, as an engine sends them every few seconds. Fields left out
/// keep their value.
#[derive(Debug, Clone, Default, serde::Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostUsage {
    /// Host id.
    pub host: String,
    /// CPU usage in percent.
    pub cpu_percent: Option<u32>,
    /// Free memory, MiB.
    pub free_memory_mb: Option<u64>,
    /// Free swap, MiB.
    pub swap_free_mb: Option<u64>,
    /// VMs running on the host.
    pub running_vms: Option<u32>,
}

/// What became of the reservations when a cluster's snapshot was replaced.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct PutOutcome {
    /// `true` when the cluster did not exist before.
    pub created: bool,
    /// The snapshot's epoch now.
    pub epoch: u64,
    /// Hosts in the snapshot.
    pub hosts: usize,
    /// VMs whose pending reservations were kept.
    pub kept: Vec<String>,
    /// Reservations dropped because their host is no longer in the snapshot, as
    /// `vm@host`.
    pub dropped: Vec<String>,
}

/// What `GET /v1/clusters/{id}` shows of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSummary {
    /// The current snapshot, pending aggregates filled.
    pub snapshot: Arc<Snapshot>,
    /// The policy as it was set.
    pub policy: PolicySpec,
    /// VMs placed and not yet started.
    pub pending_vms: usize,
    /// The policy's shadow units and what they would have changed (empty `units` when it
    /// has none).
    pub shadow: ShadowStatus,
}

/// A cluster served: its state behind a gate, its policy, and the order of its writes.
#[derive(Debug)]
struct Served {
    /// Read by every decision and report; written only when the snapshot is replaced, so a
    /// reservation never lands on a cluster object that is being swapped out.
    gate: RwLock<Cluster>,
    policy: RwLock<(PolicySpec, Policy)>,
    /// Held while what an operation touched is read from memory, turned into writes and
    /// submitted: the store receives one cluster's writes in the order their content was
    /// read, so the last write of anything is what memory holds (see [`Touched`]).
    journal: Mutex<()>,
    /// Schedule requests waiting for the cluster's decision worker.
    queue: Mutex<DecisionQueue>,
    /// The cluster's lease, when replicas share the store (`None`: the service runs
    /// alone). Every write of the cluster carries its token.
    lease: Option<ServedLease>,
}

/// The lease under which a replica serves a cluster.
#[derive(Debug)]
struct ServedLease {
    token: LeaseToken,
    /// Until when the lease surely holds (the start of the last renewal that succeeded,
    /// plus the lease's duration); past it the replica stops routing requests here.
    valid_until: Mutex<Instant>,
}

/// Schedule requests waiting to be decided, and whether a worker is deciding them.
#[derive(Debug, Default)]
struct DecisionQueue {
    jobs: Vec<Job>,
    worker: bool,
}

/// One caller's requests (decided one after another) and where to send the answer.
#[derive(Debug)]
struct Job {
    requests: Vec<ScheduleRequest>,
    reply: oneshot::Sender<Result<Vec<Result<Decision, ApiError>>, ApiError>>,
}

/// Lets a new worker start if the running one panicked.
struct WorkerGuard<'a>(&'a Mutex<DecisionQueue>);

impl Drop for WorkerGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(mut queue) = self.0.lock() {
                queue.worker = false;
            }
        }
    }
}

/// What an operation changed, named by id. The content is read from memory only when the
/// operation is journaled, under the cluster's journal lock: two concurrent operations on
/// the same VM or host may finish their in-memory changes in one order and reach the
/// journal in the other, and the store still ends with the later state (the write that
/// comes last read memory after both changes).
#[derive(Debug, Default)]
struct Touched {
    /// VMs whose placement to store (reserved, or released when they have none).
    placements: Vec<String>,
    /// Hosts whose document to store (usage figures).
    hosts: Vec<String>,
    /// VMs whose snapshot document to store.
    vms: Vec<String>,
    /// VMs whose memory change in flight to store (or clear).
    memory: Vec<String>,
    /// The whole snapshot (hosts added or removed, statuses).
    snapshot: bool,
}

impl Touched {
    fn is_empty(&self) -> bool {
        !self.snapshot
            && self.placements.is_empty()
            && self.hosts.is_empty()
            && self.vms.is_empty()
            && self.memory.is_empty()
    }
}

/// The service: runtime, store, clusters, metrics.
#[derive(Debug)]
pub struct Service {
    runtime: Runtime,
    store: Arc<dyn Store>,
    clusters: RwLock<HashMap<String, Arc<Served>>>,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    /// Present when replicas share the store (PostgreSQL).
    replication: Option<Replication>,
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("model types serialize")
}

/// The snapshot as stored: pending aggregates belong to the ledger and are rebuilt from
/// the stored placements.
fn stored_snapshot(cluster: &Cluster) -> String {
    let mut snapshot = (*cluster.snapshot()).clone();
    for host in &mut snapshot.hosts {
        host.pending = Default::default();
    }
    json(&snapshot)
}

/// A host's document as stored (pending aggregate cleared, like in [`stored_snapshot`]).
fn stored_host(host: &Host) -> String {
    let mut host = host.clone();
    host.pending = Default::default();
    json(&host)
}

/// The stored snapshot with the host and VM documents written since laid over it.
fn restored_snapshot(stored: &StoredCluster) -> anyhow::Result<Snapshot> {
    let context = |what: &str, e: serde_json::Error| {
        anyhow::anyhow!("stored cluster {:?}: {what}: {e}", stored.id)
    };
    let mut snapshot: Snapshot =
        serde_json::from_str(&stored.snapshot).map_err(|e| context("snapshot", e))?;
    for doc in &stored.hosts {
        let host: Host = serde_json::from_str(&doc.doc).map_err(|e| context(&doc.id, e))?;
        match snapshot.hosts.iter_mut().find(|h| h.id == host.id) {
            Some(slot) => *slot = host,
            None => tracing::warn!(
                cluster = stored.id,
                host = host.id,
                "stored host document for a host not in the snapshot: skipped"
            ),
        }
    }
    for doc in &stored.vms {
        let vm: Vm = serde_json::from_str(&doc.doc).map_err(|e| context(&doc.id, e))?;
        match snapshot.vms.iter_mut().find(|v| v.id == vm.id) {
            Some(slot) => *slot = vm,
            None => snapshot.vms.push(vm),
        }
    }
    Ok(snapshot)
}

/// VMs with a memory change in flight in `cluster`.
fn memory_vms(cluster: &Cluster) -> Vec<String> {
    cluster
        .memory_changes_in_flight()
        .into_iter()
        .map(|(vm, _, _)| vm)
        .collect()
}

/// VMs holding pending records in `cluster`.
fn placed_vms(cluster: &Cluster) -> BTreeSet<String> {
    cluster
        .pending_by_host()
        .into_iter()
        .flat_map(|(host, _)| cluster.pending_records_on_host(&host))
        .map(|record| record.vm)
        .collect()
}

fn blocking_failed(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("decision task failed: {e}"),
    )
}

impl Served {
    fn cluster(&self) -> std::sync::RwLockReadGuard<'_, Cluster> {
        self.gate.read().unwrap()
    }

    fn policy(&self) -> Policy {
        self.policy.read().unwrap().1.clone()
    }

    /// Reads what `touched` names from `cluster` as it is now, turns it into writes after
    /// `extra`, and submits them as one, all under the journal lock (see [`Touched`]).
    fn journal(
        &self,
        id: &str,
        cluster: &Cluster,
        store: &dyn Store,
        touched: Touched,
        extra: Vec<Write>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let _order = self.journal.lock().unwrap();
        let mut writes = extra;
        let cluster_id = || id.to_string();
        if touched.snapshot {
            writes.push(Write::PutSnapshot {
                cluster: cluster_id(),
                snapshot: stored_snapshot(cluster),
            });
        }
        let snapshot = cluster.snapshot();
        for host in touched.hosts {
            if let Some(index) = cluster.host_index(&host) {
                writes.push(Write::PutHost {
                    cluster: cluster_id(),
                    host: StoredDoc {
                        doc: stored_host(&snapshot.hosts[index as usize]),
                        id: host,
                    },
                });
            }
        }
        for vm in touched.vms {
            if let Some(doc) = snapshot.vms.iter().find(|v| v.id == vm) {
                writes.push(Write::PutVm {
                    cluster: cluster_id(),
                    vm: StoredDoc {
                        doc: json(doc),
                        id: vm,
                    },
                });
            }
        }
        for vm in touched.memory {
            writes.push(Write::PutMemoryChange {
                cluster: cluster_id(),
                record: cluster.memory_change(&vm).map(|record| json(&record)),
                vm,
            });
        }
        for vm in touched.placements {
            writes.push(match cluster.placement(&vm) {
                Some(placement) => Write::Reserve {
                    cluster: cluster_id(),
                    placement: StoredPlacement {
                        vm: vm.clone(),
                        host: placement.host.clone(),
                        vm_doc: json(&placement.vm),
                        kind: json(&placement.kind),
                    },
                },
                None => Write::Release {
                    cluster: cluster_id(),
                    vm,
                },
            });
        }
        store.submit(self.lease_token(), writes)
    }

    fn lease_token(&self) -> Option<LeaseToken> {
        self.lease.as_ref().map(|lease| lease.token)
    }

    /// Whether requests for the cluster may be served here: alone, or under a lease not
    /// yet past its validity.
    fn lease_valid(&self) -> bool {
        self.lease
            .as_ref()
            .is_none_or(|lease| *lease.valid_until.lock().unwrap() > Instant::now())
    }
}

impl Service {
    /// A service serving nothing yet, not ready.
    fn new(
        runtime: Runtime,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        replication: Option<Replication>,
    ) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            store,
            clusters: RwLock::new(HashMap::new()),
            metrics,
            ready: AtomicBool::new(false),
            replication,
        })
    }

    /// Builds the service over `runtime` and `store`, rebuilding every stored cluster and
    /// re-applying its pending reservations.
    pub async fn start(
        runtime: Runtime,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let service = Self::new(runtime, store, metrics, None);
        let mut stale = Vec::new();
        for stored in service.store.load().await? {
            let (served, mut released) = service.restore(&stored, None)?;
            stale.append(&mut released);
            service
                .clusters
                .write()
                .unwrap()
                .insert(stored.id.clone(), Arc::new(served));
        }
        if !stale.is_empty() {
            service.store.submit(None, stale).await?;
        }
        service.ready.store(true, Ordering::SeqCst);
        Ok(service)
    }

    /// Builds one replica of several sharing `store` (see `docs/replicas.md`): it serves
    /// the clusters whose lease it holds, takes the leases of clusters nobody holds (new
    /// ones, those of a replica that stopped renewing), rebuilding each from the store,
    /// and forwards requests for the others to their holder. A background task renews
    /// the leases and takes over orphaned clusters.
    pub async fn start_replica(
        runtime: Runtime,
        store: Arc<dyn Store>,
        leases: Arc<dyn Leases>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let replication = Replication::new(leases);
        replication.set_live(replication.leases().heartbeat().await?);
        let service = Self::new(runtime, store, metrics, Some(replication));
        tokio::spawn(Self::keep_leases(Arc::downgrade(&service)));
        service.ready.store(true, Ordering::SeqCst);
        Ok(service)
    }

    /// Rebuilds a stored cluster: its snapshot with the documents written since, its
    /// reservations and memory changes, its policy; `lease`: the token it is served under
    /// and when the lease was asked for. Returns the releases of reservations that no
    /// longer apply (to store).
    fn restore(
        &self,
        stored: &StoredCluster,
        lease: Option<(LeaseToken, Instant)>,
    ) -> anyhow::Result<(Served, Vec<Write>)> {
        let mut stale = Vec::new();
        let snapshot = restored_snapshot(stored)?;
        let cluster = Cluster::new(snapshot, &format!("stored cluster {:?}", stored.id))?;
        for placement in &stored.placements {
            let restored = serde_json::from_str::<Vm>(&placement.vm_doc)
                .map_err(|e| e.to_string())
                .and_then(|vm| {
                    let kind: PlacementKind =
                        serde_json::from_str(&placement.kind).map_err(|e| e.to_string())?;
                    cluster
                        .reserve(&vm, &placement.host, kind)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = restored {
                tracing::warn!(
                    cluster = stored.id,
                    vm = placement.vm,
                    host = placement.host,
                    "stored reservation not restored: {e}"
                );
                stale.push(Write::Release {
                    cluster: stored.id.clone(),
                    vm: placement.vm.clone(),
                });
            }
        }
        for text in &stored.memory_changes {
            let restored = serde_json::from_str::<MemoryChangeRecord>(text)
                .map_err(|e| e.to_string())
                .and_then(|record| {
                    let vm = record.vm.clone();
                    cluster
                        .restore_memory_change(record)
                        .map_err(|e| format!("VM {vm:?}: {e}"))
                });
            if let Err(e) = restored {
                // Left in the store: a later confirm or failure of the VM clears it.
                tracing::warn!(
                    cluster = stored.id,
                    "stored memory change not restored: {e}"
                );
            }
        }
        let policy = match self.policy_from(&stored.policy) {
            Ok(policy) => (stored.policy.clone(), policy),
            Err(e) => {
                tracing::warn!(
                    cluster = stored.id,
                    "stored policy no longer loads ({e}); serving the default policy"
                );
                (
                    PolicySpec::default(),
                    Policy::builtin_default(&self.runtime)?,
                )
            }
        };
        tracing::info!(
            cluster = stored.id,
            hosts = cluster.snapshot().hosts.len(),
            reservations = stored.placements.len(),
            "cluster restored"
        );
        let lease = lease.map(|(token, asked)| ServedLease {
            token,
            valid_until: Mutex::new(asked + self.lease_duration()),
        });
        Ok((
            Served {
                gate: RwLock::new(cluster),
                policy: RwLock::new(policy),
                journal: Mutex::new(()),
                queue: Mutex::default(),
                lease,
            },
            stale,
        ))
    }

    /// The runtime (modules, reload status).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the service takes requests (clusters restored, not shutting down).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Stops taking part in readiness (shutdown began).
    pub fn set_unready(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }

    fn served(&self, id: &str) -> Result<Arc<Served>, ApiError> {
        self.clusters
            .read()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::unknown_cluster(id))
    }

    fn policy_from(&self, spec: &PolicySpec) -> wasmsched::Result<Policy> {
        match spec {
            PolicySpec::Builtin(name) => Policy::builtin(&self.runtime, name),
            PolicySpec::Document { text, format } => {
                let format = match format.as_str() {
                    "toml" => Format::Toml,
                    "json" => Format::Json,
                    other => {
                        return Err(wasmsched::Error::input(
                            "policy",
                            Some("document.format".into()),
                            format!("{other:?} is not a policy format (toml or json)"),
                        ))
                    }
                };
                Policy::parse(&self.runtime, text, format, "policy document")
            }
        }
    }

    /// Creates or replaces a cluster's snapshot (and, when given, its policy). Pending
    /// reservations are kept on hosts the new snapshot still has, dropped (and reported)
    /// otherwise.
    pub async fn put_cluster(
        self: &Arc<Self>,
        id: String,
        snapshot: Snapshot,
        policy: Option<PolicySpec>,
    ) -> Result<PutOutcome, ApiError> {
        let this = self.clone();
        let (outcome, commit) =
            tokio::task::spawn_blocking(move || this.put_cluster_blocking(id, snapshot, policy))
                .await
                .map_err(blocking_failed)??;
        commit.await?;
        Ok(outcome)
    }

    fn put_cluster_blocking(
        &self,
        id: String,
        snapshot: Snapshot,
        policy: Option<PolicySpec>,
    ) -> Result<(PutOutcome, BoxFuture<'static, Result<(), StoreError>>), ApiError> {
        let existing = self.clusters.read().unwrap().get(&id).cloned();
        // Kept for the rare race where another request creates the cluster meanwhile.
        let retry = existing
            .is_none()
            .then(|| (snapshot.clone(), policy.clone()));
        let new = Cluster::new(snapshot, "request body")?;
        let policy = match policy {
            Some(spec) => Some((self.policy_from(&spec)?, spec)),
            None => None,
        };
        let Some(served) = existing else {
            let lease = match &self.replication {
                None => None,
                Some(replication) => Some(replication.take_creating(&id).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "cluster {id:?}: this replica does not hold its lease (it moved \
                             while the request was on its way); retry"
                        ),
                    )
                })?),
            };
            let (policy, spec) = match policy {
                Some(p) => p,
                None => (
                    Policy::builtin_default(&self.runtime)?,
                    PolicySpec::default(),
                ),
            };
            let vms = placed_vms(&new);
            let put = Write::PutCluster {
                cluster: id.clone(),
                snapshot: stored_snapshot(&new),
                policy: spec.clone(),
            };
            let outcome = PutOutcome {
                created: true,
                epoch: new.epoch(),
                hosts: new.snapshot().hosts.len(),
                kept: vms.iter().cloned().collect(),
                dropped: Vec::new(),
            };
            let served = Arc::new(Served {
                gate: RwLock::new(new.clone()),
                policy: RwLock::new((spec, policy)),
                journal: Mutex::new(()),
                queue: Mutex::default(),
                lease: lease.map(|(token, asked)| ServedLease {
                    token,
                    valid_until: Mutex::new(asked + self.lease_duration()),
                }),
            });
            let mut clusters = self.clusters.write().unwrap();
            if clusters.contains_key(&id) {
                drop(clusters);
                // Created meanwhile by another request: replace it like any other.
                let (snapshot, policy) = retry.expect("kept for a new cluster");
                return self.put_cluster_blocking(id, snapshot, policy);
            }
            let touched = Touched {
                placements: vms.into_iter().collect(),
                memory: memory_vms(&new),
                ..Touched::default()
            };
            let commit = served.journal(&id, &new, &*self.store, touched, vec![put]);
            clusters.insert(id, served);
            return Ok((outcome, commit));
        };
        let mut gate = served.gate.write().unwrap();
        new.set_pending_rules(gate.pending_rules());
        let mut outcome = PutOutcome {
            created: false,
            ..PutOutcome::default()
        };
        let old_vms = placed_vms(&gate);
        for vm in &old_vms {
            let Some(placement) = gate.placement(vm) else {
                continue;
            };
            if new.host_index(&placement.host).is_some() {
                new.reserve(&placement.vm, &placement.host, placement.kind.clone())?;
                outcome.kept.push(vm.clone());
            } else {
                outcome.dropped.push(format!("{vm}@{}", placement.host));
            }
        }
        let old_memory = memory_vms(&gate);
        for vm in &old_memory {
            if let Some(record) = gate.memory_change(vm) {
                let host = record.host.clone();
                if new.restore_memory_change(record).is_err() {
                    outcome.dropped.push(format!("{vm}@{host} (memory change)"));
                }
            }
        }
        let mut writes = Vec::new();
        if let Some((policy, spec)) = policy {
            writes.push(Write::PutPolicy {
                cluster: id.clone(),
                policy: spec.clone(),
            });
            *served.policy.write().unwrap() = (spec, policy);
        }
        let touched = Touched {
            placements: old_vms.union(&placed_vms(&new)).cloned().collect(),
            memory: old_memory,
            snapshot: true,
            ..Touched::default()
        };
        let commit = served.journal(&id, &new, &*self.store, touched, writes);
        outcome.epoch = new.epoch();
        outcome.hosts = new.snapshot().hosts.len();
        *gate = new;
        Ok((outcome, commit))
    }

    /// Sets a cluster's policy.
    pub async fn set_policy(&self, id: &str, spec: PolicySpec) -> Result<String, ApiError> {
        let served = self.served(id)?;
        let policy = self.policy_from(&spec)?;
        let name = policy.name().to_string();
        let commit = {
            let _order = served.journal.lock().unwrap();
            *served.policy.write().unwrap() = (spec.clone(), policy);
            self.store.submit(
                served.lease_token(),
                vec![Write::PutPolicy {
                    cluster: id.to_string(),
                    policy: spec,
                }],
            )
        };
        commit.await?;
        Ok(name)
    }

    /// A cluster's current snapshot (with pending aggregates) and policy.
    pub fn cluster(&self, id: &str) -> Result<ClusterSummary, ApiError> {
        let served = self.served(id)?;
        let cluster = served.cluster();
        let (spec, shadow) = {
            let policy = served.policy.read().unwrap();
            (policy.0.clone(), policy.1.shadow_status())
        };
        Ok(ClusterSummary {
            snapshot: cluster.snapshot(),
            policy: spec,
            pending_vms: placed_vms(&cluster).len(),
            shadow,
        })
    }

    /// Schedules one VM; the reservation is durable when this returns `Ok`.
    pub async fn schedule(
        self: &Arc<Self>,
        id: &str,
        request: ScheduleRequest,
    ) -> Result<Decision, ApiError> {
        let mut results = self.schedule_batch(id, vec![request]).await?;
        results.pop().expect("one result per request")
    }

    /// Schedules VMs one after another (each sees the ones before); every reservation is
    /// durable when this returns.
    ///
    /// The requests join the cluster's decision queue. One worker per cluster (a blocking
    /// thread, started by the first request that finds none) takes everything queued,
    /// decides it in arrival order like an in-process mass start, journals the placements
    /// as one submission and decides the next queued requests while that commits; the
    /// answers go out once their commit is durable. So concurrent requests for one cluster
    /// never decide on the same view (no optimistic retries), and their fsyncs are shared.
    pub async fn schedule_batch(
        self: &Arc<Self>,
        id: &str,
        requests: Vec<ScheduleRequest>,
    ) -> Result<Vec<Result<Decision, ApiError>>, ApiError> {
        let served = self.served(id)?;
        let (reply, answer) = oneshot::channel();
        let start_worker = {
            let mut queue = served.queue.lock().unwrap();
            queue.jobs.push(Job { requests, reply });
            !std::mem::replace(&mut queue.worker, true)
        };
        if start_worker {
            let this = self.clone();
            let id = id.to_string();
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || this.decide_queued(&id, &served, &runtime));
        }
        answer.await.unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the decision worker stopped",
            ))
        })
    }

    /// The cluster's decision worker: decides queued jobs until the queue is empty.
    fn decide_queued(&self, id: &str, served: &Arc<Served>, runtime: &tokio::runtime::Handle) {
        let _worker = WorkerGuard(&served.queue);
        loop {
            let jobs = {
                let mut queue = served.queue.lock().unwrap();
                if queue.jobs.is_empty() {
                    queue.worker = false;
                    return;
                }
                std::mem::take(&mut queue.jobs)
            };
            let cluster = served.cluster();
            let policy = served.policy();
            let mut answers = Vec::with_capacity(jobs.len());
            let mut placed = Vec::new();
            // A job whose caller is gone (timed out) is not decided.
            for job in jobs.into_iter().filter(|job| !job.reply.is_closed()) {
                let results: Vec<Result<Decision, ApiError>> = job
                    .requests
                    .iter()
                    .map(|request| {
                        let started = Instant::now();
                        let result = policy.schedule(&cluster, request);
                        let outcome = result.as_ref().ok().map(|d| d.chosen.is_some());
                        self.metrics.decided(outcome, started.elapsed());
                        result.map_err(ApiError::from)
                    })
                    .collect();
                placed.extend(
                    results
                        .iter()
                        .flatten()
                        .filter(|d| d.chosen.is_some())
                        .map(|d| d.vm.clone()),
                );
                answers.push((job.reply, results));
            }
            if answers.is_empty() {
                continue;
            }
            let touched = Touched {
                placements: placed.clone(),
                ..Touched::default()
            };
            let commit = served.journal(id, &cluster, &*self.store, touched, Vec::new());
            drop(cluster);
            let served = served.clone();
            let (id, store) = (id.to_string(), self.store.clone());
            runtime.spawn(async move {
                match commit.await {
                    Ok(()) => {
                        let mut unacknowledged = Vec::new();
                        for (reply, results) in answers {
                            if let Err(Ok(results)) = reply.send(Ok(results)) {
                                unacknowledged.extend(results.into_iter().flatten());
                            }
                        }
                        if !unacknowledged.is_empty() {
                            release_unacknowledged(&id, &served, &*store, unacknowledged).await;
                        }
                    }
                    Err(e) => {
                        // Not durable, so not acknowledged: take the reservations back.
                        let cluster = served.cluster();
                        for vm in &placed {
                            let _ = cluster.release_vm(vm);
                        }
                        let error = ApiError::from(e);
                        for (reply, _) in answers {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                }
            });
        }
    }

    /// A lifecycle report about one VM. 404 when the cluster knows nothing of the VM, 409
    /// when the event cannot follow the VM's state.
    pub async fn vm_event(
        self: &Arc<Self>,
        id: &str,
        vm: String,
        event: VmEvent,
    ) -> Result<serde_json::Value, ApiError> {
        let served = self.served(id)?;
        let this = self.clone();
        let id = id.to_string();
        let (value, commit) = tokio::task::spawn_blocking(move || {
            let cluster = served.cluster();
            let placement = cluster.placement(&vm);
            let known = placement.is_some() || cluster.snapshot().vms.iter().any(|v| v.id == vm);
            if !known {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("unknown VM {vm:?} in cluster {id:?}"),
                ));
            }
            let migrating = placement
                .as_ref()
                .map(|p| matches!(p.kind, PlacementKind::Migration { .. }));
            let conflict = match (event, migrating) {
                (VmEvent::Release, _) => None,
                (_, None) => {
                    Some("it holds no pending placement (not scheduled, or already reported)")
                }
                (VmEvent::Started, Some(true)) => {
                    Some("it is migrating; report migration-finished instead")
                }
                (VmEvent::MigrationFinished | VmEvent::MigrationFailed, Some(false)) => {
                    Some("it is placed for a start, not a migration")
                }
                _ => None,
            };
            if let Some(why) = conflict {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("VM {vm:?}: cannot report {event:?}: {why}"),
                ));
            }
            let value = match event {
                VmEvent::Started => json_value(&cluster.vm_started(&vm)?),
                VmEvent::MigrationFinished => json_value(&cluster.migration_finished(&vm)?),
                VmEvent::MigrationFailed => json_value(&cluster.migration_failed(&vm)?),
                VmEvent::Release => json_value(&cluster.release_vm(&vm)?),
                VmEvent::Failed { reschedule: false } => json_value(&cluster.vm_failed(&vm)?),
                VmEvent::Failed { reschedule: true } => {
                    json_value(&served.policy().vm_failed(&cluster, &vm)?)
                }
            };
            // A start or finished migration moves the VM's usage onto its host (and off
            // the source); a failed start sets the VM down: its hosts and the VM itself.
            let hosts = placement
                .map(|p| match p.kind {
                    PlacementKind::Migration { source } => vec![p.host, source],
                    _ => vec![p.host],
                })
                .unwrap_or_default();
            let touched = Touched {
                placements: vec![vm.clone()],
                vms: vec![vm],
                hosts,
                ..Touched::default()
            };
            let commit = served.journal(&id, &cluster, &*this.store, touched, Vec::new());
            Ok((value, commit))
        })
        .await
        .map_err(blocking_failed)??;
        commit.await?;
        Ok(value)
    }

    /// Plans the migration of a running VM and reserves on its destination.
    pub async fn migrate(
        self: &Arc<Self>,
        id: &str,
        vm: String,
        trigger: MigrationTrigger,
    ) -> Result<serde_json::Value, ApiError> {
        self.with_policy(id, move |cluster, policy| {
            let migration = policy.migrate(cluster, &vm, trigger)?;
            let touched = Touched {
                placements: vec![vm],
                ..Touched::default()
            };
            Ok((json_value(&migration), touched))
        })
        .await
    }

    /// Host maintenance: a migration for every VM running on the host.
    pub async fn evacuate(
        self: &Arc<Self>,
        id: &str,
        host: String,
    ) -> Result<serde_json::Value, ApiError> {
        self.with_policy(id, move |cluster, policy| {
            require_host(cluster, &host)?;
            let running: Vec<String> = cluster
                .snapshot()
                .vms
                .iter()
                .filter(|vm| vm.current_host.as_deref() == Some(host.as_str()))
                .map(|vm| vm.id.clone())
                .collect();
            let migrations = policy.evacuate_host(cluster, &host)?;
            let touched = Touched {
                placements: running,
                ..Touched::default()
            };
            Ok((json_value(&migrations), touched))
        })
        .await
    }

    /// The balance plan (nothing executed, nothing reserved).
    pub async fn balance(self: &Arc<Self>, id: &str) -> Result<serde_json::Value, ApiError> {
        self.with_policy(id, |cluster, policy| {
            Ok((json_value(&policy.balance(cluster)?), Touched::default()))
        })
        .await
    }

    /// Plans a memory hot set of a running VM; a change in flight is stored until it is
    /// confirmed or failed.
    pub async fn hot_set_memory(
        self: &Arc<Self>,
        id: &str,
        vm: String,
        memory_mb: u64,
    ) -> Result<serde_json::Value, ApiError> {
        self.with_policy(id, move |cluster, policy| {
            let plan = policy.hot_set_memory(cluster, &vm, memory_mb)?;
            // An unplug marks the VM's DIMMs in the snapshot.
            let touched = Touched {
                vms: vec![vm.clone()],
                memory: vec![vm],
                ..Touched::default()
            };
            Ok((json_value(&plan), touched))
        })
        .await
    }

    /// Confirms (`done`) or fails a VM's memory change in flight.
    pub async fn memory_change(
        self: &Arc<Self>,
        id: &str,
        vm: String,
        done: bool,
    ) -> Result<serde_json::Value, ApiError> {
        self.with_policy(id, move |cluster, _| {
            let host = cluster.memory_change(&vm).map(|record| record.host);
            let result = if done {
                cluster.confirm_memory_change(&vm)?
            } else {
                cluster.fail_memory_change(&vm)?
            };
            let Some(result) = result else {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("VM {vm:?} has no memory change in flight"),
                ));
            };
            // The VM's size and DIMMs, and the host's usage figures.
            let touched = Touched {
                vms: vec![vm.clone()],
                memory: vec![vm],
                hosts: host.into_iter().collect(),
                ..Touched::default()
            };
            Ok((json_value(&result), touched))
        })
        .await
    }

    /// Runs `f` on a blocking thread with the cluster and its policy, then journals what
    /// it touched (as it is in memory then).
    async fn with_policy(
        self: &Arc<Self>,
        id: &str,
        f: impl FnOnce(&Cluster, &Policy) -> Result<Outcome, ApiError> + Send + 'static,
    ) -> Result<serde_json::Value, ApiError> {
        let served = self.served(id)?;
        let this = self.clone();
        let id = id.to_string();
        let (value, commit) = tokio::task::spawn_blocking(move || {
            let cluster = served.cluster();
            let (value, touched) = f(&cluster, &served.policy())?;
            let commit = (!touched.is_empty())
                .then(|| served.journal(&id, &cluster, &*this.store, touched, Vec::new()));
            Ok::<_, ApiError>((value, commit))
        })
        .await
        .map_err(blocking_failed)??;
        if let Some(commit) = commit {
            commit.await?;
        }
        Ok(value)
    }

    /// Adds a host, removes one, or changes a host's status. The whole snapshot is stored
    /// before answering (these changes are rare).
    pub async fn host_change(
        self: &Arc<Self>,
        id: &str,
        change: HostChange,
    ) -> Result<serde_json::Value, ApiError> {
        self.with_policy(id, move |cluster, policy| {
            let placed_before = placed_vms(cluster);
            let memory_before = memory_vms(cluster);
            let value = match change {
                HostChange::Add(host) => {
                    let host = *host;
                    if cluster.host_index(&host.id).is_some() {
                        return Err(ApiError::new(
                            StatusCode::CONFLICT,
                            format!("host {:?} is already in the cluster", host.id),
                        ));
                    }
                    serde_json::json!({ "epoch": cluster.apply(vec![Change::AddHost(host)])? })
                }
                HostChange::Remove(host) => {
                    require_host(cluster, &host)?;
                    json_value(&cluster.remove_host(&host)?)
                }
                HostChange::Status(host, status) => {
                    require_host(cluster, &host)?;
                    if matches!(status, HostStatus::Down | HostStatus::NonOperational) {
                        json_value(&policy.host_down(cluster, &host, status)?)
                    } else {
                        serde_json::json!({ "epoch": cluster.set_host_status(&host, status)? })
                    }
                }
            };
            let mut memory: BTreeSet<String> = memory_before.into_iter().collect();
            memory.extend(memory_vms(cluster));
            let touched = Touched {
                placements: placed_before.union(&placed_vms(cluster)).cloned().collect(),
                memory: memory.into_iter().collect(),
                snapshot: true,
                ..Touched::default()
            };
            Ok((value, touched))
        })
        .await
    }

    /// Per-host usage figures: one epoch for the whole message, and the hosts it names
    /// stored before answering.
    pub async fn usage(
        self: &Arc<Self>,
        id: &str,
        updates: Vec<HostUsage>,
    ) -> Result<u64, ApiError> {
        self.with_policy(id, move |cluster, _| {
            let snapshot = cluster.snapshot();
            let mut changes = Vec::with_capacity(updates.len());
            let mut hosts = Vec::with_capacity(updates.len());
            for (i, update) in updates.into_iter().enumerate() {
                let Some(index) = cluster.host_index(&update.host) else {
                    return Err(ApiError {
                        status: StatusCode::NOT_FOUND,
                        message: format!("hosts[{i}].host: unknown host {:?}", update.host),
                        field: Some(format!("hosts[{i}].host")),
                    });
                };
                let mut usage = UsageFigures::of(&snapshot.hosts[index as usize]);
                if let Some(v) = update.cpu_percent {
                    usage.cpu_usage_percent = v;
                }
                if let Some(v) = update.free_memory_mb {
                    usage.free_mb = v;
                }
                if let Some(v) = update.swap_free_mb {
                    usage.swap_free_mb = v;
                }
                if let Some(v) = update.running_vms {
                    usage.running_vms = v;
                }
                changes.push(usage);
                hosts.push(update.host);
            }
            drop(snapshot);
            // One compact usage change for the guests, not whole hosts.
            let epoch = cluster.update_usage(hosts.iter().map(String::as_str).zip(changes))?;
            let touched = Touched {
                hosts,
                ..Touched::default()
            };
            Ok((serde_json::json!(epoch), touched))
        })
        .await
        .map(|epoch| epoch.as_u64().expect("an epoch is a number"))
    }

    /// Pending records on a host (`host = true`) or of a VM, with the aggregate.
    pub fn pending(&self, id: &str, of: &str, host: bool) -> Result<serde_json::Value, ApiError> {
        let served = self.served(id)?;
        let cluster = served.cluster();
        if host {
            require_host(&cluster, of)?;
            Ok(serde_json::json!({
                "host": of,
                "aggregate": cluster.pending_on_host(of),
                "records": cluster.pending_records_on_host(of),
            }))
        } else {
            Ok(serde_json::json!({
                "vm": of,
                "placement": cluster.placement(of).map(|p| serde_json::json!({"host": p.host, "kind": p.kind})),
                "aggregate": cluster.pending_of_vm(of),
                "records": cluster.pending_records_of_vm(of),
            }))
        }
    }

    /// Closes the store (every acknowledged change is already durable; this waits for
    /// writes still in flight); a replica then gives its leases up, so the others take
    /// its clusters over at once instead of after the lease expired.
    pub async fn close(&self) {
        self.store.close().await;
        if let Some(replication) = &self.replication {
            let mut held = self.held_leases();
            held.extend(replication.creating_leases(Duration::ZERO).1);
            self.clusters.write().unwrap().clear();
            let leases = replication.leases();
            if let Err(e) = leases.release(held).await {
                tracing::warn!("giving the leases up: {e} (they expire on their own)");
            }
            if let Err(e) = leases.leave().await {
                tracing::warn!("leaving the replica set: {e}");
            }
        }
    }

    /// How long a cluster lease lasts (replicas), or practically forever (alone).
    fn lease_duration(&self) -> Duration {
        self.replication
            .as_ref()
            .map_or(Duration::from_secs(86_400 * 365), |r| {
                r.leases().lease_duration()
            })
    }

    /// This replica's id, when replicas share the store.
    pub fn replica_id(&self) -> Option<&str> {
        self.replication.as_ref().map(|r| r.me().id.as_str())
    }

    /// Replica `replica` did not answer a request about cluster `id`: it is no longer
    /// counted live (until its next heartbeat is seen) and `id`'s holder is asked anew.
    pub fn replica_unreachable(&self, replica: &str, id: &str) {
        if let Some(replication) = &self.replication {
            replication.forget_route(id);
            replication.drop_live(replica);
        }
    }

    /// The clusters served here under a lease, with their tokens.
    fn held_leases(&self) -> HeldLeases {
        self.clusters
            .read()
            .unwrap()
            .iter()
            .filter_map(|(id, served)| served.lease_token().map(|token| (id.clone(), token)))
            .collect()
    }

    /// Whether `id` is served here now (alone: whether it exists here).
    fn serves(&self, id: &str) -> bool {
        self.clusters
            .read()
            .unwrap()
            .get(id)
            .is_some_and(|served| served.lease_valid())
    }

    /// Stops serving `id` under `token`: its lease was taken over or could not be
    /// renewed in time. A later request rebuilds it from the store if it comes back.
    fn lost_lease(&self, id: &str, token: LeaseToken) {
        let mut clusters = self.clusters.write().unwrap();
        if clusters.get(id).and_then(|s| s.lease_token()) == Some(token) {
            clusters.remove(id);
            self.metrics.leases_lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                cluster = id,
                token = token.0,
                "lease lost: no longer serving"
            );
        }
    }

    /// Where a request for cluster `id` goes. `creating`: the request is the `PUT` that
    /// may create it; `forwarded`: another replica sent it here (it is not sent on
    /// again). Alone, always [`Route::Local`].
    pub async fn route(self: &Arc<Self>, id: &str, creating: bool, forwarded: bool) -> Route {
        let Some(replication) = &self.replication else {
            return Route::Local;
        };
        if self.serves(id) {
            return Route::Local;
        }
        if !forwarded {
            if let Some(holder) = replication.cached_route(id) {
                return Route::Forward(holder);
            }
        }
        let unavailable = |message: String, retry_after: Duration| Route::Unavailable {
            message,
            retry_after: retry_after.clamp(Duration::from_millis(100), Duration::from_secs(5)),
        };
        let view = match replication.leases().view(id).await {
            Ok(view) => view,
            Err(e) => return unavailable(format!("cluster {id:?}: {e}"), Duration::from_secs(1)),
        };
        if !view.stored && !creating {
            return Route::Local; // 404 from the handler
        }
        let me = &replication.me().id;
        if let Some((holder, remaining)) = view.held.filter(|(holder, _)| &holder.id != me) {
            if forwarded || holder.url.is_empty() {
                return unavailable(
                    format!(
                        "cluster {id:?} is held by replica {:?} for {} ms more; retry",
                        holder.id,
                        remaining.as_millis()
                    ),
                    remaining,
                );
            }
            replication.remember_route(id, holder.clone(), remaining);
            return Route::Forward(holder);
        }
        // Free, expired, or this replica's without state here: the preferred live replica
        // takes it.
        if !forwarded {
            if let Some(preferred) = replication.preferred(id).filter(|p| &p.id != me) {
                return Route::Forward(preferred);
            }
        }
        match self.take_lease(id).await {
            Ok(route) => route,
            Err(e) => unavailable(format!("cluster {id:?}: {e}"), Duration::from_secs(1)),
        }
    }

    /// Takes the lease of `id` and rebuilds the cluster from the store (or, when it is
    /// not stored yet, keeps the lease for the `PUT` creating it).
    async fn take_lease(self: &Arc<Self>, id: &str) -> anyhow::Result<Route> {
        let replication = self.replication.as_ref().expect("replicas only");
        let _one_at_a_time = replication.acquiring.lock().await;
        if self.serves(id) {
            return Ok(Route::Local);
        }
        let leases = replication.leases();
        let asked = Instant::now();
        let token = match leases.acquire(id).await? {
            Acquired::Granted(token) => token,
            Acquired::Held { holder, remaining } => {
                return Ok(if holder.url.is_empty() {
                    Route::Unavailable {
                        message: format!("cluster {id:?} is changing hands; retry"),
                        retry_after: Duration::from_millis(200),
                    }
                } else {
                    replication.remember_route(id, holder.clone(), remaining);
                    Route::Forward(holder)
                });
            }
        };
        self.metrics.leases_acquired.fetch_add(1, Ordering::Relaxed);
        let Some(stored) = leases.load_cluster(id).await? else {
            replication.creating(id, token, asked);
            return Ok(Route::Local);
        };
        let this = self.clone();
        let (served, stale) =
            tokio::task::spawn_blocking(move || this.restore(&stored, Some((token, asked))))
                .await??;
        if !stale.is_empty() {
            self.store.submit(Some(token), stale).await?;
        }
        tracing::info!(cluster = id, token = token.0, "lease taken: serving");
        replication.forget_route(id);
        self.clusters
            .write()
            .unwrap()
            .insert(id.to_string(), Arc::new(served));
        Ok(Route::Local)
    }

    /// The replica's background task: every third of the lease, records that it is
    /// alive, renews its leases (dropping the clusters whose lease it lost), and takes
    /// over the clusters nobody holds that it should serve (or any that stayed orphaned
    /// for a whole lease). Ends when the service is dropped or closing.
    async fn keep_leases(service: Weak<Self>) {
        let period = match service.upgrade() {
            Some(s) => s.lease_duration() / 3,
            None => return,
        };
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(this) = service.upgrade() else {
                return;
            };
            if !this.is_ready() {
                return;
            }
            this.keep_leases_once().await;
        }
    }

    async fn keep_leases_once(self: &Arc<Self>) {
        let replication = self.replication.as_ref().expect("replicas only");
        let leases = replication.leases();
        let lease = leases.lease_duration();
        let sent = Instant::now();
        match leases.heartbeat().await {
            Ok(live) => replication.set_live(live),
            Err(e) => tracing::warn!("heartbeat: {e}"),
        }
        let held = self.held_leases();
        let (creating, abandoned) = replication.creating_leases(lease);
        if !abandoned.is_empty() {
            let _ = leases.release(abandoned).await;
        }
        let mut asked = held.clone();
        asked.extend(creating);
        match leases.renew(asked).await {
            Ok(renewed) => {
                let renewed: BTreeSet<String> = renewed.into_iter().collect();
                for (id, token) in held {
                    if renewed.contains(&id) {
                        if let Some(served) = self.clusters.read().unwrap().get(&id) {
                            if let Some(l) = &served.lease {
                                *l.valid_until.lock().unwrap() = sent + lease;
                            }
                        }
                    } else {
                        self.lost_lease(&id, token);
                    }
                }
            }
            Err(e) => {
                tracing::warn!("renewing leases: {e}");
                for (id, token) in held {
                    if !self.serves(&id) {
                        self.lost_lease(&id, token);
                    }
                }
            }
        }
        let orphans = match leases.orphans().await {
            Ok(orphans) => orphans,
            Err(e) => {
                tracing::warn!("looking for orphaned clusters: {e}");
                return;
            }
        };
        for orphan in orphans {
            if self.serves(&orphan.cluster) {
                continue;
            }
            if replication.preferred_is_me(&orphan.cluster) || orphan.expired_for > lease {
                if let Err(e) = self.take_lease(&orphan.cluster).await {
                    tracing::warn!(cluster = orphan.cluster, "taking the lease over: {e}");
                }
            }
        }
    }

    /// Figures for `/metrics`.
    pub fn gauges(&self) -> Gauges {
        let clusters: Vec<(String, Arc<Served>)> = self
            .clusters
            .read()
            .unwrap()
            .iter()
            .map(|(id, served)| (id.clone(), served.clone()))
            .collect();
        let mut gauges = Gauges {
            clusters: clusters.len(),
            ..Gauges::default()
        };
        for (id, served) in clusters {
            let cluster = served.cluster();
            gauges.reservations_held += cluster.pending_record_count();
            gauges.vms_pending += placed_vms(&cluster).len();
            let shadow = served.policy.read().unwrap().1.shadow_status();
            gauges
                .shadow
                .extend(shadow.units.into_iter().map(|u| ShadowGauge {
                    cluster: id.clone(),
                    policy: shadow.policy.clone(),
                    kind: u.kind.as_str(),
                    unit: u.unit.to_string(),
                    changed: u.changed,
                    faults: u.faults,
                }));
        }
        gauges
            .shadow
            .sort_by(|a, b| (&a.cluster, &a.unit).cmp(&(&b.cluster, &b.unit)));
        let status = self.runtime.status();
        gauges.module_generation = status.generation;
        gauges.modules = status.modules.len();
        gauges.rejected_files = status.problems.len();
        gauges.reloads = status.watch.as_ref().map_or(0, |w| w.scans);
        gauges.modules_health = status
            .modules
            .iter()
            .map(|m| {
                (
                    m.file.clone(),
                    m.stats.instances_discarded,
                    m.breaker.trips,
                    m.breaker.open,
                )
            })
            .collect();
        gauges
    }
}

/// What `with_policy`'s closure returns: the answer and what to store.
type Outcome = (serde_json::Value, Touched);

/// A structural change to a cluster's hosts.
#[derive(Debug, Clone)]
pub enum HostChange {
    /// A host joined.
    Add(Box<Host>),
    /// A host left (its pending records are released).
    Remove(String),
    /// A host's status changed; down or non-operational also fails and re-places the VMs
    /// placed there.
    Status(String, HostStatus),
}

/// Takes back the reservations of decisions whose caller left before the answer (the
/// request timed out: it was answered 408, so nothing was acknowledged), durably, so a
/// client that gives up leaves no pending resources behind. A VM placed again since then
/// (on another host) keeps its newer placement.
async fn release_unacknowledged(
    id: &str,
    served: &Served,
    store: &dyn Store,
    decisions: Vec<Decision>,
) {
    let commit = {
        let cluster = served.cluster();
        let mut released = Vec::new();
        for decision in decisions {
            let still_here = cluster
                .placement(&decision.vm)
                .is_some_and(|p| Some(&p.host) == decision.chosen.as_ref());
            if still_here && cluster.release_vm(&decision.vm).is_ok() {
                released.push(decision.vm);
            }
        }
        let touched = Touched {
            placements: released,
            ..Touched::default()
        };
        served.journal(id, &cluster, store, touched, Vec::new())
    };
    if let Err(e) = commit.await {
        tracing::warn!(
            cluster = id,
            "releasing the reservations of a timed-out request: {e}"
        );
    }
}

fn require_host(cluster: &Cluster, host: &str) -> Result<(), ApiError> {
    match cluster.host_index(host) {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown host {host:?}"),
        )),
    }
}

fn json_value<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("results serialize")
}
