//! A decision and its parts: the chosen host, what happened to every host (or a summary),
//! each weight's contribution, units that failed, the reservation; and how it prints.

use super::policy::{FailureMode, SelectorKind};
use super::shadow::ShadowDifference;
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
    /// How the weights became the choice (see [`Decision::explain`]).
    pub selector: SelectorKind,
    /// The policy's filters, in the order they ran: a host rejected by one was not shown
    /// to the filters after it.
    pub filters: Vec<Arc<str>>,
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
    /// The pending resources recorded on the chosen host ([`Policy::schedule`](crate::Policy::schedule)); `None`
    /// for [`Policy::evaluate`](crate::Policy::evaluate) and when no host was chosen.
    pub reservation: Option<Reservation>,
    /// Things the operator should know, e.g. a unit that runs in its last good version
    /// because its module disappeared (see [`Policy::stale_units`](crate::Policy::stale_units)).
    pub warnings: Vec<String>,
    /// What the policy's shadow units would have changed in this decision (a shadow
    /// filter rejecting the chosen host, a shadow weight making another host best) and
    /// the shadow units that failed; empty when they agree (see
    /// [`Policy::shadow_status`](crate::Policy::shadow_status)).
    pub shadow: Vec<ShadowDifference>,
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
    /// Rank selector only: the host's rank for this unit, the number of candidates with a
    /// strictly higher (worse) penalty; so among n distinct penalties the best gets n-1,
    /// and hosts with equal penalties share a rank.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<u64>,
    /// What the selector made of the raw penalty before the factor: the rank (rank
    /// selector), the penalty scaled to 0..=1 between the best and the worst candidate
    /// (normalized sum), or the raw penalty (raw sum).
    pub points: f64,
    /// The policy's factor.
    pub factor: i64,
    /// What was added to the total: points x factor.
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
        use fmt::Write as _;
        // Written into one string sized for it: every decision has a summary.
        let mut head = String::with_capacity(64 + 48 * self.groups.len());
        let _ = write!(head, "{available}/{total} hosts available");
        if let Some(name) = chosen {
            let _ = write!(head, ", chose {name}");
        }
        if self.groups.is_empty() {
            return head;
        }
        self.groups
            .sort_by(|a, b| b.2.cmp(&a.2).then(a.1.cmp(&b.1)));
        head.push_str(if chosen.is_some() {
            "; not available: "
        } else {
            ": "
        });
        for (i, (key, _, n)) in self.groups.iter().enumerate() {
            if i > 0 {
                head.push_str(", ");
            }
            match key {
                GroupKey::NotCandidate(reason) => {
                    let _ = write!(head, "{n} {reason}");
                }
                GroupKey::Rejected(unit, code) => {
                    let _ = write!(head, "{n} {unit}: ");
                    head.extend(code.chars().map(|c| if c == '_' { ' ' } else { c }));
                }
            }
        }
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
        for difference in &self.shadow {
            writeln!(f, "  {difference}")?;
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

impl Decision {
    /// How the choice was made, for people: per candidate host every filter's verdict
    /// (with the reject detail), every weight's raw penalty, points (rank), factor and
    /// contribution, the totals, and how the selector turned them into the choice
    /// (including a tie broken by host id). The same data is in the decision's fields
    /// (`filters`, `hosts[].outcome`, `hosts[].weights`, `hosts[].score`, `selector`).
    ///
    /// Hosts appear as the decision keeps them: every host for [`Detail::Full`], the
    /// chosen host and the best runners-up for [`Detail::Summary`].
    ///
    /// [`Detail::Full`]: super::Detail::Full
    /// [`Detail::Summary`]: super::Detail::Summary
    pub fn explain(&self) -> Explanation<'_> {
        Explanation { decision: self }
    }
}

/// The text of [`Decision::explain`].
#[derive(Debug, Clone, Copy)]
pub struct Explanation<'a> {
    decision: &'a Decision,
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.decision;
        writeln!(
            f,
            "VM {}: {}  [policy {}, epoch {}]",
            d.vm, d.summary, d.policy, d.epoch
        )?;
        writeln!(f, "how weights combine ({} selector):", d.selector.as_str())?;
        writeln!(f, "  {}", d.selector.rule())?;
        writeln!(
            f,
            "  every weight returns a raw penalty per host: lower is better; equal best totals go to the lowest host id"
        )?;
        let failed = |unit: &str| d.unit_failures.iter().any(|u| u.unit == unit);
        let unit_width = d
            .hosts
            .iter()
            .flat_map(|h| h.weights.iter().map(|w| w.unit.len()))
            .max()
            .unwrap_or(0);
        for h in &d.hosts {
            let label = if h.name.is_empty() || h.name == h.host {
                h.host.clone()
            } else {
                format!("{} ({})", h.host, h.name)
            };
            let (state, rejected_by) = match &h.outcome {
                Outcome::Chosen => ("chosen".to_string(), None),
                Outcome::Available => ("available".to_string(), None),
                Outcome::Rejected { unit, .. } => ("rejected".to_string(), Some(unit)),
                Outcome::NotCandidate { reason } => {
                    writeln!(f, "{label}: not a candidate: {reason}")?;
                    continue;
                }
            };
            match h.score {
                Some(total) if !h.weights.is_empty() => {
                    writeln!(f, "{label}: {state}, total {}", trim(total))?
                }
                _ => writeln!(f, "{label}: {state}")?,
            }
            let mut verdicts = Vec::with_capacity(d.filters.len());
            let mut after_reject = false;
            for filter in &d.filters {
                let verdict = if after_reject {
                    "not run".to_string()
                } else if failed(filter) {
                    "failed (skipped)".to_string()
                } else if rejected_by == Some(filter) {
                    after_reject = true;
                    match &h.outcome {
                        Outcome::Rejected { code, detail, .. } => {
                            format!("REJECT {code}: {detail}")
                        }
                        _ => unreachable!("rejected_by is set for rejected hosts only"),
                    }
                } else {
                    "pass".to_string()
                };
                verdicts.push(format!("{filter} {verdict}"));
            }
            if !verdicts.is_empty() {
                writeln!(f, "  filters: {}", verdicts.join(", "))?;
            }
            for w in &h.weights {
                let rank = w
                    .rank
                    .map(|r| format!("rank {r}"))
                    .unwrap_or_else(|| format!("points {}", trim(w.points)));
                writeln!(
                    f,
                    "  weight {:<unit_width$}  raw {:>12}  {rank:<10} x {:<4} = {}",
                    w.unit,
                    w.raw,
                    w.factor,
                    trim(w.contribution),
                )?;
            }
        }
        for failure in &d.unit_failures {
            writeln!(
                f,
                "! unit {} failed and was skipped ({}): {}",
                failure.unit, failure.module, failure.error
            )?;
        }
        writeln!(f, "choice: {}", self.choice())?;
        for difference in &d.shadow {
            writeln!(f, "{difference}")?;
        }
        Ok(())
    }
}

impl Explanation<'_> {
    /// How the selector's totals gave the choice, in one line (the last line of the
    /// explanation), e.g. `host-2 with the highest total 5; next host-1 with 2`.
    pub fn choice(&self) -> String {
        let d = self.decision;
        let candidates: Vec<&HostOutcome> = d
            .hosts
            .iter()
            .filter(|h| matches!(h.outcome, Outcome::Chosen | Outcome::Available))
            .collect();
        let Some(chosen) = candidates.iter().find(|h| h.outcome == Outcome::Chosen) else {
            return "no host passed every filter".into();
        };
        if d.available == 1 {
            return format!("{} is the only host that passed every filter", chosen.host);
        }
        let Some(total) = chosen.score else {
            return format!("{} (no score)", chosen.host);
        };
        let weighed = chosen.weights.len();
        if weighed == 0 {
            return format!(
                "no weight answered: every candidate totals 0, so the lowest host id wins: {}",
                chosen.host
            );
        }
        let tied: Vec<&str> = candidates
            .iter()
            .filter(|h| h.score == Some(total))
            .map(|h| h.host.as_str())
            .collect();
        let best_word = if d.selector == SelectorKind::Rank {
            "highest"
        } else {
            "lowest"
        };
        if tied.len() > 1 {
            return format!(
                "{} with the {best_word} total {}, tied with {}: the tie goes to the lowest host id",
                chosen.host,
                trim(total),
                tied.iter()
                    .filter(|h| **h != chosen.host)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let runner_up = candidates
            .iter()
            .filter(|h| h.outcome != Outcome::Chosen)
            .filter_map(|h| h.score.map(|s| (s, h.host.as_str())))
            .reduce(|a, b| {
                let a_better = if d.selector == SelectorKind::Rank {
                    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
                } else {
                    a.0 < b.0 || (a.0 == b.0 && a.1 < b.1)
                };
                if a_better {
                    a
                } else {
                    b
                }
            });
        match runner_up {
            Some((score, host)) => format!(
                "{} with the {best_word} total {}; next {host} with {}",
                chosen.host,
                trim(total),
                trim(score)
            ),
            None => format!("{} with the {best_word} total {}", chosen.host, trim(total)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weight(unit: &str, raw: Penalty, rank: u64, factor: i64) -> WeightScore {
        WeightScore {
            unit: Arc::from(unit),
            raw,
            rank: Some(rank),
            points: rank as f64,
            factor,
            contribution: (rank as i64 * factor) as f64,
        }
    }

    fn host(id: &str, outcome: Outcome, weights: Vec<WeightScore>) -> HostOutcome {
        HostOutcome {
            host: id.into(),
            name: id.into(),
            score: (!weights.is_empty()).then(|| weights.iter().map(|w| w.contribution).sum()),
            outcome,
            weights,
        }
    }

    /// h1 and h2 tie at 3 (h1 wins by id); h3 is rejected by the second of three filters;
    /// the third filter failed open; h4 is in maintenance.
    fn decision() -> Decision {
        Decision {
            vm: "v".into(),
            policy: "p".into(),
            epoch: 7,
            selector: SelectorKind::Rank,
            filters: ["memory", "cpu", "flaky"].map(Arc::from).to_vec(),
            chosen: Some("h1".into()),
            chosen_name: Some("h1".into()),
            total_hosts: 4,
            available: 2,
            summary: "2/4 hosts available, chose h1".into(),
            hosts: vec![
                host(
                    "h1",
                    Outcome::Chosen,
                    vec![
                        weight("cpu-load", 10, 1, 3),
                        weight("free-memory", -5, 0, 1),
                    ],
                ),
                host(
                    "h2",
                    Outcome::Available,
                    vec![
                        weight("cpu-load", 40, 0, 3),
                        weight("free-memory", -9, 1, 3),
                    ],
                ),
                host(
                    "h3",
                    Outcome::Rejected {
                        unit: Arc::from("cpu"),
                        code: "not_enough_cores".into(),
                        detail: "needs 8, has 4".into(),
                    },
                    Vec::new(),
                ),
                host(
                    "h4",
                    Outcome::NotCandidate {
                        reason: "host is maintenance".into(),
                    },
                    Vec::new(),
                ),
            ],
            unit_failures: vec![UnitFailure {
                unit: "flaky".into(),
                module: "flaky.wasm".into(),
                error: "trap".into(),
                applied: FailureMode::Open,
            }],
            reservation: None,
            warnings: Vec::new(),
            shadow: Vec::new(),
        }
    }

    #[test]
    fn explanation_shows_each_filter_verdict_weight_line_and_the_tie_break() {
        let text = decision().explain().to_string();
        let expected_lines = [
            "h1: chosen, total 3",
            "  filters: memory pass, cpu pass, flaky failed (skipped)",
            "h3: rejected",
            "  filters: memory pass, cpu REJECT not_enough_cores: needs 8, has 4, flaky not run",
            "h4: not a candidate: host is maintenance",
            "choice: h1 with the highest total 3, tied with h2: the tie goes to the lowest host id",
        ];
        for line in expected_lines {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        let h2_memory: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("weight free-memory"))
            .nth(1)
            .expect("h2's free-memory line")
            .split_whitespace()
            .collect();
        assert_eq!(
            h2_memory,
            [
                "weight",
                "free-memory",
                "raw",
                "-9",
                "rank",
                "1",
                "x",
                "3",
                "=",
                "3"
            ]
        );
    }

    #[test]
    fn explanation_names_the_runner_up_when_there_is_no_tie() {
        let mut d = decision();
        d.hosts[1].weights[1] = weight("free-memory", -9, 1, 1);
        d.hosts[1].score = Some(1.0);
        assert_eq!(
            d.explain().choice(),
            "h1 with the highest total 3; next h2 with 1"
        );
        d.available = 1;
        assert_eq!(
            d.explain().choice(),
            "h1 is the only host that passed every filter"
        );
    }
}
