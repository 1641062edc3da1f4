//! Balance cycles over simulated time, for [`crate::simulate`]: a clock, host reports
//! (usage figures recomputed from the VMs each host runs), one balance cycle per step with
//! its plan carried out the way a virtualization manager would, and the samples that
//! [`svg`] draws.
//!
//! What the simulated manager does with a plan: a migration is scheduled on the chosen
//! destination and finishes at once; `to_maintenance` and `activate` take effect at once;
//! `power_down` leaves the host `powering_down` for [`SHUTDOWN_MINUTES`] before it is
//! down; `power_up` leaves it `powering_up` for [`BOOT_MINUTES`] before it is up (and
//! under policy control again).

use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use wasmsched::plan::{PlannedAction, RefusedAction};
use wasmsched::sdk::wire::sync::Change;
use wasmsched::sdk::{Host, HostStatus, PowerAction, Snapshot};
use wasmsched::{Cluster, Error, Policy, Result, ScheduleRequest};

/// Minutes a simulated host takes to boot.
pub const BOOT_MINUTES: u32 = 10;
/// Minutes a simulated host takes to shut down.
pub const SHUTDOWN_MINUTES: u32 = 5;
/// Unix time of minute 0 of a simulation.
pub const EPOCH_UNIX: u64 = 1_700_000_000;
/// Per-VM memory overhead the host reports count (MiB), as the pending rules do.
const OVERHEAD_MB: u64 = 64;

/// The state of the cluster after one balance cycle.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Minutes since the start of the simulation.
    pub minute: u32,
    /// Hosts up.
    pub up: u32,
    /// Hosts up with no VM.
    pub free: u32,
    /// Hosts in maintenance.
    pub maintenance: u32,
    /// Hosts powering up or down.
    pub transitioning: u32,
    /// Hosts down.
    pub down: u32,
    /// Other statuses (non-operational).
    pub other: u32,
    /// Cluster load: the CPU the running VMs use, in percent of all hosts' capacity.
    pub load_percent: f64,
    /// VMs running.
    pub vms_running: u32,
}

/// One balance cycle: the plan and the state after carrying it out.
#[derive(Debug, Clone, Serialize)]
pub struct CycleReport {
    /// The state after the cycle.
    pub sample: Sample,
    /// Actions carried out, with the chosen destinations.
    pub actions: Vec<PlannedAction>,
    /// Actions the engine refused, with the reasons.
    pub refused: Vec<RefusedAction>,
    /// Migrations whose destination no longer fit when the manager scheduled them.
    pub failed_migrations: Vec<String>,
}

/// The simulated clock and what the host reports remember between cycles.
#[derive(Debug, Default)]
pub struct Clock {
    /// Minutes since the start.
    pub minute: u32,
    last_load: HashMap<String, u32>,
}

impl Clock {
    fn time_unix(&self) -> u64 {
        EPOCH_UNIX + u64::from(self.minute) * 60
    }
}

/// A host's usage recomputed from the VMs it runs: what its next report would say.
fn report(snapshot: &Snapshot, host: &Host, minutes: u32, last_load: Option<u32>) -> Host {
    let mut h = host.clone();
    let threads = snapshot.cluster.count_threads_as_cores;
    let cpus = u64::from(h.schedulable_cpus(threads).max(1));
    let running: Vec<_> = snapshot.vms_on(&h.id).filter(|v| v.is_running()).collect();
    let demand: u64 = running
        .iter()
        .map(|v| u64::from(v.cpu_usage_percent) * u64::from(v.vcpus()))
        .sum();
    let load = demand.div_ceil(cpus).min(100) as u32;
    h.running_vms = running.len() as u32;
    h.cpu_usage_percent = if h.status == HostStatus::Up { load } else { 0 };
    if h.memory.physical_mb > 0 {
        let committed: u64 = running
            .iter()
            .map(|v| v.memory_mb.saturating_add(OVERHEAD_MB))
            .sum();
        h.memory.committed_mb = committed;
        h.memory.free_mb = h.memory.physical_mb.saturating_sub(committed);
    }
    h.cpu_usage_duration_minutes = match last_load {
        Some(before) if before == h.cpu_usage_percent => {
            h.cpu_usage_duration_minutes.saturating_add(minutes)
        }
        _ => 0,
    };
    h.status_minutes = h.status_minutes.saturating_add(minutes);
    h.empty_minutes =
        if h.status == HostStatus::Up && running.is_empty() && h.pending.vms.is_empty() {
            h.empty_minutes.saturating_add(minutes)
        } else {
            0
        };
    if h.status == HostStatus::PoweringDown && h.status_minutes >= SHUTDOWN_MINUTES {
        set_status(&mut h, HostStatus::Down);
    } else if h.status == HostStatus::PoweringUp && h.status_minutes >= BOOT_MINUTES {
        set_status(&mut h, HostStatus::Up);
        h.power.controlled_by_policy = true;
    }
    h
}

fn set_status(host: &mut Host, status: HostStatus) {
    host.status = status;
    host.status_minutes = 0;
    if status != HostStatus::Up {
        host.empty_minutes = 0;
    }
}

/// Advances the clock by `minutes` and sends every host's report (one epoch).
pub fn advance(cluster: &Cluster, clock: &mut Clock, minutes: u32) -> Result<()> {
    clock.minute = clock.minute.saturating_add(minutes);
    let snapshot = cluster.snapshot();
    let mut changes = vec![Change::SetTime {
        time_unix: clock.time_unix(),
    }];
    for (i, host) in snapshot.hosts.iter().enumerate() {
        let new = report(
            &snapshot,
            host,
            minutes,
            clock.last_load.get(&host.id).copied(),
        );
        clock
            .last_load
            .insert(host.id.clone(), new.cpu_usage_percent);
        if new != *host {
            changes.push(Change::ReplaceHost {
                host: i as u32,
                value: new,
            });
        }
    }
    drop(snapshot);
    cluster.apply(changes)?;
    Ok(())
}

/// Carries out a power action the way the simulated manager does (see the module docs).
pub fn execute_power(cluster: &Cluster, host_id: &str, action: PowerAction) -> Result<()> {
    let index = cluster
        .host_index(host_id)
        .ok_or_else(|| Error::not_found("host", host_id))?;
    let mut host = cluster.snapshot().hosts[index as usize].clone();
    match action {
        PowerAction::ToMaintenance => set_status(&mut host, HostStatus::Maintenance),
        PowerAction::PowerDown => set_status(&mut host, HostStatus::PoweringDown),
        PowerAction::Activate => {
            set_status(&mut host, HostStatus::Up);
            host.power.controlled_by_policy = true;
        }
        PowerAction::PowerUp => set_status(&mut host, HostStatus::PoweringUp),
    }
    cluster.apply(vec![Change::ReplaceHost {
        host: index,
        value: host,
    }])?;
    Ok(())
}

/// One balance cycle: the policy's plan, carried out.
pub fn cycle(policy: &Policy, cluster: &Cluster, clock: &Clock) -> Result<CycleReport> {
    let plan = policy.balance(cluster)?;
    let mut failed_migrations = Vec::new();
    for action in &plan.actions {
        match action {
            PlannedAction::Migrate {
                vm,
                destination: Some(dest),
                ..
            } => {
                let Some(the_vm) = cluster.snapshot().vms.iter().find(|v| v.id == *vm).cloned()
                else {
                    continue;
                };
                let request = ScheduleRequest::migration(the_vm)?.whitelist([dest.clone()]);
                let decision = policy.schedule(cluster, &request)?;
                if decision.chosen.is_some() {
                    cluster.migration_finished(vm)?;
                } else {
                    failed_migrations.push(vm.clone());
                }
            }
            PlannedAction::Migrate { .. } => {}
            PlannedAction::Power { host, action, .. } => execute_power(cluster, host, *action)?,
        }
    }
    Ok(CycleReport {
        sample: sample(&cluster.snapshot(), clock.minute),
        actions: plan.actions,
        refused: plan.refused,
        failed_migrations,
    })
}

/// The state of a snapshot as a [`Sample`].
pub fn sample(snapshot: &Snapshot, minute: u32) -> Sample {
    let mut s = Sample {
        minute,
        up: 0,
        free: 0,
        maintenance: 0,
        transitioning: 0,
        down: 0,
        other: 0,
        load_percent: 0.0,
        vms_running: 0,
    };
    let threads = snapshot.cluster.count_threads_as_cores;
    let mut capacity = 0u64;
    for h in &snapshot.hosts {
        capacity += u64::from(h.schedulable_cpus(threads)) * 100;
        match h.status {
            HostStatus::Up => {
                s.up += 1;
                if snapshot.vms_on(&h.id).all(|v| !v.is_running()) && h.pending.vms.is_empty() {
                    s.free += 1;
                }
            }
            HostStatus::Maintenance => s.maintenance += 1,
            HostStatus::PoweringUp | HostStatus::PoweringDown => s.transitioning += 1,
            HostStatus::Down => s.down += 1,
            HostStatus::NonOperational => s.other += 1,
        }
    }
    let demand: u64 = snapshot
        .vms
        .iter()
        .filter(|v| v.is_running())
        .map(|v| {
            s.vms_running += 1;
            u64::from(v.cpu_usage_percent) * u64::from(v.vcpus())
        })
        .sum();
    if capacity > 0 {
        s.load_percent = demand as f64 * 100.0 / capacity as f64;
    }
    s
}

/// Draws samples as an SVG chart: stacked host counts by status (up with VMs, free, in
/// maintenance, powering up/down, down) per cycle, and the cluster load as a line on a
/// 0-100% scale. Hand-written SVG, readable in any browser.
pub fn svg(samples: &[Sample], title: &str) -> String {
    const W: f64 = 960.0;
    const H: f64 = 420.0;
    const LEFT: f64 = 60.0;
    const RIGHT: f64 = 60.0;
    const TOP: f64 = 50.0;
    const BOTTOM: f64 = 80.0;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let hosts = samples
        .iter()
        .map(|s| s.up + s.maintenance + s.transitioning + s.down + s.other)
        .max()
        .unwrap_or(1)
        .max(1);
    let first = samples.first().map_or(0, |s| s.minute);
    let last = samples.last().map_or(1, |s| s.minute).max(first + 1);
    let span = f64::from(last - first);
    let x = |minute: u32| LEFT + f64::from(minute - first) / span * plot_w;
    let y_hosts = |n: f64| TOP + plot_h - n / f64::from(hosts) * plot_h;
    let y_load = |p: f64| TOP + plot_h - p.clamp(0.0, 100.0) / 100.0 * plot_h;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    let layers: [Layer; 5] = [
        ("up, running VMs", "#2e7d32", |s| s.up - s.free),
        ("up, free", "#81c784", |s| s.free),
        ("maintenance", "#fbc02d", |s| s.maintenance),
        ("powering up/down", "#ef6c00", |s| s.transitioning),
        ("down", "#9e9e9e", |s| s.down + s.other),
    ];
    // One column per sample, from its minute to the next sample's.
    for (i, s) in samples.iter().enumerate() {
        let x0 = x(s.minute);
        let x1 = samples
            .get(i + 1)
            .map_or(x0 + plot_w / samples.len().max(1) as f64, |n| x(n.minute));
        let mut base = 0.0;
        for (_, color, count) in &layers {
            let n = f64::from(count(s));
            if n > 0.0 {
                let _ = writeln!(
                    out,
                    r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
                    y_hosts(base + n),
                    (x1 - x0).max(0.5),
                    y_hosts(base) - y_hosts(base + n)
                );
            }
            base += n;
        }
    }
    // Axes and grid.
    let _ = writeln!(
        out,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    for n in 0..=hosts {
        let y = y_hosts(f64::from(n));
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{n}</text>"#,
            LEFT - 6.0,
            y + 4.0
        );
    }
    for p in [0, 25, 50, 75, 100] {
        let y = y_load(f64::from(p));
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}">{p}%</text>"#,
            W - RIGHT + 6.0,
            y + 4.0
        );
    }
    let hours = (last - first).div_ceil(60);
    let step = (hours / 12).max(1);
    for hour in (0..=hours).step_by(step as usize) {
        let minute = first + hour * 60;
        if minute > last {
            break;
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}h</text>"#,
            x(minute),
            TOP + plot_h + 16.0,
            minute / 60
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">hosts</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" transform="rotate(90 {} {})" text-anchor="middle">cluster load</text>"#,
        W - 14.0,
        TOP + plot_h / 2.0,
        W - 14.0,
        TOP + plot_h / 2.0
    );
    // Load line.
    if !samples.is_empty() {
        let points: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.minute), y_load(s.load_percent)))
            .collect();
        let _ = writeln!(
            out,
            r##"<polyline points="{}" fill="none" stroke="#1565c0" stroke-width="2"/>"##,
            points.join(" ")
        );
    }
    // Legend.
    let mut lx = LEFT;
    let ly = H - 30.0;
    for (label, color, _) in &layers {
        let _ = writeln!(
            out,
            r#"<rect x="{lx}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{ly}">{label}</text>"#,
            ly - 10.0,
            lx + 16.0
        );
        lx += 20.0 + 7.0 * label.len() as f64;
    }
    let _ = writeln!(
        out,
        r##"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="#1565c0" stroke-width="2"/><text x="{}" y="{ly}">cluster load</text>"##,
        ly - 4.0,
        lx + 12.0,
        ly - 4.0,
        lx + 16.0
    );
    out.push_str("</svg>\n");
    out
}

/// A stacked layer of the chart: label, colour, count per sample.
type Layer = (&'static str, &'static str, fn(&Sample) -> u32);

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
