//! Shared by the benchmarks: a synthetic cluster and the builtin policy on two backends.

use policy_sdk::testing::{host, snapshot, vm, XorShift};
use policy_sdk::{Snapshot, Vm, VmType};
use wasmsched::{Policy, Runtime};

/// CPU flags of the bench cluster's CPU model.
pub const CLUSTER_FLAGS: &[&str] = &[
    "aes",
    "avx",
    "avx2",
    "bmi1",
    "bmi2",
    "f16c",
    "fma",
    "pclmulqdq",
    "popcnt",
    "sse4_1",
    "sse4_2",
    "ssse3",
];

/// `hosts` hosts of 2 sockets x 16 or 24 cores x 2 threads, 256 GiB in two NUMA nodes,
/// hugepages, the cluster's CPU flags and a few more (1 host in 50 lacks `avx2`), and
/// random (seeded) usage, committed memory, running VMs and dedicated pCPUs.
pub fn cluster(hosts: usize) -> Snapshot {
    let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15);
    let mut next = move |bound: u64| rng.below(bound);
    let mut flags: Vec<&str> = CLUSTER_FLAGS.to_vec();
    flags.extend(["avx512f", "avx512bw", "vmx", "x2apic", "xsave", "rdrand"]);
    let without_avx2: Vec<&str> = flags.iter().copied().filter(|f| *f != "avx2").collect();
    snapshot()
        .cluster_cpu("Skylake-Server", CLUSTER_FLAGS)
        .hosts((0..hosts).map(|i| {
            let host_flags = if i % 50 == 49 { &without_avx2 } else { &flags };
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
                .cpu_flags(host_flags)
        }))
        .build()
}

/// A high-performance VM: 4 vCPUs pinned across both NUMA nodes, two vNUMA nodes pinned to
/// host nodes 0 and 1, 2 MiB hugepages.
pub fn hp_vm() -> Vm {
    vm("bench-hp")
        .vm_type(VmType::HighPerformance)
        .cpu(1, 2, 2)
        .memory_mb(4_096)
        .hugepages(2_048)
        .pinning("0#4_1#5_2#36_3#37")
        .vnuma(0, 2_048, [0, 1], &[0])
        .vnuma(1, 2_048, [2, 3], &[1])
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
