//! Scheduling one VM: candidates -> filters -> weights -> selector -> [`Decision`], and the
//! optimistic reservation of the chosen host (see "Concurrency" below).
//!
//! # Concurrency
//!
//! Decisions run in parallel on immutable views. Reserving is serialized per cluster (the
//! ledger lock) and optimistic: a decision made on epoch E reserves at once when the cluster
//! is still at E; otherwise the chosen host is re-checked, under the lock, with the policy's
//! filters on the latest snapshot (one host, so cheap) and reserved only if it still fits.
//! A host that no longer fits sends the decision back to be made again on the latest view;
//! after a few such rounds the whole decision runs under the lock, so progress is
//! guaranteed. A host can therefore never be over-committed by concurrent `schedule` calls:
//! every reservation was checked by the filters against every reservation before it.

use super::decision::{
    Decision, GroupKey, HostOutcome, NotCandidate, Outcome, TurnedAway, UnitFailure, WeightScore,
};
use super::policy::{FailureMode, Policy, PolicyUnit, SelectorKind};
use super::request::{Detail, ScheduleRequest};
use super::selector::{best_first, compare_totals, factored, pick_best, select};
use super::shadow::{self, LiveChoice};
use crate::engine::{CallLimits, LoadedModule};
use crate::error::{Error, Result, UnitFault};
use crate::state::{Cluster, ClusterView};
use policy_sdk::wire::abi::{Batch, BatchUnitRef, Call};
use policy_sdk::{HostIndex, HostStatus, Penalty, Verdicts, Vm};
use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

/// Optimistic rounds (decide on a view, re-check the host under the ledger lock) before a
/// decision is made entirely under the lock.
const OPTIMISTIC_ROUNDS: usize = 4;

/// [`Policy::schedule`] with the units as resolved now.
pub(super) fn schedule(
    policy: &Policy,
    cluster: &Cluster,
    request: &ScheduleRequest,
) -> Result<Decision> {
    request.validate()?;
    cluster.unplace(&request.vm.id)?;
    for _ in 0..OPTIMISTIC_ROUNDS {
        let view = cluster.view();
        let mut decision = decide(policy, &view, request)?;
        let Some(host) = decision.chosen.clone() else {
            return Ok(decision);
        };
        let epoch = view.epoch();
        // Let the snapshot be updated in place if no one else holds it.
        drop(view);
        let reserved =
            cluster.reserve_decided(epoch, &request.vm, &host, request.kind.clone(), |latest| {
                still_fits(policy, latest, request, &host)
            })?;
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
    let mut decision = decide(policy, &cluster.view(), request)?;
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

/// Whether `host` is still a candidate that passes every filter on `view`.
pub(super) fn still_fits(
    policy: &Policy,
    view: &ClusterView,
    request: &ScheduleRequest,
    host: &str,
) -> Result<bool> {
    let Some(index) = view.host_index(host) else {
        return Ok(false);
    };
    if view.snapshot().hosts[index as usize].status != HostStatus::Up {
        return Ok(false);
    }
    let stage = run_units(policy, view, &request.vm, vec![index], Weigh::Never, false)?;
    Ok(stage.survivors.len() == 1)
}

/// The rejections of `host` (an index of `view`) by the policy's filters for `vm`, as
/// (unit, code, detail); empty when every filter passes it. Fail-open faults are
/// skipped (listed in `failures`); a fail-closed fault is the error.
pub(super) fn host_rejections(
    policy: &Policy,
    view: &ClusterView,
    vm: &Vm,
    host: HostIndex,
    failures: &mut Vec<UnitFailure>,
) -> Result<Vec<(String, String, String)>> {
    let mut rejections = Vec::new();
    for filter in &policy.filters {
        if let Some(verdicts) = run_filter(filter, view, vm, &[host], true, failures)? {
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

/// [`Policy::evaluate`] for a request already validated.
pub(super) fn decide(
    policy: &Policy,
    view: &ClusterView,
    request: &ScheduleRequest,
) -> Result<Decision> {
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
    // Statuses come from the view's dense list, and without lists no host is read at all:
    // at 50,000 hosts, reading each host's status (and id) from its own `Host` was a cache
    // miss per host, the largest serial part of a decision split across cores.
    let by_id = !blacklist.is_empty() || whitelist.is_some() || !dedicated.is_empty();
    let statuses = view.derived().host_statuses(snapshot);
    for (i, &status) in statuses.iter().enumerate() {
        let id = || snapshot.hosts[i].id.as_str();
        let reason = if status != HostStatus::Up {
            Some(NotCandidate::Status(status))
        } else if !by_id {
            None
        } else if blacklist.contains(id()) {
            Some(NotCandidate::Blacklisted)
        } else if whitelist.as_ref().is_some_and(|w| !w.contains(id())) {
            Some(NotCandidate::NotWhitelisted)
        } else if !dedicated.is_empty() && !dedicated.contains(id()) {
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
    prepare_instances(policy, view, split_parts(survivors.len()));
    let stage = run_units_split(policy, view, &request.vm, survivors, full)?;
    for (filter, rejected) in policy.filters.iter().zip(stage.rejected) {
        // Count each code once per call (first host, number of hosts).
        let mut per_code: Vec<(usize, usize)> = vec![(usize::MAX, 0); rejected.codes.len()];
        for (host, code, detail) in rejected.hosts {
            let slot = &mut per_code[code as usize];
            slot.0 = slot.0.min(host as usize);
            slot.1 += 1;
            if full {
                outcomes[host as usize] = Some(Outcome::Rejected {
                    unit: filter.label.clone(),
                    code: rejected.codes[code as usize].clone(),
                    detail,
                });
            }
        }
        for (code, (first, n)) in rejected.codes.into_iter().zip(per_code) {
            if n > 0 {
                turned_away.count(GroupKey::Rejected(filter.label.clone(), code), first, n);
            }
        }
    }
    failures.extend(stage.failures);
    let survivors = stage.survivors;
    // Weights: one penalty column per unit that answered.
    let columns: Vec<(&PolicyUnit, Vec<Penalty>)> = policy
        .weights
        .iter()
        .zip(stage.columns)
        .filter_map(|(unit, column)| column.map(|c| (unit, c)))
        .collect();
    let selection = select(policy.selector, factored(&columns), survivors.len());
    let totals = &selection.totals;
    let best = pick_best(policy.selector, totals, &survivors, snapshot);
    let shadow = shadow::differences(
        policy.selector,
        &policy.shadow_filters,
        &policy.shadow_weights,
        &LiveChoice {
            view,
            vm: &request.vm,
            survivors: &survivors,
            columns: &columns,
            best,
        },
    );
    let ranked = policy.selector == SelectorKind::Rank;
    let scored = |pos: usize| {
        let weights = columns
            .iter()
            .enumerate()
            .map(|(c, (unit, penalties))| WeightScore {
                unit: unit.label.clone(),
                raw: penalties[pos],
                rank: ranked.then_some(selection.points[c][pos] as u64),
                points: selection.points[c][pos],
                factor: unit.factor,
                contribution: selection.contribution(c, unit.factor, pos),
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
        let keep = Detail::SUMMARY_HOSTS.min(survivors.len());
        let better = |a: &usize, b: &usize| {
            compare_totals(policy.selector, totals[*a], totals[*b]).then_with(|| {
                snapshot.hosts[survivors[*a] as usize]
                    .id
                    .cmp(&snapshot.hosts[survivors[*b] as usize].id)
            })
        };
        best_first(survivors.len(), keep, better)
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
        policy: policy.name.clone(),
        epoch: view.epoch(),
        selector: policy.selector,
        filters: policy.filters.iter().map(|f| f.label.clone()).collect(),
        chosen: chosen.map(|h| h.id.clone()),
        chosen_name: chosen.map(|h| h.name.clone()),
        total_hosts: snapshot.hosts.len(),
        available: survivors.len(),
        summary,
        hosts,
        unit_failures: failures,
        reservation: None,
        warnings: policy.stale.iter().map(ToString::to_string).collect(),
        shadow,
    })
}

/// Candidates from which one decision is split across cores: below it, a decision runs
/// on the calling thread (thread start-up and a second synced instance per module are not
/// worth it for a few milliseconds of work).
pub(crate) const SPLIT_MIN_CANDIDATES: usize = 20_000;
/// Fewest candidates per part of a split decision.
const SPLIT_MIN_PART: usize = 10_000;

/// One filter's rejections over some candidates: its reject codes, and the rejected hosts
/// (host index, code index into `codes`, detail) in candidate order.
#[derive(Debug, Default)]
struct Rejected {
    codes: Vec<String>,
    hosts: Vec<(HostIndex, u32, String)>,
}

/// What the policy's filters and weights made of some candidates.
#[derive(Debug)]
struct Stage {
    /// The candidates every filter passed, in candidate order.
    survivors: Vec<HostIndex>,
    /// Per filter of the policy, in order: its rejections.
    rejected: Vec<Rejected>,
    /// Per weight of the policy, in order: one penalty per survivor, `None` when the unit
    /// failed open (listed in `failures`) or was not called.
    columns: Vec<Option<Vec<Penalty>>>,
    /// Units that failed open.
    failures: Vec<UnitFailure>,
}

/// When a stage runs the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Weigh {
    /// Never (re-checking one host).
    Never,
    /// When more than one candidate is left (a whole decision: one host needs no ranking).
    IfSeveral,
    /// Always, even over no candidate (a part of a split decision).
    Always,
}

impl Weigh {
    /// Whether weights run with `left` candidates left.
    fn runs(self, left: usize) -> bool {
        match self {
            Weigh::Never => false,
            Weigh::IfSeveral => left > 1,
            Weigh::Always => true,
        }
    }
}

/// One crossing into a module: a run of consecutive filters of the policy held by that
/// module, and weights of the same module.
#[derive(Debug)]
struct Group<'p> {
    module: &'p Arc<LoadedModule>,
    /// Indices into the policy's filters (consecutive; empty for a weights-only group).
    filters: Range<usize>,
    /// Indices into the policy's weights.
    weights: Vec<usize>,
}

/// The policy's units grouped into crossings: each run of consecutive filters of one module
/// is one batch, in policy order, so every filter still sees exactly the candidates the
/// filters before it passed. Each module's weights ride with the last batch of its
/// filters: their penalties, computed over the candidates left at that point, are cut down
/// to the final survivors afterwards (a penalty depends only on its host; see `ABI.md`). The
/// weights of a module without filters in the policy run in one batch after all filters.
fn plan(policy: &Policy, weigh: Weigh) -> Vec<Group<'_>> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    for (i, filter) in policy.filters.iter().enumerate() {
        let module = &filter.handle.module;
        match groups.last_mut() {
            Some(group) if Arc::ptr_eq(group.module, module) => group.filters.end = i + 1,
            _ => groups.push(Group {
                module,
                filters: i..i + 1,
                weights: Vec::new(),
            }),
        }
    }
    if weigh == Weigh::Never {
        return groups;
    }
    for (w, weight) in policy.weights.iter().enumerate() {
        let module = &weight.handle.module;
        match groups
            .iter_mut()
            .rev()
            .find(|g| Arc::ptr_eq(g.module, module))
        {
            Some(group) => group.weights.push(w),
            None => groups.push(Group {
                module,
                filters: 0..0,
                weights: vec![w],
            }),
        }
    }
    groups
}

/// Runs the filters, then (as `weigh` says) the weights over `candidates`, one crossing per
/// group of [`plan`] (a group of one unit is a plain unit call). `details`: whether the
/// caller reads the rejections' details (see [`Call::details`]). A batch that faults as a
/// whole (a trap, the deadline, a malformed answer, an open breaker) is run again one unit
/// at a time, so each unit's fault is reported and handled as its own, exactly as without
/// batching.
fn run_units(
    policy: &Policy,
    view: &ClusterView,
    vm: &Vm,
    mut survivors: Vec<HostIndex>,
    weigh: Weigh,
    details: bool,
) -> Result<Stage> {
    let mut failures = Vec::new();
    let mut rejected: Vec<Rejected> = policy.filters.iter().map(|_| Rejected::default()).collect();
    // Per weight: the candidates its penalties are over, and its answer (`None`: not run in
    // a batch, so run on its own below).
    // The candidates are shared by the weights of one batch.
    type Answer = (Arc<[HostIndex]>, std::result::Result<Vec<Penalty>, String>);
    let mut answers: Vec<Option<Answer>> = policy.weights.iter().map(|_| None).collect();
    for group in plan(policy, weigh) {
        if survivors.is_empty() || (group.filters.is_empty() && !weigh.runs(survivors.len())) {
            continue;
        }
        let filters = &policy.filters[group.filters.clone()];
        let units: Vec<&PolicyUnit> = filters
            .iter()
            .chain(group.weights.iter().map(|&w| &policy.weights[w]))
            .collect();
        let args: Vec<BatchUnitRef<'_>> = units
            .iter()
            .map(|u| BatchUnitRef {
                unit: u.handle.index,
                params: &u.params,
            })
            .collect();
        let limits = CallLimits::combined(units.iter().map(|u| u.limits))
            .expect("a group holds at least one unit");
        let batch = Batch {
            epoch: view.epoch(),
            vm,
            candidates: &survivors,
            filters: &args[..filters.len()],
            weights: &args[filters.len()..],
            details,
        };
        // A group of one unit is an ordinary unit call: below, as without batching.
        let answered = if units.len() > 1 {
            match group.module.batch(view, batch, limits) {
                Ok(answered) => Some(answered),
                Err(fault) => {
                    tracing::debug!(
                        module = group.module.file(),
                        "a batch of units failed as a whole ({fault}); running them one by one"
                    );
                    None
                }
            }
        } else {
            None
        };
        match answered {
            Some(answered) => {
                for (i, answer) in group.filters.clone().zip(answered.filters) {
                    match answer {
                        Ok(verdicts) => narrow(&mut survivors, verdicts, &mut rejected[i]),
                        Err(message) => handle_fault(
                            &policy.filters[i],
                            UnitFault::GuestError(message),
                            &mut failures,
                        )?,
                    }
                }
                let over: Arc<[HostIndex]> = survivors.as_slice().into();
                for (&w, answer) in group.weights.iter().zip(answered.weights) {
                    answers[w] = Some((over.clone(), answer));
                }
            }
            // The group's weights are left to run on their own below.
            None => {
                for i in group.filters.clone() {
                    if survivors.is_empty() {
                        break;
                    }
                    let filter = &policy.filters[i];
                    if let Some(verdicts) =
                        run_filter(filter, view, vm, &survivors, details, &mut failures)?
                    {
                        narrow(&mut survivors, verdicts, &mut rejected[i]);
                    }
                }
            }
        }
    }
    let mut columns = Vec::with_capacity(policy.weights.len());
    for (weight, answer) in policy.weights.iter().zip(answers) {
        if weigh == Weigh::Always && survivors.is_empty() {
            // A part of a split decision with nothing left: an empty column.
            columns.push(Some(Vec::new()));
            continue;
        }
        if !weigh.runs(survivors.len()) {
            columns.push(None);
            continue;
        }
        let penalties = match answer {
            Some((over, Ok(penalties))) => Ok(pick(&over, penalties, &survivors)),
            Some((_, Err(message))) => Err(UnitFault::GuestError(message)),
            None => weight.handle.module.weigh(
                view,
                unit_call(weight, view, Some(vm), &survivors, details),
                weight.limits,
            ),
        };
        match penalties {
            Ok(p) => columns.push(Some(p)),
            Err(fault) => {
                handle_fault(weight, fault, &mut failures)?;
                columns.push(None);
            }
        }
    }
    Ok(Stage {
        survivors,
        rejected,
        columns,
        failures,
    })
}

/// Drops the candidates a filter rejected from `survivors` (which it judged, in order) and
/// records them in `out`.
fn narrow(survivors: &mut Vec<HostIndex>, verdicts: Verdicts, out: &mut Rejected) {
    if verdicts.all_pass() {
        return;
    }
    // Compacted in place (no second list): the hosts kept so far end at `kept`.
    let mut kept = 0;
    let mut from = 0;
    out.hosts.reserve(verdicts.rejected.len());
    for r in verdicts.rejected {
        let position = r.position as usize;
        out.hosts.push((survivors[position], r.code, r.detail));
        survivors.copy_within(from..position, kept);
        kept += position - from;
        from = position + 1;
    }
    let len = survivors.len();
    survivors.copy_within(from..len, kept);
    survivors.truncate(kept + len - from);
    out.codes = verdicts.codes;
}

/// The penalties of `wanted` (a subsequence of `over`, in the same order) out of
/// `penalties`, one per host of `over`.
fn pick(over: &[HostIndex], penalties: Vec<Penalty>, wanted: &[HostIndex]) -> Vec<Penalty> {
    if over.len() == wanted.len() {
        return penalties;
    }
    let mut next = wanted.iter().peekable();
    let mut picked = Vec::with_capacity(wanted.len());
    for (host, penalty) in over.iter().zip(penalties) {
        if next.peek() == Some(&host) {
            next.next();
            picked.push(penalty);
        }
    }
    picked
}

/// Cores one decision may use (cached).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Into how many parts a decision over `candidates` hosts is split (1: not split).
pub(super) fn split_parts(candidates: usize) -> usize {
    if candidates < SPLIT_MIN_CANDIDATES {
        return 1;
    }
    cores().min(candidates / SPLIT_MIN_PART).max(1)
}

/// Before a decision: when several modules of the policy (or several instances of one, for a
/// split decision) need the whole snapshot, sends it to them on several threads at once
/// instead of one after another as the calls come. Faults are left for the calls to meet.
fn prepare_instances(policy: &Policy, view: &ClusterView, parts: usize) {
    let mut modules: Vec<&PolicyUnit> = Vec::new();
    for unit in policy.filters.iter().chain(&policy.weights) {
        let module = &unit.handle.module;
        if !modules
            .iter()
            .any(|u| std::sync::Arc::ptr_eq(&u.handle.module, module))
            && module.needs_full_sync(view, parts)
        {
            modules.push(unit);
        }
    }
    if modules.len() < 2 && parts < 2 {
        return;
    }
    std::thread::scope(|scope| {
        let last = modules.pop();
        for unit in modules {
            scope.spawn(move || unit.handle.module.prepare(view, unit.limits, parts));
        }
        if let Some(unit) = last {
            unit.handle.module.prepare(view, unit.limits, parts);
        }
    });
}

/// [`run_units`] over `candidates`, split into contiguous parts run on several cores at
/// once when there are enough candidates (each part on its own instance of every module;
/// penalties are raw per host, so the parts' answers are simply put end to end).
fn run_units_split(
    policy: &Policy,
    view: &ClusterView,
    vm: &Vm,
    candidates: Vec<HostIndex>,
    details: bool,
) -> Result<Stage> {
    let parts = split_parts(candidates.len());
    if parts < 2 {
        return run_units(policy, view, vm, candidates, Weigh::IfSeveral, details);
    }
    let size = candidates.len().div_ceil(parts);
    let results = on_chunks(&candidates, size, |chunk| {
        run_units(policy, view, vm, chunk.to_vec(), Weigh::Always, details)
    });
    let stages = results.into_iter().collect::<Result<Vec<Stage>>>()?;
    Ok(merge(stages, policy.filters.len(), policy.weights.len()))
}

/// `work` over each contiguous chunk of `size` items, the first on the calling thread and
/// the others on threads of their own (a split decision's parts); the results in chunk
/// order. A panic on any thread goes on on the caller's. One chunk (or none) starts no
/// thread.
pub(super) fn on_chunks<T: Sync, R: Send>(
    items: &[T],
    size: usize,
    work: impl Fn(&[T]) -> R + Sync,
) -> Vec<R> {
    if items.len() <= size {
        return vec![work(items)];
    }
    let work = &work;
    std::thread::scope(|scope| {
        let mut chunks = items.chunks(size.max(1));
        let first = chunks.next().unwrap_or_default();
        let others: Vec<_> = chunks
            .map(|chunk| scope.spawn(move || work(chunk)))
            .collect();
        let mut results = vec![work(first)];
        results.extend(others.into_iter().map(|h| match h.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }));
        results
    })
}

/// The stages of the contiguous parts of a split decision, in order, as one stage: survivors
/// and rejections end to end (reject codes renumbered), weight columns end to end (a weight
/// that failed open on any part is dropped, as it would have been on one core), failures
/// once per unit, and no weights when at most one host survived (as on one core).
fn merge(stages: Vec<Stage>, filters: usize, weights: usize) -> Stage {
    let mut merged = Stage {
        survivors: Vec::new(),
        rejected: (0..filters).map(|_| Rejected::default()).collect(),
        columns: vec![Some(Vec::new()); weights],
        failures: Vec::new(),
    };
    for stage in stages {
        merged.survivors.extend(stage.survivors);
        for (into, from) in merged.rejected.iter_mut().zip(stage.rejected) {
            // Codes renumbered into the merged list.
            let map: Vec<u32> = from
                .codes
                .into_iter()
                .map(|code| match into.codes.iter().position(|c| *c == code) {
                    Some(i) => i as u32,
                    None => {
                        into.codes.push(code);
                        (into.codes.len() - 1) as u32
                    }
                })
                .collect();
            into.hosts.extend(
                from.hosts
                    .into_iter()
                    .map(|(host, code, detail)| (host, map[code as usize], detail)),
            );
        }
        for (into, from) in merged.columns.iter_mut().zip(stage.columns) {
            match (into.as_mut(), from) {
                (Some(column), Some(part)) => column.extend(part),
                // The weight failed open on a part: dropped from the sum, as on one core.
                _ => *into = None,
            }
        }
        for failure in stage.failures {
            if !merged.failures.iter().any(|f| f.unit == failure.unit) {
                merged.failures.push(failure);
            }
        }
    }
    if merged.survivors.len() <= 1 {
        // As on one core: no weights for a single host.
        merged.columns.iter_mut().for_each(|c| *c = None);
    }
    for column in &mut merged.columns {
        if column
            .as_ref()
            .is_some_and(|c| c.len() != merged.survivors.len())
        {
            *column = None;
        }
    }
    merged
}

/// The call of one unit over the candidates, borrowing everything it sends; `details`:
/// whether the caller reads reject details.
pub(crate) fn unit_call<'a>(
    unit: &'a PolicyUnit,
    view: &ClusterView,
    vm: Option<&'a Vm>,
    candidates: &'a [HostIndex],
    details: bool,
) -> Call<'a> {
    Call {
        unit: unit.handle.index,
        epoch: view.epoch(),
        params: &unit.params,
        vm,
        candidates,
        details,
    }
}

/// Runs one filter over the candidates. `None`: the unit failed and fails open (recorded
/// in `failures`); a fail-closed fault is the error.
fn run_filter(
    filter: &PolicyUnit,
    view: &ClusterView,
    vm: &Vm,
    candidates: &[HostIndex],
    details: bool,
    failures: &mut Vec<UnitFailure>,
) -> Result<Option<Verdicts>> {
    match filter.handle.module.filter(
        view,
        unit_call(filter, view, Some(vm), candidates, details),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One filter's rejections in a test: its codes, and (host, code index) pairs.
    type FilterRejections<'a> = (Vec<&'a str>, Vec<(HostIndex, u32)>);

    fn stage(
        survivors: &[HostIndex],
        rejected: Vec<FilterRejections<'_>>,
        columns: Vec<Option<Vec<Penalty>>>,
    ) -> Stage {
        Stage {
            survivors: survivors.to_vec(),
            rejected: rejected
                .into_iter()
                .map(|(codes, hosts)| Rejected {
                    codes: codes.into_iter().map(String::from).collect(),
                    hosts: hosts
                        .into_iter()
                        .map(|(h, c)| (h, c, format!("d{h}")))
                        .collect(),
                })
                .collect(),
            columns,
            failures: Vec::new(),
        }
    }

    /// `narrow` keeps the survivors a filter passed, in order, and records the ones it
    /// rejected with their codes: for rejections at the start, the end, in runs, none and
    /// all.
    #[test]
    fn narrow_keeps_the_passed_survivors_in_order_and_records_the_rejected() {
        let survivors: Vec<HostIndex> = vec![10, 11, 12, 13, 14, 15];
        let cases: [(&str, &[usize]); 6] = [
            ("none", &[]),
            ("first", &[0]),
            ("last", &[5]),
            ("a run in the middle", &[2, 3]),
            ("every other", &[0, 2, 4]),
            ("all", &[0, 1, 2, 3, 4, 5]),
        ];
        for (case, rejected_at) in cases {
            let mut verdicts = Verdicts::default();
            for position in 0..survivors.len() {
                verdicts.push(if rejected_at.contains(&position) {
                    policy_sdk::Verdict::reject("full", format!("p{position}"))
                } else {
                    policy_sdk::Verdict::Pass
                });
            }
            let mut narrowed = survivors.clone();
            let mut out = Rejected::default();
            narrow(&mut narrowed, verdicts, &mut out);
            let kept: Vec<HostIndex> = (0..survivors.len())
                .filter(|p| !rejected_at.contains(p))
                .map(|p| survivors[p])
                .collect();
            assert_eq!(narrowed, kept, "{case}");
            let recorded: Vec<(HostIndex, u32, String)> = rejected_at
                .iter()
                .map(|&p| (survivors[p], 0, format!("p{p}")))
                .collect();
            assert_eq!(out.hosts, recorded, "{case}");
        }
    }

    #[test]
    fn split_parts_merge_in_candidate_order_with_codes_renumbered() {
        let first = stage(
            &[0, 2],
            vec![(vec!["full"], vec![(1, 0)]), (vec![], vec![])],
            vec![Some(vec![5, 6]), Some(vec![1, 1])],
        );
        let second = stage(
            &[3, 5],
            vec![
                (vec!["offline", "full"], vec![(4, 1), (6, 0)]),
                (vec![], vec![]),
            ],
            vec![Some(vec![7, 8]), None],
        );
        let merged = merge(vec![first, second], 2, 2);
        assert_eq!(merged.survivors, [0, 2, 3, 5]);
        assert_eq!(merged.rejected[0].codes, ["full", "offline"]);
        let hosts: Vec<(HostIndex, &str)> = merged.rejected[0]
            .hosts
            .iter()
            .map(|(h, c, _)| (*h, merged.rejected[0].codes[*c as usize].as_str()))
            .collect();
        assert_eq!(hosts, [(1, "full"), (4, "full"), (6, "offline")]);
        assert!(merged.rejected[1].hosts.is_empty());
        assert_eq!(merged.columns[0], Some(vec![5, 6, 7, 8]));
        // Failed open on one part: dropped, as on one core.
        assert_eq!(merged.columns[1], None);
    }

    #[test]
    fn a_split_decision_with_one_survivor_has_no_weights() {
        let first = stage(&[4], vec![], vec![Some(vec![9])]);
        let second = stage(&[], vec![], vec![Some(vec![])]);
        let merged = merge(vec![first, second], 0, 1);
        assert_eq!(merged.survivors, [4]);
        assert_eq!(merged.columns, [None]);
    }
}
