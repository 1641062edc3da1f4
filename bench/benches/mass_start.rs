//! Mass start: 10,000 VMs scheduled one after another onto 1,000 hosts, each decision
//! reserving its pending resources so the next one sees them ([`Policy::schedule_batch`]),
//! wasm modules as shipped vs the same unit code compiled natively. Throughput is reported
//! in decisions per second (criterion's elements/s).
//!
//! The `pending-records` group shows how a decision's cost varies with the number of pending
//! records in the cluster: one `schedule` (decide + reserve) and the release of its VM, and
//! one `evaluate` (decide only), at 1,000 hosts, with 0, 1,000 and 10,000 other VMs pending
//! (5 records each).
//!
//! `cargo bench -p wasmsched-bench --bench mass_start`

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use policy_sdk::testing::vm;
use std::hint::black_box;
use std::time::Duration;
use wasmsched::{Cluster, Detail, ScheduleRequest};
use wasmsched_testkit::native::default_policies as policies;
use wasmsched_testkit::synth;

const HOSTS: usize = 1_000;
const VMS: usize = 10_000;

/// The harness's VM mix (`wasmsched_testkit::synth::vm_mix`), asking for summary decisions
/// (what an engine placing VMs needs: the chosen host, not an outcome for each host).
fn requests(n: usize) -> Vec<ScheduleRequest> {
    synth::vm_mix(n, "vm")
        .into_iter()
        .map(|vm| ScheduleRequest::new(vm).detail(Detail::Summary))
        .collect()
}

fn mass_start(c: &mut Criterion) {
    let (wasm, native) = policies();
    let requests = requests(VMS);
    let mut group = c.benchmark_group("mass-start");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30))
        .throughput(Throughput::Elements(VMS as u64));
    for (backend, policy) in [("wasm", &wasm), ("native", &native)] {
        // How many of the mix find a host (the rest are decisions that say why not).
        let probe = Cluster::new(synth::snapshot_of(HOSTS), "<bench>").unwrap();
        let placed = policy
            .schedule_batch(&probe, &requests)
            .into_iter()
            .filter(|d| d.as_ref().unwrap().chosen.is_some())
            .count();
        assert!(placed > 0, "{backend}: no VM was placed");
        eprintln!("{backend}: {placed} of {VMS} VMs placed");
        group.bench_function(
            BenchmarkId::new(backend, format!("{VMS}-vms-onto-{HOSTS}-hosts")),
            |b| {
                b.iter_batched(
                    || Cluster::new(synth::snapshot_of(HOSTS), "<bench>").unwrap(),
                    |cluster| black_box(policy.schedule_batch(&cluster, &requests)),
                    BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();
}

fn pending_records(c: &mut Criterion) {
    let (wasm, native) = policies();
    let probe = ScheduleRequest::new(vm("probe").memory_mb(4_096).vcpus(2).build());
    let mut group = c.benchmark_group("pending-records");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(4));
    for pending_vms in [0usize, 1_000, 10_000] {
        let cluster = Cluster::new(synth::snapshot_of(HOSTS), "<bench>").unwrap();
        synth::add_starting_vms(&cluster, HOSTS, pending_vms, "pending");
        let records = cluster.pending_record_count();
        for (backend, policy) in [("wasm", &wasm), ("native", &native)] {
            policy.schedule(&cluster, &probe).unwrap();
            cluster.release_vm("probe").unwrap();
            group.bench_function(
                BenchmarkId::new(format!("{backend}-schedule"), format!("{records}-records")),
                |b| {
                    b.iter(|| {
                        let decision = policy.schedule(&cluster, &probe).unwrap();
                        cluster.release_vm("probe").unwrap();
                        black_box(decision)
                    })
                },
            );
            group.bench_function(
                BenchmarkId::new(format!("{backend}-evaluate"), format!("{records}-records")),
                |b| b.iter(|| black_box(policy.evaluate(&cluster.view(), &probe).unwrap())),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, mass_start, pending_records);
criterion_main!(benches);
