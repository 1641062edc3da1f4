//! Migrating a running VM: which migration modes each trigger may move, the destination
//! chosen by the policy's own units (source host excluded), and the fallback for
//! high-performance and pinned VMs when no host fits their pinning exactly.
//!
//! | VM's migration mode | automatic (balancing, host trouble) | user-forced | host maintenance |
//! |---|---|---|---|
//! | migratable | moves | moves | moves |
//! | manual-only | refused | moves | moves |
//! | pinned-to-host | refused | refused | refused |
//!
//! A VM without a configured mode takes the default of [`Vm::migration_mode`]: manual-only
//! for high-performance and pinned VMs, migratable otherwise. Host maintenance moving a
//! high-performance or pinned VM adds a warning (its performance may drop on the
//! destination).

use super::decision::{Decision, Outcome};
use super::policy::Policy;
use super::request::ScheduleRequest;
use crate::error::{Error, Result};
use crate::state::Cluster;
use policy_sdk::model::topology::{self, CpuPinning, NumaFit};
use policy_sdk::{Host, MigrationMode, Snapshot, Vm};
use serde::{Deserialize, Serialize};

/// Why a migration is asked for; decides which migration modes may move the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationTrigger {
    /// The engine on its own: balancing, a host in trouble, high availability.
    Automatic,
    /// A user asked for this VM to move.
    UserForced,
    /// The VM's host is being put into maintenance.
    HostMaintenance,
}

impl MigrationTrigger {
    /// Whether a VM in `mode` may be moved for this trigger.
    pub fn allows(self, mode: MigrationMode) -> bool {
        match mode {
            MigrationMode::Migratable => true,
            MigrationMode::ManualOnly => self != MigrationTrigger::Automatic,
            MigrationMode::PinnedToHost => false,
        }
    }

    /// Lower-case name, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationTrigger::Automatic => "automatic",
            MigrationTrigger::UserForced => "user-forced",
            MigrationTrigger::HostMaintenance => "host-maintenance",
        }
    }
}

/// The result of [`Policy::migrate`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Migration {
    /// The VM's migration mode does not allow this trigger; nothing was scheduled.
    NotAllowed {
        /// VM id.
        vm: String,
        /// The mode in force.
        mode: MigrationMode,
        /// The trigger.
        trigger: MigrationTrigger,
        /// Why, in words.
        reason: String,
    },
    /// A destination was looked for: `decision.chosen` is the destination (pending
    /// resources reserved there, the VM still running on `source`), or `None` when no
    /// host is available.
    Scheduled {
        /// The host the VM runs on.
        source: String,
        /// The mode in force.
        mode: MigrationMode,
        /// The trigger.
        trigger: MigrationTrigger,
        /// The decision (every host with its outcome).
        decision: Box<Decision>,
        /// Set when no suitable host fitted a high-performance or pinned VM's pinning
        /// exactly and the least loaded, least pinned suitable host was taken: why that
        /// host.
        fallback: Option<String>,
        /// Things the operator should know (e.g. a high-performance VM moved for
        /// maintenance).
        warnings: Vec<String>,
    },
}

impl std::fmt::Display for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Migration::NotAllowed {
                vm,
                mode,
                trigger,
                reason,
            } => writeln!(
                f,
                "VM {vm} stays: {} migration of a {} VM is not allowed: {reason}",
                trigger.as_str(),
                mode_str(*mode)
            ),
            Migration::Scheduled {
                source,
                mode,
                trigger,
                decision,
                fallback,
                warnings,
            } => {
                match &decision.chosen {
                    Some(to) => writeln!(
                        f,
                        "VM {} ({}, {} migration): {source} -> {to}",
                        decision.vm,
                        mode_str(*mode),
                        trigger.as_str()
                    )?,
                    None => writeln!(
                        f,
                        "VM {} ({}, {} migration): no destination, stays on {source}",
                        decision.vm,
                        mode_str(*mode),
                        trigger.as_str()
                    )?,
                }
                if let Some(why) = fallback {
                    writeln!(f, "  fallback: {why}")?;
                }
                for w in warnings {
                    writeln!(f, "  warning: {w}")?;
                }
                write!(f, "{decision}")
            }
        }
    }
}

fn mode_str(mode: MigrationMode) -> &'static str {
    match mode {
        MigrationMode::Migratable => "migratable",
        MigrationMode::ManualOnly => "manual-only",
        MigrationMode::PinnedToHost => "pinned-to-host",
    }
}

impl Migration {
    /// The destination, when one was chosen.
    pub fn destination(&self) -> Option<&str> {
        match self {
            Migration::Scheduled { decision, .. } => decision.chosen.as_deref(),
            Migration::NotAllowed { .. } => None,
        }
    }
}

/// Whether `host` fits a high-performance or pinned VM exactly: its topology holds the
/// VM's sockets, cores per socket and threads per core, and the VM's pinned vNUMA nodes
/// have an assignment that also respects its CPU pinning (what the `high-performance-cpu`
/// and `cpu-and-numa-pinning` weights score as good).
pub fn fits_pinning_exactly(vm: &Vm, host: &Host) -> bool {
    let pinning = CpuPinning::of_vm(vm).ok().flatten();
    topology::topology_holds(&vm.cpu, &host.cpu)
        && matches!(
            topology::find_numa_assignment(vm, host, pinning.as_ref()),
            NumaFit::NotPinned | NumaFit::Fits(_)
        )
}

/// Load and pinning of a host, for the fallback choice: (CPU load with pending load,
/// dedicated and pending pinned pCPUs).
fn load_and_pins(host: &Host) -> (u32, usize) {
    (
        host.cpu_usage_percent
            .saturating_add(host.pending.cpu_load_percent),
        topology::taken_cpus(host).len(),
    )
}

/// Among the hosts that passed every filter, the least loaded (CPU usage plus pending
/// load), then least pinned (dedicated and pending pinned pCPUs), then most free memory,
/// then by id.
fn least_loaded_least_pinned<'a>(snapshot: &'a Snapshot, decision: &Decision) -> Option<&'a Host> {
    decision
        .hosts
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Chosen | Outcome::Available))
        .filter_map(|o| snapshot.hosts.iter().find(|h| h.id == o.host))
        .min_by(|a, b| {
            let (la, pa) = load_and_pins(a);
            let (lb, pb) = load_and_pins(b);
            la.cmp(&lb)
                .then(pa.cmp(&pb))
                .then(b.memory.free_mb.cmp(&a.memory.free_mb))
                .then(a.id.cmp(&b.id))
        })
}

/// Chooses a destination for the running VM `vm_id` and reserves its pending resources
/// there (see [`Policy::schedule`]), if its migration mode allows `trigger` (see the
/// module documentation). The source host is excluded; a passthrough VM without
/// recorded CPU flags takes those of its source host (the destination must have them);
/// a VM with dedicated hosts only goes to one of them.
///
/// For a high-performance or pinned VM, when no suitable host fits its pinning exactly
/// (see [`fits_pinning_exactly`]), the least loaded, least pinned suitable host is
/// chosen instead of the weights' pick, and `fallback` says why.
///
/// Errors: unknown VM, VM not running, an invalid VM (see [`Policy::schedule`]), a
/// fail-closed unit fault.
pub(super) fn migrate(
    policy: &Policy,
    cluster: &Cluster,
    vm_id: &str,
    trigger: MigrationTrigger,
) -> Result<Migration> {
    let snapshot = cluster.snapshot();
    let Some(vm) = snapshot.vms.iter().find(|v| v.id == vm_id) else {
        return Err(Error::not_found_because(
            "VM",
            vm_id,
            format!("VM {vm_id:?}: not in the cluster"),
        ));
    };
    let Some(source) = vm.current_host.clone().filter(|_| vm.is_running()) else {
        return Err(Error::conflict(format!(
            "VM {vm_id:?}: not running (status {:?}), so it cannot migrate",
            vm.status
        )));
    };
    let mode = vm.migration_mode();
    if !trigger.allows(mode) {
        let reason = match mode {
            MigrationMode::PinnedToHost => {
                "the VM is pinned to its host and never migrates".to_string()
            }
            _ => "the VM allows manual migration only; automatic migration (balancing, \
                  host trouble) does not move it"
                .to_string(),
        };
        return Ok(Migration::NotAllowed {
            vm: vm_id.to_string(),
            mode,
            trigger,
            reason,
        });
    }
    let mut moving = vm.clone();
    if moving.cpu_passthrough && moving.cpu_flags.is_empty() {
        if let Some(host) = snapshot.hosts.iter().find(|h| h.id == source) {
            moving.cpu_flags = host.cpu_flags.to_vec();
        }
    }
    let hp = topology::is_hp_or_pinned(&moving);
    let mut warnings = Vec::new();
    if hp && trigger == MigrationTrigger::HostMaintenance {
        warnings.push(format!(
            "VM {vm_id} is a high-performance or pinned VM: it is migrated for host \
             maintenance and its performance may drop on the destination"
        ));
    }
    if mode == MigrationMode::ManualOnly && trigger == MigrationTrigger::HostMaintenance {
        // The reference warns as well: the operator chose to move this VM by hand only.
        warnings.push(format!(
            "VM {vm_id} allows manual migration only: it is migrated because its host goes \
             to maintenance"
        ));
    }
    drop(snapshot);
    let request = ScheduleRequest::migration(moving)?;

    // A high-performance or pinned VM with no exact fit among the suitable hosts goes
    // to the least loaded, least pinned one.
    let mut fallback = None;
    let mut request = request;
    if hp {
        let view = cluster.view();
        let what_if = policy.evaluate(&view, &request)?;
        let suitable: Vec<&str> = what_if
            .hosts
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Chosen | Outcome::Available))
            .map(|o| o.host.as_str())
            .collect();
        let snapshot = view.snapshot();
        let exact = snapshot
            .hosts
            .iter()
            .filter(|h| suitable.contains(&h.id.as_str()))
            .any(|h| fits_pinning_exactly(&request.vm, h));
        if !suitable.is_empty() && !exact {
            if let Some(host) = least_loaded_least_pinned(snapshot, &what_if) {
                let (load, pins) = load_and_pins(host);
                fallback = Some(format!(
                    "no suitable host fits the VM's CPU topology and pinning exactly; chose \
                     {}, the least loaded ({load}% CPU with pending) and least pinned ({pins} \
                     pinned pCPUs) of {} suitable host(s)",
                    host.name,
                    suitable.len()
                ));
                request = request.whitelist([host.id.clone()]);
            }
        }
    }
    let mut decision = policy.schedule(cluster, &request)?;
    if fallback.is_some() && decision.chosen.is_none() {
        // The fallback host stopped fitting in the meantime: let the weights choose.
        fallback = None;
        request.whitelist = None;
        decision = policy.schedule(cluster, &request)?;
    }
    Ok(Migration::Scheduled {
        source,
        mode,
        trigger,
        decision: Box::new(decision),
        fallback,
        warnings,
    })
}

/// Host maintenance: a migration ([`MigrationTrigger::HostMaintenance`]) for every VM
/// running on `host_id`, in snapshot order. Migratable and manual-only VMs get a
/// destination (high-performance and pinned ones with a warning); pinned-to-host VMs are
/// reported as not allowed. Each VM's destination sees the pending resources of the
/// ones before it.
pub(super) fn evacuate_host(
    policy: &Policy,
    cluster: &Cluster,
    host_id: &str,
) -> Result<Vec<Migration>> {
    cluster.require_host(host_id)?;
    let running: Vec<String> = cluster
        .snapshot()
        .vms
        .iter()
        .filter(|v| v.is_running() && v.current_host.as_deref() == Some(host_id))
        .map(|v| v.id.clone())
        .collect();
    running
        .iter()
        .map(|vm| migrate(policy, cluster, vm, MigrationTrigger::HostMaintenance))
        .collect()
}
