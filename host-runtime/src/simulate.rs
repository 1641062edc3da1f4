//! Replaying lifecycle events through the engine: a mass start, VMs coming up or failing,
//! migrations, hosts going down or away, each applied to a [`Cluster`] with a [`Policy`],
//! one after another, reporting the decisions made and the pending resources left after
//! every event.
//!
//! A [`Scenario`] is read from JSON or TOML ([`Scenario::from_file`]):
//!
//! ```json
//! {
//!   "vms": [{ "id": "batch-1", "memory_mb": 8192 }],
//!   "events": [
//!     { "event": "start", "vms": ["web-1", "web-2", "batch-1"] },
//!     { "event": "vm_up", "vm": "web-1" },
//!     { "event": "vm_failed", "vm": "web-2" },
//!     { "event": "host_down", "host": "host-3", "reschedule": false },
//!     { "event": "migrate", "vm": "db-1" },
//!     { "event": "migration_finished", "vm": "db-1" }
//!   ]
//! }
//! ```
//!
//! Balance cycles over time: `{ "event": "balance", "cycles": 12, "minutes": 5 }` runs the
//! policy's balance unit once per cycle, after advancing a simulated clock and sending
//! every host's report (usage recomputed from its VMs), and carries the plan out (see
//! [`crate::timeline`]); `{ "event": "load", "vms": [...], "cpu_usage_percent": 40 }`
//! changes VMs' CPU usage and `{ "event": "stop", "vms": [...] }` shuts VMs down. A VM that
//! may only run on hosts that are not up is not scheduled by `start`: the engine requests
//! the wake-up of one of them ([`Effect::WakeUp`]) and the simulated manager carries it out.
//!
//! [`validate`] checks the whole scenario against the cluster before anything runs: every
//! VM and host an event names must exist, and every event must make sense after the ones
//! before it, assuming every decision finds a host (starting a running VM, `vm_up` for a
//! VM nothing started, migrating a VM that does not run... are errors naming the event
//! index and field, e.g. `events[3].vm`). What only the decisions can tell (a `vm_up` for a
//! VM that found no host) is not an error: [`run`] reports the event as skipped for that
//! VM ([`Effect::Skipped`]) and goes on.

use crate::balance::{action_name, PlannedAction};
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::files;
use crate::lifecycle::{PlacementKind, Reschedule, VmFailed};
use crate::power::{wake_up_for, WakeUp};
use crate::scheduler::{Decision, ScheduleRequest};
use crate::timeline::{self, Clock, CycleReport, Sample};
use crate::Policy;
use policy_sdk::abi::Change;
use policy_sdk::{HostStatus, PendingAggregate, Snapshot, Vm, VmStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::Path;

/// A sequence of lifecycle events to replay on a cluster, with the definitions of the VMs
/// it starts that the cluster file does not list.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// VM definitions that are not in the cluster (down, on no host). Optional.
    #[serde(default)]
    pub vms: Vec<Vm>,
    /// The events, applied in order.
    pub events: Vec<Event>,
}

impl Scenario {
    /// Reads a scenario file (JSON, or TOML by extension); errors name the file and field.
    pub fn from_file(path: &Path) -> Result<Self> {
        files::read_document(path)
    }
}

fn yes() -> bool {
    true
}

/// One lifecycle event. In files: an object tagged by `"event"`, e.g.
/// `{ "event": "vm_failed", "vm": "web-3", "reschedule": false }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// A mass start: the VMs are scheduled one after another in the listed order
    /// ([`Policy::schedule_batch`]), each decision seeing the pending resources of the
    /// previous ones.
    Start {
        /// VM ids (from the cluster or the scenario's `vms`).
        vms: Vec<String>,
    },
    /// A starting (or migrating) VM reached up on the host it was placed on
    /// ([`Cluster::vm_started`]).
    VmUp {
        /// VM id.
        vm: String,
    },
    /// A starting (or migrating) VM failed ([`Cluster::vm_failed`]). A failed start is
    /// scheduled again, without the hosts it was tried on, unless `reschedule` is false.
    VmFailed {
        /// VM id.
        vm: String,
        /// Schedule the VM again (default true).
        #[serde(default = "yes")]
        reschedule: bool,
    },
    /// Migrate a running VM away from its host ([`ScheduleRequest::migration`]).
    Migrate {
        /// VM id.
        vm: String,
    },
    /// A migration finished ([`Cluster::migration_finished`]).
    MigrationFinished {
        /// VM id.
        vm: String,
    },
    /// A migration failed; the VM stays on its source ([`Cluster::migration_failed`]).
    MigrationFailed {
        /// VM id.
        vm: String,
    },
    /// A host went down ([`Cluster::host_down`]): the VMs placed there and not started
    /// fail, and are scheduled again unless `reschedule` is false.
    HostDown {
        /// Host id.
        host: String,
        /// Schedule the failed VMs again (default true).
        #[serde(default = "yes")]
        reschedule: bool,
    },
    /// A host came back up.
    HostUp {
        /// Host id.
        host: String,
    },
    /// A host left the cluster ([`Cluster::remove_host`]); the VMs that were placed there
    /// and not started are scheduled again.
    RemoveHost {
        /// Host id.
        host: String,
    },
    /// Balance cycles over time: each advances the clock by `minutes`, sends the host
    /// reports, runs the policy's balance unit and carries its plan out.
    Balance {
        /// Number of cycles (default 1).
        #[serde(default = "one")]
        cycles: u32,
        /// Minutes per cycle (default 5).
        #[serde(default = "five")]
        minutes: u32,
    },
    /// The CPU usage of running VMs changes (the next host reports show it).
    Load {
        /// VM ids.
        vms: Vec<String>,
        /// New CPU usage, in percent of each VM's vCPUs.
        cpu_usage_percent: u32,
    },
    /// Running VMs shut down and leave their hosts.
    Stop {
        /// VM ids.
        vms: Vec<String>,
    },
}

fn one() -> u32 {
    1
}

fn five() -> u32 {
    5
}

impl Event {
    /// The event's name, as in files (`start`, `vm_up`...).
    pub fn name(&self) -> &'static str {
        match self {
            Event::Start { .. } => "start",
            Event::VmUp { .. } => "vm_up",
            Event::VmFailed { .. } => "vm_failed",
            Event::Migrate { .. } => "migrate",
            Event::MigrationFinished { .. } => "migration_finished",
            Event::MigrationFailed { .. } => "migration_failed",
            Event::HostDown { .. } => "host_down",
            Event::HostUp { .. } => "host_up",
            Event::RemoveHost { .. } => "remove_host",
            Event::Balance { .. } => "balance",
            Event::Load { .. } => "load",
            Event::Stop { .. } => "stop",
        }
    }
}

/// How many VM ids the one-line form of a `start` event names before summing up.
const START_LIST_LIMIT: usize = 16;

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        match self {
            Event::Start { vms } => {
                let shown: Vec<&str> = vms
                    .iter()
                    .take(START_LIST_LIMIT)
                    .map(String::as_str)
                    .collect();
                write!(f, " {}", shown.join(", "))?;
                if vms.len() > START_LIST_LIMIT {
                    write!(f, ", ... ({} VMs)", vms.len())?;
                }
                Ok(())
            }
            Event::VmUp { vm }
            | Event::Migrate { vm }
            | Event::MigrationFinished { vm }
            | Event::MigrationFailed { vm } => write!(f, " {vm}"),
            Event::VmFailed { vm, reschedule } => {
                write!(f, " {vm}")?;
                if !reschedule {
                    write!(f, " (no reschedule)")?;
                }
                Ok(())
            }
            Event::HostDown { host, reschedule } => {
                write!(f, " {host}")?;
                if !reschedule {
                    write!(f, " (no reschedule)")?;
                }
                Ok(())
            }
            Event::HostUp { host } | Event::RemoveHost { host } => write!(f, " {host}"),
            Event::Balance { cycles, minutes } => {
                write!(f, " {cycles} cycle(s) of {minutes} min")
            }
            Event::Load {
                vms,
                cpu_usage_percent,
            } => write!(f, " {} at {cpu_usage_percent}%", list(vms)),
            Event::Stop { vms } => write!(f, " {}", list(vms)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Validation

/// What a VM is expected to be doing at a point of the scenario, assuming every decision
/// finds a host. `by`: the event that put it there (`None`: the cluster file).
#[derive(Debug, Clone)]
enum Expected {
    Down,
    Starting {
        by: Option<usize>,
    },
    Migrating {
        by: usize,
        from: Option<String>,
    },
    Running {
        by: Option<usize>,
        host: Option<String>,
    },
    /// Depends on decisions (e.g. it was pending on a host that went down).
    Unknown,
}

fn by(by: Option<usize>) -> String {
    match by {
        Some(i) => format!("by events[{i}]"),
        None => "in the cluster file".to_string(),
    }
}

impl Expected {
    fn of(vm: &Vm) -> Self {
        if vm.status == VmStatus::WaitForLaunch && vm.current_host.is_some() {
            Expected::Starting { by: None }
        } else if vm.is_running() {
            Expected::Running {
                by: None,
                host: vm.current_host.clone(),
            }
        } else {
            Expected::Down
        }
    }

    /// Why this VM cannot be started now, if it cannot.
    fn cannot_start(&self, id: &str) -> Option<String> {
        match self {
            Expected::Down | Expected::Unknown => None,
            Expected::Running { by: b, host } => Some(match host {
                Some(h) => format!("VM {id:?} is already running on {h:?}"),
                None => format!("VM {id:?} is already running (started {})", by(*b)),
            }),
            Expected::Starting { by: b } => Some(format!(
                "VM {id:?} is already being started ({}); send vm_up or vm_failed first",
                match b {
                    Some(_) => format!("placed {}", by(*b)),
                    None => "waiting for launch in the cluster file".to_string(),
                }
            )),
            Expected::Migrating { by: b, .. } => Some(format!(
                "VM {id:?} is being migrated (by events[{b}]); it is running"
            )),
        }
    }

    /// Why this VM is not waiting for a start or migration to end, if it is not.
    fn not_placed(&self, id: &str) -> Option<String> {
        match self {
            Expected::Starting { .. } | Expected::Migrating { .. } | Expected::Unknown => None,
            Expected::Down => Some(format!(
                "VM {id:?} is not being started or migrated (it is down): no earlier event \
                 places it"
            )),
            Expected::Running { .. } => Some(format!(
                "VM {id:?} is running, not being started or migrated: no earlier event \
                 places it"
            )),
        }
    }
}

/// Checks a scenario against a cluster snapshot before anything runs. Errors are
/// [`Error::Input`] naming `file` and the field at fault: `vms[2].id` for a VM defined
/// twice (in the scenario, or in the scenario and the cluster), `events[4].vm`,
/// `events[0].vms[2]` or `events[1].host` for an unknown VM or host, or for an event that
/// cannot happen after the ones before it (starting a running VM, `vm_up` for a VM no
/// event started, migrating a VM that does not run, naming a removed host...).
pub fn validate(scenario: &Scenario, snapshot: &Snapshot, file: &str) -> Result<()> {
    let err = |field: String, message: String| Error::input(file, Some(field), message);
    let mut vms: HashMap<&str, Expected> = snapshot
        .vms
        .iter()
        .map(|vm| (vm.id.as_str(), Expected::of(vm)))
        .collect();
    let mut defined: HashMap<&str, usize> = HashMap::new();
    for (i, vm) in scenario.vms.iter().enumerate() {
        let id = vm.id.as_str();
        if id.is_empty() {
            return Err(err(format!("vms[{i}].id"), "must not be empty".into()));
        }
        if let Some(k) = defined.get(id) {
            return Err(err(
                format!("vms[{i}].id"),
                format!("duplicate VM id {id:?} (also vms[{k}])"),
            ));
        }
        if vms.contains_key(id) {
            return Err(err(
                format!("vms[{i}].id"),
                format!("VM {id:?} is already defined in the cluster"),
            ));
        }
        if vm.current_host.is_some() {
            return Err(err(
                format!("vms[{i}].current_host"),
                "a VM defined in the scenario runs nowhere; define running VMs in the \
                 cluster file"
                    .into(),
            ));
        }
        defined.insert(id, i);
    }
    for vm in &scenario.vms {
        vms.insert(vm.id.as_str(), Expected::Down);
    }
    let hosts: HashSet<&str> = snapshot.hosts.iter().map(|h| h.id.as_str()).collect();
    let mut removed: HashMap<&str, usize> = HashMap::new();

    for (i, event) in scenario.events.iter().enumerate() {
        let vm_field = || format!("events[{i}].vm");
        let host_field = || format!("events[{i}].host");
        let check_host = |host: &str| -> Result<()> {
            if !hosts.contains(host) {
                return Err(err(host_field(), format!("unknown host {host:?}")));
            }
            if let Some(k) = removed.get(host) {
                return Err(err(
                    host_field(),
                    format!("host {host:?} was removed by events[{k}]"),
                ));
            }
            Ok(())
        };
        match event {
            Event::Start { vms: list } => {
                if list.is_empty() {
                    return Err(err(
                        format!("events[{i}].vms"),
                        "must list at least one VM".into(),
                    ));
                }
                let mut seen: HashMap<&str, usize> = HashMap::new();
                for (j, id) in list.iter().enumerate() {
                    let field = format!("events[{i}].vms[{j}]");
                    if let Some(k) = seen.insert(id.as_str(), j) {
                        return Err(err(
                            field,
                            format!("VM {id:?} is listed twice (also vms[{k}])"),
                        ));
                    }
                    let s = lookup(&mut vms, id, &field, file)?;
                    if let Some(message) = s.cannot_start(id) {
                        return Err(err(field, message));
                    }
                    *s = Expected::Starting { by: Some(i) };
                }
            }
            Event::VmUp { vm } => {
                let field = vm_field();
                let s = lookup(&mut vms, vm, &field, file)?;
                if let Some(message) = s.not_placed(vm) {
                    return Err(err(field, message));
                }
                *s = Expected::Running {
                    by: Some(i),
                    host: None,
                };
            }
            Event::VmFailed { vm, reschedule } => {
                let field = vm_field();
                let s = lookup(&mut vms, vm, &field, file)?;
                if let Some(message) = s.not_placed(vm) {
                    return Err(err(field, message));
                }
                *s = match s {
                    Expected::Starting { .. } if *reschedule => Expected::Starting { by: Some(i) },
                    Expected::Starting { .. } => Expected::Down,
                    Expected::Migrating { from, .. } => Expected::Running {
                        by: None,
                        host: from.clone(),
                    },
                    _ => Expected::Unknown,
                };
            }
            Event::Migrate { vm } => {
                let field = vm_field();
                let s = lookup(&mut vms, vm, &field, file)?;
                *s = match s {
                    Expected::Running { host, .. } => Expected::Migrating {
                        by: i,
                        from: host.clone(),
                    },
                    Expected::Unknown => Expected::Migrating { by: i, from: None },
                    Expected::Down => {
                        return Err(err(
                            field,
                            format!("VM {vm:?} does not run anywhere: nothing to migrate"),
                        ))
                    }
                    Expected::Starting { .. } => {
                        return Err(err(
                            field,
                            format!(
                                "VM {vm:?} is being started, not running yet; send vm_up first"
                            ),
                        ))
                    }
                    Expected::Migrating { by: k, .. } => {
                        return Err(err(
                            field,
                            format!("VM {vm:?} is already being migrated (by events[{k}])"),
                        ))
                    }
                };
            }
            Event::MigrationFinished { vm } | Event::MigrationFailed { vm } => {
                let finished = matches!(event, Event::MigrationFinished { .. });
                let field = vm_field();
                let s = lookup(&mut vms, vm, &field, file)?;
                *s = match s {
                    Expected::Migrating { from, .. } => Expected::Running {
                        by: Some(i),
                        host: if finished { None } else { from.clone() },
                    },
                    Expected::Unknown => Expected::Unknown,
                    Expected::Starting { .. } => {
                        return Err(err(
                            field,
                            format!(
                                "VM {vm:?} is being started, not migrated; use vm_up or \
                                 vm_failed"
                            ),
                        ))
                    }
                    Expected::Down | Expected::Running { .. } => {
                        return Err(err(
                            field,
                            format!("VM {vm:?} is not being migrated: no earlier migrate event"),
                        ))
                    }
                };
            }
            Event::HostDown { host, reschedule } => {
                check_host(host)?;
                // Which VMs were placed there is up to the decisions.
                for s in vms.values_mut() {
                    match s {
                        Expected::Starting { .. } if !*reschedule => *s = Expected::Unknown,
                        Expected::Migrating { .. } => *s = Expected::Unknown,
                        _ => {}
                    }
                }
            }
            Event::HostUp { host } => check_host(host)?,
            Event::RemoveHost { host } => {
                check_host(host)?;
                for s in vms.values_mut() {
                    match s {
                        Expected::Running { host: Some(h), .. } if h == host => *s = Expected::Down,
                        Expected::Running { host: None, .. } => *s = Expected::Unknown,
                        Expected::Migrating { from, .. }
                            if from.is_none() || from.as_deref() == Some(host.as_str()) =>
                        {
                            *s = Expected::Unknown
                        }
                        _ => {}
                    }
                }
                removed.insert(host.as_str(), i);
            }
            Event::Balance { cycles, minutes } => {
                if *cycles == 0 || *cycles > 100_000 {
                    return Err(err(
                        format!("events[{i}].cycles"),
                        format!("must be in 1..=100000, got {cycles}"),
                    ));
                }
                if *minutes == 0 || *minutes > 1_440 {
                    return Err(err(
                        format!("events[{i}].minutes"),
                        format!("must be in 1..=1440, got {minutes}"),
                    ));
                }
                // Balancing moves running VMs to hosts the decisions choose.
                for s in vms.values_mut() {
                    if let Expected::Running { host, .. } = s {
                        *host = None;
                    }
                }
            }
            Event::Load {
                vms: list,
                cpu_usage_percent,
            } => {
                if *cpu_usage_percent > 100 {
                    return Err(err(
                        format!("events[{i}].cpu_usage_percent"),
                        format!("must be in 0..=100, got {cpu_usage_percent}"),
                    ));
                }
                for (j, id) in list.iter().enumerate() {
                    lookup(&mut vms, id, &format!("events[{i}].vms[{j}]"), file)?;
                }
            }
            Event::Stop { vms: list } => {
                for (j, id) in list.iter().enumerate() {
                    let field = format!("events[{i}].vms[{j}]");
                    let s = lookup(&mut vms, id, &field, file)?;
                    match s {
                        Expected::Down => {
                            return Err(err(
                                field,
                                format!("VM {id:?} is not running: nothing to stop"),
                            ))
                        }
                        Expected::Starting { .. } | Expected::Migrating { .. } => {
                            return Err(err(
                                field,
                                format!(
                                    "VM {id:?} is being started or migrated; send vm_up, \
                                     vm_failed or migration_finished first"
                                ),
                            ))
                        }
                        Expected::Running { .. } | Expected::Unknown => *s = Expected::Down,
                    }
                }
            }
        }
    }
    Ok(())
}

/// The expected state of a VM an event names; an unknown VM is an error naming `field`.
fn lookup<'m>(
    vms: &'m mut HashMap<&str, Expected>,
    id: &str,
    field: &str,
    file: &str,
) -> Result<&'m mut Expected> {
    vms.get_mut(id)
        .ok_or_else(|| Error::input(file, Some(field.to_string()), format!("unknown VM {id:?}")))
}

// ---------------------------------------------------------------------------------------
// Outcomes

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
pub fn run(policy: &Policy, cluster: &Cluster, scenario: &Scenario) -> Result<Vec<EventOutcome>> {
    validate(scenario, &cluster.snapshot(), "<scenario>")?;
    let mut runner = Runner {
        policy,
        cluster,
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
}

/// A runtime error of event `index`, naming the field (`events[i]`, `events[i].vms[j]`).
fn at(field: String, event: &Event, vm: Option<&str>, e: Error) -> Error {
    let what = match vm {
        Some(vm) => format!("{} {vm}", event.name()),
        None => event.to_string(),
    };
    Error::Request(format!("{field} ({what}): {e}"))
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
                            Error::Request(format!("unknown VM {id:?}")),
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
                    if let Some(wake) = wake_up_for(&snapshot, vm) {
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
                    requests.push(ScheduleRequest::new((*vm).clone()));
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
                let failed = cluster
                    .vm_failed(vm, reschedule.then_some(self.policy))
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
                let request = ScheduleRequest::migration(running.clone()).map_err(fail)?;
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
                let failures = cluster
                    .host_down(host, HostStatus::Down, reschedule.then_some(self.policy))
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
                                Error::Request(format!(
                                    "VM {id:?} is not in the cluster (start it first)"
                                )),
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

// ---------------------------------------------------------------------------------------
// Summary

/// The state of one host at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostSummary {
    /// Host id.
    pub host: String,
    /// Host name.
    pub name: String,
    /// Status at the end.
    pub status: HostStatus,
    /// VMs the scenario started (or migrated) that run there at the end.
    pub started: usize,
    /// VMs pending there at the end (placed, not started).
    pub pending: usize,
    /// Ids of the started VMs, sorted.
    pub started_vms: Vec<String>,
    /// Ids of the pending VMs, sorted.
    pub pending_vms: Vec<String>,
}

/// What a whole run did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Events applied.
    pub events: usize,
    /// Decisions made.
    pub decisions: usize,
    /// VMs that a decision placed on a host (at least once).
    pub placed: usize,
    /// VMs whose latest decision found no host, in the order they were first decided.
    pub not_placed: Vec<String>,
    /// VMs that came up (or finished migrating).
    pub started: usize,
    /// Failed starts and migrations (`vm_failed`, and VMs failed by `host_down`).
    pub failed: usize,
    /// VMs the engine gave up on (out of start attempts).
    pub gave_up: Vec<String>,
    /// The cluster's epoch at the end.
    pub epoch: u64,
    /// Every host at the end, in snapshot order.
    pub hosts: Vec<HostSummary>,
}

impl Summary {
    /// Sums up the outcomes of [`run`], with the cluster as the run left it.
    pub fn of(outcomes: &[EventOutcome], cluster: &Cluster) -> Self {
        let mut decisions = 0;
        let mut placed: HashSet<&str> = HashSet::new();
        let mut last_no_host: Vec<(&str, bool)> = Vec::new();
        let mut started: HashSet<&str> = HashSet::new();
        let mut failed = 0;
        let mut gave_up = Vec::new();
        for outcome in outcomes {
            for d in &outcome.decisions {
                decisions += 1;
                let no_host = d.chosen.is_none();
                if !no_host {
                    placed.insert(&d.vm);
                }
                match last_no_host.iter_mut().find(|(vm, _)| *vm == d.vm) {
                    Some(entry) => entry.1 = no_host,
                    None => last_no_host.push((&d.vm, no_host)),
                }
            }
            for effect in &outcome.effects {
                match effect {
                    Effect::Started { vm, .. } => {
                        started.insert(vm);
                    }
                    Effect::Failed { vm, next, .. } => {
                        failed += 1;
                        if matches!(next, AfterFailure::GaveUp { .. }) {
                            gave_up.push(vm.clone());
                        }
                    }
                    Effect::MigrationFailed { .. } => failed += 1,
                    _ => {}
                }
            }
        }
        let snapshot = cluster.snapshot();
        let hosts = snapshot
            .hosts
            .iter()
            .map(|h| {
                let started_vms: BTreeSet<String> = snapshot
                    .vms_on(&h.id)
                    .filter(|v| v.is_running() && started.contains(v.id.as_str()))
                    .map(|v| v.id.clone())
                    .collect();
                let pending_vms = cluster.pending_on_host(&h.id).vms;
                HostSummary {
                    host: h.id.clone(),
                    name: h.name.clone(),
                    status: h.status,
                    started: started_vms.len(),
                    pending: pending_vms.len(),
                    started_vms: started_vms.into_iter().collect(),
                    pending_vms,
                }
            })
            .collect();
        Summary {
            events: outcomes.len(),
            decisions,
            placed: placed.len(),
            not_placed: last_no_host
                .into_iter()
                .filter(|(_, no_host)| *no_host)
                .map(|(vm, _)| vm.to_string())
                .collect(),
            started: started.len(),
            failed,
            gave_up,
            epoch: snapshot.epoch,
            hosts,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Human output

/// `4224` -> `4,224`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn records(n: usize) -> String {
    plural(n, "pending record", "pending records")
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

impl fmt::Display for HostPending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.pending;
        write!(
            f,
            "{}: {}, {}, {} MiB overcommit",
            self.host,
            plural(p.vms.len(), "VM", "VMs"),
            plural(p.cpu_cores as usize, "vCPU", "vCPUs"),
            thousands(p.overcommit_memory_mb)
        )?;
        if p.cpu_load_percent > 0 {
            write!(f, ", load {}%", p.cpu_load_percent)?;
        }
        Ok(())
    }
}

impl fmt::Display for AfterFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AfterFailure::Rescheduled { without } if !without.is_empty() => {
                write!(f, "scheduled again without {}", without.join(", "))
            }
            AfterFailure::Rescheduled { .. } => write!(f, "scheduled again"),
            AfterFailure::StaysDown => write!(f, "stays down"),
            AfterFailure::GaveUp { tried } => write!(
                f,
                "gave up after {} ({})",
                plural(tried.len(), "attempt", "attempts"),
                tried.join(", ")
            ),
            AfterFailure::StaysOnSource { host } => match host {
                Some(h) => write!(f, "stays on {h}"),
                None => write!(f, "stays on its source"),
            },
            AfterFailure::NotPlaced => write!(f, "it was not placed"),
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::Started {
                vm,
                host,
                migrated_from,
                released,
            } => match migrated_from {
                Some(source) => write!(
                    f,
                    "{vm} migrated {source} -> {host} ({} released)",
                    records(*released)
                ),
                None => write!(f, "{vm} is up on {host} ({} released)", records(*released)),
            },
            Effect::Failed {
                vm,
                host,
                released,
                next,
            } => write!(
                f,
                "{vm} failed on {} ({} released); {next}",
                host.as_deref().unwrap_or("?"),
                records(*released)
            ),
            Effect::MigrationFailed {
                vm,
                host,
                source,
                released,
            } => write!(
                f,
                "{vm}: migration to {host} failed ({} released); stays on {}",
                records(*released),
                source.as_deref().unwrap_or("its source")
            ),
            Effect::HostStatus { host, status } => write!(f, "{host} is {}", status.as_str()),
            Effect::HostRemoved {
                host,
                released,
                displaced,
                stopped,
            } => write!(
                f,
                "{host} removed ({} released); displaced: {}; stopped: {}",
                records(*released),
                list(displaced),
                list(stopped)
            ),
            Effect::Skipped { vm, reason } => write!(f, "{vm}: skipped, {reason}"),
            Effect::WakeUp(wake) => write!(f, "{wake}"),
            Effect::Stopped { vm, host } => write!(f, "{vm} stopped on {host}"),
        }
    }
}

/// Widest single `pending:` line before it is broken into one line per host.
const PENDING_LINE_WIDTH: usize = 110;

impl fmt::Display for EventOutcome {
    /// One line for the event, one per effect, one per decision (`web-1 -> host-2 (4/6
    /// hosts available)` or `web-9: no host: <why>`), then the pending resources per host.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "#{} {}", self.index, self.event)?;
        for effect in &self.effects {
            writeln!(f, "  {effect}")?;
        }
        for cycle in &self.cycles {
            let s = &cycle.sample;
            if cycle.actions.is_empty() && cycle.refused.is_empty() {
                continue;
            }
            writeln!(
                f,
                "  {:02}:{:02} ({} up, {} free, {} maintenance, {} powering, {} down; load {:.0}%)",
                s.minute / 60 % 24,
                s.minute % 60,
                s.up,
                s.free,
                s.maintenance,
                s.transitioning,
                s.down,
                s.load_percent
            )?;
            for action in &cycle.actions {
                writeln!(f, "    {}", describe(action))?;
            }
            for refused in &cycle.refused {
                writeln!(
                    f,
                    "    refused: {} ({})",
                    describe(&refused.action),
                    refused.why
                )?;
            }
            for vm in &cycle.failed_migrations {
                writeln!(
                    f,
                    "    migration of {vm} failed: its destination no longer fits"
                )?;
            }
        }
        for d in &self.decisions {
            match &d.chosen {
                Some(host) => write!(
                    f,
                    "  {} -> {host} ({}/{} hosts available)",
                    d.vm, d.available, d.total_hosts
                )?,
                None => write!(f, "  {}: no host: {}", d.vm, d.summary)?,
            }
            if !d.unit_failures.is_empty() {
                let units: Vec<&str> = d.unit_failures.iter().map(|u| u.unit.as_str()).collect();
                write!(f, " [failed, skipped: {}]", units.join(", "))?;
            }
            writeln!(f)?;
        }
        let mut parts: Vec<String> = self
            .pending_changed
            .iter()
            .map(|host| match self.pending.iter().find(|p| p.host == *host) {
                Some(p) => p.to_string(),
                None => format!("{host}: nothing"),
            })
            .collect();
        let unchanged = self
            .pending
            .iter()
            .filter(|p| !self.pending_changed.contains(&p.host))
            .count();
        if unchanged > 0 {
            parts.push(format!(
                "{} unchanged",
                plural(unchanged, "other host", "other hosts")
            ));
        }
        let line = parts.join("; ");
        if self.pending.is_empty() && self.pending_changed.is_empty() {
            writeln!(f, "  pending: none")
        } else if self.pending_changed.is_empty() {
            writeln!(
                f,
                "  pending: unchanged ({})",
                plural(unchanged, "host", "hosts")
            )
        } else if line.len() + 11 <= PENDING_LINE_WIDTH {
            writeln!(f, "  pending: {line}")
        } else {
            for (k, part) in parts.iter().enumerate() {
                let label = if k == 0 { "pending:" } else { "" };
                writeln!(f, "  {label:<8} {part}")?;
            }
            Ok(())
        }
    }
}

impl fmt::Display for Summary {
    /// A line of counts, then one line per host.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "summary: {}, {}; {} placed",
            plural(self.events, "event", "events"),
            plural(self.decisions, "decision", "decisions"),
            plural(self.placed, "VM", "VMs")
        )?;
        if !self.not_placed.is_empty() {
            write!(
                f,
                ", {} not placed ({})",
                self.not_placed.len(),
                self.not_placed.join(", ")
            )?;
        }
        write!(f, ", {} started, {} failed", self.started, self.failed)?;
        if !self.gave_up.is_empty() {
            write!(
                f,
                ", {} gave up ({})",
                self.gave_up.len(),
                self.gave_up.join(", ")
            )?;
        }
        writeln!(f, "; epoch {}", self.epoch)?;
        let width = self.hosts.iter().map(|h| h.host.len()).max().unwrap_or(0);
        for h in &self.hosts {
            write!(
                f,
                "  {:<width$}  {} started, {} pending",
                h.host, h.started, h.pending
            )?;
            if !h.pending_vms.is_empty() {
                write!(f, " ({})", h.pending_vms.join(", "))?;
            }
            if h.status != HostStatus::Up {
                write!(f, "  [{}]", h.status.as_str())?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// One line for a planned action.
pub fn describe(action: &PlannedAction) -> String {
    match action {
        PlannedAction::Migrate {
            vm,
            source,
            destination,
            candidate_hosts,
            reason,
        } => format!(
            "migrate {vm}: {} -> {} (of {}): {reason}",
            source.as_deref().unwrap_or("?"),
            destination.as_deref().unwrap_or("?"),
            list(candidate_hosts)
        ),
        PlannedAction::Power {
            host,
            action,
            reason,
        } => format!("{} {host}: {reason}", action_name(*action)),
    }
}

/// The samples of every balance cycle of a run, in order (for [`timeline::svg`]).
pub fn samples(outcomes: &[EventOutcome]) -> Vec<Sample> {
    outcomes
        .iter()
        .flat_map(|o| o.cycles.iter().map(|c| c.sample))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Outcome, Runtime};
    use policy_sdk::testing::{host, snapshot, vm};
    use policy_sdk::AffinityPolarity;
    use std::sync::OnceLock;

    /// The builtin default policy, compiled once for all tests.
    fn policy() -> &'static Policy {
        static POLICY: OnceLock<(Runtime, Policy)> = OnceLock::new();
        let (_, policy) = POLICY.get_or_init(|| {
            let runtime = Runtime::builder().cache_dir(None).build().unwrap();
            let policy = Policy::builtin_default(&runtime).unwrap();
            (runtime, policy)
        });
        policy
    }

    fn scenario(json: &str) -> Scenario {
        files::parse_document(json, files::Format::Json, "events.json").unwrap()
    }

    /// Hosts h1..h4; `running` runs on h1; `down-1` is down in the cluster file.
    fn small_cluster() -> Snapshot {
        snapshot()
            .hosts((1..=4).map(|i| host(&format!("h{i}")).memory_mb(16_384)))
            .vm(vm("running").current_host("h1"))
            .vm(vm("down-1"))
            .build()
    }

    /// The field and message of an input error.
    fn input_error(result: Result<()>) -> (String, String) {
        match result {
            Err(Error::Input {
                file,
                field,
                message,
            }) => {
                assert_eq!(file, "events.json");
                (field.unwrap_or_default(), message)
            }
            other => panic!("expected an input error, got {other:?}"),
        }
    }

    #[test]
    fn events_read_from_json_and_toml_with_reschedule_defaulting_to_true() {
        let json = scenario(
            r#"{"events": [{"event": "vm_failed", "vm": "a"},
                           {"event": "host_down", "host": "h1", "reschedule": false}]}"#,
        );
        let toml: Scenario = files::parse_document(
            "[[events]]\nevent = \"vm_failed\"\nvm = \"a\"\n\n[[events]]\nevent = \
             \"host_down\"\nhost = \"h1\"\nreschedule = false\n",
            files::Format::Toml,
            "events.toml",
        )
        .unwrap();
        assert_eq!(json, toml);
        assert!(json.vms.is_empty());
        assert_eq!(
            json.events,
            [
                Event::VmFailed {
                    vm: "a".into(),
                    reschedule: true
                },
                Event::HostDown {
                    host: "h1".into(),
                    reschedule: false
                },
            ]
        );
        // Typos are reported, with the event's position.
        let err = files::parse_document::<Scenario>(
            r#"{"events": [{"event": "vm_up", "vm": "a"}, {"event": "vm_up", "vmm": "a"}]}"#,
            files::Format::Json,
            "events.json",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("events[1]") && err.contains("vmm"), "{err}");
        let err = files::parse_document::<Scenario>(
            r#"{"events": [{"event": "power_cycle", "host": "h1"}]}"#,
            files::Format::Json,
            "events.json",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("power_cycle"), "{err}");
    }

    #[test]
    fn validate_names_the_event_and_field_of_an_unknown_vm() {
        let s = scenario(
            r#"{"events": [{"event": "start", "vms": ["down-1"]},
                           {"event": "vm_up", "vm": "web-9"}]}"#,
        );
        let (field, message) = input_error(validate(&s, &small_cluster(), "events.json"));
        assert_eq!(field, "events[1].vm");
        assert_eq!(message, r#"unknown VM "web-9""#);
    }

    #[test]
    fn validate_names_the_position_of_an_unknown_vm_in_a_start_list() {
        let s = scenario(
            r#"{"vms": [{"id": "new-1"}],
                "events": [{"event": "start", "vms": ["down-1", "new-1", "nope"]}]}"#,
        );
        let (field, message) = input_error(validate(&s, &small_cluster(), "events.json"));
        assert_eq!(field, "events[0].vms[2]");
        assert_eq!(message, r#"unknown VM "nope""#);
    }

    #[test]
    fn validate_names_an_unknown_host() {
        let s = scenario(r#"{"events": [{"event": "host_down", "host": "h9"}]}"#);
        let (field, message) = input_error(validate(&s, &small_cluster(), "events.json"));
        assert_eq!(field, "events[0].host");
        assert_eq!(message, r#"unknown host "h9""#);
    }

    #[test]
    fn validate_rejects_events_that_cannot_follow_the_ones_before() {
        let cases = [
            // (scenario, field, part of the message)
            (
                r#"{"vms": [{"id": "down-1"}], "events": []}"#,
                "vms[0].id",
                "already defined in the cluster",
            ),
            (
                r#"{"vms": [{"id": "x"}, {"id": "x"}], "events": []}"#,
                "vms[1].id",
                "duplicate VM id",
            ),
            (
                r#"{"events": [{"event": "start", "vms": ["down-1", "down-1"]}]}"#,
                "events[0].vms[1]",
                "listed twice",
            ),
            (
                r#"{"events": [{"event": "start", "vms": ["running"]}]}"#,
                "events[0].vms[0]",
                r#"already running on "h1""#,
            ),
            (
                r#"{"events": [{"event": "vm_up", "vm": "down-1"}]}"#,
                "events[0].vm",
                "not being started or migrated",
            ),
            (
                r#"{"events": [{"event": "start", "vms": ["down-1"]},
                               {"event": "vm_failed", "vm": "down-1", "reschedule": false},
                               {"event": "vm_up", "vm": "down-1"}]}"#,
                "events[2].vm",
                "not being started or migrated",
            ),
            (
                r#"{"events": [{"event": "migrate", "vm": "down-1"}]}"#,
                "events[0].vm",
                "nothing to migrate",
            ),
            (
                r#"{"events": [{"event": "start", "vms": ["down-1"]},
                               {"event": "migrate", "vm": "down-1"}]}"#,
                "events[1].vm",
                "send vm_up first",
            ),
            (
                r#"{"events": [{"event": "migration_finished", "vm": "running"}]}"#,
                "events[0].vm",
                "not being migrated",
            ),
            (
                r#"{"events": [{"event": "remove_host", "host": "h2"},
                               {"event": "host_up", "host": "h2"}]}"#,
                "events[1].host",
                "removed by events[0]",
            ),
            (
                r#"{"events": [{"event": "start", "vms": []}]}"#,
                "events[0].vms",
                "at least one VM",
            ),
        ];
        for (json, want_field, want_message) in cases {
            let (field, message) =
                input_error(validate(&scenario(json), &small_cluster(), "events.json"));
            assert_eq!(field, want_field, "{json}");
            assert!(message.contains(want_message), "{json}: {message}");
        }
        // And the sequences they break are fine the right way round.
        let ok = scenario(
            r#"{"events": [{"event": "start", "vms": ["down-1"]},
                           {"event": "vm_up", "vm": "down-1"},
                           {"event": "migrate", "vm": "down-1"},
                           {"event": "migration_failed", "vm": "down-1"},
                           {"event": "migrate", "vm": "running"},
                           {"event": "migration_finished", "vm": "running"},
                           {"event": "remove_host", "host": "h1"},
                           {"event": "start", "vms": ["running"]}]}"#,
        );
        validate(&ok, &small_cluster(), "events.json").unwrap();
    }

    fn chosen(outcome: &EventOutcome, vm: &str) -> Option<String> {
        outcome
            .decisions
            .iter()
            .find(|d| d.vm == vm)
            .unwrap_or_else(|| panic!("no decision for {vm} in {outcome}"))
            .chosen
            .clone()
    }

    #[test]
    fn run_starts_fails_and_reschedules_away_from_failed_and_down_hosts() {
        // a, b, c must run apart; four hosts, so one stays free of them.
        let cluster = Cluster::new(
            snapshot()
                .hosts((1..=4).map(|i| host(&format!("h{i}")).memory_mb(16_384)))
                .affinity_group("apart", AffinityPolarity::Negative, true, &["a", "b", "c"])
                .build(),
            "<test>",
        )
        .unwrap();
        let s = scenario(
            r#"{"vms": [{"id": "a", "memory_mb": 2048}, {"id": "b", "memory_mb": 2048},
                        {"id": "c", "memory_mb": 2048}],
                "events": [{"event": "start", "vms": ["a", "b", "c"]},
                           {"event": "vm_up", "vm": "a"},
                           {"event": "vm_failed", "vm": "b"}]}"#,
        );
        let outcomes = run(policy(), &cluster, &s).unwrap();
        let [start, up, failed] = &outcomes[..] else {
            panic!("three outcomes")
        };

        // The mass start spreads the group: each decision saw the earlier ones pending.
        let hosts: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|vm| chosen(start, vm).expect("placed"))
            .collect();
        let distinct: BTreeSet<&String> = hosts.iter().collect();
        assert_eq!(distinct.len(), 3, "{start}");
        assert_eq!(start.pending.len(), 3);
        assert_eq!(start.pending_changed.len(), 3);
        let (host_a, host_b, host_c) = (&hosts[0], &hosts[1], &hosts[2]);
        let free = (1..=4)
            .map(|i| format!("h{i}"))
            .find(|h| !hosts.contains(h))
            .unwrap();

        // a comes up: its records go, the others stay.
        assert_eq!(
            up.effects,
            [Effect::Started {
                vm: "a".into(),
                host: host_a.clone(),
                migrated_from: None,
                released: up.released,
            }]
        );
        assert!(up.released > 0);
        assert_eq!(up.pending_changed, [host_a.as_str()]);
        assert!(up.pending.iter().all(|p| !p.pending.has_vm("a")));

        // b fails: its host is blacklisted, a and c are where the others are: the free host.
        let Effect::Failed { vm, host, next, .. } = &failed.effects[0] else {
            panic!("{failed}")
        };
        assert_eq!((vm.as_str(), host.as_ref()), ("b", Some(host_b)));
        assert_eq!(
            next,
            &AfterFailure::Rescheduled {
                without: vec![host_b.clone()]
            }
        );
        assert_eq!(chosen(failed, "b"), Some(free.clone()));
        let decision = &failed.decisions[0];
        let on_failed = decision.hosts.iter().find(|h| h.host == *host_b).unwrap();
        assert_eq!(
            on_failed.outcome,
            Outcome::NotCandidate {
                reason: "blacklisted".into()
            }
        );

        // c's host goes down: c fails there and is rescheduled on the only host left
        // without a member (b's first host, free again).
        let down = scenario(&format!(
            r#"{{"events": [{{"event": "host_down", "host": "{host_c}"}}]}}"#
        ));
        let outcomes = run(policy(), &cluster, &down).unwrap();
        let down = &outcomes[0];
        assert_eq!(
            down.effects[0],
            Effect::HostStatus {
                host: host_c.clone(),
                status: HostStatus::Down
            }
        );
        assert!(
            matches!(&down.effects[1], Effect::Failed { vm, host: Some(h), next: AfterFailure::Rescheduled { .. }, .. }
                if vm == "c" && h == host_c),
            "{down}"
        );
        assert_eq!(chosen(down, "c"), Some(host_b.clone()));
        assert!(down.pending.iter().all(|p| p.host != *host_c), "{down}");
        assert!(down.pending_changed.contains(host_c));

        let text = down.to_string();
        assert!(
            text.starts_with(&format!("#0 host_down {host_c}\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("  c -> {host_b} (1/4 hosts available)")),
            "{text}"
        );
        let summary = Summary::of(&outcomes, &cluster);
        assert_eq!(
            (summary.decisions, summary.placed, summary.failed),
            (1, 1, 1)
        );
        let c_host = summary.hosts.iter().find(|h| h.host == *host_b).unwrap();
        assert_eq!(c_host.pending_vms, ["c"]);
        let down_host = summary.hosts.iter().find(|h| h.host == *host_c).unwrap();
        assert_eq!(down_host.status, HostStatus::Down);
    }

    #[test]
    fn a_vm_with_no_host_is_reported_and_later_events_about_it_are_skipped() {
        let cluster = Cluster::new(
            snapshot().host(host("h1").memory_mb(4_096)).build(),
            "<test>",
        )
        .unwrap();
        let s = scenario(
            r#"{"vms": [{"id": "small", "memory_mb": 1024}, {"id": "big", "memory_mb": 8192}],
                "events": [{"event": "start", "vms": ["small", "big"]},
                           {"event": "vm_up", "vm": "big"},
                           {"event": "vm_up", "vm": "small"}]}"#,
        );
        let outcomes = run(policy(), &cluster, &s).unwrap();
        assert_eq!(chosen(&outcomes[0], "small"), Some("h1".into()));
        assert_eq!(chosen(&outcomes[0], "big"), None);
        let text = outcomes[0].to_string();
        assert!(
            text.contains("  small -> h1 (1/1 hosts available)\n"),
            "{text}"
        );
        assert!(
            text.contains("  big: no host: 0/1 hosts available: 1 memory: "),
            "{text}"
        );
        assert!(
            text.contains("  pending: h1: 1 VM, 1 vCPU, 1,088 MiB overcommit, load 3%\n"),
            "{text}"
        );
        assert_eq!(
            outcomes[1].effects,
            [Effect::Skipped {
                vm: "big".into(),
                reason: "not placed: no host was found for it".into()
            }]
        );
        assert_eq!(
            outcomes[2].to_string().lines().last(),
            Some("  pending: h1: nothing")
        );
        let summary = Summary::of(&outcomes, &cluster);
        assert_eq!(summary.not_placed, ["big"]);
        assert_eq!((summary.placed, summary.started), (1, 1));
        assert_eq!(summary.hosts[0].started_vms, ["small"]);
        assert!(
            summary.to_string().contains("1 not placed (big)"),
            "{summary}"
        );
    }

    #[test]
    fn removing_a_host_reschedules_the_vms_placed_there() {
        let cluster = Cluster::new(
            snapshot()
                .host(host("h1").memory_mb(16_384))
                .host(host("h2").memory_mb(8_192))
                .vm(vm("old").current_host("h1"))
                .build(),
            "<test>",
        )
        .unwrap();
        let s = scenario(
            r#"{"vms": [{"id": "new"}],
                "events": [{"event": "start", "vms": ["new"]},
                           {"event": "remove_host", "host": "h1"}]}"#,
        );
        let outcomes = run(policy(), &cluster, &s).unwrap();
        // The host with more free memory first, then the other one.
        assert_eq!(chosen(&outcomes[0], "new"), Some("h1".into()));
        let removed = &outcomes[1];
        assert_eq!(
            removed.effects,
            [Effect::HostRemoved {
                host: "h1".into(),
                released: removed.released,
                displaced: vec!["new".into()],
                stopped: vec!["old".into()],
            }]
        );
        assert_eq!(chosen(removed, "new"), Some("h2".into()));
        assert_eq!(removed.pending_changed, ["h1", "h2"]);
    }

    #[test]
    fn a_failed_decision_names_the_event_and_position() {
        let runtime = Runtime::builder().cache_dir(None).build().unwrap();
        let policy = Policy::parse(
            &runtime,
            "name = \"p\"\n[[filters]]\nunit = \"memory\"\n",
            files::Format::Toml,
            "p.toml",
        )
        .unwrap();
        let cluster = Cluster::new(snapshot().host(host("h1")).build(), "<test>").unwrap();
        // A VM the request checks refuse (no CPU): the error names event and position.
        let mut bad = vm("bad").build();
        bad.cpu.sockets = 0;
        let s = Scenario {
            vms: vec![vm("ok").build(), bad],
            events: vec![Event::Start {
                vms: vec!["ok".into(), "bad".into()],
            }],
        };
        let err = run(&policy, &cluster, &s).unwrap_err().to_string();
        assert!(err.starts_with("events[0].vms[1] (start bad): "), "{err}");
    }

    #[test]
    fn thousands_groups_digits() {
        for (n, want) in [
            (0, "0"),
            (999, "999"),
            (4_224, "4,224"),
            (1_234_567, "1,234,567"),
        ] {
            assert_eq!(thousands(n), want);
        }
    }
}
