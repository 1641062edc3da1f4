//! A decision and its parts: the chosen host, what happened to every host (or a summary),
//! each weight's contribution, units that failed, the reservation; and how it prints.

use super::policy::FailureMode;
use crate::state::Reservation;
use policy_sdk::{HostStatus, Penalty};
use serde::Serialize;
use std::fmt;
use std::sync::Arc;

/// The outcome of one scheduling request: the chosen host (if any) and why.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// VM id.
    pub vm: String,
    /// Policy name.
    pub policy: String,
    /// Snapshot epoch the decision was made on.
    pub epoch: u64,
    /// Chosen host id.
    pub chosen: Option<String>,
    /// Chosen host name.
    pub chosen_name: Option<String>,
    /// Hosts in the cluster.
    pub total_hosts: usize,
    /// Hosts that passed every filter.
    pub available: usize,
    /// One line, e.g. `0/40 hosts available: 25 memory: not enough memory, ...`.
    pub summary: String,
    /// Every host of the cluster, in snapshot order, with what happened to it.
    pub hosts: Vec<HostOutcome>,
    /// Units that failed and were skipped (fail-open).
    pub unit_failures: Vec<UnitFailure>,
    /// The pending resources recorded on the chosen host ([`Policy::schedule`]); `None`
    /// for [`Policy::evaluate`] and when no host was chosen.
    pub reservation: Option<Reservation>,
    /// Things the operator should know, e.g. a unit that runs in its last good version
    /// because its module disappeared (see [`Policy::stale_units`]).
    pub warnings: Vec<String>,
}

/// What happened to one host.
#[derive(Debug, Clone, Serialize)]
pub struct HostOutcome {
    /// Host id.
    pub host: String,
    /// Host name.
    pub name: String,
    /// Verdict.
    pub outcome: Outcome,
    /// Selector total (rank: higher is better; sums: lower is better).
    pub score: Option<f64>,
    /// Each weight's contribution.
    pub weights: Vec<WeightScore>,
}

/// A host's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Outcome {
    /// Chosen.
    Chosen,
    /// Passed every filter, not chosen.
    Available,
    /// Removed by a filter.
    Rejected {
        /// Filter unit.
        unit: Arc<str>,
        /// Reason code.
        code: String,
        /// Detail.
        detail: String,
    },
    /// Never a candidate (status, blacklist, whitelist).
    NotCandidate {
        /// Why.
        reason: String,
    },
}

/// One weight unit's contribution to a host's total.
#[derive(Debug, Clone, Serialize)]
pub struct WeightScore {
    /// Weight unit.
    pub unit: Arc<str>,
    /// Raw penalty the unit returned (lower is better).
    pub raw: Penalty,
    /// The policy's factor.
    pub factor: i64,
    /// What was added to the total: rank x factor, normalized x factor, or raw x factor.
    pub contribution: f64,
}

/// A unit that failed during the decision and what was done about it.
#[derive(Debug, Clone, Serialize)]
pub struct UnitFailure {
    /// Unit name.
    pub unit: String,
    /// Module file.
    pub module: String,
    /// The fault.
    pub error: String,
    /// The failure mode applied.
    pub applied: FailureMode,
}

/// Why a host was not a candidate at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotCandidate {
    Status(HostStatus),
    Blacklisted,
    NotWhitelisted,
    NotDedicated,
}

impl fmt::Display for NotCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotCandidate::Status(status) => write!(f, "host is {}", status.as_str()),
            NotCandidate::Blacklisted => f.write_str("blacklisted"),
            NotCandidate::NotWhitelisted => f.write_str("not in whitelist"),
            NotCandidate::NotDedicated => f.write_str("not one of the VM's dedicated hosts"),
        }
    }
}

/// A group of hosts turned away for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum GroupKey {
    NotCandidate(NotCandidate),
    /// Filter unit and reject code.
    Rejected(Arc<str>, String),
}

/// Counts of the hosts turned away, by reason, with the first host of each group (the
/// summary lists groups largest first, ties in host order).
#[derive(Debug, Default)]
pub(super) struct TurnedAway {
    groups: Vec<(GroupKey, usize, usize)>,
}

impl TurnedAway {
    pub(super) fn count(&mut self, key: GroupKey, first_host: usize, n: usize) {
        match self.groups.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, first, count)) => {
                *first = (*first).min(first_host);
                *count += n;
            }
            None => self.groups.push((key, first_host, n)),
        }
    }

    /// One line, e.g. `0/40 hosts available: 25 numa: not enough numa memory, ...`.
    pub(super) fn summary(
        mut self,
        total: usize,
        chosen: Option<&str>,
        available: usize,
    ) -> String {
        let mut head = format!("{available}/{total} hosts available");
        if let Some(name) = chosen {
            head.push_str(&format!(", chose {name}"));
        }
        if self.groups.is_empty() {
            return head;
        }
        self.groups
            .sort_by(|a, b| b.2.cmp(&a.2).then(a.1.cmp(&b.1)));
        let parts: Vec<String> = self
            .groups
            .iter()
            .map(|(key, _, n)| match key {
                GroupKey::NotCandidate(reason) => format!("{n} {reason}"),
                GroupKey::Rejected(unit, code) => {
                    format!("{n} {unit}: {}", code.replace('_', " "))
                }
            })
            .collect();
        head.push_str(if chosen.is_some() {
            "; not available: "
        } else {
            ": "
        });
        head.push_str(&parts.join(", "));
        head
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "VM {}: {}  [policy {}, epoch {}]",
            self.vm, self.summary, self.policy, self.epoch
        )?;
        if let Some(r) = &self.reservation {
            let what: Vec<String> = r.resources.iter().map(ToString::to_string).collect();
            writeln!(
                f,
                "  reserved on {} at epoch {}{}: {}",
                r.host,
                r.epoch,
                if r.revalidated { " (re-checked)" } else { "" },
                what.join(", ")
            )?;
        }
        for warning in &self.warnings {
            writeln!(f, "  ! {warning}")?;
        }
        for failure in &self.unit_failures {
            writeln!(
                f,
                "  ! unit {} ({}) failed, skipped: {}",
                failure.unit, failure.module, failure.error
            )?;
        }
        for h in &self.hosts {
            let label = if h.name.is_empty() || h.name == h.host {
                h.host.clone()
            } else {
                format!("{} ({})", h.name, h.host)
            };
            match &h.outcome {
                Outcome::Chosen | Outcome::Available => {
                    let mark = if h.outcome == Outcome::Chosen {
                        "chosen   "
                    } else {
                        "available"
                    };
                    let weights: Vec<String> = h
                        .weights
                        .iter()
                        .map(|w| format!("{}={} -> {}", w.unit, w.raw, trim(w.contribution)))
                        .collect();
                    write!(f, "  {mark} {label}")?;
                    if let Some(score) = h.score {
                        if !weights.is_empty() {
                            write!(f, "  score {}  ({})", trim(score), weights.join(", "))?;
                        }
                    }
                    writeln!(f)?;
                }
                Outcome::Rejected { unit, code, detail } => {
                    writeln!(f, "  rejected  {label}  {unit}: {code}: {detail}")?
                }
                Outcome::NotCandidate { reason } => writeln!(f, "  skipped   {label}  {reason}")?,
            }
        }
        Ok(())
    }
}

fn trim(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.3}")
    }
}
