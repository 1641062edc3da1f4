//! `wasmsched diff`: replays one scenario under two policies and reports every decision
//! that differs, with how each policy explained its choice.
//!
//! Both runs start from the same cluster file; each keeps its own cluster, so once the
//! policies disagree the later decisions may differ because the cluster differs. Decisions
//! are paired by event and VM: the k-th decision about a VM in event i under A with the
//! k-th one under B. A decision made under one policy only (a VM rescheduled after a
//! failure that happened under one of them) is reported with "no decision" on the other
//! side.

use crate::simulate::{self, EventOutcome, Scenario};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use wasmsched::{Cluster, Decision, Detail, Policy};

/// One decision that differs between the two policies.
#[derive(Debug, Serialize)]
pub struct Difference {
    /// Index of the event in the scenario.
    pub event: usize,
    /// The event, as the simulate report prints it.
    pub event_text: String,
    /// The VM decided.
    pub vm: String,
    /// The decision under policy A (`None`: A made no such decision).
    pub a: Option<Decision>,
    /// The decision under policy B.
    pub b: Option<Decision>,
}

/// What `diff` found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Names of the two policies, A then B.
    pub policies: [String; 2],
    /// Decisions compared (pairs, plus decisions made under one policy only).
    pub decisions: usize,
    /// The differing decisions, in replay order.
    pub differences: Vec<Difference>,
}

/// Replays `scenario` on a fresh copy of the cluster under each policy and compares the
/// decisions. `cluster` makes a fresh copy of the cluster (read from its file).
pub fn compare(
    policies: [&Policy; 2],
    cluster: impl Fn() -> wasmsched::Result<Cluster>,
    scenario: &Scenario,
) -> wasmsched::Result<Report> {
    let runs = [
        simulate::run(policies[0], &cluster()?, scenario, Detail::Full)?,
        simulate::run(policies[1], &cluster()?, scenario, Detail::Full)?,
    ];
    let mut decisions = 0;
    let mut differences = Vec::new();
    for (a, b) in runs[0].iter().zip(&runs[1]) {
        for (vm, (da, db)) in pair(a, b) {
            decisions += 1;
            let chosen = |d: Option<&Decision>| d.map(|d| d.chosen.clone());
            if chosen(da) != chosen(db) {
                differences.push(Difference {
                    event: a.index,
                    event_text: a.event.to_string(),
                    vm,
                    a: da.cloned(),
                    b: db.cloned(),
                });
            }
        }
    }
    Ok(Report {
        policies: [policies[0].name().into(), policies[1].name().into()],
        decisions,
        differences,
    })
}

type Pair<'a> = (String, (Option<&'a Decision>, Option<&'a Decision>));

/// The decisions of one event under A and B, paired by VM and occurrence, in A's order
/// then B's leftovers.
fn pair<'a>(a: &'a EventOutcome, b: &'a EventOutcome) -> Vec<Pair<'a>> {
    let mut unmatched_b: HashMap<&str, Vec<&Decision>> = HashMap::new();
    for d in b.decisions.iter().rev() {
        unmatched_b.entry(d.vm.as_str()).or_default().push(d);
    }
    let mut pairs: Vec<Pair<'a>> = a
        .decisions
        .iter()
        .map(|da| {
            let db = unmatched_b.get_mut(da.vm.as_str()).and_then(Vec::pop);
            (da.vm.clone(), (Some(da), db))
        })
        .collect();
    for db in &b.decisions {
        if unmatched_b
            .get(db.vm.as_str())
            .is_some_and(|left| left.iter().any(|d| std::ptr::eq(*d, db)))
        {
            pairs.push((db.vm.clone(), (None, Some(db))));
        }
    }
    pairs
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b] = &self.policies;
        writeln!(
            f,
            "diff: policy A {a:?} vs policy B {b:?}: {} of {} decisions differ",
            self.differences.len(),
            self.decisions
        )?;
        let host = |d: &Option<Decision>| match d {
            None => "no decision".to_string(),
            Some(d) => d.chosen.clone().unwrap_or_else(|| "no host".into()),
        };
        for d in &self.differences {
            writeln!(f)?;
            writeln!(
                f,
                "#{} {}: VM {}: A {}, B {}",
                d.event,
                d.event_text,
                d.vm,
                host(&d.a),
                host(&d.b)
            )?;
            for (side, decision) in [("A", &d.a), ("B", &d.b)] {
                writeln!(f, "  --- under {side}")?;
                match decision {
                    Some(decision) => {
                        for line in decision.explain().to_string().lines() {
                            writeln!(f, "  {line}")?;
                        }
                    }
                    None => writeln!(f, "  no decision about {} in this event", d.vm)?,
                }
            }
        }
        Ok(())
    }
}
