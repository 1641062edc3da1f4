//! Fluent builders for hosts, VMs and snapshots, for tests of units and of the host.
//!
//! ```
//! use policy_sdk::testing::{host, snapshot, vm};
//! let s = snapshot()
//!     .host(host("h1").cpu(2, 8, 2).memory_mb(65_536).cpu_usage(30))
//!     .host(host("h2").memory_mb(8_192).pending_overcommit_mb(4_096))
//!     .build();
//! let v = vm("v1").memory_mb(2_048).vcpus(4).build();
//! assert_eq!(s.hosts[1].pending.overcommit_memory_mb, 4_096);
//! assert_eq!(v.vcpus(), 4);
//! ```

use crate::model::manifest::{ParamSpec, ParamValue};
use crate::model::verdict::Verdict;
use crate::model::*;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// Starts a host with id (and name) `id`: Up, 1 socket x 4 cores x 2 threads, 16 GiB all
/// free and schedulable, idle.
pub fn host(id: &str) -> HostBuilder {
    HostBuilder(Host {
        id: id.to_string(),
        name: id.to_string(),
        cpu: CpuTopology {
            sockets: 1,
            cores_per_socket: 4,
            threads_per_core: 2,
        },
        memory: HostMemory {
            physical_mb: 16_384,
            free_mb: 16_384,
            committed_mb: 0,
            max_scheduling_mb: 16_384,
            swap_free_mb: 0,
        },
        ..Default::default()
    })
}

/// Builder for a [`Host`].
#[derive(Debug, Clone)]
pub struct HostBuilder(Host);

impl HostBuilder {
    /// Human name.
    pub fn name(mut self, name: &str) -> Self {
        self.0.name = name.to_string();
        self
    }
    /// Status.
    pub fn status(mut self, status: HostStatus) -> Self {
        self.0.status = status;
        self
    }
    /// SPM role.
    pub fn spm(mut self) -> Self {
        self.0.spm = true;
        self
    }
    /// CPU topology.
    pub fn cpu(mut self, sockets: u32, cores_per_socket: u32, threads_per_core: u32) -> Self {
        self.0.cpu = CpuTopology {
            sockets,
            cores_per_socket,
            threads_per_core,
        };
        self
    }
    /// Physical, free and max-scheduling memory all set to `mb` MiB (no overcommit);
    /// committed memory and swap are left as they are. Call it before the finer setters.
    pub fn memory_mb(mut self, mb: u64) -> Self {
        let m = &mut self.0.memory;
        m.physical_mb = mb;
        m.free_mb = mb;
        m.max_scheduling_mb = mb;
        self
    }
    /// Free memory reported by the host, in MiB.
    pub fn free_mb(mut self, mb: u64) -> Self {
        self.0.memory.free_mb = mb;
        self
    }
    /// Memory committed to VMs already on the host, in MiB.
    pub fn committed_mb(mut self, mb: u64) -> Self {
        self.0.memory.committed_mb = mb;
        self
    }
    /// Overcommit-aware ceiling for committed memory, in MiB.
    pub fn max_scheduling_mb(mut self, mb: u64) -> Self {
        self.0.memory.max_scheduling_mb = mb;
        self
    }
    /// Free swap, in MiB.
    pub fn swap_mb(mut self, mb: u64) -> Self {
        self.0.memory.swap_free_mb = mb;
        self
    }
    /// Current CPU usage in percent.
    pub fn cpu_usage(mut self, percent: u32) -> Self {
        self.0.cpu_usage_percent = percent;
        self
    }
    /// Number of VMs running on the host.
    pub fn running_vms(mut self, n: u32) -> Self {
        self.0.running_vms = n;
        self
    }
    /// pCPUs exclusively pinned to running VMs.
    pub fn dedicated_cpus(mut self, cpus: impl IntoIterator<Item = u32>) -> Self {
        self.0.dedicated_cpus = cpus.into_iter().collect();
        self
    }
    /// Replaces the whole pending aggregate (set it before the `pending_*` setters).
    pub fn pending(mut self, pending: PendingAggregate) -> Self {
        self.0.pending = pending;
        self
    }
    /// Pending memory (static overheads), in MiB.
    pub fn pending_memory_mb(mut self, mb: u64) -> Self {
        self.0.pending.memory_mb = mb;
        self
    }
    /// Pending overcommit memory (guest memory + overheads), in MiB.
    pub fn pending_overcommit_mb(mut self, mb: u64) -> Self {
        self.0.pending.overcommit_memory_mb = mb;
        self
    }
    /// Pending CPU load, in percent of the host's capacity.
    pub fn pending_cpu_load(mut self, percent: u32) -> Self {
        self.0.pending.cpu_load_percent = percent;
        self
    }
    /// pCPUs claimed by pending exclusively-pinned VMs.
    pub fn pending_pinned_cpus(mut self, cpus: impl IntoIterator<Item = u32>) -> Self {
        self.0.pending.pinned_cpus = cpus.into_iter().collect();
        self
    }
    /// Adds pending hugepages of a size (KiB).
    pub fn pending_hugepages(mut self, size_kb: u64, count: u64) -> Self {
        self.0.pending.hugepages.push(HugePages { size_kb, count });
        self
    }
    /// Adds pending memory on a host NUMA node, in MiB.
    pub fn pending_numa_mb(mut self, node: u32, memory_mb: u64) -> Self {
        self.0
            .pending
            .numa_memory
            .push(NodeMemory { node, memory_mb });
        self
    }
    /// VMs pending on this host, by id.
    pub fn pending_vms<S: Into<String>>(mut self, ids: impl IntoIterator<Item = S>) -> Self {
        self.0.pending.vms = ids.into_iter().map(Into::into).collect();
        self
    }
    /// A pending custom amount.
    pub fn pending_custom(mut self, kind: &str, amount: u64) -> Self {
        self.0.pending.custom.push(CustomAmount {
            kind: kind.to_string(),
            amount,
        });
        self
    }
    /// Adds a NUMA node with these CPUs and `free_mb` MiB (total = free).
    pub fn numa_node(
        mut self,
        index: u32,
        cpus: impl IntoIterator<Item = u32>,
        free_mb: u64,
    ) -> Self {
        self.0.numa_nodes.push(NumaNode {
            index,
            cpus: cpus.into_iter().collect(),
            total_memory_mb: free_mb,
            free_memory_mb: free_mb,
            free_hugepages: Vec::new(),
        });
        self
    }
    /// Adds free hugepages of a size (KiB) on the NUMA node with this index (added before).
    pub fn node_hugepages(mut self, node: u32, size_kb: u64, count: u64) -> Self {
        let n = self
            .0
            .numa_nodes
            .iter_mut()
            .find(|n| n.index == node)
            .expect("node_hugepages: add the NUMA node first");
        n.free_hugepages.push(HugePages { size_kb, count });
        self
    }
    /// Online CPU ids (default: all of the topology's threads).
    pub fn online_cpus(mut self, cpus: impl IntoIterator<Item = u32>) -> Self {
        self.0.online_cpus = cpus.into_iter().collect();
        self
    }
    /// CPU flags.
    pub fn cpu_flags(mut self, flags: &[&str]) -> Self {
        self.0.cpu_flags = flags.iter().map(|f| f.to_string()).collect();
        self
    }
    /// Adds free hugepages of a size (KiB), host-wide.
    pub fn hugepages(mut self, size_kb: u64, count: u64) -> Self {
        self.0.free_hugepages.push(HugePages { size_kb, count });
        self
    }
    /// Free amount of a custom resource kind.
    pub fn custom_free(mut self, kind: &str, amount: u64) -> Self {
        self.0.custom_resources.push(CustomAmount {
            kind: kind.to_string(),
            amount,
        });
        self
    }
    /// Power management state.
    pub fn power(mut self, power: PowerManagement) -> Self {
        self.0.power = power;
        self
    }
    /// Power management that works and is under the power policy's control (the usual
    /// state of a host the policy may shut down or wake up).
    pub fn policy_controlled(mut self) -> Self {
        self.0.power.enabled = true;
        self.0.power.controlled_by_policy = true;
        self
    }
    /// Minutes the host has had no VM.
    pub fn empty_minutes(mut self, minutes: u32) -> Self {
        self.0.empty_minutes = minutes;
        self
    }
    /// Minutes the host has been in its current status.
    pub fn status_minutes(mut self, minutes: u32) -> Self {
        self.0.status_minutes = minutes;
        self
    }
    /// Minutes the CPU usage has stayed on its side of the thresholds.
    pub fn cpu_usage_minutes(mut self, minutes: u32) -> Self {
        self.0.cpu_usage_duration_minutes = minutes;
        self
    }
    /// The finished host.
    pub fn build(self) -> Host {
        self.0
    }
}

impl From<HostBuilder> for Host {
    fn from(b: HostBuilder) -> Host {
        b.0
    }
}

/// Starts a VM with id (and name) `id`: 1 GiB, 1 vCPU, server, migratable, down.
pub fn vm(id: &str) -> VmBuilder {
    VmBuilder(Vm {
        id: id.to_string(),
        name: id.to_string(),
        memory_mb: 1_024,
        ..Default::default()
    })
}

/// Builder for a [`Vm`].
#[derive(Debug, Clone)]
pub struct VmBuilder(Vm);

impl VmBuilder {
    /// Guest memory, in MiB.
    pub fn memory_mb(mut self, mb: u64) -> Self {
        self.0.memory_mb = mb;
        self
    }
    /// `n` vCPUs as one socket of `n` cores.
    pub fn vcpus(mut self, n: u32) -> Self {
        self.0.cpu = CpuTopology {
            sockets: 1,
            cores_per_socket: n,
            threads_per_core: 1,
        };
        self
    }
    /// Virtual CPU topology (vCPUs = sockets x cores x threads).
    pub fn cpu(mut self, sockets: u32, cores_per_socket: u32, threads_per_core: u32) -> Self {
        self.0.cpu = CpuTopology {
            sockets,
            cores_per_socket,
            threads_per_core,
        };
        self
    }
    /// Workload type.
    pub fn vm_type(mut self, t: VmType) -> Self {
        self.0.vm_type = t;
        self
    }
    /// Running (status `Up`) on the host with this id.
    pub fn current_host(mut self, host_id: &str) -> Self {
        self.0.current_host = Some(host_id.to_string());
        self.0.status = VmStatus::Up;
        self
    }
    /// Migration mode.
    pub fn migration(mut self, mode: MigrationMode) -> Self {
        self.0.migration = Some(mode);
        self
    }
    /// Guest memory backed by hugepages of this size (KiB).
    pub fn hugepages(mut self, size_kb: u64) -> Self {
        self.0.hugepage_size_kb = Some(size_kb);
        self
    }
    /// CPU usage in percent of its vCPUs.
    pub fn cpu_usage(mut self, percent: u32) -> Self {
        self.0.cpu_usage_percent = percent;
        self
    }
    /// Human name.
    pub fn name(mut self, name: &str) -> Self {
        self.0.name = name.to_string();
        self
    }
    /// Needs this amount of a custom resource kind on its host.
    pub fn needs(mut self, kind: &str, amount: u64) -> Self {
        self.0.custom_resources.push(CustomAmount {
            kind: kind.to_string(),
            amount,
        });
        self
    }
    /// CPU pinning string, e.g. `0#1-3_1#4`.
    pub fn pinning(mut self, text: &str) -> Self {
        self.0.cpu_pinning = Some(text.to_string());
        self
    }
    /// Pinning policy.
    pub fn pinning_policy(mut self, policy: PinningPolicy) -> Self {
        self.0.cpu_pinning_policy = policy;
        self
    }
    /// Host CPU passthrough.
    pub fn passthrough(mut self) -> Self {
        self.0.cpu_passthrough = true;
        self
    }
    /// Required CPU flags (for a running passthrough VM: its current CPU's flags).
    pub fn cpu_flags(mut self, flags: &[&str]) -> Self {
        self.0.cpu_flags = flags.iter().map(|f| f.to_string()).collect();
        self
    }
    /// Adds a vNUMA node with this memory and these vCPUs, pinned to these host nodes
    /// (none: not pinned).
    pub fn vnuma(
        mut self,
        index: u32,
        memory_mb: u64,
        cpus: impl IntoIterator<Item = u32>,
        pinned_host_nodes: &[u32],
    ) -> Self {
        self.0.numa_nodes.push(VNumaNode {
            index,
            memory_mb,
            cpus: cpus.into_iter().collect(),
            pinned_host_nodes: pinned_host_nodes.to_vec(),
        });
        self
    }
    /// NUMA tune mode.
    pub fn numa_tune(mut self, mode: NumaTuneMode) -> Self {
        self.0.numa_tune = mode;
        self
    }
    /// Hosts the VM may run on.
    pub fn dedicated_hosts(mut self, hosts: &[&str]) -> Self {
        self.0.dedicated_hosts = hosts.iter().map(|h| h.to_string()).collect();
        self
    }
    /// Adds a hot-plugged DIMM of `size_mb` on guest node 0 (id `dimmN`, N its position).
    pub fn dimm(self, size_mb: u64) -> Self {
        self.dimm_on(size_mb, 0)
    }
    /// Adds a hot-plugged DIMM of `size_mb` on guest node `node` (id `dimmN`).
    pub fn dimm_on(mut self, size_mb: u64, node: u32) -> Self {
        let id = alloc::format!("dimm{}", self.0.memory_devices.len());
        self.0.memory_devices.push(MemoryDevice {
            id,
            size_mb,
            node,
            hotplugged: true,
            unplugging: false,
        });
        self
    }
    /// Adds a memory device as given.
    pub fn memory_device(mut self, device: MemoryDevice) -> Self {
        self.0.memory_devices.push(device);
        self
    }
    /// Guaranteed (minimum) memory, in MiB.
    pub fn min_guaranteed_mb(mut self, mb: u64) -> Self {
        self.0.min_guaranteed_memory_mb = mb;
        self
    }
    /// Runtime status (after [`VmBuilder::current_host`], which sets `Up`).
    pub fn status(mut self, status: VmStatus) -> Self {
        self.0.status = status;
        self
    }
    /// The finished VM.
    pub fn build(self) -> Vm {
        self.0
    }
}

impl From<VmBuilder> for Vm {
    fn from(b: VmBuilder) -> Vm {
        b.0
    }
}

/// Starts an empty snapshot at epoch 1.
pub fn snapshot() -> SnapshotBuilder {
    SnapshotBuilder(Snapshot {
        epoch: 1,
        ..Default::default()
    })
}

/// Builder for a [`Snapshot`].
#[derive(Debug, Clone)]
pub struct SnapshotBuilder(Snapshot);

impl SnapshotBuilder {
    /// Wall-clock time of the snapshot, in Unix seconds.
    pub fn time_unix(mut self, seconds: u64) -> Self {
        self.0.time_unix = seconds;
        self
    }
    /// Adds a host.
    pub fn host(mut self, host: impl Into<Host>) -> Self {
        self.0.hosts.push(host.into());
        self
    }
    /// Adds hosts.
    pub fn hosts<H: Into<Host>>(mut self, hosts: impl IntoIterator<Item = H>) -> Self {
        self.0.hosts.extend(hosts.into_iter().map(Into::into));
        self
    }
    /// Adds a VM.
    pub fn vm(mut self, vm: impl Into<Vm>) -> Self {
        self.0.vms.push(vm.into());
        self
    }
    /// Snapshot epoch (default 1).
    pub fn epoch(mut self, epoch: u64) -> Self {
        self.0.epoch = epoch;
        self
    }
    /// Whether the cluster counts host threads as cores (default false).
    pub fn count_threads_as_cores(mut self, yes: bool) -> Self {
        self.0.cluster.count_threads_as_cores = yes;
        self
    }
    /// Cluster memory overcommit in percent (default 100).
    pub fn overcommit_percent(mut self, percent: u32) -> Self {
        self.0.cluster.memory_overcommit_percent = percent;
        self
    }
    /// The cluster CPU model and its flags.
    pub fn cluster_cpu(mut self, model: &str, flags: &[&str]) -> Self {
        self.0.cluster.cpu_model = model.to_string();
        self.0.cluster.cpu_flags = flags.iter().map(|f| f.to_string()).collect();
        self
    }
    /// Cluster CPU architecture (default x86-64).
    pub fn architecture(mut self, arch: Architecture) -> Self {
        self.0.cluster.architecture = arch;
        self
    }
    /// Memory slots per VM (default 16).
    pub fn max_memory_slots(mut self, slots: u32) -> Self {
        self.0.cluster.max_memory_slots = slots;
        self
    }
    /// Adds an affinity group over these VM ids.
    pub fn affinity_group(
        mut self,
        name: &str,
        polarity: AffinityPolarity,
        enforcing: bool,
        vms: &[&str],
    ) -> Self {
        self.0.cluster.affinity_groups.push(AffinityGroup {
            name: name.to_string(),
            polarity,
            enforcing,
            vms: vms.iter().map(|v| v.to_string()).collect(),
        });
        self
    }
    /// The finished snapshot.
    pub fn build(self) -> Snapshot {
        self.0
    }
}

/// The default value of every declared parameter, as a unit call receives them.
pub fn params_of(specs: &[ParamSpec]) -> Vec<(String, ParamValue)> {
    specs
        .iter()
        .map(|p| (p.name.clone(), p.default.clone()))
        .collect()
}

/// `params` with `name` set to `value` (appended when absent).
pub fn with_param(
    mut params: Vec<(String, ParamValue)>,
    name: &str,
    value: ParamValue,
) -> Vec<(String, ParamValue)> {
    match params.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value,
        None => params.push((name.to_string(), value)),
    }
    params
}

/// A small deterministic pseudo-random generator (xorshift64) for synthetic clusters in
/// tests and benchmarks: the same seed gives the same cluster on every machine.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a seed (0 is replaced by a fixed non-zero seed).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next value in `0..bound` (`bound` must be non-zero).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// What a caller that reads no reject details (a summary decision) gets for `verdict`: the
/// same verdict with an empty detail.
pub fn without_detail(verdict: &Verdict) -> Verdict {
    match verdict {
        Verdict::Pass => Verdict::Pass,
        Verdict::Reject { code, .. } => Verdict::reject(code.clone(), ""),
    }
}

/// Filter `F`'s verdict on `host` for `vm` (a context over `snapshot` with `params`), after
/// checking the summary form: a rejection names its detail, and a context made
/// [`Context::without_details`](crate::Context::without_details) gets the same verdict
/// with an empty detail ([`without_detail`]). `case` names the check in failure messages.
pub fn check_in_both_forms<F: crate::Filter>(
    case: &str,
    snapshot: &Snapshot,
    params: &[(String, ParamValue)],
    vm: &Vm,
    host: &Host,
) -> Verdict {
    let ctx = crate::Context::new(snapshot, params, F::NAME);
    let verdict = F::default().check(&ctx, vm, host);
    if let Verdict::Reject { code, detail } = &verdict {
        assert!(
            !detail.is_empty(),
            "{case}: {code}: a rejection names its detail"
        );
    }
    let summary = F::default().check(&ctx.without_details(), vm, host);
    assert_eq!(summary, without_detail(&verdict), "{case}: without details");
    verdict
}

/// Checks that filter `F`'s `check_all` over every host of `snapshot` (in order, then in
/// reverse) gives `check`'s verdicts host by host, in every way a unit is called: without
/// the snapshot's index (unit tests), with a fresh index (nothing counted yet: a guest's
/// first decision), with an index that kept the pCPU counts, unavailable-pCPU masks,
/// memory room and available hugepages of every other host (a fast pass loop meets kept
/// and not yet counted hosts), and without details (a summary decision).
/// Also that a filter which says it does not [apply](crate::Filter::applies) to `vm`
/// passes every host. `case` names the check in failure messages.
pub fn check_all_agrees<F: crate::Filter>(
    case: &str,
    snapshot: &Snapshot,
    params: &[(String, ParamValue)],
    vm: &Vm,
) {
    use crate::model::index::SnapshotIndex;
    use crate::model::verdict::Verdicts;
    use crate::Context;
    let forward: Vec<HostIndex> = (0..snapshot.hosts.len() as HostIndex).collect();
    let backward: Vec<HostIndex> = forward.iter().rev().copied().collect();
    let plain = Context::new(snapshot, params, F::NAME);
    let fresh = SnapshotIndex::build(snapshot);
    let half_kept = SnapshotIndex::build(snapshot);
    let counting = Context::new(snapshot, params, F::NAME).with_index(&half_kept);
    for &i in forward.iter().step_by(2) {
        counting.cpu_counts(i);
        counting.unavailable_pcpus(i);
        counting.memory_rooms().get(i);
        let host = &snapshot.hosts[i as usize];
        for size in host.free_hugepages.iter().chain(&host.pending.hugepages) {
            counting.available_hugepages(i, size.size_kb);
        }
        if let Some((size, _)) = vm.hugepages_needed() {
            counting.available_hugepages(i, size);
        }
    }
    let forms = [
        ("no index", plain),
        ("fresh index", plain.with_index(&fresh)),
        ("half the counts kept", plain.with_index(&half_kept)),
    ];
    if !F::default().applies(&plain, vm) {
        assert!(
            snapshot
                .hosts
                .iter()
                .all(|h| F::default().check(&plain, vm, h).is_pass()),
            "{case}: {}: does not apply, yet rejects a host",
            F::NAME
        );
    }
    for candidates in [&forward, &backward] {
        let one: Vec<Verdict> = candidates
            .iter()
            .map(|&i| F::default().check(&plain, vm, &snapshot.hosts[i as usize]))
            .collect();
        for (form, ctx) in &forms {
            for details in [true, false] {
                let ctx = if details { *ctx } else { ctx.without_details() };
                let mut all = Verdicts::default();
                F::default().check_all(&ctx, vm, candidates, &mut all);
                let want: Vec<Verdict> = if details {
                    one.clone()
                } else {
                    one.iter().map(without_detail).collect()
                };
                assert_eq!(
                    all.into_verdicts(),
                    want,
                    "{case}: {}: {form}, details {details}, candidates {candidates:?}",
                    F::NAME
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_mb_keeps_committed_and_swap_set_earlier() {
        let h = host("h")
            .committed_mb(1_000)
            .swap_mb(500)
            .memory_mb(8_192)
            .build();
        assert_eq!(
            h.memory,
            HostMemory {
                physical_mb: 8_192,
                free_mb: 8_192,
                committed_mb: 1_000,
                max_scheduling_mb: 8_192,
                swap_free_mb: 500,
            }
        );
    }

    #[test]
    fn params_of_gives_defaults_and_with_param_overrides_one() {
        let specs = [
            ParamSpec::int("a", 1, 0, 9, "a"),
            ParamSpec::bool("b", true, "b"),
        ];
        let params = with_param(params_of(&specs), "a", ParamValue::Int(7));
        assert_eq!(
            params,
            [
                ("a".to_string(), ParamValue::Int(7)),
                ("b".to_string(), ParamValue::Bool(true)),
            ]
        );
    }
}
