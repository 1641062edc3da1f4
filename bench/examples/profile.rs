//! A profiling driver (not a benchmark): repeats one workload so `perf record` sees it.
//!
//! ```text
//! WASMSCHED_PERFMAP=1 perf record -g cargo run --release -p wasmsched-bench --example profile -- full 10000
//! ```
//!
//! Workloads: `full` (first decision on a fresh cluster), `steady` (summary decisions of the
//! VM mix on a fixed view; `ROUNDS` of them, default 200; `KIND` one kind of the mix, `DETAIL=full` full reports), `delta` (reserve, decide, release; `ROUNDS` times), `mass` (a mass start on one thread, `VMS` of them, default 3,000), `mass2` (on two threads), `mass2own` (two threads, each placing every VM on a cluster of its own), `ab` (the mass start on the wasm and the native backend in turns, `CHUNK` VMs at a time: their ratio in one phase of the machine), `turns` (summary decisions by the modules of each directory of `DIRS` and the native units in turns: guest builds compared in one phase).

use wasmsched::{Cluster, Detail, Policy, ScheduleRequest};
use wasmsched_testkit::native;
use wasmsched_testkit::synth::{self, VmKind};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("steady");
    let hosts: usize = args.get(2).map_or(Ok(10_000), |h| h.parse())?;
    let native_backend = args.iter().any(|a| a == "--native");
    // `--dir DIR`: the builtin modules from DIR instead of the embedded ones, e.g. built
    // with their names kept so that `perf` names guest functions:
    // CARGO_PROFILE_WASM_GUEST_STRIP=false cargo build --target wasm32-unknown-unknown \
    //   --profile wasm-guest -p builtin-scheduling -p builtin-balance --target-dir /tmp/named
    let dir = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1));
    let runtime = match (native_backend, dir) {
        (true, _) => native::runtime(),
        (false, Some(dir)) => runtime_of_dir(dir)?,
        (false, None) => native::wasm_runtime(),
    };
    let policy = Policy::builtin_default(&runtime)?;
    let start = std::time::Instant::now();
    match what {
        "full" => {
            let snapshot = synth::snapshot_of(hosts);
            let request = ScheduleRequest::new(VmKind::Plain.vm("probe"));
            for _ in 0..10 {
                // As the harness's sync figure: a fresh cluster with one starting VM per
                // 20 hosts pending.
                let cluster = Cluster::new(snapshot.clone(), "<profile>")?;
                synth::add_starting_vms(&cluster, hosts, hosts.div_ceil(20), "starting");
                let t = std::time::Instant::now();
                policy.evaluate(&cluster.view(), &request)?;
                eprintln!("full: {:?}", t.elapsed());
            }
        }
        "steady" => {
            let (cluster, _) = synth::realistic_cluster(hosts)?;
            let view = cluster.view();
            let rounds: usize = std::env::var("ROUNDS").map_or(Ok(200), |r| r.parse())?;
            let kinds = kinds_from_env()?;
            // `DETAIL=full`: full reports instead of summary decisions.
            let detail = match std::env::var("DETAIL").as_deref() {
                Ok("full") => Detail::Full,
                _ => Detail::Summary,
            };
            let started = std::time::Instant::now();
            for i in 0..rounds {
                let kind = kinds[i % kinds.len()];
                let request = ScheduleRequest::new(kind.vm("probe")).detail(detail);
                policy.evaluate(&view, &request)?;
            }
            eprintln!(
                "per decision: {:.1} us",
                started.elapsed().as_secs_f64() * 1e6 / rounds.max(1) as f64
            );
        }
        "delta" => {
            // As the harness's delta figure: one VM reserved, a decision (a small delta to
            // every module), the VM released; `ROUNDS` times.
            let (cluster, _) = synth::realistic_cluster(hosts)?;
            let request = ScheduleRequest::new(VmKind::Plain.vm("probe"));
            let rounds: usize = std::env::var("ROUNDS").map_or(Ok(200), |r| r.parse())?;
            for i in 0..rounds {
                let starting = VmKind::Plain.vm(&format!("delta-{i}"));
                let target = synth::host_id(i % hosts.max(1));
                cluster.reserve(&starting, &target, wasmsched::PlacementKind::Start)?;
                policy.evaluate(&cluster.view(), &request)?;
                cluster.release_vm(&starting.id)?;
            }
        }
        "ab" => {
            // The mass start on both backends in turns, `CHUNK` VMs at a time (default 100),
            // each on its own cluster: the two totals meet the same phases of the machine.
            let native_runtime = native::runtime();
            let native_policy = Policy::builtin_default(&native_runtime)?;
            let vms: usize = std::env::var("VMS").map_or(Ok(10_000), |v| v.parse())?;
            let chunk: usize = std::env::var("CHUNK").map_or(Ok(100), |v| v.parse())?;
            let clusters = [
                Cluster::new(synth::snapshot_of(hosts), "<wasm>")?,
                Cluster::new(synth::snapshot_of(hosts), "<native>")?,
            ];
            let policies = [&policy, &native_policy];
            let requests: Vec<ScheduleRequest> = synth::vm_mix(vms, "mass")
                .into_iter()
                .map(|vm| ScheduleRequest::new(vm).detail(Detail::Summary))
                .collect();
            let mut took = [std::time::Duration::ZERO; 2];
            for slice in requests.chunks(chunk.max(1)) {
                for (b, policy) in policies.iter().enumerate() {
                    let started = std::time::Instant::now();
                    for request in slice {
                        policy.schedule(&clusters[b], request)?;
                    }
                    took[b] += started.elapsed();
                }
            }
            eprintln!(
                "{vms} VMs in turns of {chunk}: wasm {:?}, native {:?}, ratio {:.3}",
                took[0],
                took[1],
                took[0].as_secs_f64() / took[1].as_secs_f64()
            );
        }
        "turns" => {
            // Summary decisions of the VM mix (`KIND`: one kind) on one realistic cluster,
            // by several backends in turns of `CHUNK` decisions (default 50), `ROUNDS` per
            // backend (default 3,000): the wasm modules of each directory of `DIRS`
            // (comma-separated; the embedded ones when unset) and the native units. Two
            // guest builds are compared in one phase of the machine.
            let (cluster, _) = synth::realistic_cluster(hosts)?;
            let view = cluster.view();
            let rounds: usize = std::env::var("ROUNDS").map_or(Ok(3_000), |r| r.parse())?;
            let chunk: usize = std::env::var("CHUNK").map_or(Ok(50), |v| v.parse())?;
            let kinds = kinds_from_env()?;
            let mut backends: Vec<(String, wasmsched::Runtime)> = Vec::new();
            match std::env::var("DIRS") {
                Ok(dirs) => {
                    for dir in dirs.split(',') {
                        backends.push((dir.to_string(), runtime_of_dir(dir)?));
                    }
                }
                Err(_) => backends.push(("wasm".into(), native::wasm_runtime())),
            }
            backends.push(("native".into(), native::runtime()));
            let policies = backends
                .iter()
                .map(|(_, runtime)| Policy::builtin_default(runtime))
                .collect::<Result<Vec<_>, _>>()?;
            let requests: Vec<ScheduleRequest> = (0..rounds)
                .map(|i| {
                    ScheduleRequest::new(kinds[i % kinds.len()].vm("probe")).detail(Detail::Summary)
                })
                .collect();
            for policy in &policies {
                policy.evaluate(&view, &requests[0])?;
            }
            let mut took = vec![std::time::Duration::ZERO; policies.len()];
            for (turn, slice) in requests.chunks(chunk.max(1)).enumerate() {
                for k in 0..policies.len() {
                    // Who goes first rotates.
                    let b = (k + turn) % policies.len();
                    let started = std::time::Instant::now();
                    for request in slice {
                        policies[b].evaluate(&view, request)?;
                    }
                    took[b] += started.elapsed();
                }
            }
            let native_took = took[took.len() - 1].as_secs_f64();
            for ((name, _), took) in backends.iter().zip(&took) {
                eprintln!(
                    "{name}: {:.1} us per decision, {:.3}x native",
                    took.as_secs_f64() * 1e6 / rounds.max(1) as f64,
                    took.as_secs_f64() / native_took
                );
            }
        }
        "mass" | "mass2" | "mass2own" => {
            let threads = if what == "mass" { 1 } else { 2 };
            // `mass2own`: each thread places every VM on a cluster of its own.
            let own = what == "mass2own";
            let clusters = (0..if own { threads } else { 1 })
                .map(|_| Cluster::new(synth::snapshot_of(hosts), "<profile>"))
                .collect::<wasmsched::Result<Vec<_>>>()?;
            let vms: usize = std::env::var("VMS").map_or(Ok(3_000), |v| v.parse())?;
            let requests: Vec<ScheduleRequest> = synth::vm_mix(vms, "mass")
                .into_iter()
                .map(|vm| ScheduleRequest::new(vm).detail(Detail::Summary))
                .collect();
            let (started, cpu) = (std::time::Instant::now(), process_cpu_ms());
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (policy, requests) = (&policy, &requests);
                    // Every VM on its own cluster, or every `threads`-th from the t-th.
                    let (cluster, skip, step) = if own {
                        (&clusters[t], 0, 1)
                    } else {
                        (&clusters[0], t, threads)
                    };
                    s.spawn(move || {
                        for r in requests.iter().skip(skip).step_by(step) {
                            policy.schedule(cluster, r).unwrap();
                        }
                    });
                }
            });
            eprintln!(
                "{vms} VMs on {threads} thread(s): {:?}, {} ms of CPU",
                started.elapsed(),
                process_cpu_ms() - cpu
            );
        }
        other => anyhow::bail!("unknown workload {other}"),
    }
    eprintln!("{what} {hosts}: {:?}", start.elapsed());
    for module in runtime.modules() {
        eprintln!("{}: {:?}", module.file(), module.stats());
    }
    Ok(())
}

/// The VM kinds of the `steady` and `turns` workloads: `KIND=hugepages` (a kind's name in
/// the tables) for that kind only, every kind of the mix when unset.
fn kinds_from_env() -> anyhow::Result<Vec<VmKind>> {
    match std::env::var("KIND") {
        Ok(name) => match VmKind::ALL.into_iter().find(|k| k.name() == name) {
            Some(kind) => Ok(vec![kind]),
            None => anyhow::bail!("unknown VM kind {name}"),
        },
        Err(_) => Ok(VmKind::ALL.to_vec()),
    }
}

/// CPU time this process has used so far, every thread's, in ms (`/proc/self/stat`'s user
/// and system times, in ticks of 10 ms): what a workload cost, whatever the other
/// processes of the machine made it wait.
fn process_cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command (which may hold spaces): state is field 3, utime 14,
    // stime 15; Linux counts them in ticks of 1/100 s.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    ticks * 10
}

/// A runtime with the policy modules of `dir` instead of the embedded builtins, compiled
/// afresh (no cache).
fn runtime_of_dir(dir: &str) -> anyhow::Result<wasmsched::Runtime> {
    Ok(wasmsched::Runtime::builder()
        .builtins(false)
        .cache_dir(None)
        .policy_dir(dir)
        .build()?)
}
