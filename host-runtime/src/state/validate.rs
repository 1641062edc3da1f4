//! What makes a cluster snapshot or a VM make sense, checked before the engine uses them:
//! the same rules for a cluster file, a cluster sent over an API and a VM in a request.
//! Each check names the field at fault, relative to the host or VM (`dedicated_cpus[3]`);
//! the caller puts the path in front (`hosts[2].`, `vms[0].`, or the request's VM).

use super::pending::{MAX_COUNT, MAX_MEMORY_MB};
use policy_sdk::model::topology::{self, CpuPinning};
use policy_sdk::{ClusterInfo, Host, Vm};
use std::collections::BTreeSet;

/// A field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    /// The field's path inside the host or VM (`numa_nodes[1].cpus`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn fault(field: impl Into<String>, message: impl Into<String>) -> Fault {
    Fault {
        field: field.into(),
        message: message.into(),
    }
}

/// Largest memory overcommit accepted, in percent (10x).
pub(crate) const MAX_OVERCOMMIT_PERCENT: u32 = 1_000;

/// Ids and names are printed in decisions, logs and reports: a control character in one
/// could forge a line or a terminal escape.
fn printable(field: &str, text: &str) -> Result<(), Fault> {
    match text.chars().find(|c| c.is_control()) {
        Some(c) => Err(fault(
            field,
            format!(
                "contains the control character {:?}: ids and names must be printable",
                c
            ),
        )),
        None => Ok(()),
    }
}

/// The cluster-wide settings.
pub(crate) fn check_cluster(cluster: &ClusterInfo) -> Result<(), Fault> {
    if !(1..=MAX_OVERCOMMIT_PERCENT).contains(&cluster.memory_overcommit_percent) {
        return Err(fault(
            "memory_overcommit_percent",
            format!(
                "{} is out of range: 100 means no overcommit, at most {MAX_OVERCOMMIT_PERCENT}",
                cluster.memory_overcommit_percent
            ),
        ));
    }
    Ok(())
}

/// One host: printable id and name, a CPU topology, pCPU ids within it (dedicated, online,
/// NUMA nodes; NUMA nodes with distinct indexes and disjoint CPUs), free memory within the
/// physical memory, CPU usage in percent.
pub(crate) fn check_host(host: &Host) -> Result<(), Fault> {
    if host.id.is_empty() {
        return Err(fault("id", "must not be empty"));
    }
    printable("id", &host.id)?;
    printable("name", &host.name)?;
    let cpu = &host.cpu;
    if cpu.sockets == 0 || cpu.cores_per_socket == 0 || cpu.threads_per_core == 0 {
        return Err(fault(
            "cpu",
            "sockets, cores_per_socket and threads_per_core must be at least 1",
        ));
    }
    let threads = cpu.threads();
    let beyond = |list: &str, ids: &[u32]| -> Result<(), Fault> {
        match ids.iter().position(|&id| id >= threads) {
            Some(j) => Err(fault(
                format!("{list}[{j}]"),
                format!(
                    "pCPU {} does not exist: the host has {threads} ({} sockets x {} cores x {} \
                     threads, ids 0-{})",
                    ids[j],
                    cpu.sockets,
                    cpu.cores_per_socket,
                    cpu.threads_per_core,
                    threads - 1
                ),
            )),
            None => Ok(()),
        }
    };
    beyond("dedicated_cpus", &host.dedicated_cpus)?;
    beyond("online_cpus", &host.online_cpus)?;
    let mut indexes = BTreeSet::new();
    let mut owner: std::collections::BTreeMap<u32, u32> = Default::default();
    for (n, node) in host.numa_nodes.iter().enumerate() {
        if !indexes.insert(node.index) {
            return Err(fault(
                format!("numa_nodes[{n}].index"),
                format!("NUMA node {} is listed twice", node.index),
            ));
        }
        beyond(&format!("numa_nodes[{n}].cpus"), &node.cpus)?;
        for &id in &node.cpus {
            if let Some(other) = owner.insert(id, node.index) {
                if other != node.index {
                    return Err(fault(
                        format!("numa_nodes[{n}].cpus"),
                        format!("pCPU {id} is in NUMA node {other} too: nodes cannot share CPUs"),
                    ));
                }
            }
        }
    }
    let memory = &host.memory;
    if memory.physical_mb > 0 && memory.free_mb > memory.physical_mb {
        return Err(fault(
            "memory.free_mb",
            format!(
                "{} MiB free is more than the {} MiB of physical memory",
                memory.free_mb, memory.physical_mb
            ),
        ));
    }
    if host.cpu_usage_percent > 100 {
        return Err(fault(
            "cpu_usage_percent",
            format!("{}% is more than 100%", host.cpu_usage_percent),
        ));
    }
    Ok(())
}

/// One VM, as a request or as listed in a snapshot: id, vCPU topology (at most 4096),
/// memory, pinning string, vNUMA nodes (distinct, vCPUs that exist, memory adding up to the
/// VM's), guaranteed memory within the VM's, custom resource amounts.
pub(crate) fn check_vm(vm: &Vm) -> Result<(), Fault> {
    if vm.id.is_empty() {
        return Err(fault("id", "must not be empty"));
    }
    printable("id", &vm.id)?;
    printable("name", &vm.name)?;
    let cpu = &vm.cpu;
    if cpu.sockets == 0 || cpu.cores_per_socket == 0 || cpu.threads_per_core == 0 {
        return Err(fault(
            "cpu",
            "sockets, cores_per_socket and threads_per_core must be at least 1",
        ));
    }
    if cpu
        .sockets
        .checked_mul(cpu.cores_per_socket)
        .and_then(|c| c.checked_mul(cpu.threads_per_core))
        .is_none_or(|v| v > 4096)
    {
        return Err(fault("cpu", "more than 4096 vCPUs"));
    }
    if vm.memory_mb > MAX_MEMORY_MB {
        return Err(fault("memory_mb", "larger than 1 EiB"));
    }
    if vm.min_guaranteed_memory_mb > vm.memory_mb {
        return Err(fault(
            "min_guaranteed_memory_mb",
            format!(
                "{} MiB is more than the VM's memory_mb ({} MiB)",
                vm.min_guaranteed_memory_mb, vm.memory_mb
            ),
        ));
    }
    if let Some(text) = &vm.cpu_pinning {
        let checked = CpuPinning::parse(text).and_then(|p| p.check_vcpus(text, vm.vcpus()));
        if let Err(e) = checked {
            return Err(fault("cpu_pinning", e.to_string()));
        }
    }
    if vm.numa_nodes.len() > topology::MAX_VNUMA_NODES {
        return Err(fault(
            "numa_nodes",
            format!("more than {} vNUMA nodes", topology::MAX_VNUMA_NODES),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut vnuma_mb = 0u64;
    for (i, node) in vm.numa_nodes.iter().enumerate() {
        if !seen.insert(node.index) {
            return Err(fault(
                format!("numa_nodes[{i}].index"),
                format!("vNUMA node {} is listed twice", node.index),
            ));
        }
        if node.memory_mb > MAX_MEMORY_MB {
            return Err(fault(
                format!("numa_nodes[{i}].memory_mb"),
                "larger than 1 EiB",
            ));
        }
        vnuma_mb = vnuma_mb.saturating_add(node.memory_mb);
        if let Some(cpu) = node.cpus.iter().find(|&&c| c >= vm.vcpus()) {
            return Err(fault(
                format!("numa_nodes[{i}].cpus"),
                format!("vCPU {cpu} does not exist (the VM has {})", vm.vcpus()),
            ));
        }
    }
    if vnuma_mb > 0 && vnuma_mb != vm.memory_mb {
        return Err(fault(
            "numa_nodes",
            format!(
                "the vNUMA nodes' memory adds up to {vnuma_mb} MiB, the VM has {} MiB \
                 (memory_mb)",
                vm.memory_mb
            ),
        ));
    }
    for (i, c) in vm.custom_resources.iter().enumerate() {
        if c.kind.is_empty() {
            return Err(fault(
                format!("custom_resources[{i}].kind"),
                "must not be empty",
            ));
        }
        if c.amount > MAX_COUNT {
            return Err(fault(
                format!("custom_resources[{i}].amount"),
                format!("{} is too large (at most {MAX_COUNT})", c.amount),
            ));
        }
    }
    if vm.hugepage_size_kb == Some(0) {
        return Err(fault("hugepage_size_kb", "must not be 0"));
    }
    Ok(())
}
