//! Running a policy's balance unit and enforcing the safety rules no unit can override.

use super::decision::UnitFailure;
use super::policy::{FailureMode, Policy};
use super::request::ScheduleRequest;
use super::scheduler::unit_call;
use crate::error::{Error, Result, UnitFault};
use crate::state::{Cluster, ClusterView};
use policy_sdk::{
    BalanceAction, Host, HostIndex, HostStatus, MigrationMode, PowerAction, Snapshot, VmStatus,
};
use serde::Serialize;

/// An action from the balance unit, with ids instead of indices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PlannedAction {
    /// Migrate a VM. The unit proposes `candidate_hosts`; the engine picks the
    /// `destination` among them with the policy's filters and weights.
    Migrate {
        /// VM id.
        vm: String,
        /// The host it runs on.
        source: Option<String>,
        /// Destinations the unit proposed (host ids).
        candidate_hosts: Vec<String>,
        /// The destination the policy's filters and weights chose; `None` when refused
        /// before or by that decision.
        destination: Option<String>,
        /// Why.
        reason: String,
    },
    /// Change a host's power state. Returned to the caller to carry out; the engine never
    /// executes it.
    Power {
        /// Host id.
        host: String,
        /// What to do.
        action: PowerAction,
        /// Why.
        reason: String,
    },
}

impl PlannedAction {
    /// Whether this is a power action.
    pub fn is_power(&self) -> bool {
        matches!(self, PlannedAction::Power { .. })
    }
}

/// An action the host refused (a safety veto), and why.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedAction {
    /// The action.
    pub action: PlannedAction,
    /// The safety rule that refused it.
    pub why: String,
}

/// The result of one balance cycle. Nothing in it has been carried out: migrations and
/// power actions are the caller's to execute.
#[derive(Debug, Clone, Serialize)]
pub struct BalancePlan {
    /// Policy name.
    pub policy: String,
    /// Snapshot epoch.
    pub epoch: u64,
    /// Actions to carry out, in the unit's order.
    pub actions: Vec<PlannedAction>,
    /// Actions refused by the safety rules, each with its reason.
    pub refused: Vec<RefusedAction>,
    /// The balance unit's failure, when it failed open.
    pub unit_failure: Option<UnitFailure>,
    /// Why the unit proposed nothing (or nothing more), in its words, e.g. "no migration:
    /// no host is over-utilized (CPU >= 80% for 2 min)": a cycle that does nothing says
    /// which rule decided so.
    pub notes: Vec<String>,
}

impl BalancePlan {
    /// The power actions of the plan.
    pub fn power_actions(&self) -> impl Iterator<Item = &PlannedAction> {
        self.actions.iter().filter(|a| a.is_power())
    }

    /// The migrations of the plan.
    pub fn migrations(&self) -> impl Iterator<Item = &PlannedAction> {
        self.actions.iter().filter(|a| !a.is_power())
    }
}

/// Power actions per cycle, whatever the policy's action cap.
pub const MAX_POWER_ACTIONS_PER_CYCLE: usize = 1;

/// Migrations per cycle (the reference's balance loop stops after the first migration).
pub const MAX_MIGRATIONS_PER_CYCLE: usize = 1;

/// One balance cycle (see [`Policy::balance`]) with the units as resolved now.
pub(super) fn plan(policy: &Policy, cluster: &Cluster) -> Result<BalancePlan> {
    let view = cluster.view();
    let snapshot = view.snapshot();
    let mut plan = BalancePlan {
        policy: policy.name.clone(),
        epoch: view.epoch(),
        actions: Vec::new(),
        refused: Vec::new(),
        unit_failure: None,
        notes: Vec::new(),
    };
    let Some(unit) = &policy.balance else {
        plan.notes
            .push(format!("policy {:?} has no balance unit", policy.name));
        return Ok(plan);
    };
    let candidates: Vec<HostIndex> = (0..snapshot.hosts.len() as HostIndex).collect();
    let result = unit
        .handle
        .module
        .balance(
            &view,
            unit_call(unit, &view, None, &candidates, true),
            unit.limits,
        )
        .and_then(|actions| {
            actions
                .into_iter()
                .filter_map(|action| match action {
                    BalanceAction::Note { reason } => {
                        plan.notes.push(reason);
                        None
                    }
                    action => Some(resolve(snapshot, action)),
                })
                .collect::<Result<Vec<_>, _>>()
        });
    let actions = match result {
        Ok(actions) => actions,
        Err(fault) => {
            return match unit.failure {
                FailureMode::Closed => Err(Error::Unit {
                    unit: unit.name().to_string(),
                    module: unit.module_file().to_string(),
                    fault,
                }),
                FailureMode::Open => {
                    plan.unit_failure = Some(UnitFailure {
                        unit: unit.name().to_string(),
                        module: unit.module_file().to_string(),
                        error: fault.to_string(),
                        applied: FailureMode::Open,
                    });
                    Ok(plan)
                }
            };
        }
    };
    for (mut action, refusal) in actions {
        let power = action.is_power();
        let taken = plan
            .actions
            .iter()
            .filter(|a| a.is_power() == power)
            .count();
        let refusal = if let Some(why) = refusal {
            Some(why)
        } else if plan.actions.len() >= policy.max_balance_actions as usize {
            Some(format!(
                "over the limit of {} action(s) per cycle",
                policy.max_balance_actions
            ))
        } else if power && taken >= MAX_POWER_ACTIONS_PER_CYCLE {
            Some(format!(
                "over the limit of {MAX_POWER_ACTIONS_PER_CYCLE} power action per cycle"
            ))
        } else if !power && taken >= MAX_MIGRATIONS_PER_CYCLE {
            Some(format!(
                "over the limit of {MAX_MIGRATIONS_PER_CYCLE} migration per cycle"
            ))
        } else {
            confirm_destination(policy, &view, &mut action)?
        };
        match refusal {
            Some(why) => plan.refused.push(RefusedAction { action, why }),
            None => plan.actions.push(action),
        }
    }
    Ok(plan)
}

/// Picks a proposed migration's destination with the policy's filters and weights;
/// returns why it is refused when no candidate passes.
fn confirm_destination(
    policy: &Policy,
    view: &ClusterView,
    action: &mut PlannedAction,
) -> Result<Option<String>> {
    let PlannedAction::Migrate {
        vm,
        candidate_hosts,
        destination,
        ..
    } = action
    else {
        return Ok(None);
    };
    let snapshot = view.snapshot();
    let Some(the_vm) = snapshot.vms.iter().find(|v| v.id == *vm) else {
        return Ok(Some(format!("VM {vm:?} is not in the cluster")));
    };
    let request = ScheduleRequest::migration(the_vm.clone())?.whitelist(candidate_hosts.clone());
    let decision = policy.evaluate(view, &request)?;
    Ok(match decision.chosen {
        Some(host) => {
            *destination = Some(host);
            None
        }
        None => Some(format!(
            "no proposed destination passes the policy's filters: {}",
            decision.summary
        )),
    })
}

/// Maps indices to ids (rejecting unknown ones as bad output) and applies the safety rules.
fn resolve(
    snapshot: &Snapshot,
    action: BalanceAction,
) -> Result<(PlannedAction, Option<String>), UnitFault> {
    let host_id = |index: HostIndex| {
        snapshot.host(index).map(|h| h.id.clone()).ok_or_else(|| {
            UnitFault::BadOutput(format!(
                "unknown host index {index} (the cluster has {} hosts)",
                snapshot.hosts.len()
            ))
        })
    };
    Ok(match action {
        BalanceAction::Migrate {
            vm,
            candidate_hosts,
            reason,
        } => {
            let the_vm = snapshot.vms.get(vm as usize).ok_or_else(|| {
                UnitFault::BadOutput(format!(
                    "unknown VM index {vm} (the cluster has {} VMs)",
                    snapshot.vms.len()
                ))
            })?;
            let candidate_hosts = candidate_hosts
                .into_iter()
                .map(host_id)
                .collect::<Result<Vec<_>, _>>()?;
            let refusal = match the_vm.migration_mode() {
                MigrationMode::Migratable if the_vm.status != VmStatus::Up => Some(format!(
                    "VM is {:?}, not up: only running VMs are balanced",
                    the_vm.status
                )),
                MigrationMode::Migratable if candidate_hosts.is_empty() => {
                    Some("no candidate destination proposed".into())
                }
                MigrationMode::Migratable => None,
                MigrationMode::ManualOnly => {
                    Some("VM migration mode manual_only forbids automatic migration".into())
                }
                MigrationMode::PinnedToHost => {
                    Some("VM migration mode pinned_to_host forbids migration".into())
                }
            };
            (
                PlannedAction::Migrate {
                    vm: the_vm.id.clone(),
                    source: the_vm.current_host.clone(),
                    candidate_hosts,
                    destination: None,
                    reason,
                },
                refusal,
            )
        }
        BalanceAction::Note { reason } => {
            return Err(UnitFault::BadOutput(format!(
                "a note is not an action: {reason:?}"
            )))
        }
        BalanceAction::Power {
            host,
            action,
            reason,
        } => {
            let id = host_id(host)?;
            let refusal = power_veto(snapshot, &snapshot.hosts[host as usize], action);
            (
                PlannedAction::Power {
                    host: id,
                    action,
                    reason,
                },
                refusal,
            )
        }
    })
}

/// Why the engine refuses a power action on `host`, if it does.
fn power_veto(snapshot: &Snapshot, host: &Host, action: PowerAction) -> Option<String> {
    let shutting = matches!(action, PowerAction::PowerDown | PowerAction::ToMaintenance);
    let running = snapshot
        .vms_on(&host.id)
        .filter(|v| v.is_running())
        .count()
        .max(host.running_vms as usize);
    let needs_fencing = !matches!(action, PowerAction::Activate);
    let status_fits = match action {
        PowerAction::ToMaintenance => host.status == HostStatus::Up,
        PowerAction::PowerDown | PowerAction::Activate => host.status == HostStatus::Maintenance,
        PowerAction::PowerUp => {
            matches!(host.status, HostStatus::Down | HostStatus::PoweringDown)
        }
    };
    if host.power.excluded_from_automatic {
        Some("host is excluded from automatic power management".into())
    } else if !host.power.controlled_by_policy {
        Some(
            "host is not under power-policy control (controlled_by_policy is cleared by a \
             user power action and set again when the host comes up)"
                .into(),
        )
    } else if shutting && host.spm {
        Some("the SPM host is never powered down or moved to maintenance".into())
    } else if shutting && running > 0 {
        Some(format!("host has {running} running VM(s)"))
    } else if shutting && !host.pending.vms.is_empty() {
        Some(format!(
            "host has pending VM(s): {}",
            host.pending.vms.join(", ")
        ))
    } else if needs_fencing && !host.power.enabled {
        Some("host power management is not OK (no working power agent)".into())
    } else if !status_fits {
        Some(format!(
            "host is {}; {} needs it {}",
            host.status.as_str(),
            PowerAction::as_str(action),
            match action {
                PowerAction::ToMaintenance => "up",
                PowerAction::PowerDown | PowerAction::Activate => "in maintenance",
                PowerAction::PowerUp => "down (or powering down)",
            }
        ))
    } else {
        None
    }
}
