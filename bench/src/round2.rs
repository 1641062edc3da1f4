//! The measurements added for issue 18 ("performance, round two"): the host stats refresh,
//! the mass start on several threads, and one decision over a very large cluster split
//! across cores.

use crate::stats::{median, ms, timed, Comparison};
use anyhow::{bail, Context as _, Result};
use policy_sdk::testing::XorShift;
use policy_sdk::{HostUsage, Snapshot};
use serde::Serialize;
use std::hint::black_box;
use std::time::Instant;
use wasmsched::{Cluster, Detail, Policy, ScheduleRequest};
use wasmsched_testkit::synth::{self, VmKind};

use crate::runs::Backends;

/// Host stats refresh: every host's usage changes, then one decision.
#[derive(Debug, Clone, Serialize)]
pub struct Refresh {
    /// Hosts of the cluster (every one of them gets new usage figures per refresh).
    pub hosts: usize,
    /// Refreshes measured per backend.
    pub runs: usize,
    /// Encoded size of the usage change sent to each module (one `SetUsage` delta).
    pub delta_message_bytes: usize,
    /// Wasm modules.
    pub wasm: RefreshBackend,
    /// Native units.
    pub native: RefreshBackend,
}

/// One backend's refresh figures, medians in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct RefreshBackend {
    /// `Cluster::update_usage` of every host plus the next decision (which syncs it).
    pub refresh_and_decide_ms: f64,
    /// Of which the `update_usage` call alone.
    pub update_ms: f64,
    /// A decision on an unchanged cluster, measured in the same rounds.
    pub steady_ms: f64,
    /// `refresh_and_decide_ms / steady_ms`.
    pub ratio: f64,
}

/// New usage figures for every host of `snapshot` (seeded; `round` varies them).
fn usage_round(snapshot: &Snapshot, round: u64) -> Vec<(String, HostUsage)> {
    let mut rng = XorShift::new(0x5eed ^ round.wrapping_mul(0x9e37_79b9));
    snapshot
        .hosts
        .iter()
        .map(|h| {
            let physical = h.memory.physical_mb.max(1);
            (
                h.id.clone(),
                HostUsage {
                    cpu_usage_percent: rng.below(90) as u32,
                    free_mb: physical / 4 + rng.below(physical * 3 / 4),
                    swap_free_mb: rng.below(8_192),
                    running_vms: rng.below(40) as u32,
                },
            )
        })
        .collect()
}

/// The host stats refresh at `hosts` hosts: per round, every host's usage changes
/// (`Cluster::update_usage`) and a plain VM is decided (that decision syncs the change to
/// every module), next to a decision on the unchanged cluster. Backends alternate.
pub fn refresh(backends: &Backends, hosts: usize, quick: bool) -> Result<Refresh> {
    let (wasm, native) = backends.default_policies()?;
    let request = ScheduleRequest::new(VmKind::Plain.vm("probe-refresh"));
    let runs = if quick { 5 } else { 30 };
    let mut figures: [(Vec<f64>, Vec<f64>, Vec<f64>); 2] = Default::default();
    let mut delta_message_bytes = 0;
    for (slot, policy) in [(0, &wasm), (1, &native)] {
        // One cluster per backend, so each sees only its own refreshes.
        let (cluster, _) = synth::realistic_cluster(hosts)?;
        black_box(policy.evaluate(&cluster.view(), &request)?);
        figures[slot].0.reserve(runs);
        let rounds: Vec<_> = (0..runs as u64 + 1)
            .map(|r| usage_round(&cluster.snapshot(), r))
            .collect();
        for (round, usage) in rounds.iter().enumerate() {
            let (updated, update) =
                timed(|| cluster.update_usage(usage.iter().map(|(id, u)| (id.as_str(), *u))));
            updated?;
            let (decided, decide) = timed(|| policy.evaluate(&cluster.view(), &request));
            black_box(decided?);
            let (steady, steady_time) = timed(|| policy.evaluate(&cluster.view(), &request));
            black_box(steady?);
            if round == 0 {
                // Warm-up round (first delta of this kind, buffers grown).
                if slot == 0 {
                    delta_message_bytes = policy_sdk::wire::codec::encode(
                        &policy_sdk::wire::sync::Change::SetUsage(
                            usage
                                .iter()
                                .enumerate()
                                .map(|(i, (_, u))| (i as u32, *u))
                                .collect(),
                        ),
                    )?
                    .len();
                }
                continue;
            }
            figures[slot].0.push(ms(update + decide));
            figures[slot].1.push(ms(update));
            figures[slot].2.push(ms(steady_time));
        }
    }
    let backend = |slot: usize| {
        let (total, update, steady) = &figures[slot];
        let refresh_and_decide_ms = median(total);
        let steady_ms = median(steady);
        RefreshBackend {
            refresh_and_decide_ms,
            update_ms: median(update),
            steady_ms,
            ratio: refresh_and_decide_ms / steady_ms,
        }
    };
    Ok(Refresh {
        hosts,
        runs,
        delta_message_bytes,
        wasm: backend(0),
        native: backend(1),
    })
}

/// One thread count of the parallel mass start.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadsRun {
    /// Threads deciding and reserving concurrently on one cluster.
    pub threads: usize,
    /// Wall time of each run, ms.
    pub runs_ms: Vec<f64>,
    /// Median run.
    pub median_ms: f64,
    /// Decisions per second of the median run.
    pub decisions_per_s: f64,
    /// Throughput relative to one thread of the same backend.
    pub speedup: f64,
    /// VMs placed (last run).
    pub placed: usize,
    /// Hosts over-committed after any run (plain arithmetic on the final snapshot); must
    /// be 0.
    pub over_committed_hosts: usize,
}

/// Mass start on 1..N threads, per backend.
#[derive(Debug, Clone, Serialize)]
pub struct MassThreads {
    /// VMs per run.
    pub vms: usize,
    /// Hosts of the cluster.
    pub hosts: usize,
    /// Wasm modules, one entry per thread count.
    pub wasm: Vec<ThreadsRun>,
    /// Native units.
    pub native: Vec<ThreadsRun>,
    /// What this machine gives the most threads of the run when they share nothing: each
    /// places every VM of the run on a cluster of its own (wasm, in the same slices as the
    /// others). Its speed-up counts the decisions of all those copies against one thread's,
    /// the bound for the shared cluster's speed-up at that moment of the machine.
    pub wasm_own_clusters: ThreadsRun,
}

/// Hosts whose pending resources break plain host arithmetic: committed plus pending
/// overcommit memory above the scheduling ceiling, pending memory above free memory and
/// swap, or a pCPU pinned twice (pending VMs, or a pending VM and a dedicated pCPU).
pub fn over_committed(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .hosts
        .iter()
        .filter(|h| {
            let (m, p) = (&h.memory, &h.pending);
            let mut pinned: Vec<u32> = p.pinned_cpus.clone();
            pinned.extend(&h.dedicated_cpus);
            let count = pinned.len();
            pinned.sort_unstable();
            pinned.dedup();
            m.committed_mb + p.overcommit_memory_mb > m.max_scheduling_mb
                || p.memory_mb > m.free_mb + m.swap_free_mb
                || pinned.len() != count
        })
        .map(|h| h.id.clone())
        .collect()
}

/// VMs of one slice of the threaded mass start: every (backend, thread count) takes its
/// turn slice by slice.
const THREADS_SLICE: usize = 1_000;

/// One of the runs that take turns slice by slice in the threaded mass start.
struct Turn<'a> {
    policy: &'a Policy,
    threads: usize,
    /// Each thread places every VM on a cluster of its own (independent copies of a
    /// one-thread run), instead of its share of them on one shared cluster.
    own_clusters: bool,
}

impl Turn<'_> {
    /// Fresh clusters for a run: one per thread with their own, else one.
    fn clusters(&self, snapshot: &Snapshot) -> Result<Vec<Cluster>> {
        let count = if self.own_clusters { self.threads } else { 1 };
        Ok((0..count)
            .map(|_| Cluster::new(snapshot.clone(), "<mass-threads>"))
            .collect::<wasmsched::Result<_>>()?)
    }

    /// Copies of the one-thread run this turn makes.
    fn copies(&self) -> usize {
        if self.own_clusters {
            self.threads
        } else {
            1
        }
    }

    /// One slice on `clusters`: returns the wall time and the VMs placed.
    fn slice(
        &self,
        clusters: &[Cluster],
        requests: &[ScheduleRequest],
    ) -> Result<(std::time::Duration, usize)> {
        let threads = self.threads;
        on_threads(threads, |t| {
            if self.own_clusters {
                place_all(self.policy, &clusters[t], requests.iter())
            } else {
                let share = requests.iter().skip(t).step_by(threads);
                place_all(self.policy, &clusters[0], share)
            }
        })
    }
}

/// Runs `place(t)` on `threads` threads at once; returns the wall time and the sum of what
/// they placed.
fn on_threads(
    threads: usize,
    place: impl Fn(usize) -> Result<usize> + Sync,
) -> Result<(std::time::Duration, usize)> {
    let start = Instant::now();
    let placed: Vec<Result<usize>> = std::thread::scope(|s| {
        let place = &place;
        let workers: Vec<_> = (0..threads).map(|t| s.spawn(move || place(t))).collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("mass start worker panicked"))
            .collect()
    });
    let took = start.elapsed();
    let mut total = 0;
    for p in placed {
        total += p?;
    }
    Ok((took, total))
}

/// Schedules `requests` on `cluster` one after another; returns the VMs placed.
fn place_all<'a>(
    policy: &Policy,
    cluster: &Cluster,
    requests: impl Iterator<Item = &'a ScheduleRequest>,
) -> Result<usize> {
    let mut placed = 0;
    for request in requests {
        let decision = policy
            .schedule(cluster, request)
            .context("mass start decision")?;
        placed += usize::from(decision.chosen.is_some());
    }
    Ok(placed)
}

/// After a run: the over-committed hosts of `cluster`, checked against what was placed.
fn check_run(cluster: &Cluster, threads: usize, placed: usize) -> Result<usize> {
    let over = over_committed(&cluster.snapshot()).len();
    let pending: usize = cluster
        .pending_by_host()
        .iter()
        .map(|(_, agg)| agg.vms.len())
        .sum();
    if pending != placed {
        bail!("{threads} threads: {placed} VMs placed but {pending} pending");
    }
    Ok(over)
}

/// Mass start of `vms` VMs of the mix onto `hosts` hosts with each thread count of
/// `thread_counts`, `runs` runs each. In a run, every (backend, thread count) places the
/// VMs on a fresh cluster of its own, [`THREADS_SLICE`] at a time, taking turns slice by
/// slice (the order rotating), so that all of them meet the same phases of the machine
/// (see [`crate::runs::mass_start`]); a run's time is the sum of its slices.
pub fn mass_threads(
    backends: &Backends,
    vms: usize,
    hosts: usize,
    runs: usize,
    thread_counts: &[usize],
) -> Result<MassThreads> {
    let (wasm, native) = backends.default_policies()?;
    // Each thread count's wasm policy gets a runtime of its own: sharing one module's
    // instances between clusters that take turns would sync whole snapshots at every turn.
    let more_runtimes: Vec<wasmsched::Runtime> = thread_counts
        .iter()
        .skip(1)
        .map(|_| wasmsched_testkit::native::wasm_runtime())
        .collect();
    let mut wasm_policies = vec![wasm];
    for runtime in &more_runtimes {
        wasm_policies.push(Policy::builtin_default(runtime)?);
    }
    let own_runtime = wasmsched_testkit::native::wasm_runtime();
    let own_policy = Policy::builtin_default(&own_runtime)?;
    let requests: Vec<ScheduleRequest> = synth::vm_mix(vms, "threads")
        .into_iter()
        .map(|vm| ScheduleRequest::new(vm).detail(Detail::Summary))
        .collect();
    let snapshot = synth::snapshot_of(hosts);
    let max = thread_counts.iter().copied().max().unwrap_or(1);
    // Wasm per thread count, native per thread count, then the wasm copies on their own
    // clusters.
    let shared = |policy, threads| Turn {
        policy,
        threads,
        own_clusters: false,
    };
    let mut turns: Vec<Turn<'_>> = wasm_policies
        .iter()
        .zip(thread_counts)
        .map(|(policy, &threads)| shared(policy, threads))
        .collect();
    turns.extend(
        thread_counts
            .iter()
            .map(|&threads| shared(&native, threads)),
    );
    turns.push(Turn {
        policy: &own_policy,
        threads: max,
        own_clusters: true,
    });
    // Warm-up: every thread gets instances of every module.
    for turn in &turns {
        turn.slice(
            &turn.clusters(&snapshot)?,
            &requests[..requests.len().min(200)],
        )?;
    }
    // Per turn: each run's time, VMs placed, the most over-committed hosts.
    let mut results = vec![(Vec::new(), 0usize, 0usize); turns.len()];
    for _ in 0..runs {
        let clusters: Vec<Vec<Cluster>> = turns
            .iter()
            .map(|turn| turn.clusters(&snapshot))
            .collect::<Result<_>>()?;
        let mut took = vec![std::time::Duration::ZERO; turns.len()];
        let mut placed = vec![0usize; turns.len()];
        for (i, slice) in requests.chunks(THREADS_SLICE).enumerate() {
            for k in 0..turns.len() {
                let p = (i + k) % turns.len();
                let (time, n) = turns[p].slice(&clusters[p], slice)?;
                took[p] += time;
                placed[p] += n;
            }
        }
        for (p, turn) in turns.iter().enumerate() {
            let entry = &mut results[p];
            for cluster in &clusters[p] {
                let over = check_run(cluster, turn.threads, placed[p] / turn.copies())?;
                entry.2 = entry.2.max(over);
            }
            entry.0.push(ms(took[p]));
            entry.1 = placed[p];
        }
    }
    // Speed-ups against the one-thread run of the same backend (the first of its turns).
    let summary = |p: usize, one: usize| {
        let turn = &turns[p];
        let (runs_ms, placed, over) = &results[p];
        let median_ms = median(runs_ms);
        let copies = turn.copies() as f64;
        ThreadsRun {
            threads: turn.threads,
            runs_ms: runs_ms.clone(),
            median_ms,
            decisions_per_s: copies * vms as f64 / (median_ms / 1_000.0),
            speedup: copies * median(&results[one].0) / median_ms,
            placed: *placed,
            over_committed_hosts: *over,
        }
    };
    let per_backend = thread_counts.len();
    let native_first = per_backend;
    Ok(MassThreads {
        vms,
        hosts,
        wasm: (0..per_backend).map(|p| summary(p, 0)).collect(),
        native: (native_first..native_first + per_backend)
            .map(|p| summary(p, native_first))
            .collect(),
        wasm_own_clusters: summary(turns.len() - 1, 0),
    })
}

/// Process CPU time (user + system, every thread, including finished ones) in seconds,
/// from `/proc/self/stat` (clock ticks of 1/100 s).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// One cluster size of the split measurement.
#[derive(Debug, Clone, Serialize)]
pub struct SplitSize {
    /// Hosts.
    pub hosts: usize,
    /// Summary decisions over the VM mix, wasm vs native.
    pub comparison: Comparison,
    /// Wasm decisions only, back to back: process CPU time / wall time (about 1 when a
    /// decision runs on one core, about the core count when it uses them all).
    pub wasm_cores_used: Option<f64>,
    /// Wall time of those back-to-back wasm decisions, ms.
    pub cores_window_ms: f64,
}

/// A large cluster against a base size: does one decision use every core, and how does
/// its p50 grow?
#[derive(Debug, Clone, Serialize)]
pub struct Split {
    /// CPUs available.
    pub cpus: usize,
    /// The base size (10,000 hosts) and the large one (50,000).
    pub sizes: Vec<SplitSize>,
    /// Wasm p50 at the large size / at the base size.
    pub wasm_growth: f64,
    /// Host count ratio (the linear bound of `wasm_growth`).
    pub hosts_ratio: f64,
}

/// Summary decisions of the VM mix at `base` and `large` hosts (wasm vs native, paired),
/// and at each size a window of back-to-back wasm decisions whose process CPU time over
/// wall time says how many cores one decision kept busy.
pub fn split(backends: &Backends, base: usize, large: usize, quick: bool) -> Result<Split> {
    let (wasm, native) = backends.default_policies()?;
    let iterations = if quick { 2 } else { 8 };
    let mut sizes = Vec::new();
    for hosts in [base, large] {
        let (cluster, _) = synth::realistic_cluster(hosts)?;
        let view = cluster.view();
        let requests: Vec<ScheduleRequest> = VmKind::ALL
            .iter()
            .map(|k| ScheduleRequest::new(k.vm("probe-split")).detail(Detail::Summary))
            .collect();
        for r in &requests {
            let w = wasm.evaluate(&view, r)?;
            let n = native.evaluate(&view, r)?;
            if w.chosen != n.chosen || w.available != n.available {
                bail!("split at {hosts} hosts: wasm and native disagree");
            }
        }
        let (mut ws, mut ns) = (Vec::new(), Vec::new());
        for i in 0..iterations {
            for r in &requests {
                let order: [(&Policy, bool); 2] = if i % 2 == 0 {
                    [(&wasm, true), (&native, false)]
                } else {
                    [(&native, false), (&wasm, true)]
                };
                for (policy, is_wasm) in order {
                    let (d, took) = timed(|| policy.evaluate(&view, r));
                    black_box(d?);
                    if is_wasm {
                        ws.push(ms(took));
                    } else {
                        ns.push(ms(took));
                    }
                }
            }
        }
        // Back-to-back wasm decisions for at least a second (the CPU clock has 10 ms
        // ticks).
        let cpu_before = process_cpu_seconds();
        let start = Instant::now();
        let mut done = 0;
        while done < requests.len() || start.elapsed().as_millis() < if quick { 300 } else { 1_500 }
        {
            black_box(wasm.evaluate(&view, &requests[done % requests.len()])?);
            done += 1;
        }
        let wall = start.elapsed();
        let cores = match (cpu_before, process_cpu_seconds()) {
            (Some(a), Some(b)) => Some((b - a) / wall.as_secs_f64()),
            _ => None,
        };
        sizes.push(SplitSize {
            hosts,
            comparison: Comparison::of(&ws, &ns),
            wasm_cores_used: cores,
            cores_window_ms: ms(wall),
        });
    }
    let wasm_growth = sizes[1].comparison.wasm.p50_ms / sizes[0].comparison.wasm.p50_ms;
    Ok(Split {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        sizes,
        wasm_growth,
        hosts_ratio: large as f64 / base as f64,
    })
}
