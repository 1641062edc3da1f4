//! What a run reports: the summary at the end, and every outcome as text.

use super::*;

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

/// `4224` -> `4,224`.
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
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

pub(super) fn list(items: &[String]) -> String {
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
        } => format!("{} {host}: {reason}", action.as_str()),
    }
}

/// The samples of every balance cycle of a run, in order (for [`timeline::svg`]).
pub fn samples(outcomes: &[EventOutcome]) -> Vec<Sample> {
    outcomes
        .iter()
        .flat_map(|o| o.cycles.iter().map(|c| c.sample))
        .collect()
}
