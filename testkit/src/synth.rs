//! Synthetic clusters and the VM mix the harness schedules.
//!
//! Everything is generated from fixed seeds, so two runs (and the wasm and native backends
//! within a run) see exactly the same clusters and VMs.

use policy_sdk::testing::{host, snapshot, vm, XorShift};
use policy_sdk::{AffinityPolarity, PinningPolicy, Snapshot, Vm, VmType};
use serde::Serialize;
use wasmsched::{Cluster, PlacementKind};

/// CPU flags of the cluster's CPU model (every host has them, except 1 host in 50 that lacks
/// `avx2`, so the CPU-level filter has something to reject).
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

/// Flags hosts have on top of the cluster's.
const EXTRA_FLAGS: &[&str] = &["avx512f", "avx512bw", "vmx", "x2apic", "xsave", "rdrand"];

/// Hugepage sizes, in KiB.
pub const PAGE_2M_KB: u64 = 2_048;
/// 1 GiB pages, in KiB.
pub const PAGE_1G_KB: u64 = 1_048_576;

/// The kinds of VM the harness places; each exercises different units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmKind {
    /// 4 GiB, 4 vCPUs, no pinning: the common case.
    Plain,
    /// High-performance VM with a manual CPU pinning string.
    HpPinned,
    /// High-performance VM with two vNUMA nodes pinned to host NUMA nodes 0 and 1.
    NumaPinned,
    /// Memory backed by 1 GiB hugepages.
    Hugepages,
    /// Exclusively dedicated pCPUs.
    Dedicated,
}

impl VmKind {
    /// Every kind, in report order.
    pub const ALL: [VmKind; 5] = [
        VmKind::Plain,
        VmKind::HpPinned,
        VmKind::NumaPinned,
        VmKind::Hugepages,
        VmKind::Dedicated,
    ];

    /// The kebab-case name used in tables and the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            VmKind::Plain => "plain",
            VmKind::HpPinned => "hp-pinned",
            VmKind::NumaPinned => "numa-pinned",
            VmKind::Hugepages => "hugepages",
            VmKind::Dedicated => "dedicated",
        }
    }

    /// A VM of this kind with id `id`.
    pub fn vm(self, id: &str) -> Vm {
        match self {
            VmKind::Plain => vm(id).memory_mb(4_096).vcpus(4).build(),
            VmKind::HpPinned => vm(id)
                .vm_type(VmType::HighPerformance)
                .cpu(1, 2, 2)
                .memory_mb(4_096)
                .pinning("0#4_1#5_2#6_3#7")
                .pinning_policy(PinningPolicy::Manual)
                .build(),
            VmKind::NumaPinned => vm(id)
                .vm_type(VmType::HighPerformance)
                .cpu(2, 2, 1)
                .memory_mb(8_192)
                .vnuma(0, 4_096, [0, 1], &[0])
                .vnuma(1, 4_096, [2, 3], &[1])
                .build(),
            VmKind::Hugepages => vm(id)
                .memory_mb(8_192)
                .vcpus(4)
                .hugepages(PAGE_1G_KB)
                .build(),
            VmKind::Dedicated => vm(id)
                .vm_type(VmType::HighPerformance)
                .cpu(1, 2, 2)
                .memory_mb(4_096)
                .pinning_policy(PinningPolicy::Dedicated)
                .build(),
        }
    }
}

/// A cluster of `hosts` hosts: 2 sockets of 16 or 24 cores x 2 threads, 256 GiB in two NUMA
/// nodes (one per socket, with their CPUs and free memory), 2 MiB and 1 GiB hugepages per
/// node and host-wide, the cluster's CPU flags and a few more, seeded random usage,
/// committed memory, running-VM counts and a few dedicated pCPUs. The snapshot also lists
/// one running VM per 8 hosts, some of them in soft and enforcing affinity groups.
pub fn snapshot_of(hosts: usize) -> Snapshot {
    let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15 ^ hosts as u64);
    let mut next = move |bound: u64| rng.below(bound);
    let mut flags: Vec<&str> = CLUSTER_FLAGS.to_vec();
    flags.extend(EXTRA_FLAGS);
    let without_avx2: Vec<&str> = flags.iter().copied().filter(|f| *f != "avx2").collect();
    let total_mb: u64 = 262_144;
    let node_mb = total_mb / 2;
    let host_list: Vec<_> = (0..hosts)
        .map(|i| {
            let host_flags = if i % 50 == 49 { &without_avx2 } else { &flags };
            let cores = 16 + 8 * next(2) as u32;
            let threads_per_socket = cores * 2;
            let pages_2m_per_node = 4_096 + next(4_096);
            let pages_1g_per_node = next(32);
            host(&host_id(i))
                .cpu(2, cores, 2)
                .memory_mb(total_mb)
                .free_mb(total_mb / 4 + next(total_mb * 3 / 4))
                .committed_mb(next(total_mb / 2))
                .cpu_usage(next(90) as u32)
                .running_vms(next(40) as u32)
                .dedicated_cpus(threads_per_socket - next(4) as u32..threads_per_socket)
                .numa_node(0, 0..threads_per_socket, node_mb / 2 + next(node_mb / 2))
                .numa_node(
                    1,
                    threads_per_socket..2 * threads_per_socket,
                    node_mb / 2 + next(node_mb / 2),
                )
                .node_hugepages(0, PAGE_2M_KB, pages_2m_per_node)
                .node_hugepages(0, PAGE_1G_KB, pages_1g_per_node)
                .node_hugepages(1, PAGE_2M_KB, pages_2m_per_node)
                .node_hugepages(1, PAGE_1G_KB, pages_1g_per_node)
                .hugepages(PAGE_2M_KB, 2 * pages_2m_per_node)
                .hugepages(PAGE_1G_KB, 2 * pages_1g_per_node)
                .cpu_flags(host_flags)
        })
        .collect();
    let running: Vec<Vm> = (0..hosts.div_ceil(8))
        .map(|i| {
            vm(&format!("running-{i:05}"))
                .memory_mb(2_048)
                .vcpus(2)
                .current_host(&host_id((i * 8) % hosts.max(1)))
                .build()
        })
        .collect();
    let mut builder = snapshot()
        .cluster_cpu("Skylake-Server", CLUSTER_FLAGS)
        .hosts(host_list);
    let ids: Vec<String> = running.iter().map(|v| v.id.clone()).collect();
    for (g, members) in ids.chunks(4).take(6).enumerate() {
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        let polarity = if g % 2 == 0 {
            AffinityPolarity::Negative
        } else {
            AffinityPolarity::Positive
        };
        builder = builder.affinity_group(&format!("group-{g}"), polarity, g % 3 == 0, &members);
    }
    for v in running {
        builder = builder.vm(v);
    }
    builder.build()
}

/// Host id of host `i`.
pub fn host_id(i: usize) -> String {
    format!("host-{i:05}")
}

/// What [`add_starting_vms`] recorded.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PendingSetup {
    /// Starting VMs whose reservation succeeded.
    pub reserved_vms: usize,
    /// Reservations the cluster refused (the VM did not fit that host).
    pub refused: usize,
    /// Pending records in the cluster afterwards.
    pub records: usize,
}

/// Reserves `count` starting VMs of the mix round-robin over the hosts (as if placed and
/// not started yet), so hosts carry pending memory, CPU load, pinned pCPUs, hugepages and
/// NUMA memory. Refused reservations are counted, not fatal.
pub fn add_starting_vms(
    cluster: &Cluster,
    hosts: usize,
    count: usize,
    prefix: &str,
) -> PendingSetup {
    let mut setup = PendingSetup::default();
    let mut rng = XorShift::new(0xface ^ count as u64);
    for i in 0..count {
        let kind = VmKind::ALL[i % VmKind::ALL.len()];
        let host = host_id((i * 7 + rng.below(7) as usize) % hosts.max(1));
        let vm = kind.vm(&format!("{prefix}-{i:06}"));
        match cluster.reserve(&vm, &host, PlacementKind::Start) {
            Ok(_) => setup.reserved_vms += 1,
            Err(_) => setup.refused += 1,
        }
    }
    setup.records = cluster.pending_record_count();
    setup
}

/// A cluster of `hosts` hosts (see [`snapshot_of`]) with one starting VM pending per 20 hosts.
pub fn realistic_cluster(hosts: usize) -> anyhow::Result<(Cluster, PendingSetup)> {
    let cluster = Cluster::new(snapshot_of(hosts), "<synthetic>")?;
    let setup = add_starting_vms(&cluster, hosts, hosts.div_ceil(20), "starting");
    Ok((cluster, setup))
}

/// `n` VMs cycling through the mix, ids `{prefix}-NNNNNN`.
pub fn vm_mix(n: usize, prefix: &str) -> Vec<Vm> {
    (0..n)
        .map(|i| VmKind::ALL[i % VmKind::ALL.len()].vm(&format!("{prefix}-{i:06}")))
        .collect()
}
