//! Cost of one scheduling decision with the builtin default policy (memory, CPU, CPU-level,
//! CPU-pinning, hugepages, NUMA and VM-affinity filters; CPU-load, free-memory, VM-affinity,
//! high-performance-CPU and CPU-and-NUMA-pinning weights; rank selector) at 1,000 and
//! 10,000 hosts: the wasm modules as shipped, and the same unit code compiled natively into
//! the host, in the same run. `decision` places a plain VM with a full report (every host's
//! outcome and weights); `decision-summary` the same VM with [`Detail::Summary`] (the
//! chosen host and the best runners-up: what an engine placing VMs asks for);
//! `decision-hp-summary` a high-performance VM with CPU pinning, two pinned vNUMA nodes and
//! hugepages, so every unit does its per-host work.
//!
//! `cargo bench -p wasmsched-bench --bench decision`; the ratio wasm/native is the isolation cost.
//! The decisions are what-ifs ([`Policy::evaluate`]): nothing is reserved, so every
//! iteration sees the same cluster. The `decision-after-pending-change` group measures a
//! decision right after a VM was reserved on one host (one small delta sync per module
//! instead of a full snapshot).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use policy_sdk::testing::vm;
use std::hint::black_box;
use std::time::Duration;
use wasmsched::{Cluster, Detail, PlacementKind, Policy, ScheduleRequest};
use wasmsched_testkit::native::default_policies as policies;
use wasmsched_testkit::synth::{snapshot_of as cluster, VmKind};

/// One benchmark group: a decision per iteration, wasm and native, at each cluster size;
/// `before_each` runs inside the measured iteration, just before the decision.
fn group(
    c: &mut Criterion,
    name: &str,
    request: &ScheduleRequest,
    policies: [(&str, &Policy); 2],
    mut before_each: impl FnMut(&Cluster, u64),
) {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(4));
    for hosts in [1_000usize, 10_000] {
        let cluster = Cluster::new(cluster(hosts), "<bench>").unwrap();
        for (backend, policy) in policies {
            // The first call syncs the snapshot into the instances; the measured ones don't.
            assert!(policy
                .evaluate(&cluster.view(), request)
                .unwrap()
                .chosen
                .is_some());
            let mut iteration = 0u64;
            group.bench_with_input(BenchmarkId::new(backend, hosts), &hosts, |b, _| {
                b.iter(|| {
                    iteration += 1;
                    before_each(&cluster, iteration);
                    black_box(policy.evaluate(&cluster.view(), request).unwrap())
                })
            });
        }
    }
    group.finish();
}

fn decision(c: &mut Criterion) {
    let (wasm, native) = policies();
    let policies = [("wasm", &wasm), ("native", &native)];
    let plain = ScheduleRequest::new(vm("bench").memory_mb(4_096).vcpus(4).build());
    group(c, "decision", &plain, policies, |_, _| {});
    let summary = plain.clone().detail(Detail::Summary);
    group(c, "decision-summary", &summary, policies, |_, _| {});
    let hp = ScheduleRequest::new(VmKind::NumaPinned.vm("bench-hp")).detail(Detail::Summary);
    group(c, "decision-hp-summary", &hp, policies, |_, _| {});
    group(
        c,
        "decision-after-pending-change",
        &plain,
        policies,
        |cluster, n| {
            let starting = vm(&format!("starting-{}", n % 2))
                .memory_mb(1_024 + n % 1_024)
                .build();
            cluster
                .reserve(&starting, "host-00007", PlacementKind::Start)
                .unwrap();
        },
    );
}

criterion_group!(benches, decision);
criterion_main!(benches);
