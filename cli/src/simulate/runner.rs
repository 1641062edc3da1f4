//! Running a scenario: each event applied to the cluster, what it did recorded.

use super::*;

/// What happened after a failed start or migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum AfterFailure {
    /// Scheduled again; the new decision is in [`EventOutcome::decisions`].
    Rescheduled {
        /// Hosts it was kept away from: the host it failed on, and the hosts the new
        /// decision lists as blacklisted (earlier attempts).
        without: Vec<String>,
    },
    /// Not scheduled again (`reschedule: false`): the VM stays down.
    StaysDown,
    /// It ran out of start attempts: the VM stays down.
    GaveUp {
        /// Hosts tried, in order.
        tried: Vec<String>,
    },
    /// A failed migration: the VM stays on its source host.
    StaysOnSource {
        /// The source host.
        host: Option<String>,
    },
    /// The VM was not placed anywhere: nothing to retry.
    NotPlaced,
}

/// One thing an event did besides making decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Effect {
    /// A VM came up on the host it was placed on (or finished migrating there).
    Started {
        /// VM id.
        vm: String,
        /// The host.
        host: String,
        /// The source host, for a migration.
        migrated_from: Option<String>,
        /// Pending records released.
        released: usize,
    },
    /// A start or migration failed.
    Failed {
        /// VM id.
        vm: String,
        /// The host it was placed on.
        host: Option<String>,
        /// Pending records released.
        released: usize,
        /// What happened next.
        next: AfterFailure,
    },
    /// A migration failed (`migration_failed`): the VM stays on its source.
    MigrationFailed {
        /// VM id.
        vm: String,
        /// The destination it was placed on.
        host: String,
        /// The source host it stays on.
        source: Option<String>,
        /// Pending records released.
        released: usize,
    },
    /// A host's status changed.
    HostStatus {
        /// Host id.
        host: String,
        /// The new status.
        status: HostStatus,
    },
    /// A host left the cluster.
    HostRemoved {
        /// Host id.
        host: String,
        /// Its pending records, released.
        released: usize,
        /// VMs placed there and not started: scheduled again (see the event's decisions).
        displaced: Vec<String>,
        /// VMs that ran there: now down.
        stopped: Vec<String>,
    },
    /// A VM may only run on hosts that are not up: the engine requested a wake-up (or
    /// says why none is possible) instead of scheduling it.
    WakeUp(WakeUp),
    /// A running VM shut down and left its host.
    Stopped {
        /// VM id.
        vm: String,
        /// The host it ran on.
        host: String,
    },
    /// The event did nothing for this VM, because of what earlier decisions did (e.g. a
    /// `vm_up` for a VM that found no host).
    Skipped {
        /// VM id.
        vm: String,
        /// Why.
        reason: String,
    },
}

/// The pending resources on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostPending {
    /// Host id.
    pub host: String,
    /// The host's pending aggregate.
    pub pending: PendingAggregate,
}

/// What one event did.
#[derive(Debug, Clone, Serialize)]
pub struct EventOutcome {
    /// Index of the event in the scenario.
    pub index: usize,
    /// The event.
    pub event: Event,
    /// Decisions made, in order: one per started VM, plus reschedules (failed VMs, VMs
    /// displaced by a removed host) and migrations.
    pub decisions: Vec<Decision>,
    /// Pending records released by the event, in all.
    pub released: usize,
    /// What else happened, in order.
    pub effects: Vec<Effect>,
    /// Hosts with something pending after the event, by host id.
    pub pending: Vec<HostPending>,
    /// Hosts whose pending aggregate the event changed (including hosts left with nothing
    /// pending, and removed hosts), by host id.
    pub pending_changed: Vec<String>,
    /// The cluster's epoch after the event.
    pub epoch: u64,
    /// Balance cycles run by a `balance` event, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cycles: Vec<CycleReport>,
}

/// Replays a scenario on a cluster with a policy, one event after another, and reports
/// what each did. The scenario is validated first ([`validate`], with `<scenario>` as the
/// file name in errors); an error while running an event (e.g. a fail-closed unit fault)
/// stops the run and names the event index and VM.
///
/// "No host" is not an error: the decision says why, the VM is counted in the summary, and
/// later events about that VM are reported as skipped ([`Effect::Skipped`]).
///
/// `detail` is how much each decision keeps about the hosts it did not choose: what the run
/// reports. A text report shows each decision's summary line ([`Detail::Summary`] keeps the
/// chosen host and a few runners-up), JSON every host ([`Detail::Full`]); so what a run
/// keeps grows with what it reports, not with VMs x hosts.
pub fn run(
    policy: &Policy,
    cluster: &Cluster,
    scenario: &Scenario,
    detail: Detail,
) -> Result<Vec<EventOutcome>> {
    validate(scenario, &cluster.snapshot(), "<scenario>")?;
    let mut runner = Runner {
        policy,
        cluster,
        detail,
        defined: scenario.vms.iter().map(|vm| (vm.id.as_str(), vm)).collect(),
        unplaced: HashMap::new(),
        clock: Clock::default(),
    };
    let mut outcomes = Vec::with_capacity(scenario.events.len());
    let mut before: BTreeMap<String, PendingAggregate> =
        cluster.pending_by_host().into_iter().collect();
    for (index, event) in scenario.events.iter().enumerate() {
        let mut outcome = EventOutcome {
            index,
            event: event.clone(),
            decisions: Vec::new(),
            released: 0,
            effects: Vec::new(),
            pending: Vec::new(),
            pending_changed: Vec::new(),
            epoch: 0,
            cycles: Vec::new(),
        };
        runner.apply(index, event, &mut outcome)?;
        for decision in &outcome.decisions {
            match &decision.chosen {
                Some(_) => runner.unplaced.remove(&decision.vm),
                None => runner
                    .unplaced
                    .insert(decision.vm.clone(), "no host was found for it".into()),
            };
        }
        let now: BTreeMap<String, PendingAggregate> =
            cluster.pending_by_host().into_iter().collect();
        let mut changed: BTreeSet<&String> = now
            .iter()
            .filter(|(host, agg)| before.get(*host) != Some(*agg))
            .map(|(host, _)| host)
            .collect();
        changed.extend(before.keys().filter(|host| !now.contains_key(*host)));
        outcome.pending_changed = changed.into_iter().cloned().collect();
        outcome.pending = now
            .iter()
            .map(|(host, pending)| HostPending {
                host: host.clone(),
                pending: pending.clone(),
            })
            .collect();
        before = now;
        outcome.epoch = cluster.epoch();
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

struct Runner<'a> {
    policy: &'a Policy,
    cluster: &'a Cluster,
    defined: HashMap<&'a str, &'a Vm>,
    /// Why a VM has no placement, when a decision or failure left it without one.
    unplaced: HashMap<String, String>,
    /// The simulated time of balance cycles.
    clock: Clock,
    /// How much each decision keeps about the hosts it did not choose.
    detail: Detail,
}

/// A runtime error of event `index`, naming the field (`events[i]`, `events[i].vms[j]`).
pub(super) fn at(field: String, event: &Event, vm: Option<&str>, e: Error) -> Error {
    let what = match vm {
        Some(vm) => format!("{} {vm}", event.name()),
        None => event.to_string(),
    };
    Error::input(format!("{field} ({what})"), None, e.to_string())
}

impl Runner<'_> {
    fn apply(&mut self, i: usize, event: &Event, out: &mut EventOutcome) -> Result<()> {
        let here = || format!("events[{i}]");
        let fail = |e: Error| at(here(), event, None, e);
        let cluster = self.cluster;
        match event {
            Event::Start { vms } => {
                // The requests own copies of the VMs: the snapshot is let go before the
                // decisions, so that each reservation can update it in place.
                let snapshot = cluster.snapshot();
                let known: HashMap<&str, &Vm> =
                    snapshot.vms.iter().map(|v| (v.id.as_str(), v)).collect();
                let mut requests = Vec::with_capacity(vms.len());
                let mut positions = Vec::with_capacity(vms.len());
                for (j, id) in vms.iter().enumerate() {
                    let Some(vm) = known
                        .get(id.as_str())
                        .or_else(|| self.defined.get(id.as_str()))
                    else {
                        return Err(at(
                            format!("events[{i}].vms[{j}]"),
                            event,
                            Some(id),
                            Error::not_found("VM", id.as_str()),
                        ));
                    };
                    if vm.is_running() {
                        out.effects.push(Effect::Skipped {
                            vm: id.clone(),
                            reason: format!(
                                "already running on {}",
                                vm.current_host.as_deref().unwrap_or("?")
                            ),
                        });
                        continue;
                    }
                    if let Some(wake) = WakeUp::needed(&snapshot, vm) {
                        if let (Some(host), Some(action)) = (&wake.host, wake.action) {
                            timeline::execute_power(cluster, host, action).map_err(|e| {
                                at(format!("events[{i}].vms[{j}]"), event, Some(id), e)
                            })?;
                        }
                        self.unplaced
                            .insert(id.clone(), format!("it waits: {wake}"));
                        out.effects.push(Effect::WakeUp(wake));
                        continue;
                    }
                    requests.push(ScheduleRequest::new((*vm).clone()).detail(self.detail));
                    positions.push(j);
                }
                drop(known);
                drop(snapshot);
                let results = self.policy.schedule_batch(cluster, &requests);
                for (result, j) in results.into_iter().zip(positions) {
                    let decision = result.map_err(|e| {
                        at(format!("events[{i}].vms[{j}]"), event, Some(&vms[j]), e)
                    })?;
                    out.decisions.push(decision);
                }
            }
            Event::VmUp { vm } | Event::MigrationFinished { vm } => {
                let Some(placement) = cluster.placement(vm) else {
                    out.effects.push(self.skipped(vm));
                    return Ok(());
                };
                let release = if matches!(event, Event::VmUp { .. }) {
                    cluster.vm_started(vm)
                } else {
                    cluster.migration_finished(vm)
                }
                .map_err(fail)?;
                out.released += release.records.len();
                out.effects.push(Effect::Started {
                    vm: vm.clone(),
                    host: placement.host,
                    migrated_from: match placement.kind {
                        PlacementKind::Migration { source } => Some(source),
                        PlacementKind::Start => None,
                    },
                    released: release.records.len(),
                });
            }
            Event::VmFailed { vm, reschedule } => {
                if cluster.placement(vm).is_none() {
                    out.effects.push(self.skipped(vm));
                    return Ok(());
                }
                let failed = if *reschedule {
                    self.policy.vm_failed(cluster, vm)
                } else {
                    cluster.vm_failed(vm).map(VmFailed::from)
                }
                .map_err(fail)?;
                self.record_failure(failed, out);
            }
            Event::Migrate { vm } => {
                let snapshot = cluster.snapshot();
                let running = snapshot
                    .vms
                    .iter()
                    .find(|v| v.id == *vm)
                    .filter(|v| v.is_running());
                let Some(running) = running else {
                    out.effects.push(Effect::Skipped {
                        vm: vm.clone(),
                        reason: "it does not run anywhere: nothing to migrate".into(),
                    });
                    return Ok(());
                };
                let request = ScheduleRequest::migration(running.clone())
                    .map_err(fail)?
                    .detail(self.detail);
                drop(snapshot);
                let decision = self.policy.schedule(cluster, &request).map_err(fail)?;
                out.decisions.push(decision);
            }
            Event::MigrationFailed { vm } => {
                let Some(placement) = cluster.placement(vm) else {
                    out.effects.push(self.skipped(vm));
                    return Ok(());
                };
                let release = cluster.migration_failed(vm).map_err(fail)?;
                out.released += release.records.len();
                out.effects.push(Effect::MigrationFailed {
                    vm: vm.clone(),
                    host: placement.host,
                    source: source_of(&placement.kind),
                    released: release.records.len(),
                });
            }
            Event::HostDown { host, reschedule } => {
                let failures: Vec<VmFailed> = if *reschedule {
                    self.policy.host_down(cluster, host, HostStatus::Down)
                } else {
                    cluster
                        .host_down(host, HostStatus::Down)
                        .map(|failed| failed.into_iter().map(VmFailed::from).collect())
                }
                .map_err(fail)?;
                out.effects.push(Effect::HostStatus {
                    host: host.clone(),
                    status: HostStatus::Down,
                });
                for failed in failures {
                    self.record_failure(failed, out);
                }
            }
            Event::HostUp { host } => {
                cluster
                    .set_host_status(host, HostStatus::Up)
                    .map_err(fail)?;
                out.effects.push(Effect::HostStatus {
                    host: host.clone(),
                    status: HostStatus::Up,
                });
            }
            Event::RemoveHost { host } => {
                let removed = cluster.remove_host(host).map_err(fail)?;
                let released = removed.release.records.len();
                out.released += released;
                for vm in &removed.stopped {
                    self.unplaced
                        .insert(vm.clone(), format!("it was stopped: {host} was removed"));
                }
                out.effects.push(Effect::HostRemoved {
                    host: host.clone(),
                    released,
                    displaced: removed.displaced.iter().map(|p| p.vm.id.clone()).collect(),
                    stopped: removed.stopped.clone(),
                });
                let mut requests = Vec::with_capacity(removed.displaced.len());
                for placement in removed.displaced {
                    let id = placement.vm.id.clone();
                    requests.push(match placement.kind {
                        PlacementKind::Start => ScheduleRequest::new(placement.vm),
                        PlacementKind::Migration { .. } => ScheduleRequest::migration(placement.vm)
                            .map_err(|e| at(here(), event, Some(&id), e))?,
                    });
                }
                let results = self.policy.schedule_batch(cluster, &requests);
                for (result, request) in results.into_iter().zip(&requests) {
                    out.decisions
                        .push(result.map_err(|e| at(here(), event, Some(&request.vm.id), e))?);
                }
            }
            Event::Balance { cycles, minutes } => {
                self.balance(*cycles, *minutes, out).map_err(fail)?;
            }
            Event::Load {
                vms,
                cpu_usage_percent,
            } => {
                let snapshot = cluster.snapshot();
                let mut changes = Vec::new();
                for (j, id) in vms.iter().enumerate() {
                    match snapshot.vms.iter().find(|v| v.id == *id) {
                        Some(vm) => {
                            let mut vm = vm.clone();
                            vm.cpu_usage_percent = *cpu_usage_percent;
                            changes.push(Change::UpsertVm(vm));
                        }
                        None => {
                            return Err(at(
                                format!("events[{i}].vms[{j}]"),
                                event,
                                Some(id),
                                Error::not_found_because(
                                    "VM",
                                    id.as_str(),
                                    format!("VM {id:?} is not in the cluster (start it first)"),
                                ),
                            ))
                        }
                    }
                }
                drop(snapshot);
                cluster.apply(changes).map_err(fail)?;
            }
            Event::Stop { vms } => {
                let snapshot = cluster.snapshot();
                let mut changes = Vec::new();
                for id in vms {
                    match snapshot.vms.iter().find(|v| v.id == *id && v.is_running()) {
                        Some(vm) => {
                            out.effects.push(Effect::Stopped {
                                vm: id.clone(),
                                host: vm.current_host.clone().unwrap_or_default(),
                            });
                            let mut vm = vm.clone();
                            vm.status = VmStatus::Down;
                            vm.current_host = None;
                            changes.push(Change::UpsertVm(vm));
                        }
                        None => out.effects.push(self.skipped(id)),
                    }
                }
                drop(snapshot);
                cluster.apply(changes).map_err(fail)?;
            }
        }
        Ok(())
    }

    fn balance(&mut self, cycles: u32, minutes: u32, out: &mut EventOutcome) -> Result<()> {
        for _ in 0..cycles {
            timeline::advance(self.cluster, &mut self.clock, minutes)?;
            out.cycles
                .push(timeline::cycle(self.policy, self.cluster, &self.clock)?);
        }
        Ok(())
    }

    fn skipped(&self, vm: &str) -> Effect {
        let why = self
            .unplaced
            .get(vm)
            .map(String::as_str)
            .unwrap_or("it is not placed on any host");
        Effect::Skipped {
            vm: vm.to_string(),
            reason: format!("not placed: {why}"),
        }
    }

    fn record_failure(&mut self, failed: VmFailed, out: &mut EventOutcome) {
        let vm = failed.vm.as_str();
        let (host, source) = match &failed.placement {
            Some(p) => (Some(p.host.clone()), source_of(&p.kind)),
            None => (None, None),
        };
        let released = failed.release.records.len();
        out.released += released;
        let next = match failed.reschedule {
            Reschedule::Decided { decision, avoided } => {
                out.decisions.push(*decision);
                AfterFailure::Rescheduled { without: avoided }
            }
            Reschedule::NotRequested => {
                self.unplaced
                    .insert(vm.to_string(), "it failed and was not rescheduled".into());
                AfterFailure::StaysDown
            }
            Reschedule::GaveUp { tried } => {
                self.unplaced.insert(
                    vm.to_string(),
                    format!("the engine gave up after {} attempts", tried.len()),
                );
                AfterFailure::GaveUp { tried }
            }
            Reschedule::MigrationAbandoned => AfterFailure::StaysOnSource { host: source },
            Reschedule::NotPlaced => AfterFailure::NotPlaced,
        };
        out.effects.push(Effect::Failed {
            vm: vm.to_string(),
            host,
            released,
            next,
        });
    }
}

fn source_of(kind: &PlacementKind) -> Option<String> {
    match kind {
        PlacementKind::Migration { source } => Some(source.clone()),
        PlacementKind::Start => None,
    }
}
