//! Shadow units: filters and weights a policy lists with `shadow = true`. They run beside
//! the live policy on every decision and never change it: a shadow filter is asked about
//! the hosts the live filters kept, a shadow weight is added to (or, for a unit the policy
//! already weighs with, put in place of) the live weights. Where the shadow unit would
//! have changed the choice, the decision lists it ([`Decision::shadow`]) and the policy
//! counts it per unit with the last few examples ([`Policy::shadow_status`]). A shadow
//! unit that fails (trap, deadline...) is counted as a fault and changes nothing.
//!
//! [`Decision::shadow`]: super::Decision::shadow
//! [`Policy::shadow_status`]: super::Policy::shadow_status

use super::decision::Decision;
use super::policy::PolicyUnit;
use super::scheduler::unit_call;
use super::selector::{factored, pick_best, select};
use crate::state::ClusterView;
use policy_sdk::{HostIndex, Penalty, UnitKind, Vm};
use serde::Serialize;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Examples kept per shadow unit (the most recent ones).
pub const SHADOW_EXAMPLES: usize = 5;

/// What a shadow unit would have done to one decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowDifference {
    /// The shadow unit.
    pub unit: Arc<str>,
    /// Filter or weight.
    pub kind: UnitKind,
    /// The VM of the decision.
    pub vm: String,
    /// The host the live policy chose.
    pub chosen: Option<String>,
    /// The host the policy would have chosen with the shadow unit (`None`: no host, or the
    /// unit failed).
    pub would_choose: Option<String>,
    /// What the unit did.
    pub effect: ShadowEffect,
}

/// How a shadow unit differed from the live decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ShadowEffect {
    /// The shadow filter rejects the chosen host.
    RejectsChosen {
        /// Reject code.
        code: String,
        /// Detail.
        detail: String,
    },
    /// With the shadow weight another host has the best total.
    PrefersOther,
    /// The shadow unit failed; the live decision was not affected.
    Fault {
        /// The fault.
        error: String,
    },
}

impl ShadowDifference {
    /// Whether the unit failed (a fault, not a changed decision).
    pub fn is_fault(&self) -> bool {
        matches!(self.effect, ShadowEffect::Fault { .. })
    }
}

impl fmt::Display for ShadowDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chosen = self.chosen.as_deref().unwrap_or("no host");
        let would = self.would_choose.as_deref().unwrap_or("no host");
        write!(f, "shadow {} {}: VM {}: ", self.kind, self.unit, self.vm)?;
        match &self.effect {
            ShadowEffect::RejectsChosen { code, detail } => write!(
                f,
                "would reject the chosen {chosen} ({code}: {detail}) and choose {would}"
            ),
            ShadowEffect::PrefersOther => write!(f, "would choose {would} instead of {chosen}"),
            ShadowEffect::Fault { error } => {
                write!(f, "failed ({error}); the decision ({chosen}) is unchanged")
            }
        }
    }
}

/// One shadow unit's record over the decisions of a policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowUnitStatus {
    /// The unit.
    pub unit: Arc<str>,
    /// Filter or weight.
    pub kind: UnitKind,
    /// For a weight: the factor it runs with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor: Option<i64>,
    /// Decisions made while the unit ran in shadow.
    pub decisions: u64,
    /// Decisions it would have changed.
    pub changed: u64,
    /// Decisions in which it failed.
    pub faults: u64,
    /// The last fault.
    pub last_fault: Option<String>,
    /// The most recent changed decisions, oldest first (at most [`SHADOW_EXAMPLES`]).
    pub examples: Vec<ShadowDifference>,
}

/// The shadow units of a policy and what they would have changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowStatus {
    /// Policy name.
    pub policy: String,
    /// One entry per shadow unit, filters first, in policy order.
    pub units: Vec<ShadowUnitStatus>,
}

impl fmt::Display for ShadowStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "shadow units of policy {}:", self.policy)?;
        for u in &self.units {
            let factor = u.factor.map(|x| format!(" x{x}")).unwrap_or_default();
            writeln!(
                f,
                "  {} {}{factor}: would have changed {} of {} decisions, {} faults",
                u.kind, u.unit, u.changed, u.decisions, u.faults
            )?;
            if let Some(fault) = &u.last_fault {
                writeln!(f, "    last fault: {fault}")?;
            }
            for example in &u.examples {
                writeln!(f, "    e.g. {example}")?;
            }
        }
        Ok(())
    }
}

/// The counts of a policy's shadow units, shared by every copy and resolution of the
/// policy (a copy made by [`Policy::with_selector`](super::Policy::with_selector) or
/// [`Policy::with_factor`](super::Policy::with_factor) counts on its own).
#[derive(Debug)]
pub(super) struct ShadowStats {
    /// Whether the policy has shadow units at all (no lock taken when it has none).
    any: bool,
    units: Mutex<Vec<ShadowUnitStatus>>,
}

impl ShadowStats {
    /// Zero counts for these shadow units.
    pub(super) fn new<'a>(units: impl IntoIterator<Item = &'a PolicyUnit>) -> Self {
        let units = units
            .into_iter()
            .map(|u| ShadowUnitStatus {
                unit: u.label.clone(),
                kind: u.kind,
                factor: (u.kind == UnitKind::Weight).then_some(u.factor),
                decisions: 0,
                changed: 0,
                faults: 0,
                last_fault: None,
                examples: Vec::with_capacity(SHADOW_EXAMPLES),
            })
            .collect::<Vec<_>>();
        ShadowStats {
            any: !units.is_empty(),
            units: Mutex::new(units),
        }
    }

    /// Counts one decision the policy made.
    pub(super) fn record(&self, decision: &Decision) {
        if !self.any {
            return;
        }
        let mut units = self.units.lock().unwrap();
        for counts in units.iter_mut() {
            counts.decisions += 1;
            for difference in decision
                .shadow
                .iter()
                .filter(|d| d.kind == counts.kind && d.unit == counts.unit)
            {
                if let ShadowEffect::Fault { error } = &difference.effect {
                    counts.faults += 1;
                    counts.last_fault = Some(error.clone());
                } else {
                    counts.changed += 1;
                    if counts.examples.len() == SHADOW_EXAMPLES {
                        counts.examples.remove(0);
                    }
                    counts.examples.push(difference.clone());
                }
            }
        }
    }

    /// The counts as they are now.
    pub(super) fn status(&self, policy: &str) -> ShadowStatus {
        ShadowStatus {
            policy: policy.to_string(),
            units: self.units.lock().unwrap().clone(),
        }
    }
}

/// The live choice a shadow unit is compared with.
pub(super) struct LiveChoice<'a> {
    pub(super) view: &'a ClusterView,
    pub(super) vm: &'a Vm,
    /// Hosts that passed the live filters.
    pub(super) survivors: &'a [HostIndex],
    /// The live weights' penalty columns over `survivors`.
    pub(super) columns: &'a [(&'a PolicyUnit, Vec<Penalty>)],
    /// The live choice.
    pub(super) best: Option<HostIndex>,
}

/// Runs every shadow unit of the policy against the live choice; the differences (changed
/// choices and faults) in policy order, filters first.
pub(super) fn differences(
    selector: super::SelectorKind,
    shadow_filters: &[PolicyUnit],
    shadow_weights: &[PolicyUnit],
    live: &LiveChoice<'_>,
) -> Vec<ShadowDifference> {
    let mut out = Vec::new();
    let Some(best) = live.best else {
        // Nothing was chosen: a shadow filter cannot reject it, and with no candidate or
        // one a weight cannot change it.
        return out;
    };
    let snapshot = live.view.snapshot();
    let id = |i: HostIndex| snapshot.hosts[i as usize].id.clone();
    let difference =
        |unit: &PolicyUnit, would_choose: Option<HostIndex>, effect| ShadowDifference {
            unit: unit.label.clone(),
            kind: unit.kind,
            vm: live.vm.id.clone(),
            chosen: Some(id(best)),
            would_choose: would_choose.map(id),
            effect,
        };
    let fault = |unit: &PolicyUnit, error: String| {
        tracing::debug!(unit = unit.name(), "shadow unit failed: {error}");
        difference(unit, None, ShadowEffect::Fault { error })
    };
    for filter in shadow_filters {
        let call = unit_call(filter, live.view, Some(live.vm), live.survivors, true);
        let verdicts = match filter.handle.module.filter(live.view, call, filter.limits) {
            Ok(verdicts) => verdicts,
            Err(e) => {
                out.push(fault(filter, e.to_string()));
                continue;
            }
        };
        let Some(rejection) = verdicts
            .rejected
            .iter()
            .find(|r| live.survivors[r.position as usize] == best)
        else {
            continue;
        };
        // The live weights over the hosts the shadow filter keeps (one pass over its
        // rejections: a filter may reject most of 10,000 hosts).
        let mut rejected = vec![false; live.survivors.len()];
        for r in &verdicts.rejected {
            rejected[r.position as usize] = true;
        }
        let kept: Vec<usize> = (0..live.survivors.len())
            .filter(|&pos| !rejected[pos])
            .collect();
        let hosts: Vec<HostIndex> = kept.iter().map(|&pos| live.survivors[pos]).collect();
        let columns: Vec<(&PolicyUnit, Vec<Penalty>)> = live
            .columns
            .iter()
            .map(|(unit, penalties)| (*unit, kept.iter().map(|&pos| penalties[pos]).collect()))
            .collect();
        let selection = select(selector, factored(&columns), hosts.len());
        let instead = pick_best(selector, &selection.totals, &hosts, snapshot);
        out.push(difference(
            filter,
            instead,
            ShadowEffect::RejectsChosen {
                code: verdicts.code_of(rejection).to_string(),
                detail: rejection.detail.clone(),
            },
        ));
    }
    if live.survivors.len() < 2 {
        return out;
    }
    for weight in shadow_weights {
        let call = unit_call(weight, live.view, Some(live.vm), live.survivors, true);
        let penalties = match weight.handle.module.weigh(live.view, call, weight.limits) {
            Ok(penalties) => penalties,
            Err(e) => {
                out.push(fault(weight, e.to_string()));
                continue;
            }
        };
        // In place of the live column of the same unit (a what-if of its factor or
        // parameters), else added to the live columns; the live columns are borrowed.
        let replaces = live
            .columns
            .iter()
            .any(|(unit, _)| unit.label == weight.label);
        let columns = factored(live.columns)
            .zip(live.columns)
            .map(|(column, (unit, _))| {
                if unit.label == weight.label {
                    (weight.factor, penalties.as_slice())
                } else {
                    column
                }
            })
            .chain((!replaces).then_some((weight.factor, penalties.as_slice())));
        let selection = select(selector, columns, live.survivors.len());
        let instead = pick_best(selector, &selection.totals, live.survivors, snapshot);
        if instead != Some(best) {
            out.push(difference(weight, instead, ShadowEffect::PrefersOther));
        }
    }
    out
}
