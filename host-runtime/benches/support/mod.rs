//! Shared by the benchmarks: a synthetic cluster and the builtin policy on two backends.

use policy_sdk::testing::{host, snapshot, XorShift};
use policy_sdk::Snapshot;
use wasmsched::{Policy, Runtime};

/// `hosts` hosts of 2 sockets x 16 or 24 cores x 2 threads, 256 GiB in two NUMA nodes,
/// hugepages, and random (seeded) usage, committed memory, running VMs and dedicated pCPUs.
pub fn cluster(hosts: usize) -> Snapshot {
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
                .numa_node(0, 0..32, total / 2)
                .numa_node(1, 32..64, total / 2)
                .hugepages(2_048, next(4_096))
        }))
        .build()
}

/// The builtin default policy with the wasm modules as shipped, and with the same unit
/// code compiled natively into the host.
pub fn policies() -> (Policy, Policy) {
    let wasm = Runtime::builder().cache_dir(None).build().unwrap();
    let native = Runtime::builder()
        .builtins(false)
        .cache_dir(None)
        .build()
        .unwrap();
    native
        .add_native("native:basic", builtin_basic::units())
        .unwrap();
    native
        .add_native("native:affinity", builtin_affinity::units())
        .unwrap();
    native
        .add_native("native:high-performance", builtin_high_performance::units())
        .unwrap();
    (
        Policy::builtin_default(&wasm).unwrap(),
        Policy::builtin_default(&native).unwrap(),
    )
}
