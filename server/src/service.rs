//! The service without HTTP: clusters by id, their policies, the durable store, and every
//! operation the API offers. Decisions run on blocking threads (wasm is CPU work); each
//! cluster has its own locks, so clusters never wait on each other.

use crate::error::ApiError;
use crate::metrics::{Gauges, Metrics, ShadowGauge};
use crate::store::{BoxFuture, PolicySpec, Store, StoreError, StoredPlacement, Write};
use axum::http::StatusCode;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use wasmsched::sdk::wire::sync::Change;
use wasmsched::sdk::{Host, HostStatus, Snapshot, Vm};
use wasmsched::{
    Cluster, Decision, Format, MigrationTrigger, PlacementKind, Policy, Runtime, ScheduleRequest,
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

/// A cluster served: its state behind a gate, its policy, and the order of its writes.
#[derive(Debug)]
struct Served {
    /// Read by every decision and report; written only when the snapshot is replaced, so a
    /// reservation never lands on a cluster object that is being swapped out.
    gate: RwLock<Cluster>,
    policy: RwLock<(PolicySpec, Policy)>,
    /// Held while a result is turned into writes and submitted, so the store sees one
    /// cluster's writes in the order they happened.
    journal: Mutex<()>,
    /// The snapshot changed (usage, lifecycle) since it was last stored.
    dirty: AtomicBool,
}

/// The service: runtime, store, clusters, metrics.
#[derive(Debug)]
pub struct Service {
    runtime: Runtime,
    store: Arc<dyn Store>,
    clusters: RwLock<HashMap<String, Arc<Served>>>,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
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

    /// Turns the current placement of each VM into a write (reserve or release), plus
    /// `extra`, and submits them as one.
    fn journal(
        &self,
        id: &str,
        cluster: &Cluster,
        store: &dyn Store,
        vms: impl IntoIterator<Item = String>,
        extra: Vec<Write>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let _order = self.journal.lock().unwrap();
        let mut writes = extra;
        for vm in vms {
            writes.push(match cluster.placement(&vm) {
                Some(placement) => Write::Reserve {
                    cluster: id.to_string(),
                    placement: StoredPlacement {
                        vm: vm.clone(),
                        host: placement.host.clone(),
                        vm_doc: json(&placement.vm),
                        kind: json(&placement.kind),
                    },
                },
                None => Write::Release {
                    cluster: id.to_string(),
                    vm,
                },
            });
        }
        store.submit(writes)
    }
}

impl Service {
    /// Builds the service over `runtime` and `store`, rebuilding every stored cluster and
    /// re-applying its pending reservations.
    pub async fn start(
        runtime: Runtime,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let service = Arc::new(Self {
            runtime,
            store,
            clusters: RwLock::new(HashMap::new()),
            metrics,
            ready: AtomicBool::new(false),
        });
        let mut stale = Vec::new();
        for stored in service.store.load().await? {
            let snapshot: Snapshot = serde_json::from_str(&stored.snapshot)
                .map_err(|e| anyhow::anyhow!("stored cluster {:?}: snapshot: {e}", stored.id))?;
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
            let policy = match service.policy_from(&stored.policy) {
                Ok(policy) => (stored.policy.clone(), policy),
                Err(e) => {
                    tracing::warn!(
                        cluster = stored.id,
                        "stored policy no longer loads ({e}); serving the default policy"
                    );
                    (
                        PolicySpec::default(),
                        Policy::builtin_default(&service.runtime)?,
                    )
                }
            };
            tracing::info!(
                cluster = stored.id,
                hosts = cluster.snapshot().hosts.len(),
                reservations = stored.placements.len(),
                "cluster restored"
            );
            service.clusters.write().unwrap().insert(
                stored.id.clone(),
                Arc::new(Served {
                    gate: RwLock::new(cluster),
                    policy: RwLock::new(policy),
                    journal: Mutex::new(()),
                    dirty: AtomicBool::new(false),
                }),
            );
        }
        if !stale.is_empty() {
            service.store.submit(stale).await?;
        }
        service.ready.store(true, Ordering::SeqCst);
        Ok(service)
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
                dirty: AtomicBool::new(false),
            });
            let mut clusters = self.clusters.write().unwrap();
            if clusters.contains_key(&id) {
                drop(clusters);
                // Created meanwhile by another request: replace it like any other.
                let (snapshot, policy) = retry.expect("kept for a new cluster");
                return self.put_cluster_blocking(id, snapshot, policy);
            }
            let commit = served.journal(&id, &new, &*self.store, vms, vec![put]);
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
        let mut writes = vec![Write::PutSnapshot {
            cluster: id.clone(),
            snapshot: stored_snapshot(&new),
        }];
        if let Some((policy, spec)) = policy {
            writes.push(Write::PutPolicy {
                cluster: id.clone(),
                policy: spec.clone(),
            });
            *served.policy.write().unwrap() = (spec, policy);
        }
        let vms: BTreeSet<String> = old_vms.union(&placed_vms(&new)).cloned().collect();
        let commit = served.journal(&id, &new, &*self.store, vms, writes);
        outcome.epoch = new.epoch();
        outcome.hosts = new.snapshot().hosts.len();
        *gate = new;
        served.dirty.store(false, Ordering::SeqCst);
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
            self.store.submit(vec![Write::PutPolicy {
                cluster: id.to_string(),
                policy: spec,
            }])
        };
        commit.await?;
        Ok(name)
    }

    /// A cluster's current snapshot (with pending aggregates) and policy.
    pub fn cluster(&self, id: &str) -> Result<(Arc<Snapshot>, PolicySpec, usize), ApiError> {
        let served = self.served(id)?;
        let cluster = served.cluster();
        let spec = served.policy.read().unwrap().0.clone();
        Ok((cluster.snapshot(), spec, placed_vms(&cluster).len()))
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
    /// durable (one commit) when this returns.
    pub async fn schedule_batch(
        self: &Arc<Self>,
        id: &str,
        requests: Vec<ScheduleRequest>,
    ) -> Result<Vec<Result<Decision, ApiError>>, ApiError> {
        let served = self.served(id)?;
        let this = self.clone();
        let id = id.to_string();
        let (results, commit, served) = tokio::task::spawn_blocking(move || {
            let cluster = served.cluster();
            let policy = served.policy();
            let mut results = Vec::with_capacity(requests.len());
            for request in &requests {
                let started = Instant::now();
                let result = policy.schedule(&cluster, request);
                let outcome = result.as_ref().ok().map(|d| d.chosen.is_some());
                this.metrics.decided(outcome, started.elapsed());
                results.push(result.map_err(ApiError::from));
            }
            let vms: Vec<String> = results
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .filter(|d| d.chosen.is_some())
                .map(|d| d.vm.clone())
                .collect();
            let commit = served.journal(&id, &cluster, &*this.store, vms, Vec::new());
            drop(cluster);
            (results, commit, served)
        })
        .await
        .map_err(blocking_failed)?;
        if let Err(e) = commit.await {
            // Not durable, so not acknowledged: take the reservations back.
            let cluster = served.cluster();
            for decision in results.iter().flatten() {
                if decision.chosen.is_some() {
                    let _ = cluster.release_vm(&decision.vm);
                }
            }
            return Err(e.into());
        }
        Ok(results)
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
            served.dirty.store(true, Ordering::SeqCst);
            let commit = served.journal(&id, &cluster, &*this.store, [vm], Vec::new());
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
        self.with_policy(id, move |_, cluster, policy| {
            let migration = policy.migrate(cluster, &vm, trigger)?;
            Ok((json_value(&migration), vec![vm], Vec::new()))
        })
        .await
    }

    /// Host maintenance: a migration for every VM running on the host.
    pub async fn evacuate(
        self: &Arc<Self>,
        id: &str,
        host: String,
    ) -> Result<serde_json::Value, ApiError> {
        self.with_policy(id, move |_, cluster, policy| {
            require_host(cluster, &host)?;
            let migrations = policy.evacuate_host(cluster, &host)?;
            let vms: Vec<String> = placed_vms(cluster).into_iter().collect();
            Ok((json_value(&migrations), vms, Vec::new()))
        })
        .await
    }

    /// The balance plan (nothing executed, nothing reserved).
    pub async fn balance(self: &Arc<Self>, id: &str) -> Result<serde_json::Value, ApiError> {
        self.with_policy(id, |_, cluster, policy| {
            Ok((
                json_value(&policy.balance(cluster)?),
                Vec::new(),
                Vec::new(),
            ))
        })
        .await
    }

    /// Plans a memory hot set of a running VM.
    pub async fn hot_set_memory(
        self: &Arc<Self>,
        id: &str,
        vm: String,
        memory_mb: u64,
    ) -> Result<serde_json::Value, ApiError> {
        self.with_policy(id, move |served, cluster, policy| {
            let plan = policy.hot_set_memory(cluster, &vm, memory_mb)?;
            served.dirty.store(true, Ordering::SeqCst);
            Ok((json_value(&plan), Vec::new(), Vec::new()))
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
        self.with_policy(id, move |served, cluster, _| {
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
            served.dirty.store(true, Ordering::SeqCst);
            Ok((json_value(&result), Vec::new(), Vec::new()))
        })
        .await
    }

    /// Runs `f` on a blocking thread with the cluster and its policy, then journals the
    /// VMs it names (their placements as they are now) and its extra writes.
    async fn with_policy(
        self: &Arc<Self>,
        id: &str,
        f: impl FnOnce(&Served, &Cluster, &Policy) -> Result<Outcome, ApiError> + Send + 'static,
    ) -> Result<serde_json::Value, ApiError> {
        let served = self.served(id)?;
        let this = self.clone();
        let id = id.to_string();
        let (value, commit) = tokio::task::spawn_blocking(move || {
            let cluster = served.cluster();
            let (value, vms, writes) = f(&served, &cluster, &served.policy())?;
            let commit = (!vms.is_empty() || !writes.is_empty())
                .then(|| served.journal(&id, &cluster, &*this.store, vms, writes));
            Ok::<_, ApiError>((value, commit))
        })
        .await
        .map_err(blocking_failed)??;
        if let Some(commit) = commit {
            commit.await?;
        }
        Ok(value)
    }

    /// Adds a host, removes one, or changes a host's status. Stored before answering.
    pub async fn host_change(
        self: &Arc<Self>,
        id: &str,
        change: HostChange,
    ) -> Result<serde_json::Value, ApiError> {
        let cluster_id = id.to_string();
        self.with_policy(id, move |_, cluster, policy| {
            let (value, vms) = match change {
                HostChange::Add(host) => {
                    let host = *host;
                    if cluster.host_index(&host.id).is_some() {
                        return Err(ApiError::new(
                            StatusCode::CONFLICT,
                            format!("host {:?} is already in the cluster", host.id),
                        ));
                    }
                    let epoch = cluster.apply(vec![Change::AddHost(host)])?;
                    (serde_json::json!({ "epoch": epoch }), Vec::new())
                }
                HostChange::Remove(host) => {
                    require_host(cluster, &host)?;
                    let removed = cluster.remove_host(&host)?;
                    let vms = removed.displaced.iter().map(|p| p.vm.id.clone()).collect();
                    (json_value(&removed), vms)
                }
                HostChange::Status(host, status) => {
                    require_host(cluster, &host)?;
                    let before = placed_vms(cluster);
                    let value = if matches!(status, HostStatus::Down | HostStatus::NonOperational) {
                        json_value(&policy.host_down(cluster, &host, status)?)
                    } else {
                        serde_json::json!({ "epoch": cluster.set_host_status(&host, status)? })
                    };
                    let vms = before.union(&placed_vms(cluster)).cloned().collect();
                    (value, vms)
                }
            };
            let snapshot = Write::PutSnapshot {
                cluster: cluster_id,
                snapshot: stored_snapshot(cluster),
            };
            Ok((value, vms, vec![snapshot]))
        })
        .await
    }

    /// Per-host usage figures: one epoch for the whole message. The snapshot is stored by
    /// the background flush (usage is resent every few seconds anyway).
    pub async fn usage(
        self: &Arc<Self>,
        id: &str,
        updates: Vec<HostUsage>,
    ) -> Result<u64, ApiError> {
        let served = self.served(id)?;
        tokio::task::spawn_blocking(move || {
            let cluster = served.cluster();
            let snapshot = cluster.snapshot();
            let mut changes = Vec::with_capacity(updates.len());
            for (i, update) in updates.into_iter().enumerate() {
                let Some(index) = cluster.host_index(&update.host) else {
                    return Err(ApiError {
                        status: StatusCode::NOT_FOUND,
                        message: format!("hosts[{i}].host: unknown host {:?}", update.host),
                        field: Some(format!("hosts[{i}].host")),
                    });
                };
                let mut host: Host = snapshot.hosts[index as usize].clone();
                if let Some(v) = update.cpu_percent {
                    host.cpu_usage_percent = v;
                }
                if let Some(v) = update.free_memory_mb {
                    host.memory.free_mb = v;
                }
                if let Some(v) = update.swap_free_mb {
                    host.memory.swap_free_mb = v;
                }
                if let Some(v) = update.running_vms {
                    host.running_vms = v;
                }
                changes.push(Change::ReplaceHost {
                    host: index,
                    value: host,
                });
            }
            let epoch = cluster.apply(changes)?;
            served.dirty.store(true, Ordering::SeqCst);
            Ok(epoch)
        })
        .await
        .map_err(blocking_failed)?
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

    /// Stores the snapshot of every cluster whose snapshot changed since it was last
    /// stored (usage updates, lifecycle).
    pub async fn flush_snapshots(&self) -> Result<(), StoreError> {
        let dirty: Vec<(String, Arc<Served>)> = self
            .clusters
            .read()
            .unwrap()
            .iter()
            .filter(|(_, s)| s.dirty.swap(false, Ordering::SeqCst))
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        let writes = dirty
            .iter()
            .map(|(id, served)| Write::PutSnapshot {
                cluster: id.clone(),
                snapshot: stored_snapshot(&served.cluster()),
            })
            .collect();
        self.store.submit(writes).await
    }

    /// Flushes the snapshots and closes the store.
    pub async fn close(&self) {
        if let Err(e) = self.flush_snapshots().await {
            tracing::warn!("final snapshot flush failed: {e}");
        }
        self.store.close().await;
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

/// What `with_policy`'s closure returns: the answer, the VMs whose placements to store,
/// and extra writes.
type Outcome = (serde_json::Value, Vec<String>, Vec<Write>);

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
