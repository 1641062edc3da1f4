//! The measurements. Each function builds what it needs, measures, and returns a
//! serializable section of the report.

use crate::stats::{median, ms, timed, Comparison};
use anyhow::{bail, Context as _, Result};
use policy_sdk::wire::codec;
use policy_sdk::wire::sync::{Change, SyncMessage, SyncMessageRef};
use serde::Serialize;
use std::hint::black_box;
use std::path::Path;
use wasmsched::Format;
use wasmsched::{Cluster, ClusterView, Detail, PlacementKind, Policy, Runtime, ScheduleRequest};
use wasmsched_testkit::native;
use wasmsched_testkit::synth::{self, host_id, PendingSetup, VmKind};

/// The two runtimes of a run: builtin wasm modules, and the same unit crates linked natively.
#[derive(Debug)]
pub struct Backends {
    /// Builtin modules as shipped (wasm), compiled-module cache disabled.
    pub wasm: Runtime,
    /// The builtin unit crates linked natively ([`wasmsched_testkit::native::runtime`]).
    pub native: Runtime,
}

impl Backends {
    /// Creates both runtimes.
    pub fn new() -> Result<Backends> {
        Ok(Backends {
            wasm: native::wasm_runtime(),
            native: native::runtime(),
        })
    }

    /// The builtin default policy on both backends.
    pub fn default_policies(&self) -> Result<(Policy, Policy)> {
        Ok((
            Policy::builtin_default(&self.wasm)?,
            Policy::builtin_default(&self.native)?,
        ))
    }

    /// A policy from TOML text on both backends.
    pub fn parse(&self, toml: &str, label: &str) -> Result<(Policy, Policy)> {
        Ok((
            Policy::parse(&self.wasm, toml, Format::Toml, label)?,
            Policy::parse(&self.native, toml, Format::Toml, label)?,
        ))
    }
}

/// One what-if decision, timed, in milliseconds.
fn decide_ms(policy: &Policy, view: &ClusterView, request: &ScheduleRequest) -> Result<f64> {
    let (decision, took) = timed(|| policy.evaluate(view, request));
    black_box(decision?);
    Ok(ms(took))
}

/// Paired what-if decisions on a fixed view: `warmup` untimed rounds, then `iterations`
/// timed rounds, each round one wasm and one native decision (alternating which goes
/// first) so both backends see the same machine noise.
fn paired(
    policies: (&Policy, &Policy),
    view: &ClusterView,
    request: &ScheduleRequest,
    warmup: usize,
    iterations: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut samples = paired_rounds(
        policies,
        view,
        std::slice::from_ref(request),
        warmup,
        iterations,
    )?;
    Ok(samples.remove(0))
}

/// [`paired`] for several requests at once, in [`ROUNDS_OF_REQUESTS`] rounds: in each
/// round every request gets its share of the iterations in a row (one wasm and one native
/// decision at a time, alternating which goes first), so that every request's samples
/// spread over the whole measurement while a request's decisions still come in runs. A
/// small cloud VM's speed drifts by tens of percent within seconds; measured one after the
/// other, the requests (the VM kinds) met different phases of the machine, and the
/// samples of all kinds together compared wasm and native samples of different kinds,
/// taken at different speeds. The (wasm, native) samples of each request, in order.
fn paired_rounds(
    (wasm, native): (&Policy, &Policy),
    view: &ClusterView,
    requests: &[ScheduleRequest],
    warmup: usize,
    iterations: usize,
) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
    for _ in 0..warmup {
        for request in requests {
            decide_ms(wasm, view, request)?;
            decide_ms(native, view, request)?;
        }
    }
    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = requests
        .iter()
        .map(|_| {
            (
                Vec::with_capacity(iterations),
                Vec::with_capacity(iterations),
            )
        })
        .collect();
    let run = iterations.div_ceil(ROUNDS_OF_REQUESTS).max(1);
    let mut done = 0;
    while done < iterations {
        let now = run.min(iterations - done);
        for (request, (w, n)) in requests.iter().zip(&mut samples) {
            for i in done..done + now {
                if i % 2 == 0 {
                    w.push(decide_ms(wasm, view, request)?);
                    n.push(decide_ms(native, view, request)?);
                } else {
                    n.push(decide_ms(native, view, request)?);
                    w.push(decide_ms(wasm, view, request)?);
                }
            }
        }
        done += now;
    }
    Ok(samples)
}

/// Rounds in which [`paired_rounds`] takes the requests in turn.
const ROUNDS_OF_REQUESTS: usize = 10;

/// Decision latency of one VM kind at one cluster size.
#[derive(Debug, Clone, Serialize)]
pub struct KindLatency {
    /// VM kind.
    pub kind: VmKind,
    /// Hosts that passed every filter (same for both backends, checked).
    pub available_hosts: usize,
    /// Wasm vs native.
    #[serde(flatten)]
    pub comparison: Comparison,
}

/// Decision latency of the full builtin default policy at one cluster size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeLatency {
    /// Hosts in the cluster.
    pub hosts: usize,
    /// Starting VMs reserved before measuring.
    pub pending: PendingSetup,
    /// Timed decisions per kind and backend.
    pub iterations: usize,
    /// Untimed decisions per kind and backend before measuring.
    pub warmup: usize,
    /// Per VM kind, decisions with a full report ([`Detail::Full`]: every host's outcome
    /// and weights).
    pub kinds: Vec<KindLatency>,
    /// Every kind's samples together ([`Detail::Full`]).
    pub overall: Comparison,
    /// Per VM kind, summary decisions ([`Detail::Summary`]: the chosen host and the best
    /// runners-up, what an engine placing VMs asks for). Same hosts chosen.
    pub summary_kinds: Vec<KindLatency>,
    /// Every kind's samples together ([`Detail::Summary`]).
    pub summary_overall: Comparison,
}

/// Timed decisions per kind and backend at a cluster size.
pub fn latency_iterations(hosts: usize, quick: bool) -> (usize, usize) {
    let (warmup, iterations) = match hosts {
        0..=2_000 => (20, 300),
        2_001..=20_000 => (5, 100),
        _ => (2, 20),
    };
    if quick {
        (warmup.min(3), (iterations / 10).max(5))
    } else {
        (warmup, iterations)
    }
}

/// Decision latency (what-if, [`Policy::evaluate`] on a fixed view) of the builtin default
/// policy for each VM kind at `hosts` hosts, wasm vs native.
pub fn latency(backends: &Backends, hosts: usize, quick: bool) -> Result<SizeLatency> {
    let (wasm, native) = backends.default_policies()?;
    let (cluster, pending) = synth::realistic_cluster(hosts)?;
    let view = cluster.view();
    let (warmup, iterations) = latency_iterations(hosts, quick);
    let measure = |detail: Detail| -> Result<(Vec<KindLatency>, Comparison)> {
        let requests: Vec<ScheduleRequest> = VmKind::ALL
            .iter()
            .map(|kind| {
                ScheduleRequest::new(kind.vm(&format!("probe-{}", kind.name()))).detail(detail)
            })
            .collect();
        let mut available = Vec::with_capacity(requests.len());
        for (kind, request) in VmKind::ALL.iter().zip(&requests) {
            let w = wasm.evaluate(&view, request)?;
            let n = native.evaluate(&view, request)?;
            if w.available != n.available || w.chosen != n.chosen {
                bail!(
                    "{} at {hosts} hosts: wasm and native disagree ({:?} of {} vs {:?} of {})",
                    kind.name(),
                    w.chosen,
                    w.available,
                    n.chosen,
                    n.available
                );
            }
            available.push(w.available);
        }
        // The kinds take turns, a tenth of the iterations at a time (see `paired_rounds`).
        let samples = paired_rounds((&wasm, &native), &view, &requests, warmup, iterations)?;
        let mut kinds = Vec::new();
        let (mut all_w, mut all_n) = (Vec::new(), Vec::new());
        for ((kind, available_hosts), (ws, ns)) in
            VmKind::ALL.into_iter().zip(available).zip(samples)
        {
            all_w.extend_from_slice(&ws);
            all_n.extend_from_slice(&ns);
            kinds.push(KindLatency {
                kind,
                available_hosts,
                comparison: Comparison::of(&ws, &ns),
            });
        }
        Ok((kinds, Comparison::of(&all_w, &all_n)))
    };
    let (summary_kinds, summary_overall) = measure(Detail::Summary)?;
    let (kinds, overall) = measure(Detail::Full)?;
    Ok(SizeLatency {
        hosts,
        pending,
        iterations,
        warmup,
        kinds,
        overall,
        summary_kinds,
        summary_overall,
    })
}

/// One backend's mass-start result.
#[derive(Debug, Clone, Serialize)]
pub struct MassStartBackend {
    /// Wall time of each run, in milliseconds.
    pub runs_ms: Vec<f64>,
    /// Median run time.
    pub median_ms: f64,
    /// Decisions per second of the median run.
    pub decisions_per_s: f64,
    /// VMs that got a host (in the last run).
    pub placed: usize,
    /// VMs no host could take (in the last run).
    pub unplaced: usize,
}

/// Mass start: `vms` VMs scheduled one after another onto a fresh cluster.
#[derive(Debug, Clone, Serialize)]
pub struct MassStart {
    /// VMs per run.
    pub vms: usize,
    /// Hosts of the cluster.
    pub hosts: usize,
    /// Wasm modules.
    pub wasm: MassStartBackend,
    /// Native units.
    pub native: MassStartBackend,
    /// Wasm median time / native median time.
    pub ratio: f64,
}

/// VMs of one slice of the mass start: the backends take turns slice by slice.
pub const MASS_SLICE: usize = 500;

/// Mass start of `vms` VMs of the mix onto `hosts` hosts with [`Policy::schedule_batch`]
/// (every decision reserves pending resources the next one sees), on a fresh cluster per
/// run and backend.
///
/// Within a run the backends take turns, [`MASS_SLICE`] VMs at a time, each on its own
/// cluster (which keeps the earlier slices' reservations), the first to go alternating
/// from slice to slice; a backend's time is the sum of its slices. The speed of a small
/// cloud machine drifts by tens of percent over seconds: whole runs one after the other
/// compared the backends in different phases of the machine, slices of ~0.1 s compare them
/// in the same.
pub fn mass_start(backends: &Backends, vms: usize, hosts: usize, runs: usize) -> Result<MassStart> {
    let (wasm, native) = backends.default_policies()?;
    let policies = [&wasm, &native];
    let requests: Vec<ScheduleRequest> = synth::vm_mix(vms, "mass")
        .into_iter()
        .map(|vm| ScheduleRequest::new(vm).detail(Detail::Summary))
        .collect();
    let snapshot = synth::snapshot_of(hosts);
    let mut results: [(Vec<f64>, usize, usize); 2] = Default::default();
    for _ in 0..runs {
        let clusters = [
            Cluster::new(snapshot.clone(), "<mass-start>")?,
            Cluster::new(snapshot.clone(), "<mass-start>")?,
        ];
        let mut took = [std::time::Duration::ZERO; 2];
        let mut placed = [0usize; 2];
        for (i, slice) in requests.chunks(MASS_SLICE).enumerate() {
            for slot in [i % 2, 1 - i % 2] {
                let (decisions, t) =
                    timed(|| policies[slot].schedule_batch(&clusters[slot], slice));
                took[slot] += t;
                for d in decisions {
                    if d.context("mass start decision")?.chosen.is_some() {
                        placed[slot] += 1;
                    }
                }
            }
        }
        for slot in 0..2 {
            results[slot].0.push(ms(took[slot]));
            results[slot].1 = placed[slot];
            results[slot].2 = vms - placed[slot];
        }
    }
    let backend = |(runs_ms, placed, unplaced): &(Vec<f64>, usize, usize)| {
        let median_ms = median(runs_ms);
        MassStartBackend {
            runs_ms: runs_ms.clone(),
            median_ms,
            decisions_per_s: vms as f64 / (median_ms / 1_000.0),
            placed: *placed,
            unplaced: *unplaced,
        }
    };
    let wasm = backend(&results[0]);
    let native = backend(&results[1]);
    Ok(MassStart {
        vms,
        hosts,
        ratio: wasm.median_ms / native.median_ms,
        wasm,
        native,
    })
}

/// Sync cost of one backend, medians in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct SyncBackend {
    /// First decision on a fresh cluster: every module gets the full snapshot.
    pub full_ms: f64,
    /// Decision right after one VM was reserved on one host: a small delta per module.
    pub delta_ms: f64,
    /// Decision on an unchanged view (nothing to sync).
    pub steady_ms: f64,
}

/// Snapshot sync cost at one cluster size.
#[derive(Debug, Clone, Serialize)]
pub struct Sync {
    /// Hosts.
    pub hosts: usize,
    /// Fresh clusters measured (full) and single changes measured (delta).
    pub full_runs: usize,
    /// Delta decisions measured.
    pub delta_runs: usize,
    /// Encoded size of the full-snapshot sync message.
    pub full_message_bytes: usize,
    /// Time to encode it on the host, on one core.
    pub full_encode_ms: f64,
    /// Encoded size of a delta carrying one host's new pending aggregate.
    pub delta_message_bytes: usize,
    /// Wasm modules.
    pub wasm: SyncBackend,
    /// Native units (no sync: they read the host's snapshot directly).
    pub native: SyncBackend,
}

/// Snapshot sync cost at `hosts` hosts: a plain VM's decision on a fresh cluster (full
/// snapshot to every module) vs after one reservation (a delta) vs on an unchanged view.
pub fn sync(backends: &Backends, hosts: usize, quick: bool) -> Result<Sync> {
    let (wasm, native) = backends.default_policies()?;
    let request = ScheduleRequest::new(VmKind::Plain.vm("probe-sync"));
    let snapshot = synth::snapshot_of(hosts);
    let (full_runs, delta_runs) = match (quick, hosts) {
        (true, _) => (2, 5),
        (false, 0..=20_000) => (5, 30),
        (false, _) => (3, 10),
    };
    let mut full = [Vec::new(), Vec::new()];
    for _ in 0..full_runs {
        for (slot, policy) in [(0, &wasm), (1, &native)] {
            let cluster = Cluster::new(snapshot.clone(), "<sync>")?;
            synth::add_starting_vms(&cluster, hosts, hosts.div_ceil(20), "starting");
            full[slot].push(decide_ms(policy, &cluster.view(), &request)?);
        }
    }
    let (cluster, _) = synth::realistic_cluster(hosts)?;
    let mut delta = [Vec::new(), Vec::new()];
    let mut steady = [Vec::new(), Vec::new()];
    for policy in [&wasm, &native] {
        decide_ms(policy, &cluster.view(), &request)?;
    }
    for i in 0..delta_runs {
        let target = host_id(i % hosts.max(1));
        for (slot, policy) in [(0, &wasm), (1, &native)] {
            let starting = VmKind::Plain.vm(&format!("delta-{i}-{slot}"));
            cluster.reserve(&starting, &target, PlacementKind::Start)?;
            delta[slot].push(decide_ms(policy, &cluster.view(), &request)?);
            steady[slot].push(decide_ms(policy, &cluster.view(), &request)?);
            cluster.release_vm(&starting.id)?;
            // Catch up with the release outside the measurement.
            decide_ms(policy, &cluster.view(), &request)?;
        }
    }
    let current = cluster.snapshot();
    // What the engine encodes once per epoch, on one core (a large snapshot in parts, on a
    // thread of its own while the guest decodes the first parts: the same bytes in all).
    let (full_bytes, encode) =
        timed(|| codec::encode(&SyncMessageRef::Full(&current)).map(|b| b.len()));
    let delta_bytes = codec::encode(&SyncMessage::Delta {
        from_epoch: current.epoch,
        to_epoch: current.epoch + 1,
        changes: vec![Change::SetPending {
            host: 0,
            pending: current
                .hosts
                .first()
                .map(|h| h.pending.clone())
                .unwrap_or_default(),
        }],
    })?
    .len();
    let backend = |slot: usize| SyncBackend {
        full_ms: median(&full[slot]),
        delta_ms: median(&delta[slot]),
        steady_ms: median(&steady[slot]),
    };
    Ok(Sync {
        hosts,
        full_runs,
        delta_runs,
        full_message_bytes: full_bytes?,
        full_encode_ms: ms(encode),
        delta_message_bytes: delta_bytes,
        wasm: backend(0),
        native: backend(1),
    })
}

/// Load times of one configuration (cold or cached), in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LoadTimes {
    /// Engine creation plus every builtin module, per run.
    pub runs_ms: Vec<f64>,
    /// Median of `runs_ms`.
    pub total_ms: f64,
    /// Median per module (file name, ms).
    pub modules: Vec<(String, f64)>,
}

/// Module load time of every builtin module.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleLoad {
    /// Builtin module files.
    pub files: Vec<String>,
    /// Their total wasm size.
    pub wasm_bytes: usize,
    /// Empty cache directory: every module is compiled by Cranelift.
    pub cold: LoadTimes,
    /// Same cache directory again, in a new runtime: modules come from the compiled cache.
    pub cached: LoadTimes,
}

/// One load of every builtin module into a new runtime using `cache` as the compiled-module
/// cache: (total ms including engine creation, per-module ms).
fn load_all(cache: &Path) -> Result<(f64, Vec<f64>)> {
    let (loaded, took) = timed(|| -> Result<(Runtime, Vec<f64>)> {
        let runtime = Runtime::builder()
            .builtins(false)
            .cache_dir(Some(cache.to_path_buf()))
            .build()?;
        let mut per_module = Vec::new();
        for (file, bytes) in Runtime::builtin_modules() {
            let (module, took) = timed(|| runtime.load_module(&format!("builtin:{file}"), bytes));
            runtime.add_module(module?)?;
            per_module.push(ms(took));
        }
        Ok((runtime, per_module))
    });
    let (runtime, per_module) = loaded?;
    drop(runtime);
    Ok((ms(took), per_module))
}

/// Summarizes load runs.
fn load_times(runs: &[(f64, Vec<f64>)], files: &[String]) -> LoadTimes {
    let runs_ms: Vec<f64> = runs.iter().map(|(total, _)| *total).collect();
    let modules = files
        .iter()
        .enumerate()
        .map(|(i, file)| {
            let each: Vec<f64> = runs.iter().map(|(_, per)| per[i]).collect();
            (file.clone(), median(&each))
        })
        .collect();
    LoadTimes {
        total_ms: median(&runs_ms),
        runs_ms,
        modules,
    }
}

/// Load time of every builtin module: `cold_runs` loads each into an empty temporary cache
/// directory (compile), then `cached_runs` loads from a directory the first cold run
/// filled (a second runtime on the same cache). Returns the result and a warm cache
/// directory (for the memory measurement).
pub fn module_load(
    cold_runs: usize,
    cached_runs: usize,
) -> Result<(ModuleLoad, tempfile::TempDir)> {
    let files: Vec<String> = Runtime::builtin_modules()
        .iter()
        .map(|(file, _)| file.to_string())
        .collect();
    let wasm_bytes = Runtime::builtin_modules()
        .iter()
        .map(|(_, bytes)| bytes.len())
        .sum();
    let warm = tempfile::tempdir()?;
    let mut cold = vec![load_all(warm.path())?];
    for _ in 1..cold_runs {
        let empty = tempfile::tempdir()?;
        cold.push(load_all(empty.path())?);
    }
    let cached: Vec<_> = (0..cached_runs)
        .map(|_| load_all(warm.path()))
        .collect::<Result<_>>()?;
    Ok((
        ModuleLoad {
            cold: load_times(&cold, &files),
            cached: load_times(&cached, &files),
            files,
            wasm_bytes,
        },
        warm,
    ))
}

/// Decision cost of one policy size.
#[derive(Debug, Clone, Serialize)]
pub struct UnitsPoint {
    /// Units in the policy (filters + weights).
    pub units: usize,
    /// Their names.
    pub names: Vec<String>,
    /// Wasm vs native.
    #[serde(flatten)]
    pub comparison: Comparison,
}

/// Decision cost with a number of pending records.
#[derive(Debug, Clone, Serialize)]
pub struct PendingPoint {
    /// Other VMs reserved (starting) before measuring.
    pub pending_vms: usize,
    /// What the reservations recorded.
    pub setup: PendingSetup,
    /// Wasm vs native.
    #[serde(flatten)]
    pub comparison: Comparison,
}

/// How a decision's cost grows with units and pending records (cost vs hosts is the
/// latency section).
#[derive(Debug, Clone, Serialize)]
pub struct Scaling {
    /// Hosts of the cluster used for both series.
    pub hosts: usize,
    /// VM kind decided.
    pub kind: VmKind,
    /// Policies of increasing size.
    pub units: Vec<UnitsPoint>,
    /// Increasing numbers of pending VMs.
    pub pending: Vec<PendingPoint>,
}

/// A policy of the units series: filter names, and weight names with their factors.
type UnitPolicy = (Vec<&'static str>, Vec<(&'static str, u32)>);

/// The policies of the units series: 2, 6 and 12 (the default policy) units.
fn unit_policies() -> Vec<UnitPolicy> {
    vec![
        (vec!["memory"], vec![("cpu-load", 1)]),
        (
            vec!["memory", "cpu", "cpu-level", "vm-affinity"],
            vec![("cpu-load", 2), ("free-memory", 1)],
        ),
        (
            vec![
                "memory",
                "cpu",
                "cpu-level",
                "cpu-pinning",
                "hugepages",
                "numa",
                "vm-affinity",
            ],
            vec![
                ("cpu-load", 2),
                ("free-memory", 1),
                ("vm-affinity-weight", 1),
                ("high-performance-cpu", 4),
                ("cpu-and-numa-pinning", 5),
            ],
        ),
    ]
}

/// Policy TOML of filters and weights.
fn policy_toml(name: &str, filters: &[&str], weights: &[(&str, u32)]) -> String {
    let mut toml = format!("name = \"{name}\"\nselector = \"rank\"\n");
    for f in filters {
        toml.push_str(&format!("\n[[filters]]\nunit = \"{f}\"\n"));
    }
    for (w, factor) in weights {
        toml.push_str(&format!(
            "\n[[weights]]\nunit = \"{w}\"\nfactor = {factor}\n"
        ));
    }
    toml
}

/// Decision cost vs units (policies of 2, 6 and 12 units) and vs pending records (the
/// default policy with `pending_levels` other VMs starting) at `hosts` hosts, for an
/// NUMA-pinned high-performance VM (every unit has per-host work to do).
pub fn scaling(
    backends: &Backends,
    hosts: usize,
    pending_levels: &[usize],
    quick: bool,
) -> Result<Scaling> {
    let kind = VmKind::NumaPinned;
    let request = ScheduleRequest::new(kind.vm("probe-scaling"));
    let (warmup, iterations) = latency_iterations(hosts, quick);
    let mut units = Vec::new();
    {
        let (cluster, _) = synth::realistic_cluster(hosts)?;
        let view = cluster.view();
        for (filters, weights) in unit_policies() {
            let n = filters.len() + weights.len();
            let toml = policy_toml(&format!("bench-{n}-units"), &filters, &weights);
            let (w, nat) = backends.parse(&toml, &format!("<bench-{n}-units>"))?;
            let (ws, ns) = paired((&w, &nat), &view, &request, warmup, iterations)?;
            units.push(UnitsPoint {
                units: n,
                names: filters
                    .iter()
                    .map(|f| f.to_string())
                    .chain(weights.iter().map(|(w, _)| w.to_string()))
                    .collect(),
                comparison: Comparison::of(&ws, &ns),
            });
        }
    }
    let (wasm, native) = backends.default_policies()?;
    let mut pending = Vec::new();
    for &level in pending_levels {
        let cluster = Cluster::new(synth::snapshot_of(hosts), "<scaling>")?;
        let setup = synth::add_starting_vms(&cluster, hosts, level, "other");
        let view = cluster.view();
        let (ws, ns) = paired((&wasm, &native), &view, &request, warmup, iterations)?;
        pending.push(PendingPoint {
            pending_vms: level,
            setup,
            comparison: Comparison::of(&ws, &ns),
        });
    }
    Ok(Scaling {
        hosts,
        kind,
        units,
        pending,
    })
}

/// Cost vs hosts, taken from the latency section.
#[derive(Debug, Clone, Serialize)]
pub struct HostsPoint {
    /// Hosts.
    pub hosts: usize,
    /// Overall p50 (all kinds), wasm.
    pub wasm_p50_ms: f64,
    /// Overall p50 (all kinds), native.
    pub native_p50_ms: f64,
    /// Their ratio.
    pub ratio_p50: f64,
    /// Wasm p50 per 1,000 hosts.
    pub wasm_p50_ms_per_1k_hosts: f64,
}

/// The hosts series of the scaling tables.
pub fn hosts_series(latency: &[SizeLatency]) -> Vec<HostsPoint> {
    latency
        .iter()
        .map(|s| HostsPoint {
            hosts: s.hosts,
            wasm_p50_ms: s.overall.wasm.p50_ms,
            native_p50_ms: s.overall.native.p50_ms,
            ratio_p50: s.overall.ratio_p50,
            wasm_p50_ms_per_1k_hosts: s.overall.wasm.p50_ms * 1_000.0 / s.hosts as f64,
        })
        .collect()
}
