//! Running a policy's balance unit and enforcing the safety rules no unit can override.

use crate::cluster::Cluster;
use crate::error::{Error, Result, UnitFault};
use crate::policy::{FailureMode, Policy};
use crate::scheduler::{unit_call, UnitFailure};
use policy_sdk::{BalanceAction, HostIndex, MigrationMode, PowerAction, Snapshot};
use serde::Serialize;

/// An action from the balance unit, with ids instead of indices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PlannedAction {
    /// Migrate a VM to one of the candidate hosts.
    Migrate {
        /// VM id.
        vm: String,
        /// Acceptable destination host ids.
        candidate_hosts: Vec<String>,
        /// Why.
        reason: String,
    },
    /// Change a host's power state.
    Power {
        /// Host id.
        host: String,
        /// What to do.
        action: PowerAction,
        /// Why.
        reason: String,
    },
}

/// An action the host refused, and why.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedAction {
    /// The action.
    pub action: PlannedAction,
    /// The safety rule that refused it.
    pub why: String,
}

/// The result of one balance cycle.
#[derive(Debug, Clone, Serialize)]
pub struct BalancePlan {
    /// Policy name.
    pub policy: String,
    /// Snapshot epoch.
    pub epoch: u64,
    /// Actions to carry out.
    pub actions: Vec<PlannedAction>,
    /// Actions refused by the safety rules.
    pub refused: Vec<RefusedAction>,
    /// The balance unit's failure, when it failed open.
    pub unit_failure: Option<UnitFailure>,
}

impl Policy {
    /// Runs the balance unit over the cluster's current snapshot. Safety rules applied by
    /// the host: VMs whose migration mode is not `migratable` are never migrated; the SPM
    /// host and hosts excluded from automatic power management are never moved to
    /// maintenance or powered down; at most `max_balance_actions` actions per cycle.
    pub fn balance(&self, cluster: &Cluster) -> Result<BalancePlan> {
        self.live().balance_resolved(cluster)
    }

    /// [`Policy::balance`] with the units as resolved now.
    fn balance_resolved(&self, cluster: &Cluster) -> Result<BalancePlan> {
        let view = cluster.view();
        let snapshot = view.snapshot();
        let mut plan = BalancePlan {
            policy: self.name.clone(),
            epoch: view.epoch(),
            actions: Vec::new(),
            refused: Vec::new(),
            unit_failure: None,
        };
        let Some(unit) = &self.balance else {
            return Ok(plan);
        };
        let candidates: Vec<HostIndex> = (0..snapshot.hosts.len() as HostIndex).collect();
        let result = unit
            .handle
            .module
            .balance(
                &view,
                unit_call(unit, &view, None, &candidates),
                unit.limits,
            )
            .and_then(|actions| {
                actions
                    .into_iter()
                    .map(|a| resolve(snapshot, a))
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
        for (action, refusal) in actions {
            if let Some(why) = refusal {
                plan.refused.push(RefusedAction { action, why });
            } else if plan.actions.len() >= self.max_balance_actions as usize {
                plan.refused.push(RefusedAction {
                    action,
                    why: format!(
                        "over the limit of {} action(s) per cycle",
                        self.max_balance_actions
                    ),
                });
            } else {
                plan.actions.push(action);
            }
        }
        Ok(plan)
    }
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
            let refusal = match the_vm.migration {
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
                    candidate_hosts,
                    reason,
                },
                refusal,
            )
        }
        BalanceAction::Power {
            host,
            action,
            reason,
        } => {
            let id = host_id(host)?;
            let h = &snapshot.hosts[host as usize];
            let shutting = matches!(action, PowerAction::PowerDown | PowerAction::ToMaintenance);
            let refusal = if shutting && h.spm {
                Some("the SPM host is never powered down or moved to maintenance".into())
            } else if h.power.excluded_from_automatic {
                Some("host is excluded from automatic power management".into())
            } else {
                None
            };
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
