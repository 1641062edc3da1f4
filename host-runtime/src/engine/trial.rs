//! The load-time trial: before a module is published, every unit runs over a generated
//! cluster (hosts of every shape: tiny and huge topologies, several NUMA nodes, offline and
//! dedicated CPUs, pending resources, hosts down or in maintenance, full and empty ones)
//! and a few VM shapes (small, too big for any host, pinned high-performance with vNUMA
//! and hugepages, a desktop with dedicated hosts and devices), under the runtime's default
//! limits. A unit that traps, loops past its deadline, blows its memory or output cap,
//! answers with the wrong kind of result or the wrong number of verdicts or penalties is
//! refused; a unit that reports an error cleanly is accepted (it may need real input).

use crate::engine::module::Instance;
use policy_sdk::testing::{host, snapshot, vm};
use policy_sdk::wire::abi::{Call, CallResponse};
use policy_sdk::wire::codec;
use policy_sdk::wire::sync::{SyncMessage, SyncResponse};
use policy_sdk::{
    HostIndex, HostStatus, Manifest, MigrationMode, NumaTuneMode, PinningPolicy, Snapshot,
    UnitKind, Vm, VmType,
};
use std::sync::OnceLock;

/// The generated cluster of the trial, encoded once per process as a full sync message.
struct Trial {
    sync: Vec<u8>,
    hosts: usize,
    vms: Vec<(&'static str, Vm)>,
}

fn trial() -> &'static Trial {
    static TRIAL: OnceLock<Trial> = OnceLock::new();
    TRIAL.get_or_init(|| {
        let snapshot = cluster();
        Trial {
            hosts: snapshot.hosts.len(),
            sync: codec::encode(&SyncMessage::Full(snapshot)).expect("the trial cluster encodes"),
            vms: vm_shapes(),
        }
    })
}

/// Hosts of every shape the input validation lets through, edge values included.
fn cluster() -> Snapshot {
    const GIB: u64 = 1024;
    let big_cpus = 8 * 64 * 2;
    snapshot()
        .time_unix(1_700_000_000)
        .overcommit_percent(200)
        .cluster_cpu("Trial-CPU", &["sse4_2", "avx2"])
        .host(
            host("numa-2")
                .spm()
                .cpu(2, 8, 2)
                .memory_mb(256 * GIB)
                .free_mb(200 * GIB)
                .committed_mb(40 * GIB)
                .cpu_usage(35)
                .running_vms(2)
                .numa_node(0, 0..16, 100 * GIB)
                .numa_node(1, 16..32, 100 * GIB)
                .node_hugepages(0, 2048, 4096)
                .node_hugepages(1, 1_048_576, 8)
                .hugepages(2048, 4096)
                .dedicated_cpus([0, 1, 17])
                .cpu_flags(&["sse4_2", "avx2", "vmx"])
                .policy_controlled(),
        )
        .host(
            host("full")
                .memory_mb(16 * GIB)
                .free_mb(0)
                .committed_mb(16 * GIB)
                .max_scheduling_mb(0)
                .cpu_usage(100)
                .running_vms(1000)
                .cpu_usage_minutes(600),
        )
        .host(
            host("tiny")
                .cpu(1, 1, 1)
                .memory_mb(1)
                .online_cpus([0])
                .empty_minutes(u32::MAX),
        )
        .host(
            host("maintenance")
                .status(HostStatus::Maintenance)
                .status_minutes(5),
        )
        .host(host("down").status(HostStatus::Down).memory_mb(0))
        .host({
            let mut h = host("huge")
                .cpu(8, 64, 2)
                .memory_mb(16 * 1024 * GIB)
                .swap_mb(64 * GIB)
                .online_cpus((0..big_cpus).filter(|c| c % 7 != 3))
                .dedicated_cpus((0..big_cpus).filter(|c| c % 3 == 0))
                .cpu_flags(&["sse4_2"]);
            for node in 0..8u32 {
                h = h.numa_node(node, node * 128..(node + 1) * 128, 2 * 1024 * GIB);
            }
            h
        })
        .host(
            host("pending")
                .cpu(1, 16, 1)
                .memory_mb(64 * GIB)
                .numa_node(0, 0..16, 64 * GIB)
                .pending_memory_mb(48 * GIB)
                .pending_overcommit_mb(64 * GIB)
                .pending_cpu_load(90)
                .pending_pinned_cpus([0, 1, 2, 3])
                .pending_hugepages(2048, 100)
                .pending_numa_mb(0, 32 * GIB)
                .pending_vms(["trial-pending-1", "trial-pending-2"])
                .pending_custom("gpu", 1)
                .custom_free("gpu", 1),
        )
        .host(
            host("no-flags-\u{e9}\u{4e2d}")
                .name("a host named with non-ASCII text and spaces")
                .memory_mb(8 * GIB)
                .cpu_usage(0),
        )
        .vm(vm("running-1")
            .memory_mb(4 * GIB)
            .vcpus(4)
            .current_host("numa-2"))
        .vm(vm("running-2").memory_mb(GIB).current_host("full"))
        .build()
}

/// What the load-time trial runs every unit over, for reports (`wasmsched check`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoadTrial {
    /// Generated hosts every filter and weight is called over (and balance units see).
    pub hosts: usize,
    /// The VM shapes filters and weights are called with.
    pub vm_shapes: Vec<String>,
}

/// See [`Runtime::load_trial`](crate::Runtime::load_trial).
pub(crate) fn info() -> LoadTrial {
    let trial = trial();
    LoadTrial {
        hosts: trial.hosts,
        vm_shapes: trial
            .vms
            .iter()
            .map(|(shape, _)| shape.to_string())
            .collect(),
    }
}

/// VM shapes every filter and weight is called with.
fn vm_shapes() -> Vec<(&'static str, Vm)> {
    vec![
        ("small", vm("trial-small").memory_mb(512).vcpus(1).build()),
        (
            "larger than any host",
            vm("trial-huge")
                .memory_mb(64 * 1024 * 1024)
                .cpu(16, 64, 2)
                .build(),
        ),
        (
            "pinned high-performance",
            vm("trial-hp")
                .vm_type(VmType::HighPerformance)
                .memory_mb(8192)
                .cpu(2, 2, 1)
                .pinning("0#2-3_1#4-5_2#18_3#19")
                .pinning_policy(PinningPolicy::Manual)
                .vnuma(0, 4096, [0, 1], &[0])
                .vnuma(1, 4096, [2, 3], &[1])
                .numa_tune(NumaTuneMode::Strict)
                .hugepages(2048)
                .passthrough()
                .cpu_flags(&["sse4_2", "avx2"])
                .build(),
        ),
        (
            "desktop with dedicated hosts and devices",
            vm("trial-desktop")
                .vm_type(VmType::Desktop)
                .memory_mb(2048)
                .vcpus(2)
                .current_host("numa-2")
                .migration(MigrationMode::ManualOnly)
                .dedicated_hosts(&["numa-2", "not-a-host"])
                .needs("gpu", 1)
                .dimm(1024)
                .min_guaranteed_mb(1024)
                .cpu_usage(100)
                .build(),
        ),
    ]
}

/// Syncs the generated cluster into `instance` and calls every unit of `manifest` over
/// it (filters and weights with every VM shape, over every host and over none; balance
/// units once). Returns why the module is refused.
pub(crate) fn run(instance: &mut Instance, manifest: &Manifest) -> Result<(), String> {
    let trial = trial();
    match instance.sync_raw(&trial.sync) {
        Ok(SyncResponse::Synced { .. }) => {}
        Ok(SyncResponse::Failed(e)) => {
            return Err(format!("trial sync of a generated cluster failed: {e}"))
        }
        Ok(other) => {
            return Err(format!(
                "trial sync of a generated cluster: the module answered {other:?}"
            ))
        }
        Err(e) => return Err(format!("trial sync of a generated cluster failed: {e}")),
    }
    let all: Vec<HostIndex> = (0..trial.hosts as HostIndex).collect();
    for (index, unit) in manifest.units.iter().enumerate() {
        let params: Vec<(String, policy_sdk::ParamValue)> = unit
            .params
            .iter()
            .map(|p| (p.name.clone(), p.default.clone()))
            .collect();
        let mut calls: Vec<(String, Option<&Vm>, &[HostIndex])> = Vec::new();
        match unit.kind {
            UnitKind::Balance => calls.push(("a balance cycle".into(), None, &all)),
            UnitKind::Filter | UnitKind::Weight => {
                let (_, small) = &trial.vms[0];
                calls.push((
                    "VM \"small\" and no candidate hosts".into(),
                    Some(small),
                    &[],
                ));
                for (shape, vm) in &trial.vms {
                    calls.push((
                        format!("VM {shape:?} on {} generated hosts", all.len()),
                        Some(vm),
                        &all,
                    ));
                }
            }
        }
        for (what, vm, candidates) in calls {
            let call = Call {
                unit: index as u32,
                epoch: 0,
                params: &params,
                vm,
                candidates,
                details: true,
            };
            let response = instance.call_raw(&call);
            check_response(unit.kind, candidates.len(), response).map_err(|why| {
                format!(
                    "trial call of {} unit {:?} ({what}): {why}",
                    unit.kind, unit.name
                )
            })?;
        }
    }
    Ok(())
}

/// Whether a unit's answer has the right kind and shape for `candidates` hosts.
pub(crate) fn check_response(
    kind: UnitKind,
    candidates: usize,
    response: Result<CallResponse, crate::error::UnitFault>,
) -> Result<(), String> {
    let response = response.map_err(|fault| fault.to_string())?;
    match response {
        CallResponse::Verdicts(v) if kind == UnitKind::Filter => {
            v.check()?;
            if v.len() != candidates {
                return Err(format!(
                    "{} verdicts for {candidates} candidate hosts",
                    v.len()
                ));
            }
            Ok(())
        }
        CallResponse::Penalties(p) if kind == UnitKind::Weight => {
            if p.len() != candidates {
                return Err(format!(
                    "{} penalties for {candidates} candidate hosts",
                    p.len()
                ));
            }
            Ok(())
        }
        CallResponse::SamePenalty(_) if kind == UnitKind::Weight => Ok(()),
        CallResponse::Actions(_) if kind == UnitKind::Balance => Ok(()),
        CallResponse::Failed(message) => {
            tracing::debug!("trial call answered with an error: {message}");
            Ok(())
        }
        other => {
            let got = match other {
                CallResponse::Verdicts(_) => "verdicts",
                CallResponse::Penalties(_) => "penalties",
                CallResponse::Actions(_) => "balance actions",
                CallResponse::SamePenalty(_) => "one penalty for all",
                CallResponse::Failed(_) => "a failure",
            };
            let expected = match kind {
                UnitKind::Filter => "verdicts",
                UnitKind::Weight => "penalties",
                UnitKind::Balance => "balance actions",
            };
            Err(format!(
                "the manifest declares a {kind}, but it answered with {got} (expected {expected})"
            ))
        }
    }
}
