//! Placements and what they hold: why a VM is placed ([`PlacementKind`]), the rules that turn
//! a placement into pending resources ([`PendingRules`]), and what the lifecycle transitions
//! of a [`Cluster`](super::Cluster) return ([`Reservation`], [`Release`], [`HostRemoved`],
//! [`FailedPlacement`]), with the host usage accounting they apply.

use super::pending::{PendingRecord, PendingResource};
use policy_sdk::model::topology::{self, CpuPinning, NodePlacement, NumaFit};
use policy_sdk::{Host, Vm};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// nodes are assigned to (see `numa_assignment`), and its custom resource amounts.
    /// `host.pending` must not include this VM's own records.
    pub fn resources_for(
        &self,
        vm: &Vm,
        host: &Host,
        kind: &PlacementKind,
        count_threads_as_cores: bool,
    ) -> Vec<PendingResource> {
        let vcpus = vm.vcpus();
        // Room for every kind of record at once: a list that grows is copied again, and
        // under the allocator's lock (a reservation is made on every decision).
        let mut out = Vec::with_capacity(10 + vm.numa_nodes.len() + vm.custom_resources.len());
        out.extend([
            PendingResource::Vm,
            PendingResource::CpuCores { count: vcpus },
            PendingResource::Memory {
                mb: self.memory_overhead_mb,
            },
            PendingResource::OvercommitMemory {
                mb: vm.memory_mb.saturating_add(self.memory_overhead_mb),
            },
        ]);
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
fn numa_assignment(vm: &Vm, host: &Host) -> Vec<NodePlacement> {
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

/// A reservation worked out before the ledger lock is taken: the records of placing a VM
/// on a host, at one epoch, under the pending rules of then.
#[derive(Debug)]
pub(super) struct PreparedReservation {
    /// One record per resource.
    pub records: Vec<PendingRecord>,
    /// The rules they were derived under.
    pub rules: PendingRules,
    /// The placement to record.
    pub placement: Placement,
}

/// One record of `vm` on `host_id` per resource.
pub(super) fn records_of(
    vm: &Vm,
    host_id: &str,
    resources: &[PendingResource],
) -> Vec<PendingRecord> {
    resources
        .iter()
        .map(|resource| PendingRecord {
            host: host_id.to_string(),
            vm: vm.id.clone(),
            resource: resource.clone(),
        })
        .collect()
}

/// `host` with the NUMA memory and pinned pCPUs of `records` on it taken out of its pending
/// aggregate (what the placement logic reads).
pub(super) fn without_records(host: &Host, records: &[PendingRecord]) -> Host {
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

/// The result of [`Cluster::remove_host`](super::Cluster::remove_host).
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

/// What a caller that may decide a failed start again learns from
/// `Cluster::fail_placement`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Not a start, or no retry asked for.
    No,
    /// The VM ran out of attempts; the hosts it was tried on, in order.
    GaveUp(Vec<String>),
    /// It may be decided again without these hosts.
    Allowed(Vec<String>),
}

/// What a failed start or migration released ([`Cluster::vm_failed`](super::Cluster::vm_failed)).
#[derive(Debug, Clone, Serialize)]
pub struct FailedPlacement {
    /// The VM id.
    pub vm: String,
    /// Where it was placed (the host it failed on, start or migration); `None` when it
    /// was not placed.
    pub placement: Option<Placement>,
    /// The pending resources released.
    pub release: Release,
}

/// Moves a started VM's pending amounts into the host's usage figures.
pub(super) fn add_usage(host: &mut Host, resources: &[&PendingResource]) {
    host.running_vms = host.running_vms.saturating_add(1);
    for resource in resources {
        add_resource_usage(host, resource);
    }
}

/// Moves one pending amount into the host's usage figures (memory committed and no longer
/// free, pages and devices taken...).
pub(super) fn add_resource_usage(host: &mut Host, resource: &PendingResource) {
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
pub(super) fn remove_usage(
    host: &mut Host,
    vm: &Vm,
    rules: &PendingRules,
    count_threads_as_cores: bool,
) {
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
