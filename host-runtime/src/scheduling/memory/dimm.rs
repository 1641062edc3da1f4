//! The DIMM a memory hot plug adds: which guest and host node it goes to, its libvirt XML,
//! the engine's own capacity checks, and the what-if snapshot the policy's filters see.

use super::PlannedDimm;
use crate::error::{Error, Result};
use crate::state::PendingRules;
use policy_sdk::{Host, MemoryDevice, NumaTuneMode, Vm};
use std::collections::BTreeSet;

/// The host node a guest node's memory is strictly bound to: the VM's NUMA tune is strict
/// and the vNUMA node is pinned to exactly one host node the host has.
fn strict_host_node(vm: &Vm, host: &Host, guest_node: u32) -> Option<u32> {
    if vm.numa_tune != NumaTuneMode::Strict {
        return None;
    }
    let node = vm.numa_nodes.iter().find(|n| n.index == guest_node)?;
    match node.pinned_host_nodes[..] {
        [h] if host.numa_nodes.iter().any(|n| n.index == h) => Some(h),
        _ => None,
    }
}

/// Free memory of a host NUMA node minus what is pending there, in MiB.
fn node_free_mb(host: &Host, node: u32) -> u64 {
    host.numa_nodes
        .iter()
        .find(|n| n.index == node)
        .map_or(0, |n| n.free_memory_mb)
        .saturating_sub(host.pending.numa_memory_of(node))
}

/// The DIMM a plug of `delta` MiB adds: a new device id, the guest node (the VM's only
/// node when it has no vNUMA nodes; else, among the nodes whose strict host node can take
/// the delta, the one with the least memory, then the lowest index) and, for a strictly
/// pinned guest node, the host node; the VM's hugepage size when it has one. Errors name
/// the value when the delta does not fit the VM's hugepage size.
pub(super) fn plan_dimm(vm: &Vm, host: &Host, delta: u64) -> Result<PlannedDimm> {
    if let Some(size_kb) = vm.hugepage_size_kb.filter(|&s| s > 0) {
        if !delta.saturating_mul(1024).is_multiple_of(size_kb) {
            return Err(Error::input(
                format!("VM {:?}", vm.id),
                None,
                format!(
                    "a hot plug of {delta} MiB is not a whole number of the VM's {size_kb} \
                     KiB hugepages (hugepage_size_kb)"
                ),
            ));
        }
    }
    let guest_node = if vm.numa_nodes.is_empty() {
        0
    } else {
        let fits = |n: &&policy_sdk::VNumaNode| {
            strict_host_node(vm, host, n.index).is_none_or(|h| node_free_mb(host, h) >= delta)
        };
        let mut nodes: Vec<&policy_sdk::VNumaNode> = vm.numa_nodes.iter().filter(fits).collect();
        if nodes.is_empty() {
            // None fits: keep the choice deterministic; the capacity check explains.
            nodes = vm.numa_nodes.iter().collect();
        }
        nodes
            .iter()
            .min_by_key(|n| (n.memory_mb, n.index))
            .map_or(0, |n| n.index)
    };
    let taken: BTreeSet<&str> = vm.memory_devices.iter().map(|d| d.id.as_str()).collect();
    let id = (0..)
        .map(|i| format!("dimm{i}"))
        .find(|id| !taken.contains(id.as_str()))
        .expect("a free id exists");
    let device = MemoryDevice {
        id,
        size_mb: delta,
        node: guest_node,
        hotplugged: true,
        unplugging: false,
    };
    Ok(describe_dimm(
        device,
        strict_host_node(vm, host, guest_node),
        vm.hugepage_size_kb.filter(|&s| s > 0),
        false,
    ))
}

/// A DIMM with its libvirt XML: `<source>` (host `nodemask`, `pagesize`) only when
/// relevant, `<target>` size in KiB and guest node; to unplug, the device's alias.
pub(super) fn describe_dimm(
    device: MemoryDevice,
    host_node: Option<u32>,
    pagesize_kb: Option<u64>,
    with_alias: bool,
) -> PlannedDimm {
    let mut xml = String::from("<memory model='dimm'>\n");
    if host_node.is_some() || pagesize_kb.is_some() {
        xml.push_str("  <source>\n");
        if let Some(node) = host_node {
            xml.push_str(&format!("    <nodemask>{node}</nodemask>\n"));
        }
        if let Some(size) = pagesize_kb {
            xml.push_str(&format!("    <pagesize unit='KiB'>{size}</pagesize>\n"));
        }
        xml.push_str("  </source>\n");
    }
    xml.push_str(&format!(
        "  <target>\n    <size unit='KiB'>{}</size>\n    <node>{}</node>\n  </target>\n",
        device.size_mb.saturating_mul(1024),
        device.node
    ));
    if with_alias {
        xml.push_str(&format!("  <alias name='{}'/>\n", xml_escape(&device.id)));
    }
    xml.push_str("</memory>");
    PlannedDimm {
        device,
        host_node,
        pagesize_kb,
        xml,
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The engine's own checks that the host can take `delta` MiB more for the VM (whatever
/// the policy): free memory minus pending memory (hugepages of the VM's size minus pending
/// ones instead, for a hugepage-backed VM), the overcommit ceiling minus committed and
/// pending memory, and the strict host node's free memory minus its pending memory.
pub(super) fn capacity_reasons(
    vm: &Vm,
    host: &Host,
    dimm: &PlannedDimm,
    delta: u64,
) -> Vec<String> {
    let mut reasons = Vec::new();
    let m = &host.memory;
    let p = &host.pending;
    match dimm.pagesize_kb {
        Some(size_kb) => {
            let need = delta.saturating_mul(1024) / size_kb;
            let free = host
                .free_hugepages
                .iter()
                .filter(|h| h.size_kb == size_kb)
                .map(|h| h.count)
                .sum::<u64>();
            let left = free.saturating_sub(p.hugepages_of(size_kb));
            if left < need {
                reasons.push(format!(
                    "hugepages: {left} free {size_kb} KiB pages ({free} free - {} pending), \
                     {need} needed for {delta} MiB",
                    p.hugepages_of(size_kb)
                ));
            }
        }
        None => {
            let left = m.free_mb.saturating_sub(p.memory_mb);
            if left < delta {
                reasons.push(format!(
                    "free memory: {left} MiB ({} free - {} pending), {delta} MiB needed",
                    m.free_mb, p.memory_mb
                ));
            }
        }
    }
    let schedulable = m
        .max_scheduling_mb
        .saturating_sub(m.committed_mb)
        .saturating_sub(p.overcommit_memory_mb);
    if schedulable < delta {
        reasons.push(format!(
            "schedulable memory: {schedulable} MiB ({} max - {} committed - {} pending), \
             {delta} MiB needed",
            m.max_scheduling_mb, m.committed_mb, p.overcommit_memory_mb
        ));
    }
    if let Some(node) = dimm.host_node {
        let left = node_free_mb(host, node);
        if left < delta {
            reasons.push(format!(
                "NUMA node {node}: {left} MiB free after pending, {delta} MiB needed (guest \
                 node {} of VM {:?} is strictly pinned there)",
                dimm.device.node, vm.id
            ));
        }
    }
    reasons
}

/// The snapshot the filters check a plug on: the VM grown by the DIMM (memory, vNUMA node,
/// device), and its host seen without the VM's current footprint (its memory plus overhead
/// back in free and out of committed memory, its hugepages and strictly pinned node memory
/// back), so that a filter asking "does the grown VM fit here?" counts the VM's memory
/// once. Returns the snapshot and the grown VM.
pub(super) fn probe_snapshot(
    snapshot: &policy_sdk::Snapshot,
    vm: &Vm,
    host_index: u32,
    dimm: &PlannedDimm,
    rules: &PendingRules,
) -> (policy_sdk::Snapshot, Vm) {
    let mut probe = snapshot.clone();
    let mut grown = vm.clone();
    let delta = dimm.device.size_mb;
    grown.memory_mb = grown.memory_mb.saturating_add(delta);
    if let Some(node) = grown
        .numa_nodes
        .iter_mut()
        .find(|n| n.index == dimm.device.node)
    {
        node.memory_mb = node.memory_mb.saturating_add(delta);
    }
    grown.memory_devices.push(dimm.device.clone());
    let host = &mut probe.hosts[host_index as usize];
    let footprint = vm.memory_mb.saturating_add(rules.memory_overhead_mb);
    host.memory.committed_mb = host.memory.committed_mb.saturating_sub(footprint);
    // A started VM's guest memory and overhead leave the host's free memory (as the
    // lifecycle accounts it, hugepage-backed or not); its pages leave the free pages.
    host.memory.free_mb = host.memory.free_mb.saturating_add(footprint);
    if let Some((size_kb, pages)) = vm.hugepages_needed() {
        match host
            .free_hugepages
            .iter_mut()
            .find(|h| h.size_kb == size_kb)
        {
            Some(h) => h.count = h.count.saturating_add(pages),
            None => host.free_hugepages.push(policy_sdk::HugePages {
                size_kb,
                count: pages,
            }),
        }
    }
    for node in &vm.numa_nodes {
        if let Some(h) = strict_host_node(vm, host, node.index) {
            if let Some(n) = host.numa_nodes.iter_mut().find(|n| n.index == h) {
                n.free_memory_mb = n.free_memory_mb.saturating_add(node.memory_mb);
                // A hugepage-backed guest node's pages return to its host node too (the
                // `numa` filter counts a hugepage VM's node room in pages).
                if let Some(size_kb) = vm.hugepage_size_kb.filter(|&s| s > 0) {
                    let pages = policy_sdk::HugePages::needed(node.memory_mb, size_kb);
                    match n.free_hugepages.iter_mut().find(|p| p.size_kb == size_kb) {
                        Some(p) => p.count = p.count.saturating_add(pages),
                        None => n.free_hugepages.push(policy_sdk::HugePages {
                            size_kb,
                            count: pages,
                        }),
                    }
                }
            }
        }
    }
    if let Some(v) = probe.vms.iter_mut().find(|v| v.id == vm.id) {
        *v = grown.clone();
    }
    (probe, grown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimm_xml_has_source_only_when_relevant_and_size_in_kib() {
        let device = MemoryDevice {
            id: "dimm2".into(),
            size_mb: 1024,
            node: 1,
            hotplugged: true,
            unplugging: false,
        };
        let plain = describe_dimm(device.clone(), None, None, false);
        assert_eq!(
            plain.xml,
            "<memory model='dimm'>\n  <target>\n    <size unit='KiB'>1048576</size>\n    \
             <node>1</node>\n  </target>\n</memory>"
        );
        let pinned = describe_dimm(device, Some(3), Some(2048), true);
        assert!(pinned.xml.contains("<source>\n    <nodemask>3</nodemask>\n    <pagesize unit='KiB'>2048</pagesize>\n  </source>"), "{}", pinned.xml);
        assert!(
            pinned.xml.contains("<alias name='dimm2'/>"),
            "{}",
            pinned.xml
        );
    }
}
