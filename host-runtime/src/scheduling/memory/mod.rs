//! Memory hot plug and hot unplug planning for running VMs.
//!
//! [`Policy::hot_set_memory`](crate::Policy::hot_set_memory) takes a running VM and a new memory size and returns a
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
//! slots exhausted, a shrink below the guaranteed memory) is an [`Error`] naming
//! the value (invalid input, or a conflict with a change in flight). A host that cannot take the memory is not an error: the plan is
//! [`MemoryChange::Refused`] with the reasons.
//!
//! [`Architecture::memory_hotplug_factor_mb`]: policy_sdk::Architecture::memory_hotplug_factor_mb
//! [`ClusterInfo::max_memory_slots`]: policy_sdk::ClusterInfo::max_memory_slots

mod dimm;
mod unplug;

use self::dimm::{capacity_reasons, describe_dimm, plan_dimm, probe_snapshot};
use self::unplug::search_unplug;
use super::decision::UnitFailure;
use super::policy::Policy;
use super::scheduler::host_rejections;
use crate::error::{Error, Result};
use crate::state::pending::MAX_MEMORY_MB;
use crate::state::{Cluster, ClusterView, PendingResource};
use policy_sdk::{Architecture, MemoryDevice, VmStatus};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;

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

/// Plans a memory hot set of the running VM `vm_id` to `new_mb` MiB on the host it
/// runs on, checking the host with `policy`'s filters (see the module docs).
/// A plug records its memory as pending on the host; an unplug marks its DIMMs
/// `unplugging`. Either waits for [`Cluster::confirm_memory_change`] or
/// [`Cluster::fail_memory_change`]; one change per VM at a time.
///
/// Runs under the cluster's mutation lock, so it cannot race a reservation on the same
/// host.
pub(super) fn hot_set(
    policy: &Policy,
    cluster: &Cluster,
    vm_id: &str,
    new_mb: u64,
) -> Result<MemoryPlan> {
    let invalid = |message: String| Error::input(format!("VM {vm_id:?}"), None, message);
    let mut ledger = cluster.ledger();
    let snapshot = cluster.snapshot();
    let vm = snapshot
        .vms
        .iter()
        .find(|v| v.id == vm_id)
        .ok_or_else(|| Error::not_found("VM", vm_id))?;
    let host_id = match (&vm.status, &vm.current_host) {
        (VmStatus::Up, Some(host)) => host.clone(),
        (status, host) => {
            return Err(Error::conflict(format!(
                "VM {vm_id:?} is {} {}: memory can be hot set only on a running (up) VM",
                status_name(*status),
                host.as_deref()
                    .map_or("without a host".to_string(), |h| format!("on {h:?}"))
            )))
        }
    };
    if let Some(flight) = ledger.memory.get(vm_id) {
        return Err(Error::conflict(format!(
            "VM {vm_id:?} has a memory {} in flight on {:?}; confirm or fail it first",
            flight.kind.name(),
            flight.host
        )));
    }
    if let Some(placement) = ledger.placements.get(vm_id) {
        return Err(Error::conflict(format!(
            "VM {vm_id:?} is being placed on {:?}; hot set its memory once it is there",
            placement.host
        )));
    }
    let architecture = snapshot.cluster.architecture;
    let factor = architecture.memory_hotplug_factor_mb();
    let slots_max = snapshot.cluster.max_memory_slots;
    let slots_used = u32::try_from(vm.memory_devices.len()).unwrap_or(u32::MAX);
    if slots_used > slots_max {
        return Err(Error::input(
            format!("VM {vm_id:?}"),
            Some("memory_devices".into()),
            format!(
                "{slots_used} devices, more than the {slots_max} memory slots allowed \
                 (cluster.max_memory_slots)"
            ),
        ));
    }
    if new_mb > MAX_MEMORY_MB {
        return Err(invalid(format!(
            "new memory size {new_mb} MiB is too large (at most {MAX_MEMORY_MB} MiB)"
        )));
    }
    let current = vm.memory_mb;
    let delta = new_mb.abs_diff(current);
    if delta % factor != 0 {
        return Err(invalid(format!(
            "hot set from {current} to {new_mb} MiB changes the memory by \
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
    let host_index = cluster.require_host(&host_id)?;
    let host = &snapshot.hosts[host_index as usize];
    if new_mb > current {
        if slots_used >= slots_max {
            return Err(Error::conflict(format!(
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
                host_rejections(policy, &view, &grown, host_index, &mut unit_failures)?
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
        let epoch = cluster.record_memory_plug(
            &mut ledger,
            vm_id,
            &host_id,
            dimm.device.clone(),
            pending.clone(),
        )?;
        plan.change = MemoryChange::Plug {
            dimm,
            pending,
            epoch,
        };
        return Ok(plan);
    }
    // Decrease.
    if new_mb < vm.min_guaranteed_memory_mb {
        return Err(invalid(format!(
            "new memory size {new_mb} MiB is below its guaranteed memory \
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
    let found = search_unplug(&sizes, delta, max_reduction).map_err(|e| invalid(e.to_string()))?;
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
    let devices = dimms.iter().map(|d| d.device.id.clone()).collect();
    let epoch = cluster.record_memory_unplug(&mut ledger, updated, &host_id, devices)?;
    plan.change = MemoryChange::Unplug {
        dimms,
        total_mb: delta,
        epoch,
    };
    Ok(plan)
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
