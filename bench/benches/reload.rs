//! Hot-reload benchmark (plain `main`, prints a report):
//!
//! 1. Latency from the `rename(2)` of a new version of a module into the watched
//!    directory to the first decision served by that version (debounce, read, compile,
//!    validation, smoke calls and swap included).
//! 2. Decision throughput of one scheduling thread with no reloads, then with a reload
//!    every 100 ms, in the same run.
//!
//! `cargo bench -p wasmsched-bench --bench reload` (add `-- --quick` for a short run).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmsched::{Cluster, Policy, Runtime, ScheduleRequest, WatchOptions};

/// `wasm` plus a custom section: same behaviour, new bytes and hash.
fn version(wasm: &[u8], tag: u64) -> Vec<u8> {
    let name = b"bench-version";
    let payload_len = 1 + name.len() + 8;
    let mut out = wasm.to_vec();
    out.push(0);
    out.push(payload_len as u8); // < 128: one LEB byte
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&tag.to_le_bytes());
    out
}

fn install(dir: &std::path::Path, bytes: &[u8]) -> Instant {
    let tmp = dir.join(".scheduling.wasm.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    let start = Instant::now();
    std::fs::rename(&tmp, dir.join("scheduling.wasm")).unwrap();
    start
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, window) = if quick {
        (10, Duration::from_secs(2))
    } else {
        (30, Duration::from_secs(5))
    };
    let dir = tempfile::tempdir().unwrap();
    let scheduling = Runtime::builtin_modules()
        .iter()
        .find(|(f, _)| *f == "scheduling.wasm")
        .expect("builtin scheduling module")
        .1;
    for (file, bytes) in Runtime::builtin_modules() {
        std::fs::write(dir.path().join(file), bytes).unwrap();
    }
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::builder()
        .builtins(false)
        .cache_dir(Some(cache.path().to_path_buf()))
        .build()
        .unwrap();
    let options = WatchOptions::default();
    runtime.watch(dir.path(), options).unwrap();
    // Files written just now are loaded once they have settled.
    let start = Instant::now();
    while runtime.unit("memory").is_none() || runtime.unit("vm-affinity").is_none() {
        assert!(start.elapsed() < Duration::from_secs(30), "initial load");
        std::thread::sleep(Duration::from_millis(10));
    }
    let policy = Policy::builtin_default(&runtime).unwrap();
    let cluster = Cluster::new(wasmsched_testkit::synth::snapshot_of(100), "bench").unwrap();
    let vm = policy_sdk::testing::vm("bench-vm").memory_mb(2_048).build();
    let request = ScheduleRequest::new(vm);

    // 1. Rename -> first decision on the new version.
    let mut latencies = Vec::new();
    for round in 0..rounds {
        let bytes = version(scheduling, 1_000 + round);
        let hash = wasmsched::LoadedModule::hash_of(&bytes);
        let start = install(dir.path(), &bytes);
        loop {
            let serving = runtime
                .unit("memory")
                .map(|u| u.module().hash().to_string());
            if serving.as_deref() == Some(hash.as_str()) {
                policy.evaluate(&cluster.view(), &request).unwrap();
                latencies.push(start.elapsed());
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!("round {round}: the new version was not published within 30 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "rename -> first decision on the new version ({} rounds, debounce {} ms): min {:.1} ms, median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        latencies.len(),
        options.debounce.as_millis(),
        ms(latencies[0]),
        ms(pick(0.5)),
        ms(pick(0.9)),
        ms(*latencies.last().unwrap())
    );

    // 2. Throughput without and with reloads.
    let measure = |reload: bool| -> f64 {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let worker = {
            let (stop, count) = (stop.clone(), count.clone());
            let (policy, cluster, request) = (policy.clone(), cluster.clone(), request.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    policy
                        .evaluate(&cluster.view(), &request)
                        .expect("no failed decision");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let start = Instant::now();
        let mut tag = 10_000 + u64::from(reload) * 1_000;
        while start.elapsed() < window {
            if reload {
                tag += 1;
                install(dir.path(), &version(scheduling, tag));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap();
        count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
    };
    let quiet = measure(false);
    let generation = runtime.generation();
    let busy = measure(true);
    let reloads = runtime.generation() - generation;
    // The last version installed may still be settling or compiling (an unoptimized
    // build of this bench, as `cargo test --all-targets` runs it, compiles a module in
    // about a second): let it serve before checking that every file did.
    let last = runtime
        .wait_for_file(
            &dir.path().join("scheduling.wasm"),
            Duration::from_secs(120),
        )
        .unwrap();
    assert!(
        matches!(last, wasmsched::FileLoad::Serving(_)),
        "the last version installed did not serve: {last:?}"
    );
    println!(
        "decisions/s (100 hosts, default policy, 1 thread): {quiet:.0} without reloads, {busy:.0} with a reload every 100 ms ({reloads} reloads; {:.1}% of the quiet rate)",
        busy / quiet * 100.0
    );
    let problems = runtime.status().problems;
    assert!(
        problems.is_empty(),
        "problems after the reloads: {problems:?}"
    );
}
