//! Scheduling one VM: candidates -> filters -> weights -> selector -> [`Decision`].

use crate::cluster::{Cluster, ClusterView};
use crate::error::{Error, Result, UnitFault};
use crate::lifecycle::{PlacementKind, Reservation};
use crate::policy::{FailureMode, Policy, PolicyUnit, SelectorKind};
use policy_sdk::abi::Call;
use policy_sdk::topology::{self, CpuPinning};
use policy_sdk::{HostIndex, HostStatus, Penalty, Verdicts, Vm};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

/// What to schedule and where it may go.
#[derive(Debug, Clone)]
pub struct ScheduleRequest {
    /// The VM to place.
    pub vm: Vm,
    /// Hosts that must not be chosen (already tried; the source host of a migration).
    pub blacklist: Vec<String>,
    /// When set, only these hosts may be chosen.
    pub whitelist: Option<Vec<String>>,
    /// Start or migration (decides the pending CPU load and what the lifecycle releases).
    pub kind: PlacementKind,
    /// How much the decision reports about the hosts not chosen (default: every host).
    pub detail: Detail,
}

impl ScheduleRequest {
    /// A request to start a VM, any Up host allowed.
    pub fn new(vm: Vm) -> Self {
        Self {
            vm,
            blacklist: Vec::new(),
            whitelist: None,
            kind: PlacementKind::Start,
            detail: Detail::Full,
        }
    }

    /// A request to migrate a running VM away from its current host (which is
    /// blacklisted). Fails when the VM has no current host.
    pub fn migration(vm: Vm) -> Result<Self> {
        let Some(source) = vm.current_host.clone() else {
            return Err(Error::Request(format!(
                "VM {:?}: current_host: a migration needs the host the VM runs on",
                vm.id
            )));
        };
        Ok(Self {
            blacklist: vec![source.clone()],
            whitelist: None,
            kind: PlacementKind::Migration { source },
            detail: Detail::Full,
            vm,
        })
    }

    /// Excludes these hosts.
    pub fn blacklist<I: IntoIterator<Item = S>, S: Into<String>>(mut self, hosts: I) -> Self {
        self.blacklist.extend(hosts.into_iter().map(Into::into));
        self
    }

    /// How much the decision reports about the hosts not chosen ([`Detail::Summary`]: the
    /// chosen host and the best runners-up, for engines placing many VMs).
    pub fn detail(mut self, detail: Detail) -> Self {
        self.detail = detail;
        self
    }

    /// Allows only these hosts.
    pub fn whitelist<I: IntoIterator<Item = S>, S: Into<String>>(mut self, hosts: I) -> Self {
        self.whitelist = Some(hosts.into_iter().map(Into::into).collect());
        self
    }
}

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

/// Optimistic rounds (decide on a view, re-check the host under the ledger lock) before a
/// decision is made entirely under the lock.
const OPTIMISTIC_ROUNDS: usize = 4;

impl Policy {
    /// Schedules one VM on the cluster and reserves its pending resources on the chosen
    /// host, so the next decision sees them. Safe to call from many threads on one
    /// cluster: no host is ever over-committed (see "Concurrency" in the lifecycle docs:
    /// optimistic decisions, re-checked under a per-cluster lock when the cluster moved).
    ///
    /// Returns `Err` only when the request itself is invalid or a fail-closed unit faulted
    /// (the error names the unit). "No host available" is a normal [`Decision`].
    ///
    /// A VM that is already placed (and not started) is placed anew: its current pending
    /// resources are released first, so they do not count against it.
    pub fn schedule(&self, cluster: &Cluster, request: &ScheduleRequest) -> Result<Decision> {
        self.live().schedule_resolved(cluster, request)
    }

    /// [`Policy::schedule`] with the units as resolved now.
    fn schedule_resolved(&self, cluster: &Cluster, request: &ScheduleRequest) -> Result<Decision> {
        validate_vm(&request.vm)?;
        cluster.unplace(&request.vm.id)?;
        for _ in 0..OPTIMISTIC_ROUNDS {
            let view = cluster.view();
            let mut decision = self.decide(&view, request)?;
            let Some(host) = decision.chosen.clone() else {
                return Ok(decision);
            };
            let epoch = view.epoch();
            // Let the snapshot be updated in place if no one else holds it.
            drop(view);
            let reserved = cluster.reserve_decided(
                epoch,
                &request.vm,
                &host,
                request.kind.clone(),
                |latest| self.still_fits(latest, request, &host),
            )?;
            if let Some(reservation) = reserved {
                decision.reservation = Some(reservation);
                return Ok(decision);
            }
            tracing::debug!(
                vm = request.vm.id,
                host,
                "host no longer fits; deciding again"
            );
        }
        let mut ledger = cluster.ledger();
        let mut decision = self.decide(&cluster.view(), request)?;
        if let Some(host) = decision.chosen.clone() {
            decision.reservation = Some(cluster.reserve_locked(
                &mut ledger,
                &request.vm,
                &host,
                request.kind.clone(),
                true,
            )?);
        }
        Ok(decision)
    }

    /// Places VMs one after another (a mass start), each decision seeing the pending
    /// resources of the previous ones. One result per request, in order; an invalid
    /// request or a unit fault fails only its own entry.
    pub fn schedule_batch(
        &self,
        cluster: &Cluster,
        requests: &[ScheduleRequest],
    ) -> Vec<Result<Decision>> {
        requests
            .iter()
            .map(|request| self.schedule(cluster, request))
            .collect()
    }

    /// Whether `host` is still a candidate that passes every filter on `view`.
    fn still_fits(
        &self,
        view: &ClusterView,
        request: &ScheduleRequest,
        host: &str,
    ) -> Result<bool> {
        let snapshot = view.snapshot();
        let Some(index) = snapshot.host_index(host) else {
            return Ok(false);
        };
        if snapshot.hosts[index as usize].status != HostStatus::Up {
            return Ok(false);
        }
        let mut failures = Vec::new();
        for filter in &self.filters {
            if let Some(verdicts) = run_filter(filter, view, &request.vm, &[index], &mut failures)?
            {
                if !verdicts.all_pass() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The rejections of `host` (an index of `view`) by the policy's filters for `vm`, as
    /// (unit, code, detail); empty when every filter passes it. Fail-open faults are
    /// skipped (listed in `failures`); a fail-closed fault is the error.
    pub(crate) fn host_rejections(
        &self,
        view: &ClusterView,
        vm: &Vm,
        host: HostIndex,
        failures: &mut Vec<UnitFailure>,
    ) -> Result<Vec<(String, String, String)>> {
        let mut rejections = Vec::new();
        for filter in &self.filters {
            if let Some(verdicts) = run_filter(filter, view, vm, &[host], failures)? {
                for r in &verdicts.rejected {
                    rejections.push((
                        filter.label.to_string(),
                        verdicts.code_of(r).to_string(),
                        r.detail.clone(),
                    ));
                }
            }
        }
        Ok(rejections)
    }

    /// Decides where one VM would go on a given view (a fixed epoch), without reserving
    /// anything: a what-if.
    pub fn evaluate(&self, view: &ClusterView, request: &ScheduleRequest) -> Result<Decision> {
        validate_vm(&request.vm)?;
        self.live().decide(view, request)
    }

    /// [`Policy::evaluate`] for a request already validated.
    fn decide(&self, view: &ClusterView, request: &ScheduleRequest) -> Result<Decision> {
        let snapshot = view.snapshot();
        let full = request.detail == Detail::Full;
        // Per-host outcomes are only kept for a full report; the summary's counts always.
        let mut outcomes: Vec<Option<Outcome>> = if full {
            vec![None; snapshot.hosts.len()]
        } else {
            Vec::new()
        };
        let mut turned_away = TurnedAway::default();
        let blacklist: HashSet<&str> = request.blacklist.iter().map(String::as_str).collect();
        let whitelist: Option<HashSet<&str>> = request
            .whitelist
            .as_ref()
            .map(|w| w.iter().map(String::as_str).collect());
        let dedicated: HashSet<&str> = request
            .vm
            .dedicated_hosts
            .iter()
            .map(String::as_str)
            .collect();
        let mut survivors: Vec<HostIndex> = Vec::with_capacity(snapshot.hosts.len());
        for (i, host) in snapshot.hosts.iter().enumerate() {
            let reason = if host.status != HostStatus::Up {
                Some(NotCandidate::Status(host.status))
            } else if blacklist.contains(host.id.as_str()) {
                Some(NotCandidate::Blacklisted)
            } else if whitelist
                .as_ref()
                .is_some_and(|w| !w.contains(host.id.as_str()))
            {
                Some(NotCandidate::NotWhitelisted)
            } else if !dedicated.is_empty() && !dedicated.contains(host.id.as_str()) {
                Some(NotCandidate::NotDedicated)
            } else {
                None
            };
            match reason {
                Some(reason) => {
                    turned_away.count(GroupKey::NotCandidate(reason), i, 1);
                    if full {
                        outcomes[i] = Some(Outcome::NotCandidate {
                            reason: reason.to_string(),
                        });
                    }
                }
                None => survivors.push(i as HostIndex),
            }
        }

        let mut failures = Vec::new();
        for filter in &self.filters {
            if survivors.is_empty() {
                break;
            }
            let Some(verdicts) = run_filter(filter, view, &request.vm, &survivors, &mut failures)?
            else {
                continue;
            };
            if verdicts.all_pass() {
                continue;
            }
            // Count each code once per call (first host, number of hosts).
            let mut per_code: Vec<(usize, usize)> = vec![(usize::MAX, 0); verdicts.codes.len()];
            let mut kept = Vec::with_capacity(survivors.len() - verdicts.rejected.len());
            let mut from = 0;
            for r in verdicts.rejected {
                let position = r.position as usize;
                kept.extend_from_slice(&survivors[from..position]);
                from = position + 1;
                let host = survivors[position];
                let slot = &mut per_code[r.code as usize];
                slot.0 = slot.0.min(host as usize);
                slot.1 += 1;
                if full {
                    outcomes[host as usize] = Some(Outcome::Rejected {
                        unit: filter.label.clone(),
                        code: verdicts.codes[r.code as usize].clone(),
                        detail: r.detail,
                    });
                }
            }
            kept.extend_from_slice(&survivors[from..]);
            survivors = kept;
            for (code, (first, n)) in verdicts.codes.into_iter().zip(per_code) {
                if n > 0 {
                    turned_away.count(GroupKey::Rejected(filter.label.clone(), code), first, n);
                }
            }
        }

        // Weights: one penalty column per unit that answered.
        let mut columns: Vec<(&PolicyUnit, Vec<Penalty>)> = Vec::new();
        if survivors.len() > 1 {
            for weight in &self.weights {
                match weight.handle.module.weigh(
                    view,
                    unit_call(weight, view, Some(&request.vm), &survivors),
                    weight.limits,
                ) {
                    Ok(p) => columns.push((weight, p)),
                    Err(fault) => handle_fault(weight, fault, &mut failures)?,
                }
            }
        }
        let (totals, contributions) = select(self.selector, &columns, survivors.len());
        let best = pick_best(self.selector, &totals, &survivors, snapshot);
        let scored = |pos: usize| {
            let weights = columns
                .iter()
                .enumerate()
                .map(|(c, (unit, penalties))| WeightScore {
                    unit: unit.label.clone(),
                    raw: penalties[pos],
                    factor: unit.factor,
                    contribution: contributions[c][pos],
                })
                .collect();
            (totals[pos], weights)
        };
        let outcome_of = |host: HostIndex| {
            if Some(host) == best {
                Outcome::Chosen
            } else {
                Outcome::Available
            }
        };

        let hosts = if full {
            let mut scores: Vec<Option<(f64, Vec<WeightScore>)>> = vec![None; snapshot.hosts.len()];
            for (pos, &host) in survivors.iter().enumerate() {
                scores[host as usize] = Some(scored(pos));
                outcomes[host as usize] = Some(outcome_of(host));
            }
            let mut hosts = Vec::with_capacity(snapshot.hosts.len());
            for (i, host) in snapshot.hosts.iter().enumerate() {
                let (score, weights) = match scores[i].take() {
                    Some((s, w)) => (Some(s), w),
                    None => (None, Vec::new()),
                };
                hosts.push(HostOutcome {
                    host: host.id.clone(),
                    name: host.name.clone(),
                    outcome: outcomes[i].take().unwrap_or(Outcome::NotCandidate {
                        reason: "not evaluated".into(),
                    }),
                    score,
                    weights,
                });
            }
            hosts
        } else {
            // The chosen host first, then the best-scored runners-up.
            let mut order: Vec<usize> = (0..survivors.len()).collect();
            let keep = SUMMARY_HOSTS.min(order.len());
            let better = |a: &usize, b: &usize| {
                compare_totals(self.selector, totals[*a], totals[*b]).then_with(|| {
                    snapshot.hosts[survivors[*a] as usize]
                        .id
                        .cmp(&snapshot.hosts[survivors[*b] as usize].id)
                })
            };
            if keep < order.len() && keep > 0 {
                order.select_nth_unstable_by(keep - 1, better);
                order.truncate(keep);
            }
            order.sort_by(better);
            order
                .into_iter()
                .map(|pos| {
                    let index = survivors[pos];
                    let host = &snapshot.hosts[index as usize];
                    let (score, weights) = scored(pos);
                    HostOutcome {
                        host: host.id.clone(),
                        name: host.name.clone(),
                        outcome: outcome_of(index),
                        score: Some(score),
                        weights,
                    }
                })
                .collect()
        };
        let chosen = best.map(|i| &snapshot.hosts[i as usize]);
        let summary = turned_away.summary(
            snapshot.hosts.len(),
            chosen.map(|h| h.name.as_str()),
            survivors.len(),
        );
        Ok(Decision {
            vm: request.vm.id.clone(),
            policy: self.name.clone(),
            epoch: view.epoch(),
            chosen: chosen.map(|h| h.id.clone()),
            chosen_name: chosen.map(|h| h.name.clone()),
            total_hosts: snapshot.hosts.len(),
            available: survivors.len(),
            summary,
            hosts,
            unit_failures: failures,
            reservation: None,
            warnings: self.stale.iter().map(ToString::to_string).collect(),
        })
    }
}

/// How many hosts a [`Detail::Summary`] decision lists (the chosen one and the runners-up).
pub const SUMMARY_HOSTS: usize = 10;

/// How much a [`Decision`] reports about the hosts it did not choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detail {
    /// Every host of the cluster in snapshot order, with its outcome (the rejecting filter,
    /// code and detail), score and each weight's contribution: for what-if tools and the CLI.
    #[default]
    Full,
    /// The chosen host and the best-scored runners-up (at most [`SUMMARY_HOSTS`], best
    /// first) with scores and weights; hosts turned away appear only as counts in
    /// [`Decision::summary`]. For engines placing many VMs on large clusters: the decision
    /// is the same, without building an outcome for every host.
    Summary,
}

/// Why a host was not a candidate at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotCandidate {
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
enum GroupKey {
    NotCandidate(NotCandidate),
    /// Filter unit and reject code.
    Rejected(Arc<str>, String),
}

/// Counts of the hosts turned away, by reason, with the first host of each group (the
/// summary lists groups largest first, ties in host order).
#[derive(Debug, Default)]
struct TurnedAway {
    groups: Vec<(GroupKey, usize, usize)>,
}

impl TurnedAway {
    fn count(&mut self, key: GroupKey, first_host: usize, n: usize) {
        match self.groups.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, first, count)) => {
                *first = (*first).min(first_host);
                *count += n;
            }
            None => self.groups.push((key, first_host, n)),
        }
    }

    /// One line, e.g. `0/40 hosts available: 25 numa: not enough numa memory, ...`.
    fn summary(mut self, total: usize, chosen: Option<&str>, available: usize) -> String {
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

fn validate_vm(vm: &Vm) -> Result<()> {
    let bad = |field: &str, message: &str| {
        Err(Error::Request(format!(
            "VM {:?}: {field}: {message}",
            vm.id
        )))
    };
    if vm.id.is_empty() {
        return bad("id", "must not be empty");
    }
    if vm.cpu.sockets == 0 || vm.cpu.cores_per_socket == 0 || vm.cpu.threads_per_core == 0 {
        return bad(
            "cpu",
            "sockets, cores_per_socket and threads_per_core must be at least 1",
        );
    }
    if vm
        .cpu
        .sockets
        .checked_mul(vm.cpu.cores_per_socket)
        .and_then(|c| c.checked_mul(vm.cpu.threads_per_core))
        .is_none_or(|v| v > 4096)
    {
        return bad("cpu", "more than 4096 vCPUs");
    }
    if vm.memory_mb > crate::pending::MAX_MEMORY_MB {
        return bad("memory_mb", "larger than 1 EiB");
    }
    if let Some(text) = &vm.cpu_pinning {
        let checked = CpuPinning::parse(text).and_then(|p| p.check_vcpus(text, vm.vcpus()));
        if let Err(e) = checked {
            return bad("cpu_pinning", &e.to_string());
        }
    }
    if vm.numa_nodes.len() > topology::MAX_VNUMA_NODES {
        return bad(
            "numa_nodes",
            &format!("more than {} vNUMA nodes", topology::MAX_VNUMA_NODES),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, node) in vm.numa_nodes.iter().enumerate() {
        if !seen.insert(node.index) {
            return bad(
                &format!("numa_nodes[{i}].index"),
                &format!("vNUMA node {} is listed twice", node.index),
            );
        }
        if node.memory_mb > crate::pending::MAX_MEMORY_MB {
            return bad(&format!("numa_nodes[{i}].memory_mb"), "larger than 1 EiB");
        }
        if let Some(cpu) = node.cpus.iter().find(|&&c| c >= vm.vcpus()) {
            return bad(
                &format!("numa_nodes[{i}].cpus"),
                &format!("vCPU {cpu} does not exist (the VM has {})", vm.vcpus()),
            );
        }
    }
    crate::lifecycle::check_vm_amounts(vm)
}

/// The call of one unit over the candidates, borrowing everything it sends.
pub(crate) fn unit_call<'a>(
    unit: &'a PolicyUnit,
    view: &ClusterView,
    vm: Option<&'a Vm>,
    candidates: &'a [HostIndex],
) -> Call<'a> {
    Call {
        unit: unit.handle.index,
        epoch: view.epoch(),
        params: &unit.params,
        vm,
        candidates,
    }
}

/// Runs one filter over the candidates. `None`: the unit failed and fails open (recorded
/// in `failures`); a fail-closed fault is the error.
fn run_filter(
    filter: &PolicyUnit,
    view: &ClusterView,
    vm: &Vm,
    candidates: &[HostIndex],
    failures: &mut Vec<UnitFailure>,
) -> Result<Option<Verdicts>> {
    match filter.handle.module.filter(
        view,
        unit_call(filter, view, Some(vm), candidates),
        filter.limits,
    ) {
        Ok(verdicts) => Ok(Some(verdicts)),
        Err(fault) => handle_fault(filter, fault, failures).map(|()| None),
    }
}

fn handle_fault(
    unit: &PolicyUnit,
    fault: UnitFault,
    failures: &mut Vec<UnitFailure>,
) -> Result<()> {
    tracing::warn!(
        unit = unit.name(),
        module = unit.module_file(),
        "unit failed: {fault}"
    );
    match unit.failure {
        FailureMode::Closed => Err(Error::Unit {
            unit: unit.name().to_string(),
            module: unit.module_file().to_string(),
            fault,
        }),
        FailureMode::Open => {
            failures.push(UnitFailure {
                unit: unit.name().to_string(),
                module: unit.module_file().to_string(),
                error: fault.to_string(),
                applied: FailureMode::Open,
            });
            Ok(())
        }
    }
}

/// Per-host totals and per-unit contributions (indexed `[unit][candidate]`).
pub(crate) fn select(
    selector: SelectorKind,
    columns: &[(&PolicyUnit, Vec<Penalty>)],
    candidates: usize,
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut totals = vec![0.0; candidates];
    let mut contributions = Vec::with_capacity(columns.len());
    for (unit, penalties) in columns {
        let factor = unit.factor as f64;
        let column: Vec<f64> = match selector {
            SelectorKind::Rank => ranks(penalties)
                .into_iter()
                .map(|r| r as f64 * factor)
                .collect(),
            SelectorKind::NormalizedSum => {
                let min = penalties.iter().copied().min().unwrap_or(0);
                let max = penalties.iter().copied().max().unwrap_or(0);
                let span = (max as i128 - min as i128) as f64;
                penalties
                    .iter()
                    .map(|&p| {
                        if span > 0.0 {
                            (p as i128 - min as i128) as f64 / span * factor
                        } else {
                            0.0
                        }
                    })
                    .collect()
            }
            SelectorKind::RawSum => penalties.iter().map(|&p| p as f64 * factor).collect(),
        };
        for (t, c) in totals.iter_mut().zip(&column) {
            *t += c;
        }
        contributions.push(column);
    }
    (totals, contributions)
}

/// Rank of each penalty: the number of candidates with a strictly worse (higher) penalty,
/// so the best of n distinct penalties gets n-1 and ties share a rank.
pub(crate) fn ranks(penalties: &[Penalty]) -> Vec<usize> {
    let n = penalties.len();
    let (Some(&min), Some(&max)) = (penalties.iter().min(), penalties.iter().max()) else {
        return Vec::new();
    };
    // A unit that scores every host alike (common: a VM the unit does not apply to) ranks
    // them all 0.
    if min == max {
        return vec![0; n];
    }
    let span = (max as i128 - min as i128) as u128;
    if span <= 4 * n as u128 {
        // Few distinct values (loads in percent, 1/1000 scores): count each value, then
        // the rank of a value is the number of penalties above it. No sort.
        let mut above = vec![0usize; span as usize + 2];
        for &p in penalties {
            above[(p as i128 - min as i128) as usize] += 1;
        }
        let mut worse = 0;
        for slot in above.iter_mut().rev() {
            let here = *slot;
            *slot = worse;
            worse += here;
        }
        return penalties
            .iter()
            .map(|&p| above[(p as i128 - min as i128) as usize])
            .collect();
    }
    let mut sorted: Vec<Penalty> = penalties.to_vec();
    sorted.sort_unstable();
    penalties
        .iter()
        .map(|p| sorted.len() - sorted.partition_point(|x| x <= p))
        .collect()
}

/// Orders two selector totals best first (`Less` = `a` is better): higher wins for the
/// rank selector, lower for the sums.
fn compare_totals(selector: SelectorKind, a: f64, b: f64) -> std::cmp::Ordering {
    if selector == SelectorKind::Rank {
        b.total_cmp(&a)
    } else {
        a.total_cmp(&b)
    }
}

fn pick_best(
    selector: SelectorKind,
    totals: &[f64],
    survivors: &[HostIndex],
    snapshot: &policy_sdk::Snapshot,
) -> Option<HostIndex> {
    let mut best: Option<(usize, f64)> = None;
    for (pos, &total) in totals.iter().enumerate() {
        let better = match best {
            None => true,
            Some((b, bt)) => {
                let ord = compare_totals(selector, total, bt);
                ord.is_lt()
                    || (ord.is_eq()
                        && snapshot.hosts[survivors[pos] as usize].id
                            < snapshot.hosts[survivors[b] as usize].id)
            }
        };
        if better {
            best = Some((pos, total));
        }
    }
    best.map(|(pos, _)| survivors[pos])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_give_best_n_minus_one_and_ties_share() {
        let cases: &[(&[Penalty], &[usize])] = &[
            (&[10, 20, 30], &[2, 1, 0]),
            (&[5, 5, 9], &[1, 1, 0]),
            (&[7, 7, 7], &[0, 0, 0]),
            (&[-3, 100, 0], &[2, 0, 1]),
            (&[], &[]),
        ];
        for (penalties, expected) in cases {
            assert_eq!(&ranks(penalties), expected, "penalties {penalties:?}");
        }
    }

    /// The counting path (few distinct values) and the sorting path (wide values) agree
    /// with the definition: the number of strictly worse penalties.
    #[test]
    fn ranks_count_strictly_worse_penalties_on_both_paths() {
        let mut rng = policy_sdk::testing::XorShift::new(3);
        for case in 0..300 {
            let n = 1 + rng.below(60) as usize;
            let wide = case % 2 == 0;
            let penalties: Vec<Penalty> = (0..n)
                .map(|_| {
                    if wide {
                        rng.below(u64::MAX / 2) as i64 - (1 << 60)
                    } else {
                        rng.below(8) as i64 - 3
                    }
                })
                .collect();
            let want: Vec<usize> = penalties
                .iter()
                .map(|p| penalties.iter().filter(|q| *q > p).count())
                .collect();
            assert_eq!(ranks(&penalties), want, "case {case}: {penalties:?}");
        }
        assert_eq!(ranks(&[i64::MIN, i64::MAX]), [1, 0]);
    }
}
