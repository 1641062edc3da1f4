//! Memory hot plug and hot unplug planning for running VMs.
//!
//! [`Cluster::hot_set_memory`] takes a running VM and a new memory size and returns a
//! [`MemoryPlan`]:
//!
//! * **Increase** by `delta`: the delta must be a multiple of the architecture's size
//!   factor ([`Architecture::memory_hotplug_factor_mb`]: 128 MiB on x86-64, 256 MiB on
//!   POWER) and the VM needs a free memory slot ([`ClusterInfo::max_memory_slots`], 16 by
//!   default). The VM's host must take the delta: free memory minus pending memory, the
//!   overcommit ceiling minus committed and pending memory, hugepages of the VM's size when
//!   it uses them, and the host NUMA node when the guest node the DIMM goes to is strictly
//!   pinned to one; then the policy's filters must pass the host for the grown VM (the host
//!   seen without the VM's current footprint, so its current memory is not counted twice).
//!   The plan is one DIMM device with its libvirt XML, and the delta is recorded as a
//!   [`PendingResource::HotplugMemory`] on the host, so the next decision there sees it,
//!   until [`Cluster::confirm_memory_change`] (the DIMM becomes part of the VM) or
//!   [`Cluster::fail_memory_change`].
//! * **Decrease** by `reduction`: the DIMMs to unplug are hot-plugged devices that are not
//!   already being unplugged, whose sizes add up *exactly* to the reduction (a subset sum,
//!   [`search_unplug`]), fewest devices first, ties broken towards the most recently
//!   plugged. They are marked `unplugging` until confirmed or failed. When no exact subset
//!   exists the plan says so ([`MemoryChange::NoExactUnplug`]) with the nearest achievable
//!   reductions below and above.
//!
//! Bad input (unknown or non-running VM, a change that is not a multiple of the factor,
//! slots exhausted, a shrink below the guaranteed memory) is an [`Error::Request`] naming
//! the value. A host that cannot take the memory is not an error: the plan is
//! [`MemoryChange::Refused`] with the reasons.
//!
//! [`Architecture::memory_hotplug_factor_mb`]: policy_sdk::Architecture::memory_hotplug_factor_mb
//! [`ClusterInfo::max_memory_slots`]: policy_sdk::ClusterInfo::max_memory_slots

use crate::cluster::{Cluster, ClusterView};
use crate::error::{Error, Result};
use crate::lifecycle::{add_resource_usage, Release};
use crate::pending::{PendingRecord, PendingResource, ResourceKey, MAX_MEMORY_MB};
use crate::scheduler::UnitFailure;
use crate::Policy;
use policy_sdk::abi::Change;
use policy_sdk::{Architecture, Host, MemoryDevice, NumaTuneMode, Vm, VmStatus};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;

/// Most cells (devices + 1) x (hot-plugged memory in units + 1) the exact unplug search
/// fills in its table (2 bytes each: at most 8 MiB).
pub const MAX_SUBSET_TABLE_CELLS: u64 = 1 << 22;

/// Most devices the unplug search enumerates (2^n subsets) when the table would be too
/// large (DIMM sizes with no large common divisor).
pub const MAX_ENUMERATED_DEVICES: usize = 20;

/// A memory hot set plan for one VM.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPlan {
    /// VM id.
    pub vm: String,
    /// The host the VM runs on.
    pub host: String,
    /// The VM's memory now, in MiB.
    pub current_mb: u64,
    /// The size asked for, in MiB.
    pub requested_mb: u64,
    /// The cluster's architecture.
    pub architecture: Architecture,
    /// The size factor every change must be a multiple of, in MiB.
    pub factor_mb: u64,
    /// Memory slots taken by the VM's devices now.
    pub slots_used: u32,
    /// Memory slots a VM has.
    pub slots_max: u32,
    /// What to do.
    pub change: MemoryChange,
}

/// The change a [`MemoryPlan`] makes.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum MemoryChange {
    /// The VM already has the requested size.
    Unchanged,
    /// Hot plug one DIMM; its memory is pending on the host until confirmed or failed.
    Plug {
        /// The DIMM.
        dimm: PlannedDimm,
        /// The pending record added on the host.
        pending: PendingResource,
        /// The epoch that published it.
        epoch: u64,
    },
    /// The host cannot take the memory (nothing was recorded).
    Refused {
        /// Why, one line each (the engine's checks, then filter rejections as
        /// `unit: code: detail`).
        reasons: Vec<String>,
        /// Filters that faulted and failed open.
        unit_failures: Vec<UnitFailure>,
    },
    /// Hot unplug these DIMMs (marked `unplugging` until confirmed or failed).
    Unplug {
        /// The DIMMs, each with the XML to detach it.
        dimms: Vec<PlannedDimm>,
        /// Their total size in MiB (the reduction).
        total_mb: u64,
        /// The epoch that marked them.
        epoch: u64,
    },
    /// No set of hot-pluggable DIMMs adds up exactly to the reduction.
    NoExactUnplug {
        /// The reduction asked for, in MiB.
        reduction_mb: u64,
        /// Sizes of the DIMMs that could be unplugged (hot-plugged, not being unplugged).
        removable_mb: Vec<u64>,
        /// The largest achievable reduction below the one asked for.
        below: Option<Reduction>,
        /// The smallest achievable reduction above it that keeps the guaranteed memory.
        above: Option<Reduction>,
    },
}

/// A DIMM to plug or unplug, with its libvirt device XML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedDimm {
    /// The device as it is (or will be) listed in the VM.
    pub device: MemoryDevice,
    /// Host NUMA node its memory is bound to (`<source><nodemask>`), if any.
    pub host_node: Option<u32>,
    /// Hugepage size backing it (`<source><pagesize>`), KiB, if any.
    pub pagesize_kb: Option<u64>,
    /// `<memory model='dimm'>...</memory>`.
    pub xml: String,
}

/// An achievable reduction: unplugging exactly these DIMMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reduction {
    /// The reduction in MiB.
    pub reduction_mb: u64,
    /// The VM's memory after it, in MiB (what to ask for instead).
    pub memory_mb: u64,
    /// Ids of the DIMMs it unplugs.
    pub devices: Vec<String>,
}

/// A memory change recorded in the ledger, waiting for confirmation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InFlight {
    host: String,
    kind: InFlightKind,
}

#[derive(Debug, Clone, PartialEq)]
enum InFlightKind {
    Plug { device: MemoryDevice },
    Unplug { devices: Vec<String> },
}

/// What [`Cluster::confirm_memory_change`] or [`Cluster::fail_memory_change`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryChangeDone {
    /// VM id.
    pub vm: String,
    /// `plug` or `unplug`.
    pub kind: &'static str,
    /// The devices plugged or unplugged (or, after a failure, left as they were).
    pub devices: Vec<String>,
    /// The VM's memory now, in MiB.
    pub memory_mb: u64,
    /// The pending record released (a plug) and the epoch published.
    pub release: Release,
}

impl Cluster {
    /// Plans a memory hot set of the running VM `vm_id` to `new_mb` MiB on the host it
    /// runs on, checking the host with `policy`'s filters (see the [module docs](self)).
    /// A plug records its memory as pending on the host; an unplug marks its DIMMs
    /// `unplugging`. Either waits for [`Cluster::confirm_memory_change`] or
    /// [`Cluster::fail_memory_change`]; one change per VM at a time.
    ///
    /// Runs under the cluster's mutation lock, so it cannot race a reservation on the same
    /// host.
    pub fn hot_set_memory(&self, vm_id: &str, new_mb: u64, policy: &Policy) -> Result<MemoryPlan> {
        let mut ledger = self.ledger();
        let snapshot = self.snapshot();
        let vm = snapshot
            .vms
            .iter()
            .find(|v| v.id == vm_id)
            .ok_or_else(|| Error::Request(format!("unknown VM {vm_id:?}")))?;
        let host_id = match (&vm.status, &vm.current_host) {
            (VmStatus::Up, Some(host)) => host.clone(),
            (status, host) => {
                return Err(Error::Request(format!(
                    "VM {vm_id:?} is {} {}: memory can be hot set only on a running (up) VM",
                    status_name(*status),
                    host.as_deref()
                        .map_or("without a host".to_string(), |h| format!("on {h:?}"))
                )))
            }
        };
        if let Some(flight) = ledger.memory.get(vm_id) {
            return Err(Error::Request(format!(
                "VM {vm_id:?} has a memory {} in flight on {:?}; confirm or fail it first",
                flight.kind.name(),
                flight.host
            )));
        }
        if let Some(placement) = ledger.placements.get(vm_id) {
            return Err(Error::Request(format!(
                "VM {vm_id:?} is being placed on {:?}; hot set its memory once it is there",
                placement.host
            )));
        }
        let architecture = snapshot.cluster.architecture;
        let factor = architecture.memory_hotplug_factor_mb();
        let slots_max = snapshot.cluster.max_memory_slots;
        let slots_used = u32::try_from(vm.memory_devices.len()).unwrap_or(u32::MAX);
        if slots_used > slots_max {
            return Err(Error::Request(format!(
                "VM {vm_id:?}: memory_devices: {slots_used} devices, more than the {slots_max} \
                 memory slots allowed (cluster.max_memory_slots)"
            )));
        }
        if new_mb > MAX_MEMORY_MB {
            return Err(Error::Request(format!(
                "VM {vm_id:?}: new memory size {new_mb} MiB is too large (at most \
                 {MAX_MEMORY_MB} MiB)"
            )));
        }
        let current = vm.memory_mb;
        let delta = new_mb.abs_diff(current);
        if delta % factor != 0 {
            return Err(Error::Request(format!(
                "VM {vm_id:?}: hot set from {current} to {new_mb} MiB changes the memory by \
                 {delta} MiB, which is not a multiple of {factor} MiB (the {} size factor)",
                architecture.as_str()
            )));
        }
        let mut plan = MemoryPlan {
            vm: vm_id.to_string(),
            host: host_id.clone(),
            current_mb: current,
            requested_mb: new_mb,
            architecture,
            factor_mb: factor,
            slots_used,
            slots_max,
            change: MemoryChange::Unchanged,
        };
        if new_mb == current {
            return Ok(plan);
        }
        let host_index = self.require_host(&host_id)?;
        let host = &snapshot.hosts[host_index as usize];
        if new_mb > current {
            if slots_used >= slots_max {
                return Err(Error::Request(format!(
                    "VM {vm_id:?}: all {slots_max} memory slots are taken ({slots_used} \
                     devices); a hot plug of {delta} MiB needs one more slot than allowed \
                     (cluster.max_memory_slots)"
                )));
            }
            let dimm = plan_dimm(vm, host, delta)?;
            let mut reasons = capacity_reasons(vm, host, &dimm, delta);
            let mut unit_failures = Vec::new();
            if reasons.is_empty() {
                let rules = ledger.rules.clone();
                let (probe, grown) = probe_snapshot(&snapshot, vm, host_index, &dimm, &rules);
                let view = ClusterView::detached(probe);
                for (unit, code, detail) in
                    policy.host_rejections(&view, &grown, host_index, &mut unit_failures)?
                {
                    reasons.push(format!("{unit}: {code}: {detail}"));
                }
            }
            if !reasons.is_empty() {
                plan.change = MemoryChange::Refused {
                    reasons,
                    unit_failures,
                };
                return Ok(plan);
            }
            let pending = PendingResource::HotplugMemory {
                mb: delta,
                node: dimm.host_node,
                hugepage_size_kb: dimm.pagesize_kb,
            };
            drop(snapshot); // let the commit update the snapshot in place
            let touched = ledger.pending.add(PendingRecord {
                host: host_id.clone(),
                vm: vm_id.to_string(),
                resource: pending.clone(),
            })?;
            let epoch = self
                .publish(&mut ledger, touched, Vec::new())?
                .expect("a hot plug record changes its host");
            ledger.memory.insert(
                vm_id.to_string(),
                InFlight {
                    host: host_id,
                    kind: InFlightKind::Plug {
                        device: dimm.device.clone(),
                    },
                },
            );
            plan.change = MemoryChange::Plug {
                dimm,
                pending,
                epoch,
            };
            return Ok(plan);
        }
        // Decrease.
        if new_mb < vm.min_guaranteed_memory_mb {
            return Err(Error::Request(format!(
                "VM {vm_id:?}: new memory size {new_mb} MiB is below its guaranteed memory \
                 of {} MiB (min_guaranteed_memory_mb)",
                vm.min_guaranteed_memory_mb
            )));
        }
        // Preference order: the most recently plugged (last listed) first.
        let removable: Vec<&MemoryDevice> = vm
            .memory_devices
            .iter()
            .rev()
            .filter(|d| d.hotplugged && !d.unplugging && d.size_mb > 0)
            .collect();
        let sizes: Vec<u64> = removable.iter().map(|d| d.size_mb).collect();
        let max_reduction = current.saturating_sub(vm.min_guaranteed_memory_mb);
        let found = search_unplug(&sizes, delta, max_reduction)
            .map_err(|e| Error::Request(format!("VM {vm_id:?}: {e}")))?;
        let Some(exact) = found.exact else {
            let reduction = |(mb, picks): (u64, Vec<usize>)| Reduction {
                reduction_mb: mb,
                memory_mb: current - mb,
                devices: picks.iter().map(|&i| removable[i].id.clone()).collect(),
            };
            plan.change = MemoryChange::NoExactUnplug {
                reduction_mb: delta,
                removable_mb: sizes.clone(),
                below: found.below.map(reduction),
                above: found.above.map(reduction),
            };
            return Ok(plan);
        };
        let chosen: BTreeSet<&str> = exact.iter().map(|&i| removable[i].id.as_str()).collect();
        let mut updated = vm.clone();
        let mut dimms = Vec::new();
        for device in updated.memory_devices.iter_mut() {
            if chosen.contains(device.id.as_str()) {
                device.unplugging = true;
                dimms.push(describe_dimm(device.clone(), None, None, true));
            }
        }
        drop(snapshot);
        let epoch = self.commit(&ledger, vec![Change::UpsertVm(updated)])?;
        ledger.memory.insert(
            vm_id.to_string(),
            InFlight {
                host: host_id,
                kind: InFlightKind::Unplug {
                    devices: dimms.iter().map(|d| d.device.id.clone()).collect(),
                },
            },
        );
        plan.change = MemoryChange::Unplug {
            dimms,
            total_mb: delta,
            epoch,
        };
        Ok(plan)
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
            InFlightKind::Plug { .. } => ledger.pending.remove(vm_id, &ResourceKey::HotplugMemory),
            InFlightKind::Unplug { .. } => None,
        };
        let snapshot = self.snapshot();
        let mut vm = snapshot.vms.iter().find(|v| v.id == vm_id).cloned();
        let mut changes = Vec::new();
        let mut touched: BTreeSet<String> = record.iter().map(|r| r.host.clone()).collect();
        let mut usage: Vec<PendingResource> = Vec::new();
        let devices = match &flight.kind {
            InFlightKind::Plug { device } => {
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
            InFlightKind::Unplug { devices } => {
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

fn status_name(status: VmStatus) -> &'static str {
    match status {
        VmStatus::Down => "down",
        VmStatus::WaitForLaunch => "wait_for_launch",
        VmStatus::PoweringUp => "powering_up",
        VmStatus::Up => "up",
        VmStatus::MigratingFrom => "migrating_from",
    }
}

impl InFlightKind {
    fn name(&self) -> &'static str {
        match self {
            InFlightKind::Plug { .. } => "plug",
            InFlightKind::Unplug { .. } => "unplug",
        }
    }
}

/// The host node a guest node's memory is strictly bound to: the VM's NUMA tune is strict
/// and the vNUMA node is pinned to exactly one host node the host has.
fn strict_host_node(vm: &Vm, host: &Host, guest_node: u32) -> Option<u32> {
    if vm.numa_tune != NumaTuneMode::Strict {
        return None;
    }
    let node = vm.numa_nodes.iter().find(|n| n.index == guest_node)?;
    match node.pinned_host_nodes[..] {
        [h] if host.numa_nodes.iter().any(|n| n.index == h) => Some(h),
        _ => None,
    }
}

/// Free memory of a host NUMA node minus what is pending there, in MiB.
fn node_free_mb(host: &Host, node: u32) -> u64 {
    host.numa_nodes
        .iter()
        .find(|n| n.index == node)
        .map_or(0, |n| n.free_memory_mb)
        .saturating_sub(host.pending.numa_memory_of(node))
}

/// The DIMM a plug of `delta` MiB adds: a new device id, the guest node (the VM's only
/// node when it has no vNUMA nodes; else, among the nodes whose strict host node can take
/// the delta, the one with the least memory, then the lowest index) and, for a strictly
/// pinned guest node, the host node; the VM's hugepage size when it has one. Errors name
/// the value when the delta does not fit the VM's hugepage size.
fn plan_dimm(vm: &Vm, host: &Host, delta: u64) -> Result<PlannedDimm> {
    if let Some(size_kb) = vm.hugepage_size_kb.filter(|&s| s > 0) {
        if delta.saturating_mul(1024) % size_kb != 0 {
            return Err(Error::Request(format!(
                "VM {:?}: a hot plug of {delta} MiB is not a whole number of the VM's \
                 {size_kb} KiB hugepages (hugepage_size_kb)",
                vm.id
            )));
        }
    }
    let guest_node = if vm.numa_nodes.is_empty() {
        0
    } else {
        let fits = |n: &&policy_sdk::VNumaNode| {
            strict_host_node(vm, host, n.index).is_none_or(|h| node_free_mb(host, h) >= delta)
        };
        let mut nodes: Vec<&policy_sdk::VNumaNode> = vm.numa_nodes.iter().filter(fits).collect();
        if nodes.is_empty() {
            // None fits: keep the choice deterministic; the capacity check explains.
            nodes = vm.numa_nodes.iter().collect();
        }
        nodes
            .iter()
            .min_by_key(|n| (n.memory_mb, n.index))
            .map_or(0, |n| n.index)
    };
    let taken: BTreeSet<&str> = vm.memory_devices.iter().map(|d| d.id.as_str()).collect();
    let id = (0..)
        .map(|i| format!("dimm{i}"))
        .find(|id| !taken.contains(id.as_str()))
        .expect("a free id exists");
    let device = MemoryDevice {
        id,
        size_mb: delta,
        node: guest_node,
        hotplugged: true,
        unplugging: false,
    };
    Ok(describe_dimm(
        device,
        strict_host_node(vm, host, guest_node),
        vm.hugepage_size_kb.filter(|&s| s > 0),
        false,
    ))
}

/// A DIMM with its libvirt XML: `<source>` (host `nodemask`, `pagesize`) only when
/// relevant, `<target>` size in KiB and guest node; to unplug, the device's alias.
fn describe_dimm(
    device: MemoryDevice,
    host_node: Option<u32>,
    pagesize_kb: Option<u64>,
    with_alias: bool,
) -> PlannedDimm {
    let mut xml = String::from("<memory model='dimm'>\n");
    if host_node.is_some() || pagesize_kb.is_some() {
        xml.push_str("  <source>\n");
        if let Some(node) = host_node {
            xml.push_str(&format!("    <nodemask>{node}</nodemask>\n"));
        }
        if let Some(size) = pagesize_kb {
            xml.push_str(&format!("    <pagesize unit='KiB'>{size}</pagesize>\n"));
        }
        xml.push_str("  </source>\n");
    }
    xml.push_str(&format!(
        "  <target>\n    <size unit='KiB'>{}</size>\n    <node>{}</node>\n  </target>\n",
        device.size_mb.saturating_mul(1024),
        device.node
    ));
    if with_alias {
        xml.push_str(&format!("  <alias name='{}'/>\n", xml_escape(&device.id)));
    }
    xml.push_str("</memory>");
    PlannedDimm {
        device,
        host_node,
        pagesize_kb,
        xml,
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The engine's own checks that the host can take `delta` MiB more for the VM (whatever
/// the policy): free memory minus pending memory (hugepages of the VM's size minus pending
/// ones instead, for a hugepage-backed VM), the overcommit ceiling minus committed and
/// pending memory, and the strict host node's free memory minus its pending memory.
fn capacity_reasons(vm: &Vm, host: &Host, dimm: &PlannedDimm, delta: u64) -> Vec<String> {
    let mut reasons = Vec::new();
    let m = &host.memory;
    let p = &host.pending;
    match dimm.pagesize_kb {
        Some(size_kb) => {
            let need = delta.saturating_mul(1024) / size_kb;
            let free = host
                .free_hugepages
                .iter()
                .filter(|h| h.size_kb == size_kb)
                .map(|h| h.count)
                .sum::<u64>();
            let left = free.saturating_sub(p.hugepages_of(size_kb));
            if left < need {
                reasons.push(format!(
                    "hugepages: {left} free {size_kb} KiB pages ({free} free - {} pending), \
                     {need} needed for {delta} MiB",
                    p.hugepages_of(size_kb)
                ));
            }
        }
        None => {
            let left = m.free_mb.saturating_sub(p.memory_mb);
            if left < delta {
                reasons.push(format!(
                    "free memory: {left} MiB ({} free - {} pending), {delta} MiB needed",
                    m.free_mb, p.memory_mb
                ));
            }
        }
    }
    let schedulable = m
        .max_scheduling_mb
        .saturating_sub(m.committed_mb)
        .saturating_sub(p.overcommit_memory_mb);
    if schedulable < delta {
        reasons.push(format!(
            "schedulable memory: {schedulable} MiB ({} max - {} committed - {} pending), \
             {delta} MiB needed",
            m.max_scheduling_mb, m.committed_mb, p.overcommit_memory_mb
        ));
    }
    if let Some(node) = dimm.host_node {
        let left = node_free_mb(host, node);
        if left < delta {
            reasons.push(format!(
                "NUMA node {node}: {left} MiB free after pending, {delta} MiB needed (guest \
                 node {} of VM {:?} is strictly pinned there)",
                dimm.device.node, vm.id
            ));
        }
    }
    reasons
}

/// The snapshot the filters check a plug on: the VM grown by the DIMM (memory, vNUMA node,
/// device), and its host seen without the VM's current footprint (its memory plus overhead
/// back in free and out of committed memory, its hugepages and strictly pinned node memory
/// back), so that a filter asking "does the grown VM fit here?" counts the VM's memory
/// once. Returns the snapshot and the grown VM.
fn probe_snapshot(
    snapshot: &policy_sdk::Snapshot,
    vm: &Vm,
    host_index: u32,
    dimm: &PlannedDimm,
    rules: &crate::PendingRules,
) -> (policy_sdk::Snapshot, Vm) {
    let mut probe = snapshot.clone();
    let mut grown = vm.clone();
    let delta = dimm.device.size_mb;
    grown.memory_mb = grown.memory_mb.saturating_add(delta);
    if let Some(node) = grown
        .numa_nodes
        .iter_mut()
        .find(|n| n.index == dimm.device.node)
    {
        node.memory_mb = node.memory_mb.saturating_add(delta);
    }
    grown.memory_devices.push(dimm.device.clone());
    let host = &mut probe.hosts[host_index as usize];
    let footprint = vm.memory_mb.saturating_add(rules.memory_overhead_mb);
    host.memory.committed_mb = host.memory.committed_mb.saturating_sub(footprint);
    // A started VM's guest memory and overhead leave the host's free memory (as the
    // lifecycle accounts it, hugepage-backed or not); its pages leave the free pages.
    host.memory.free_mb = host.memory.free_mb.saturating_add(footprint);
    if let Some((size_kb, pages)) = vm.hugepages_needed() {
        match host
            .free_hugepages
            .iter_mut()
            .find(|h| h.size_kb == size_kb)
        {
            Some(h) => h.count = h.count.saturating_add(pages),
            None => host.free_hugepages.push(policy_sdk::HugePages {
                size_kb,
                count: pages,
            }),
        }
    }
    for node in &vm.numa_nodes {
        if let Some(h) = strict_host_node(vm, host, node.index) {
            if let Some(n) = host.numa_nodes.iter_mut().find(|n| n.index == h) {
                n.free_memory_mb = n.free_memory_mb.saturating_add(node.memory_mb);
                // A hugepage-backed guest node's pages return to its host node too (the
                // `numa` filter counts a hugepage VM's node room in pages).
                if let Some(size_kb) = vm.hugepage_size_kb.filter(|&s| s > 0) {
                    let pages = policy_sdk::HugePages::needed(node.memory_mb, size_kb);
                    match n.free_hugepages.iter_mut().find(|p| p.size_kb == size_kb) {
                        Some(p) => p.count = p.count.saturating_add(pages),
                        None => n.free_hugepages.push(policy_sdk::HugePages {
                            size_kb,
                            count: pages,
                        }),
                    }
                }
            }
        }
    }
    if let Some(v) = probe.vms.iter_mut().find(|v| v.id == vm.id) {
        *v = grown.clone();
    }
    (probe, grown)
}

/// The result of [`search_unplug`]: indices into the sizes it was given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnplugSearch {
    /// The subset adding up exactly to the target, if any.
    pub exact: Option<Vec<usize>>,
    /// Without an exact subset: the largest achievable sum below the target (above 0),
    /// with its subset.
    pub below: Option<(u64, Vec<usize>)>,
    /// Without an exact subset: the smallest achievable sum above the target and at most
    /// the limit, with its subset.
    pub above: Option<(u64, Vec<usize>)>,
}

/// The unplug search gave up: the input is too large for its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchTooLarge {
    /// Devices searched.
    pub devices: usize,
    /// Their total size in units of their greatest common divisor.
    pub units: u64,
}

impl fmt::Display for SearchTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot search the hot unplug: {} removable DIMMs totalling {} units of their \
             common size need a table of more than {MAX_SUBSET_TABLE_CELLS} cells, and more \
             than {MAX_ENUMERATED_DEVICES} DIMMs are too many to enumerate",
            self.devices, self.units
        )
    }
}

impl std::error::Error for SearchTooLarge {}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Chooses which of `sizes` (DIMM sizes in MiB, in order of preference: the first is the
/// one to unplug first) add up exactly to `target`: the fewest devices, and among subsets
/// of that size the one that takes the most preferred devices (compared in preference
/// order). When there is none, finds the nearest achievable sums below `target` (above 0)
/// and above it (at most `limit`), each with its subset chosen by the same rule.
///
/// Sizes are first divided by their greatest common divisor (with the target's; so DIMMs
/// in multiples of the 128 MiB factor cost one table column per 128 MiB). A
/// devices x total-units table of at most [`MAX_SUBSET_TABLE_CELLS`] is filled
/// (16 DIMMs of up to 32 GiB each in 128 MiB units: 0.5 M cells, well under a
/// millisecond); when it would be larger, up to [`MAX_ENUMERATED_DEVICES`] devices are
/// enumerated instead (2^n subsets), and beyond both the answer is [`SearchTooLarge`].
/// Devices of size 0 are never chosen.
pub fn search_unplug(
    sizes: &[u64],
    target: u64,
    limit: u64,
) -> std::result::Result<UnplugSearch, SearchTooLarge> {
    let items: Vec<usize> = (0..sizes.len()).filter(|&i| sizes[i] > 0).collect();
    if target == 0 {
        return Ok(UnplugSearch {
            exact: Some(Vec::new()),
            ..Default::default()
        });
    }
    let g = items.iter().fold(target, |g, &i| gcd(g, sizes[i]));
    let weights: Vec<u64> = items.iter().map(|&i| sizes[i] / g).collect();
    let total: u64 = weights.iter().fold(0u64, |s, &w| s.saturating_add(w));
    let cells = (weights.len() as u64 + 1).saturating_mul(total.saturating_add(1));
    let found = if cells <= MAX_SUBSET_TABLE_CELLS {
        search_table(&weights, total)
    } else if weights.len() <= MAX_ENUMERATED_DEVICES {
        search_enumerate(&weights)
    } else {
        return Err(SearchTooLarge {
            devices: weights.len(),
            units: total,
        });
    };
    // `found(sum)`: the best subset for an achievable sum (in units), None otherwise.
    let t = target / g;
    let to_original =
        |picks: Vec<usize>| -> Vec<usize> { picks.into_iter().map(|k| items[k]).collect() };
    let exact = found.best(t).map(to_original);
    let near = |s: Option<u64>| s.and_then(|s| found.best(s).map(|p| (s * g, to_original(p))));
    let (below, above) = if exact.is_some() {
        (None, None)
    } else {
        (
            near(found.nearest_below(t)),
            near(found.nearest_above(t, limit / g)),
        )
    };
    Ok(UnplugSearch {
        exact,
        below,
        above,
    })
}

/// Best subsets by achievable sum, from either search.
enum Found {
    /// `table[i * cols + s]`: fewest of items `i..` adding up to `s` (`u16::MAX`: none).
    Table {
        weights: Vec<u64>,
        cols: usize,
        table: Vec<u16>,
    },
    /// The chosen subset (bit i = item i) per achievable sum.
    Enumerated(std::collections::HashMap<u64, u32>),
}

impl Found {
    /// The largest achievable sum in `1..t`.
    fn nearest_below(&self, t: u64) -> Option<u64> {
        match self {
            Found::Table { cols, table, .. } => (1..t.min(*cols as u64))
                .rev()
                .find(|&s| table[s as usize] != u16::MAX),
            Found::Enumerated(best) => best.keys().copied().filter(|&s| s > 0 && s < t).max(),
        }
    }

    /// The smallest achievable sum in `t+1..=limit`.
    fn nearest_above(&self, t: u64, limit: u64) -> Option<u64> {
        match self {
            Found::Table { cols, table, .. } => (t.saturating_add(1)..(*cols as u64))
                .take_while(|&s| s <= limit)
                .find(|&s| table[s as usize] != u16::MAX),
            Found::Enumerated(best) => best.keys().copied().filter(|&s| s > t && s <= limit).min(),
        }
    }

    fn best(&self, sum: u64) -> Option<Vec<usize>> {
        match self {
            Found::Table {
                weights,
                cols,
                table,
            } => {
                let mut s = usize::try_from(sum).ok().filter(|&s| s < *cols)?;
                if table[s] == u16::MAX {
                    return None;
                }
                let mut picks = Vec::new();
                for (i, &w) in weights.iter().enumerate() {
                    let here = table[i * cols + s];
                    let w = w as usize;
                    // Take item i when an optimal subset of items i.. still takes it.
                    if w <= s {
                        let rest = table[(i + 1) * cols + s - w];
                        if rest != u16::MAX && rest + 1 == here {
                            picks.push(i);
                            s -= w;
                        }
                    }
                }
                debug_assert_eq!(s, 0);
                Some(picks)
            }
            Found::Enumerated(best) => best
                .get(&sum)
                .map(|&mask| (0..32).filter(|i| mask & (1 << i) != 0).collect()),
        }
    }
}

fn search_table(weights: &[u64], total: u64) -> Found {
    let n = weights.len();
    let cols = total as usize + 1;
    let mut table = vec![u16::MAX; (n + 1) * cols];
    table[n * cols] = 0;
    for i in (0..n).rev() {
        let w = weights[i] as usize;
        let (row, next) = table[i * cols..(i + 2) * cols].split_at_mut(cols);
        for s in 0..cols {
            let skip = next[s];
            let take = if w <= s && next[s - w] != u16::MAX {
                next[s - w] + 1
            } else {
                u16::MAX
            };
            row[s] = skip.min(take);
        }
    }
    Found::Table {
        weights: weights.to_vec(),
        cols,
        table,
    }
}

fn search_enumerate(weights: &[u64]) -> Found {
    let n = weights.len();
    // The preference key of a subset: item 0 is the most significant bit, so of two
    // subsets of one size the larger key takes the earlier preferred item.
    let key = |mask: u32| (mask.reverse_bits() >> (32 - n.max(1) as u32)) as u64;
    let mut best: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
    for mask in 0u32..(1u32 << n) {
        let sum = (0..n)
            .filter(|i| mask & (1 << i) != 0)
            .fold(0u64, |s, i| s.saturating_add(weights[i]));
        let better = match best.get(&sum) {
            None => true,
            Some(&b) => {
                (mask.count_ones(), std::cmp::Reverse(key(mask)))
                    < (b.count_ones(), std::cmp::Reverse(key(b)))
            }
        };
        if better {
            best.insert(sum, mask);
        }
    }
    Found::Enumerated(best)
}

/// Parses a memory size for the CLI: a whole number of MiB, optionally with a binary
/// suffix (`M`/`MiB`/`MB` = MiB, `G`/`GiB`/`GB` = 1024 MiB, `T`/`TiB`/`TB` = 1024 GiB;
/// case-insensitive). `4096`, `4096M` and `4G` are the same size.
pub fn parse_size_mb(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let bad = |why: &str| {
        Error::Request(format!(
            "memory size {text:?}: {why} (expected a whole number of MiB, optionally with a \
             suffix M, G or T: 4096, 4096M, 4G)"
        ))
    };
    if digits.is_empty() {
        return Err(bad("no number"));
    }
    let number: u64 = digits.parse().map_err(|_| bad("number too large"))?;
    let scale: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        "t" | "tb" | "tib" => 1024 * 1024,
        _ => return Err(bad(&format!("unknown suffix {suffix:?}"))),
    };
    let mb = number
        .checked_mul(scale)
        .filter(|&mb| mb <= MAX_MEMORY_MB)
        .ok_or_else(|| bad(&format!("larger than {MAX_MEMORY_MB} MiB")))?;
    Ok(mb)
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.requested_mb >= self.current_mb {
            '+'
        } else {
            '-'
        };
        writeln!(
            f,
            "VM {} on {}: {} -> {} MiB ({sign}{} MiB), {} factor {} MiB, slots {}/{}",
            self.vm,
            self.host,
            self.current_mb,
            self.requested_mb,
            self.requested_mb.abs_diff(self.current_mb),
            self.architecture.as_str(),
            self.factor_mb,
            self.slots_used,
            self.slots_max
        )?;
        let dimm_line = |f: &mut fmt::Formatter<'_>, verb: &str, d: &PlannedDimm| {
            write!(
                f,
                "  {verb} {}: {} MiB on guest node {}",
                d.device.id, d.device.size_mb, d.device.node
            )?;
            if let Some(node) = d.host_node {
                write!(f, ", host node {node}")?;
            }
            if let Some(size) = d.pagesize_kb {
                write!(f, ", {size} KiB pages")?;
            }
            writeln!(f)?;
            for line in d.xml.lines() {
                writeln!(f, "    {line}")?;
            }
            Ok(())
        };
        match &self.change {
            MemoryChange::Unchanged => writeln!(f, "  unchanged: the VM already has this size"),
            MemoryChange::Plug {
                dimm,
                pending,
                epoch,
            } => {
                dimm_line(f, "plug", dimm)?;
                writeln!(
                    f,
                    "  pending on {} until confirmed or failed: {pending} (epoch {epoch})",
                    self.host
                )
            }
            MemoryChange::Refused {
                reasons,
                unit_failures,
            } => {
                writeln!(f, "  refused: {} cannot take it", self.host)?;
                for r in reasons {
                    writeln!(f, "    {r}")?;
                }
                for u in unit_failures {
                    writeln!(f, "    ! unit {} failed, skipped: {}", u.unit, u.error)?;
                }
                Ok(())
            }
            MemoryChange::Unplug {
                dimms,
                total_mb,
                epoch,
            } => {
                for d in dimms {
                    dimm_line(f, "unplug", d)?;
                }
                writeln!(
                    f,
                    "  {} DIMM(s), {total_mb} MiB, marked unplugging until confirmed or failed \
                     (epoch {epoch})",
                    dimms.len()
                )
            }
            MemoryChange::NoExactUnplug {
                reduction_mb,
                removable_mb,
                below,
                above,
            } => {
                writeln!(
                    f,
                    "  no exact unplug: no set of the hot-plugged DIMMs {removable_mb:?} MiB adds \
                     up to {reduction_mb} MiB"
                )?;
                for (label, r) in [("below", below), ("above", above)] {
                    match r {
                        Some(r) => writeln!(
                            f,
                            "    nearest {label}: -{} MiB (to {} MiB) unplugging {}",
                            r.reduction_mb,
                            r.memory_mb,
                            r.devices.join(", ")
                        )?,
                        None => writeln!(f, "    nearest {label}: none")?,
                    }
                }
                Ok(())
            }
        }
    }
}

impl MemoryPlan {
    /// Whether the plan changes something (a plug, an unplug, or nothing to do), as
    /// opposed to a refusal or no exact unplug.
    pub fn is_possible(&self) -> bool {
        matches!(
            self.change,
            MemoryChange::Unchanged | MemoryChange::Plug { .. } | MemoryChange::Unplug { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::testing::XorShift;

    /// The reference's greedy pick: largest first, take it while it fits.
    fn greedy_largest_first(sizes: &[u64], target: u64) -> Option<Vec<u64>> {
        let mut sorted = sizes.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let mut left = target;
        let mut picked = Vec::new();
        for s in sorted {
            if s <= left {
                left -= s;
                picked.push(s);
            }
        }
        (left == 0).then_some(picked)
    }

    fn sizes_of(sizes: &[u64], picks: &[usize]) -> Vec<u64> {
        picks.iter().map(|&i| sizes[i]).collect()
    }

    #[test]
    fn exact_subset_finds_512_plus_512_where_greedy_largest_first_fails() {
        let sizes = [768, 512, 512, 1024];
        // The reference's case: DIMMs 768, 512, 512, 1024 MiB to remove. Greedy takes 768
        // and stops short (256 left, no DIMM that small); 512 + 512 is exact.
        assert_eq!(greedy_largest_first(&[768, 512, 512], 1024), None);
        let found = search_unplug(&[768, 512, 512], 1024, u64::MAX).unwrap();
        assert_eq!(found.exact, Some(vec![1, 2]));
        // With a 1024 DIMM too, greedy fails on 1280 (takes 1024, 256 left); 768 + 512.
        assert_eq!(greedy_largest_first(&sizes, 1280), None);
        let found = search_unplug(&sizes, 1280, u64::MAX).unwrap();
        assert_eq!(sizes_of(&sizes, found.exact.as_ref().unwrap()), [768, 512]);
    }

    #[test]
    fn unplug_search_table_of_cases() {
        // (case, sizes in preference order, target, limit, exact sizes, below, above)
        type Case = (
            &'static str,
            Vec<u64>,
            u64,
            u64,
            Option<Vec<u64>>,
            Option<u64>,
            Option<u64>,
        );
        let cases: Vec<Case> = vec![
            (
                "fewest devices: one 1024 beats 512 + 512",
                vec![512, 512, 1024],
                1024,
                u64::MAX,
                Some(vec![1024]),
                None,
                None,
            ),
            (
                "tie on count: the most preferred (first) device is taken",
                vec![256, 256, 256],
                256,
                u64::MAX,
                Some(vec![256]),
                None,
                None,
            ),
            (
                "no exact subset: nearest below and above",
                vec![1024, 512],
                768,
                u64::MAX,
                None,
                Some(512),
                Some(1024),
            ),
            (
                "above is limited (guaranteed memory)",
                vec![1024, 512],
                768,
                900,
                None,
                Some(512),
                None,
            ),
            (
                "reduction larger than everything hot-plugged",
                vec![256, 128],
                1024,
                u64::MAX,
                None,
                Some(384),
                None,
            ),
            ("nothing removable", vec![], 128, u64::MAX, None, None, None),
            (
                "zero-size devices are never chosen",
                vec![0, 128],
                128,
                u64::MAX,
                Some(vec![128]),
                None,
                None,
            ),
        ];
        for (case, sizes, target, limit, exact, below, above) in cases {
            let found = search_unplug(&sizes, target, limit).unwrap();
            assert_eq!(
                found.exact.as_ref().map(|p| sizes_of(&sizes, p)),
                exact,
                "{case}"
            );
            assert_eq!(found.below.as_ref().map(|b| b.0), below, "{case}");
            assert_eq!(found.above.as_ref().map(|a| a.0), above, "{case}");
            if let Some(p) = &found.exact {
                assert_eq!(sizes_of(&sizes, p).iter().sum::<u64>(), target, "{case}");
            }
        }
        // Tie on count picks the first (most preferred) of equal devices.
        assert_eq!(
            search_unplug(&[256, 256, 256], 256, u64::MAX)
                .unwrap()
                .exact,
            Some(vec![0])
        );
    }

    /// Brute force over every subset: fewest devices, then the most preferred.
    fn brute_force(sizes: &[u64], sum: u64) -> Option<Vec<usize>> {
        let n = sizes.len();
        let mut best: Option<Vec<usize>> = None;
        for mask in 0u32..(1 << n) {
            let picks: Vec<usize> = (0..n).filter(|i| mask & (1 << i) != 0).collect();
            if picks.iter().any(|&i| sizes[i] == 0) {
                continue;
            }
            if picks.iter().map(|&i| sizes[i]).sum::<u64>() != sum {
                continue;
            }
            // Same size: lexicographically smaller index list takes earlier items.
            let better = match &best {
                None => true,
                Some(b) => (picks.len(), &picks) < (b.len(), b),
            };
            if better {
                best = Some(picks);
            }
        }
        best
    }

    #[test]
    fn property_table_and_enumeration_agree_with_brute_force_on_random_inputs() {
        let mut rng = XorShift::new(7);
        for round in 0..400 {
            let n = rng.below(9) as usize;
            let unit = [128, 256, 128 * 3][rng.below(3) as usize];
            let sizes: Vec<u64> = (0..n).map(|_| unit * rng.below(9)).collect();
            let total: u64 = sizes.iter().sum();
            let target = unit * (1 + rng.below(total / unit + 2));
            let limit = if rng.below(2) == 0 {
                u64::MAX
            } else {
                unit * rng.below(total / unit + 3)
            };
            let found = search_unplug(&sizes, target, limit).unwrap();
            let ctx = format!("round {round}: sizes {sizes:?} target {target} limit {limit}");
            assert_eq!(found.exact, brute_force(&sizes, target), "{ctx}");
            let exact = found.exact.is_some();
            let below = (1..target)
                .rev()
                .find_map(|s| brute_force(&sizes, s).map(|p| (s, p)))
                .filter(|_| !exact);
            assert_eq!(found.below, below, "{ctx}");
            let above = (target + 1..=total.min(limit))
                .find_map(|s| brute_force(&sizes, s).map(|p| (s, p)))
                .filter(|_| !exact);
            assert_eq!(found.above, above, "{ctx}");
            // The enumeration fallback gives the same subsets as the table.
            let g = sizes.iter().fold(target, |g, &s| gcd(g, s));
            let weights: Vec<u64> = sizes.iter().filter(|&&s| s > 0).map(|s| s / g).collect();
            let table = search_table(&weights, weights.iter().sum());
            let listed = search_enumerate(&weights);
            for s in 0..=weights.iter().sum::<u64>() {
                assert_eq!(table.best(s), listed.best(s), "{ctx}, sum {s} units");
            }
        }
    }

    #[test]
    fn sixteen_dimms_are_fast_and_huge_inputs_are_bounded() {
        // 16 DIMMs of mixed sizes up to 32 GiB in 128 MiB units: the table path.
        let sizes: Vec<u64> = (1..=16).map(|i| 128 * (i * 16 + 1)).collect();
        let start = std::time::Instant::now();
        let target: u64 = sizes[0] + sizes[5] + sizes[15];
        let found = search_unplug(&sizes, target, u64::MAX).unwrap();
        let picked: u64 = sizes_of(&sizes, found.exact.as_ref().unwrap()).iter().sum();
        assert_eq!(picked, target);
        // 16 DIMMs of sizes with no common divisor beyond 1 MiB and up to 1 TiB: the
        // table would be too large, the enumeration answers.
        let odd: Vec<u64> = (0..16).map(|i| (1 << 20) - 2 * i - 1).collect();
        // Every pair (i, 12 - i) adds up to this; the tie goes to the most preferred.
        let found = search_unplug(&odd, odd[3] + odd[9], u64::MAX).unwrap();
        assert_eq!(found.exact, Some(vec![0, 12]));
        // 5,000 such DIMMs: neither path is allowed; a clear bound error, at once.
        let many: Vec<u64> = (0..5_000).map(|i| (1 << 30) - 2 * i - 1).collect();
        let err = search_unplug(&many, many[0], u64::MAX).unwrap_err();
        assert_eq!(err.devices, 5_000);
        assert!(err.to_string().contains("too many to enumerate"), "{err}");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn sizes_parse_with_binary_suffixes_and_bad_ones_name_the_value() {
        let ok = [
            ("4096", 4096),
            ("4096M", 4096),
            ("4096MiB", 4096),
            ("4G", 4096),
            ("4gib", 4096),
            ("1T", 1 << 20),
            (" 512 ", 512),
        ];
        for (text, mb) in ok {
            assert_eq!(parse_size_mb(text).unwrap(), mb, "{text}");
        }
        for (text, why) in [
            ("1.5G", "unknown suffix \".5G\""),
            ("", "no number"),
            ("G", "no number"),
            ("4K", "unknown suffix \"K\""),
            ("99999999999T", "larger than"),
        ] {
            let err = parse_size_mb(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
            assert!(err.contains(&format!("{text:?}")), "{text}: {err}");
        }
    }

    #[test]
    fn dimm_xml_has_source_only_when_relevant_and_size_in_kib() {
        let device = MemoryDevice {
            id: "dimm2".into(),
            size_mb: 1024,
            node: 1,
            hotplugged: true,
            unplugging: false,
        };
        let plain = describe_dimm(device.clone(), None, None, false);
        assert_eq!(
            plain.xml,
            "<memory model='dimm'>\n  <target>\n    <size unit='KiB'>1048576</size>\n    \
             <node>1</node>\n  </target>\n</memory>"
        );
        let pinned = describe_dimm(device, Some(3), Some(2048), true);
        assert!(pinned.xml.contains("<source>\n    <nodemask>3</nodemask>\n    <pagesize unit='KiB'>2048</pagesize>\n  </source>"), "{}", pinned.xml);
        assert!(
            pinned.xml.contains("<alias name='dimm2'/>"),
            "{}",
            pinned.xml
        );
    }
}
