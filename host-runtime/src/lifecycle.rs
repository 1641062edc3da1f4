//! The pending-resource lifecycle of a [`Cluster`]: reserve after a decision, then release
//! when the VM starts, fails, finishes or abandons a migration, or its host is removed.
//!
//! # Concurrency
//!
//! Decisions run in parallel on immutable views. Reserving is serialized per cluster (the
//! ledger lock) and optimistic: a decision made on epoch E reserves at once when the cluster
//! is still at E; otherwise the chosen host is re-checked, under the lock, with the policy's
//! filters on the latest snapshot (one host, so cheap) and reserved only if it still fits.
//! A host that no longer fits sends the decision back to be made again on the latest view;
//! after a few such rounds the whole decision runs under the lock, so progress is
//! guaranteed. A host can therefore never be over-committed by concurrent `schedule` calls:
//! every reservation was checked by the filters against every reservation before it.

use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::pending::{PendingRecord, PendingResource, PendingResources};
use crate::scheduler::Decision;
use crate::Policy;
use policy_sdk::abi::Change;
use policy_sdk::topology::{self, CpuPinning, NodePlacement, NumaFit};
use policy_sdk::{Host, HostStatus, Vm, VmStatus};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::MutexGuard;

/// Why a VM is being placed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PlacementKind {
    /// Starting a VM that is not running.
    #[default]
    Start,
    /// Moving a running VM away from `source`.
    Migration {
        /// The host it runs on now.
        source: String,
    },
}

/// How pending resources are derived from a VM, and how the lifecycle behaves. The
/// defaults are the reference's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PendingRules {
    /// Static memory overhead of a VM in MiB (64 on x86). Keep it equal to the memory
    /// filter's `overhead_mb`.
    pub memory_overhead_mb: u64,
    /// Expected load of a starting VM, per vCPU, in percent of one host CPU (10).
    pub start_load_percent_per_vcpu: u32,
    /// Runs of one VM start before giving up (the failed hosts are blacklisted) (3).
    pub max_start_attempts: u32,
    /// When a VM starts or a migration finishes, move its pending amounts into the host's
    /// usage figures (committed/free memory, CPU usage, running VMs, pages, devices) until
    /// the next host report replaces them. Without it, a host looks emptier than it is
    /// between the VM start and the next report.
    pub account_started_vms: bool,
}

impl Default for PendingRules {
    fn default() -> Self {
        Self {
            memory_overhead_mb: 64,
            start_load_percent_per_vcpu: 10,
            max_start_attempts: 3,
            account_started_vms: true,
        }
    }
}

impl PendingRules {
    /// The pending resources of placing `vm` on `host`: the VM itself, its vCPUs, static
    /// overhead memory, guest memory plus overhead (overcommit memory), expected CPU load
    /// (per-vCPU start load, or the VM's current usage when migrating), hugepages (pages of
    /// the VM's size, rounded up), the pCPUs a dedicated or isolate-threads VM takes, on the host
    /// nodes its vNUMA nodes were assigned to when it can (see
    /// [`topology::allocate_dedicated_on_nodes`]), memory on the host NUMA nodes its pinned vNUMA
    /// nodes are assigned to (see [`numa_assignment`]), and its custom resource amounts.
    /// `host.pending` must not include this VM's own records.
    pub fn resources_for(
        &self,
        vm: &Vm,
        host: &Host,
        kind: &PlacementKind,
        count_threads_as_cores: bool,
    ) -> Vec<PendingResource> {
        let vcpus = vm.vcpus();
        let mut out = vec![
            PendingResource::Vm,
            PendingResource::CpuCores { count: vcpus },
            PendingResource::Memory {
                mb: self.memory_overhead_mb,
            },
            PendingResource::OvercommitMemory {
                mb: vm.memory_mb.saturating_add(self.memory_overhead_mb),
            },
        ];
        let per_vcpu = match kind {
            PlacementKind::Start => self.start_load_percent_per_vcpu,
            PlacementKind::Migration { .. } => vm.cpu_usage_percent,
        };
        let host_cpus = u64::from(host.schedulable_cpus(count_threads_as_cores).max(1));
        let load = (u64::from(per_vcpu) * u64::from(vcpus)).div_ceil(host_cpus);
        if load > 0 {
            out.push(PendingResource::CpuLoad {
                percent: load.min(u64::from(u32::MAX)) as u32,
            });
        }
        if let Some((size_kb, count)) = vm.hugepages_needed() {
            out.push(PendingResource::Hugepages { size_kb, count });
        }
        let placements = numa_assignment(vm, host);
        if let Ok(cpus) = topology::allocate_dedicated_on_nodes(host, vm, &placements) {
            if !cpus.is_empty() {
                out.push(PendingResource::PinnedCpus { cpus });
            }
        }
        let mut numa: BTreeMap<u32, u64> = BTreeMap::new();
        for placed in placements {
            let sum = numa.entry(placed.host_node).or_default();
            *sum = sum.saturating_add(placed.memory_mb);
        }
        out.extend(
            numa.into_iter()
                .map(|(node, mb)| PendingResource::NumaMemory { node, mb }),
        );
        let mut custom: BTreeMap<&str, u64> = BTreeMap::new();
        for c in &vm.custom_resources {
            let sum = custom.entry(&c.kind).or_default();
            *sum = sum.saturating_add(c.amount);
        }
        out.extend(
            custom
                .into_iter()
                .filter(|&(_, amount)| amount > 0)
                .map(|(name, amount)| PendingResource::Custom {
                    name: name.to_string(),
                    amount,
                }),
        );
        out
    }
}

/// The host NUMA nodes a VM's pinned vNUMA nodes take on `host`: the assignment the
/// `cpu-and-numa-pinning` weight looks for (memory fits and CPU pinning agrees), else one
/// where only the memory fits, else none (a loose tune mode without room, or a host the
/// `numa` filter would reject). The same search as the builtin units, so the memory the
/// `numa` filter saw free is the memory recorded as pending.
pub fn numa_assignment(vm: &Vm, host: &Host) -> Vec<NodePlacement> {
    if let Ok(Some(pinning)) = CpuPinning::of_vm(vm) {
        if let NumaFit::Fits(placed) = topology::find_numa_assignment(vm, host, Some(&pinning)) {
            return placed;
        }
    }
    match topology::find_numa_assignment(vm, host, None) {
        NumaFit::Fits(placed) => placed,
        _ => Vec::new(),
    }
}

/// A VM placed on a host and not yet started (or not yet migrated).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Placement {
    /// The VM as it was scheduled.
    pub vm: Vm,
    /// The chosen host.
    pub host: String,
    /// Start or migration.
    pub kind: PlacementKind,
}

/// `host` with the NUMA memory and pinned pCPUs of `records` on it taken out of its pending
/// aggregate (what the placement logic reads).
fn without_records(host: &Host, records: &[PendingRecord]) -> Host {
    let mut host = host.clone();
    for record in records.iter().filter(|r| r.host == host.id) {
        match &record.resource {
            PendingResource::NumaMemory { node, mb } => {
                if let Some(n) = host
                    .pending
                    .numa_memory
                    .iter_mut()
                    .find(|n| n.node == *node)
                {
                    n.memory_mb = n.memory_mb.saturating_sub(*mb);
                }
            }
            PendingResource::PinnedCpus { cpus } => {
                host.pending.pinned_cpus.retain(|c| !cpus.contains(c));
            }
            _ => {}
        }
    }
    host
}

/// The per-cluster state behind the mutation lock.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) pending: PendingResources,
    pub(crate) placements: HashMap<String, Placement>,
    /// Hosts each starting VM was placed on, in order (for the retry blacklist).
    pub(crate) attempts: HashMap<String, Vec<String>>,
    pub(crate) rules: PendingRules,
    /// Memory hot plugs and unplugs in flight, by VM id.
    pub(crate) memory: HashMap<String, crate::memory::InFlight>,
}

/// Pending resources recorded for a decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reservation {
    /// Host id.
    pub host: String,
    /// The epoch that published them.
    pub epoch: u64,
    /// What was recorded.
    pub resources: Vec<PendingResource>,
    /// The cluster had changed since the decision's epoch, so the host was re-checked by
    /// the filters on the latest snapshot first.
    pub revalidated: bool,
}

/// What a release removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Release {
    /// The records removed; empty when there was nothing to clear.
    pub records: Vec<PendingRecord>,
    /// The epoch published, when the snapshot changed.
    pub epoch: Option<u64>,
}

/// What became of a failed VM start.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Reschedule {
    /// No policy was given: the VM stays down.
    NotRequested,
    /// The VM was not placed anywhere (nothing to retry).
    NotPlaced,
    /// The VM was migrating: it stays on its source host.
    MigrationAbandoned,
    /// The VM ran out of attempts.
    GaveUp {
        /// Hosts tried, in order.
        tried: Vec<String>,
    },
    /// A new decision; it reserved on its host if it chose one.
    Decided {
        /// The decision.
        decision: Box<Decision>,
        /// The hosts it was tried on before, blacklisted for this decision.
        avoided: Vec<String>,
    },
}

/// The result of [`Cluster::vm_failed`].
#[derive(Debug, Clone, Serialize)]
pub struct VmFailed {
    /// The VM id.
    pub vm: String,
    /// Where it was placed (the host it failed on, start or migration); `None` when it
    /// was not placed.
    pub placement: Option<Placement>,
    /// The pending resources released.
    pub release: Release,
    /// What happened next.
    pub reschedule: Reschedule,
}

/// The result of [`Cluster::remove_host`].
#[derive(Debug, Clone, Serialize)]
pub struct HostRemoved {
    /// The host's pending records, released.
    pub release: Release,
    /// Placements there that had not finished (starts, incoming migrations), by VM id:
    /// they need a new decision.
    pub displaced: Vec<Placement>,
    /// VMs that ran there (now down, without a host).
    pub stopped: Vec<String>,
}

impl Cluster {
    /// The rules pending resources follow on this cluster.
    pub fn pending_rules(&self) -> PendingRules {
        self.ledger().rules.clone()
    }

    /// Changes the rules (future reservations and releases use them).
    pub fn set_pending_rules(&self, rules: PendingRules) {
        self.ledger().rules = rules;
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
    /// elsewhere is moved: its old records are released first. [`Policy::schedule`] calls
    /// this for the host it chose; engines that place VMs themselves can call it directly.
    pub fn reserve(&self, vm: &Vm, host_id: &str, kind: PlacementKind) -> Result<Reservation> {
        let mut ledger = self.ledger();
        self.reserve_locked(&mut ledger, vm, host_id, kind, false)
    }

    /// Reserves for a decision made on `decided_epoch`: at once if nothing changed since,
    /// else only if `still_fits` accepts the host on the latest view. `None`: it did not.
    pub(crate) fn reserve_decided(
        &self,
        decided_epoch: u64,
        vm: &Vm,
        host_id: &str,
        kind: PlacementKind,
        still_fits: impl FnOnce(&crate::ClusterView) -> Result<bool>,
    ) -> Result<Option<Reservation>> {
        let mut ledger = self.ledger();
        let revalidated = self.epoch() != decided_epoch;
        if revalidated && !still_fits(&self.view())? {
            return Ok(None);
        }
        self.reserve_locked(&mut ledger, vm, host_id, kind, revalidated)
            .map(Some)
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
        let records: Vec<PendingRecord> = resources
            .iter()
            .map(|r| PendingRecord {
                host: host_id.to_string(),
                vm: vm.id.clone(),
                resource: r.clone(),
            })
            .collect();
        let touched = ledger.pending.replace_vm(&vm.id, records)?;
        if kind == PlacementKind::Start {
            let tried = ledger.attempts.entry(vm.id.clone()).or_default();
            tried.push(host_id.to_string());
        }
        ledger.placements.insert(
            vm.id.clone(),
            Placement {
                vm: vm.clone(),
                host: host_id.to_string(),
                kind,
            },
        );
        let epoch = self
            .publish(ledger, touched, Vec::new())?
            .expect("a reservation always changes its host");
        Ok(Reservation {
            host: host_id.to_string(),
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
        let touched = ledger.pending.add_all(records)?;
        self.publish(&mut ledger, touched, Vec::new())
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

    /// A VM failed to start (or to migrate): its pending resources are released. With a
    /// policy, a failed start is scheduled again with every host it was tried on
    /// blacklisted, up to [`PendingRules::max_start_attempts`] runs in all. A failed
    /// migration leaves the VM on its source. An unknown VM is a no-op.
    pub fn vm_failed(&self, vm_id: &str, reschedule: Option<&Policy>) -> Result<VmFailed> {
        let mut ledger = self.ledger();
        let placement = ledger.placements.remove(vm_id);
        let mut extra = Vec::new();
        if placement
            .as_ref()
            .is_some_and(|p| p.kind == PlacementKind::Start)
        {
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
        let tried = match placement.as_ref().map(|p| &p.kind) {
            Some(PlacementKind::Start) if reschedule.is_some() => {
                ledger.attempts.get(vm_id).cloned().unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let next = match (&placement, reschedule) {
            (None, _) => Reschedule::NotPlaced,
            (Some(p), _) if p.kind != PlacementKind::Start => Reschedule::MigrationAbandoned,
            (Some(_), None) => Reschedule::NotRequested,
            (Some(_), Some(_)) if tried.len() >= ledger.rules.max_start_attempts as usize => {
                Reschedule::GaveUp { tried }
            }
            (Some(p), Some(policy)) => {
                drop(ledger);
                let request = crate::ScheduleRequest::new(p.vm.clone()).blacklist(tried.clone());
                let decision = policy.schedule(self, &request)?;
                ledger = self.ledger();
                if decision.chosen.is_none() {
                    ledger.attempts.remove(vm_id);
                }
                Reschedule::Decided {
                    decision: Box::new(decision),
                    avoided: tried,
                }
            }
        };
        if !matches!(
            next,
            Reschedule::Decided { .. } | Reschedule::MigrationAbandoned
        ) {
            ledger.attempts.remove(vm_id);
        }
        Ok(VmFailed {
            vm: vm_id.to_string(),
            placement,
            release,
            reschedule: next,
        })
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
    /// and not started is failed, rescheduled with `reschedule` when given.
    pub fn host_down(
        &self,
        host_id: &str,
        status: HostStatus,
        reschedule: Option<&Policy>,
    ) -> Result<Vec<VmFailed>> {
        self.set_host_status(host_id, status)?;
        let placed: Vec<String> = {
            let ledger = self.ledger();
            let mut ids: Vec<String> = ledger
                .placements
                .iter()
                .filter(|(_, p)| p.host == host_id)
                .map(|(id, _)| id.clone())
                .collect();
            ids.sort();
            ids
        };
        placed
            .iter()
            .map(|vm| self.vm_failed(vm, reschedule))
            .collect()
    }

    /// Publishes the aggregates of `hosts` (ids; unknown ones skipped) plus `extra` changes
    /// as one epoch. `None` when there was nothing to publish.
    pub(crate) fn publish(
        &self,
        ledger: &mut MutexGuard<'_, Ledger>,
        hosts: impl IntoIterator<Item = String>,
        mut extra: Vec<Change>,
    ) -> Result<Option<u64>> {
        let mut changes: Vec<Change> = hosts
            .into_iter()
            .filter_map(|id| {
                let host = self.host_index(&id)?;
                Some(Change::SetPending {
                    host,
                    pending: ledger.pending.host_aggregate(&id),
                })
            })
            .collect();
        changes.append(&mut extra);
        if changes.is_empty() {
            return Ok(None);
        }
        self.commit(ledger, changes).map(Some)
    }
}

/// Moves a started VM's pending amounts into the host's usage figures.
fn add_usage(host: &mut Host, resources: &[&PendingResource]) {
    host.running_vms = host.running_vms.saturating_add(1);
    for resource in resources {
        add_resource_usage(host, resource);
    }
}

/// Moves one pending amount into the host's usage figures (memory committed and no longer
/// free, pages and devices taken...).
pub(crate) fn add_resource_usage(host: &mut Host, resource: &PendingResource) {
    {
        match resource {
            PendingResource::OvercommitMemory { mb } => {
                host.memory.committed_mb = host.memory.committed_mb.saturating_add(*mb);
                host.memory.free_mb = host.memory.free_mb.saturating_sub(*mb);
            }
            PendingResource::CpuLoad { percent } => {
                host.cpu_usage_percent = host.cpu_usage_percent.saturating_add(*percent).min(100);
            }
            PendingResource::PinnedCpus { cpus } => {
                for cpu in cpus {
                    if !host.dedicated_cpus.contains(cpu) {
                        host.dedicated_cpus.push(*cpu);
                    }
                }
                host.dedicated_cpus.sort_unstable();
            }
            PendingResource::Hugepages { size_kb, count } => {
                if let Some(pages) = host
                    .free_hugepages
                    .iter_mut()
                    .find(|p| p.size_kb == *size_kb)
                {
                    pages.count = pages.count.saturating_sub(*count);
                }
            }
            PendingResource::NumaMemory { node, mb } => {
                if let Some(n) = host.numa_nodes.iter_mut().find(|n| n.index == *node) {
                    n.free_memory_mb = n.free_memory_mb.saturating_sub(*mb);
                }
            }
            PendingResource::Custom { name, amount } => {
                if let Some(c) = host.custom_resources.iter_mut().find(|c| c.kind == *name) {
                    c.amount = c.amount.saturating_sub(*amount);
                }
            }
            PendingResource::HotplugMemory {
                mb,
                node,
                hugepage_size_kb,
            } => {
                host.memory.committed_mb = host.memory.committed_mb.saturating_add(*mb);
                match hugepage_size_kb {
                    Some(size_kb) => {
                        let count = policy_sdk::HugePages::needed(*mb, *size_kb);
                        add_resource_usage(
                            host,
                            &PendingResource::Hugepages {
                                size_kb: *size_kb,
                                count,
                            },
                        );
                    }
                    None => host.memory.free_mb = host.memory.free_mb.saturating_sub(*mb),
                }
                if let Some(node) = node {
                    add_resource_usage(
                        host,
                        &PendingResource::NumaMemory {
                            node: *node,
                            mb: *mb,
                        },
                    );
                }
            }
            PendingResource::Memory { .. }
            | PendingResource::CpuCores { .. }
            | PendingResource::Vm => {}
        }
    }
}

/// Takes a migrated VM's usage off its source host.
fn remove_usage(host: &mut Host, vm: &Vm, rules: &PendingRules, count_threads_as_cores: bool) {
    host.running_vms = host.running_vms.saturating_sub(1);
    let mb = vm.memory_mb.saturating_add(rules.memory_overhead_mb);
    host.memory.committed_mb = host.memory.committed_mb.saturating_sub(mb);
    host.memory.free_mb = host
        .memory
        .free_mb
        .saturating_add(mb)
        .min(host.memory.physical_mb.max(host.memory.free_mb));
    let host_cpus = u64::from(host.schedulable_cpus(count_threads_as_cores).max(1));
    let load = (u64::from(vm.cpu_usage_percent) * u64::from(vm.vcpus())).div_ceil(host_cpus);
    host.cpu_usage_percent = host.cpu_usage_percent.saturating_sub(load.min(100) as u32);
}

/// Checks a request amount against the record limits; used by request validation so that a
/// bad amount is reported naming the request's field, before any decision.
pub(crate) fn check_vm_amounts(vm: &Vm) -> Result<()> {
    for (i, c) in vm.custom_resources.iter().enumerate() {
        if c.kind.is_empty() {
            return Err(Error::Request(format!(
                "VM {:?}: custom_resources[{i}].kind: must not be empty",
                vm.id
            )));
        }
        if c.amount > crate::pending::MAX_COUNT {
            return Err(Error::Request(format!(
                "VM {:?}: custom_resources[{i}].amount: {} is too large (at most {})",
                vm.id,
                c.amount,
                crate::pending::MAX_COUNT
            )));
        }
    }
    if let Some(size) = vm.hugepage_size_kb {
        if size == 0 {
            return Err(Error::Request(format!(
                "VM {:?}: hugepage_size_kb: must not be 0",
                vm.id
            )));
        }
    }
    for (i, node) in vm.numa_nodes.iter().enumerate() {
        if node.memory_mb > crate::pending::MAX_MEMORY_MB {
            return Err(Error::Request(format!(
                "VM {:?}: numa_nodes[{i}].memory_mb: {} is too large (at most {})",
                vm.id,
                node.memory_mb,
                crate::pending::MAX_MEMORY_MB
            )));
        }
    }
    Ok(())
}
