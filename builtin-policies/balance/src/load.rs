//! Host load classification (over- and under-utilized hosts) and the choice of the one VM
//! migration a balance cycle proposes.

use policy_sdk::{Context, Host, HostIndex, HostStatus, MigrationMode, Snapshot, Vm, VmStatus};

/// The utilization thresholds shared by both balance units and the power-saving weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// `HighUtilization`: CPU load (percent) at or above which a host is over-utilized.
    pub high: u32,
    /// `LowUtilization`: CPU load (percent) below which a host is under-utilized.
    pub low: u32,
    /// `CpuOverCommitDurationMinutes`: how long the load must stay on its side.
    pub duration_minutes: u32,
    /// `MaxFreeMemoryForOverUtilized` (MiB, 0 = off): a host with less schedulable memory
    /// left is over-utilized; a destination must keep more than this after the move.
    pub max_free_memory_for_over_mb: u64,
    /// `MinFreeMemoryForUnderUtilized` (MiB, 0 = off): a host is under-utilized only if it
    /// has more schedulable memory left than this.
    pub min_free_memory_for_under_mb: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            high: 80,
            low: 20,
            duration_minutes: 2,
            max_free_memory_for_over_mb: 0,
            min_free_memory_for_under_mb: 0,
        }
    }
}

impl Thresholds {
    /// Reads the thresholds from a unit's parameters (names as declared by
    /// [`crate::threshold_params`]).
    pub fn from_ctx(ctx: &Context<'_>) -> Self {
        let int = |name: &str| ctx.int(name).max(0) as u64;
        Self {
            high: int(crate::HIGH) as u32,
            low: int(crate::LOW) as u32,
            duration_minutes: int(crate::DURATION) as u32,
            max_free_memory_for_over_mb: int(crate::MAX_FREE_OVER),
            min_free_memory_for_under_mb: int(crate::MIN_FREE_UNDER),
        }
    }

    /// The evenly-distributed destination bound: `min(0.8 x High, High - 10)`.
    pub fn even_destination_bound(&self) -> u32 {
        (self.high * 8 / 10).min(self.high.saturating_sub(10))
    }

    /// Over-utilized: Up, holds VMs, and either CPU load >= `high` for at least
    /// `duration_minutes`, or less schedulable memory than `max_free_memory_for_over_mb`.
    pub fn over_utilized(&self, snapshot: &Snapshot, host: &Host) -> bool {
        host.status == HostStatus::Up
            && vm_count(snapshot, host) > 0
            && ((host_load(host) >= self.high
                && host.cpu_usage_duration_minutes >= self.duration_minutes)
                || (self.max_free_memory_for_over_mb > 0
                    && free_memory_mb(host) < self.max_free_memory_for_over_mb))
    }

    /// Under-utilized: Up, CPU load < `low` for at least `duration_minutes`, and (when
    /// set) more schedulable memory than `min_free_memory_for_under_mb`.
    pub fn under_utilized(&self, host: &Host) -> bool {
        host.status == HostStatus::Up
            && host_load(host) < self.low
            && host.cpu_usage_duration_minutes >= self.duration_minutes
            && (self.min_free_memory_for_under_mb == 0
                || free_memory_mb(host) > self.min_free_memory_for_under_mb)
    }
}

/// A host's CPU load: reported usage plus the pending load of VMs placed there.
pub fn host_load(host: &Host) -> u32 {
    host.cpu_usage_percent
        .saturating_add(host.pending.cpu_load_percent)
}

/// The load (percent of the host) that `vm` would add to `host`: its usage times its
/// vCPUs over the host's schedulable CPUs, rounded up.
pub fn vm_load_on(vm: &Vm, host: &Host, threads_as_cores: bool) -> u32 {
    let cpus = u64::from(host.schedulable_cpus(threads_as_cores).max(1));
    let demand = u64::from(vm.cpu_usage_percent) * u64::from(vm.vcpus());
    demand.div_ceil(cpus).min(u64::from(u32::MAX)) as u32
}

/// Overcommit-aware memory left for scheduling, pending memory included (MiB).
pub fn free_memory_mb(host: &Host) -> u64 {
    host.memory
        .max_scheduling_mb
        .saturating_sub(host.memory.committed_mb)
        .saturating_sub(host.pending.overcommit_memory_mb)
}

/// VMs on the host: the snapshot's VMs that occupy it, the reported count, and the VMs
/// pending there, whichever says more.
pub fn vm_count(snapshot: &Snapshot, host: &Host) -> u32 {
    let listed = snapshot.vms_on(&host.id).filter(|v| v.is_running()).count() as u32;
    listed
        .max(host.running_vms)
        .saturating_add(host.pending.vms.len() as u32)
}

/// Which balance unit is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sources: over-utilized hosts. Destinations: under `min(0.8 High, High - 10)`.
    EvenlyDistributed,
    /// Sources: over-utilized hosts, then under-utilized hosts with VMs (to empty them).
    /// Destinations: not over-utilized and staying at or under `High` with the VM.
    PowerSaving,
}

/// One proposed migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Index of the VM in the snapshot.
    pub vm: u32,
    /// Its current host.
    pub source: HostIndex,
    /// Destinations that fit by load and memory, for the engine to choose from with the
    /// cluster's filters and weights.
    pub candidates: Vec<HostIndex>,
    /// Why.
    pub reason: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    Over,
    Under,
}

/// The migration of this cycle, if any: the first source (most loaded over-utilized host
/// first; for power saving then the least loaded under-utilized host with VMs) that has a
/// migratable running VM with at least one valid destination; of its VMs the least
/// CPU-consuming first. Hosts outside `candidates` are neither sources nor destinations;
/// a host with a migration already in flight is not a source.
pub fn propose(
    snapshot: &Snapshot,
    t: &Thresholds,
    mode: Mode,
    candidates: &[HostIndex],
) -> Option<Proposal> {
    let host = |i: HostIndex| &snapshot.hosts[i as usize];
    let mut over: Vec<HostIndex> = candidates
        .iter()
        .copied()
        .filter(|&i| t.over_utilized(snapshot, host(i)))
        .collect();
    over.sort_by_key(|&i| (core::cmp::Reverse(host_load(host(i))), i));
    let mut sources: Vec<(HostIndex, SourceKind)> =
        over.iter().map(|&i| (i, SourceKind::Over)).collect();
    if mode == Mode::PowerSaving {
        let mut under: Vec<HostIndex> = candidates
            .iter()
            .copied()
            .filter(|&i| {
                let h = host(i);
                t.under_utilized(h) && vm_count(snapshot, h) > 0 && !over.contains(&i)
            })
            .collect();
        under.sort_by_key(|&i| (host_load(host(i)), vm_count(snapshot, host(i)), i));
        sources.extend(under.into_iter().map(|i| (i, SourceKind::Under)));
    }
    for (source, kind) in sources {
        let src = host(source);
        let on_source: Vec<(usize, &Vm)> = snapshot
            .vms
            .iter()
            .enumerate()
            .filter(|(_, v)| v.current_host.as_deref() == Some(src.id.as_str()))
            .collect();
        if on_source
            .iter()
            .any(|(_, v)| v.status == VmStatus::MigratingFrom)
        {
            continue;
        }
        let mut movable: Vec<(usize, &Vm)> = on_source
            .into_iter()
            .filter(|(_, v)| {
                v.status == VmStatus::Up && v.migration_mode() == MigrationMode::Migratable
            })
            .collect();
        movable.sort_by_key(|(i, v)| (v.cpu_usage_percent, v.memory_mb, *i));
        for (index, vm) in movable {
            let dests: Vec<HostIndex> = candidates
                .iter()
                .copied()
                .filter(|&d| {
                    d != source && destination_ok(snapshot, t, mode, kind, src, host(d), vm)
                })
                .collect();
            if dests.is_empty() {
                continue;
            }
            let why = match kind {
                SourceKind::Over => format!(
                    "host {} is over-utilized (CPU {}% >= {}% for {} min, {} MiB free); \
                     moving its least CPU-consuming migratable VM ({}%)",
                    src.id,
                    host_load(src),
                    t.high,
                    src.cpu_usage_duration_minutes,
                    free_memory_mb(src),
                    vm.cpu_usage_percent
                ),
                SourceKind::Under => format!(
                    "host {} is under-utilized (CPU {}% < {}% for {} min) with {} VM(s); \
                     emptying it to save power, least CPU-consuming VM first ({}%)",
                    src.id,
                    host_load(src),
                    t.low,
                    src.cpu_usage_duration_minutes,
                    vm_count(snapshot, src),
                    vm.cpu_usage_percent
                ),
            };
            return Some(Proposal {
                vm: index as u32,
                source,
                candidates: dests,
                reason: why,
            });
        }
    }
    None
}

/// Why [`propose`] found no migration: which sources there were (over-utilized hosts, and
/// for power saving under-utilized hosts with VMs) and, when there were some, that none had a
/// migratable running VM with a destination that fits.
pub fn why_no_migration(
    snapshot: &Snapshot,
    t: &Thresholds,
    mode: Mode,
    candidates: &[HostIndex],
) -> String {
    let host = |i: &HostIndex| &snapshot.hosts[*i as usize];
    let over = candidates
        .iter()
        .filter(|i| t.over_utilized(snapshot, host(i)))
        .count();
    let under = candidates
        .iter()
        .filter(|i| t.under_utilized(host(i)) && vm_count(snapshot, host(i)) > 0)
        .count();
    let over_rule = if t.max_free_memory_for_over_mb > 0 {
        format!(
            "CPU >= {}% for {} min, or less than {} MiB free",
            t.high, t.duration_minutes, t.max_free_memory_for_over_mb
        )
    } else {
        format!("CPU >= {}% for {} min", t.high, t.duration_minutes)
    };
    match (mode, over, under) {
        (Mode::EvenlyDistributed, 0, _) | (Mode::PowerSaving, 0, 0) => {
            let mut why = format!("no migration: no host is over-utilized ({over_rule})");
            if mode == Mode::PowerSaving {
                why.push_str(&format!(
                    " and no host with VMs is under-utilized (CPU < {}% for {} min)",
                    t.low, t.duration_minutes
                ));
            }
            why
        }
        _ => format!(
            "no migration: {over} over-utilized and {} under-utilized host(s), but none has a \
             migratable running VM with a destination that fits (or one is migrating already)",
            if mode == Mode::PowerSaving { under } else { 0 }
        ),
    }
}

fn destination_ok(
    snapshot: &Snapshot,
    t: &Thresholds,
    mode: Mode,
    kind: SourceKind,
    src: &Host,
    dest: &Host,
    vm: &Vm,
) -> bool {
    if dest.status != HostStatus::Up {
        return false;
    }
    let load = host_load(dest);
    let after = load.saturating_add(vm_load_on(
        vm,
        dest,
        snapshot.cluster.count_threads_as_cores,
    ));
    let free = free_memory_mb(dest);
    let Some(left) = free.checked_sub(vm.memory_mb) else {
        return false;
    };
    if t.max_free_memory_for_over_mb > 0 && left <= t.max_free_memory_for_over_mb {
        return false;
    }
    if after > t.high {
        return false;
    }
    match mode {
        Mode::EvenlyDistributed => load < t.even_destination_bound(),
        Mode::PowerSaving => {
            if t.over_utilized(snapshot, dest) {
                return false;
            }
            match kind {
                SourceKind::Over => true,
                // Consolidation: only onto a busier host that already runs VMs, so that
                // two quiet hosts never trade VMs back and forth.
                SourceKind::Under => {
                    let (dl, sl) = (host_load(dest), host_load(src));
                    let (dn, sn) = (vm_count(snapshot, dest), vm_count(snapshot, src));
                    let di = snapshot.host_index(&dest.id);
                    let si = snapshot.host_index(&src.id);
                    dn > 0 && (dl, dn, core::cmp::Reverse(di)) > (sl, sn, core::cmp::Reverse(si))
                }
            }
        }
    }
}
