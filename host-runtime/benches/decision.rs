//! Cost of one scheduling decision with the builtin units (memory and CPU filters, CPU-load
//! and free-memory weights, rank selector) at 1,000 and 10,000 hosts: the wasm modules as
//! shipped, and the same unit code compiled natively into the host, in the same run.
//!
//! `cargo bench -p wasmsched --bench decision`; the ratio wasm/native is the isolation cost.
//! The `decision-after-pending-change` group measures a decision right after one host's pending aggregate changed
//! (one small delta sync per module instead of a full snapshot).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use policy_sdk::testing::{host, snapshot, vm, XorShift};
use policy_sdk::{PendingAggregate, Snapshot};
use std::hint::black_box;
use std::time::Duration;
use wasmsched::{Cluster, Policy, Runtime, ScheduleRequest};

fn cluster(hosts: usize) -> Snapshot {
    let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15);
    let mut next = move |bound: u64| rng.below(bound);
    snapshot()
        .hosts((0..hosts).map(|i| {
            let total = 262_144;
            host(&format!("host-{i:05}"))
                .cpu(2, 16 + 8 * next(2) as u32, 2)
                .memory_mb(total)
                .free_mb(next(total))
                .committed_mb(next(total))
                .cpu_usage(next(100) as u32)
                .running_vms(next(40) as u32)
                .dedicated_cpus(0..next(4) as u32)
                .pending_memory_mb(next(2) * 4_096)
                .numa_node(0, 0..32, total / 2)
                .numa_node(1, 32..64, total / 2)
                .hugepages(2_048, next(4_096))
        }))
        .build()
}

fn runtimes() -> (Policy, Policy) {
    let wasm = Runtime::builder().cache_dir(None).build().unwrap();
    let native = Runtime::builder()
        .builtins(false)
        .cache_dir(None)
        .build()
        .unwrap();
    native
        .add_native("native:basic", builtin_basic::units())
        .unwrap();
    (
        Policy::builtin_default(&wasm).unwrap(),
        Policy::builtin_default(&native).unwrap(),
    )
}

/// One benchmark group: a decision per iteration, wasm and native, at each cluster size;
/// `before_each` runs inside the measured iteration, just before the decision.
fn group(
    c: &mut Criterion,
    name: &str,
    policies: [(&str, &Policy); 2],
    mut before_each: impl FnMut(&Cluster, u64),
) {
    let request = ScheduleRequest::new(vm("bench").memory_mb(4_096).vcpus(4).build());
    let mut group = c.benchmark_group(name);
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(4));
    for hosts in [1_000usize, 10_000] {
        let cluster = Cluster::new(cluster(hosts), "<bench>").unwrap();
        for (backend, policy) in policies {
            // The first call syncs the snapshot into the instances; the measured ones don't.
            assert!(policy
                .schedule(&cluster, &request)
                .unwrap()
                .chosen
                .is_some());
            let mut iteration = 0u64;
            group.bench_with_input(BenchmarkId::new(backend, hosts), &hosts, |b, _| {
                b.iter(|| {
                    iteration += 1;
                    before_each(&cluster, iteration);
                    black_box(policy.schedule(&cluster, &request).unwrap())
                })
            });
        }
    }
    group.finish();
}

fn decision(c: &mut Criterion) {
    let (wasm, native) = runtimes();
    let policies = [("wasm", &wasm), ("native", &native)];
    group(c, "decision", policies, |_, _| {});
    group(
        c,
        "decision-after-pending-change",
        policies,
        |cluster, n| {
            let pending = PendingAggregate {
                memory_mb: n % 1_024,
                vms: 1,
                ..Default::default()
            };
            cluster.set_pending("host-00007", pending).unwrap();
        },
    );
}

criterion_group!(benches, decision);
criterion_main!(benches);
