//! Host statistics refreshes (`Cluster::update_usage`) and decisions on several threads,
//! against the builtin wasm modules and the same units linked natively.

use policy_sdk::{HostUsage, Snapshot};
use wasmsched::{Cluster, Detail, Policy, ScheduleRequest};
use wasmsched_testkit::native;
use wasmsched_testkit::synth::{self, VmKind};

/// Every host's usage: the CPU load weight's favourite moves with `round`.
fn refresh(snapshot: &Snapshot, round: usize) -> Vec<(String, HostUsage)> {
    snapshot
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let usage = HostUsage {
                cpu_usage_percent: ((i + round * 7) % 90) as u32,
                free_mb: h.memory.physical_mb / 2 + ((i * 31 + round) % 1_000) as u64,
                swap_free_mb: 1_024,
                running_vms: ((i + round) % 20) as u32,
            };
            (h.id.clone(), usage)
        })
        .collect()
}

#[test]
fn a_usage_refresh_reaches_the_guests_as_a_delta_and_decides_like_native() {
    let wasm_runtime = native::wasm_runtime();
    let native_runtime = native::runtime();
    let wasm = Policy::builtin_default(&wasm_runtime).unwrap();
    let native = Policy::builtin_default(&native_runtime).unwrap();
    let (cluster, _) = synth::realistic_cluster(120).unwrap();
    let request = ScheduleRequest::new(VmKind::Plain.vm("probe"));
    wasm.evaluate(&cluster.view(), &request).unwrap();
    let full_before: u64 = wasm_runtime
        .modules()
        .iter()
        .map(|m| m.stats().full_syncs)
        .sum();
    let mut chosen = Vec::new();
    for round in 0..4 {
        let usage = refresh(&cluster.snapshot(), round);
        cluster
            .update_usage(usage.iter().map(|(id, u)| (id.as_str(), *u)))
            .unwrap();
        let view = cluster.view();
        for (id, u) in &usage {
            let host = view.snapshot().hosts.iter().find(|h| &h.id == id).unwrap();
            assert_eq!(HostUsage::of(host), *u);
        }
        let w = wasm.evaluate(&view, &request).unwrap();
        let n = native.evaluate(&view, &request).unwrap();
        assert_eq!(w.chosen, n.chosen, "round {round}");
        assert_eq!(w.available, n.available, "round {round}");
        let scores = |d: &wasmsched::Decision| -> Vec<Option<f64>> {
            d.hosts.iter().map(|h| h.score).collect()
        };
        assert_eq!(scores(&w), scores(&n), "round {round}");
        chosen.push(w.chosen);
    }
    // The refreshes moved the choice, and no module needed a full snapshot for them.
    assert!(chosen.windows(2).any(|w| w[0] != w[1]), "{chosen:?}");
    let full_after: u64 = wasm_runtime
        .modules()
        .iter()
        .map(|m| m.stats().full_syncs)
        .sum();
    assert_eq!(full_after, full_before);
}

#[test]
fn two_threads_scheduling_on_one_cluster_never_over_commit() {
    let runtime = native::wasm_runtime();
    let policy = Policy::builtin_default(&runtime).unwrap();
    // 30 hosts for 240 VMs: many do not fit, so the threads race for the last room.
    let cluster = Cluster::new(synth::snapshot_of(30), "<threads>").unwrap();
    let requests: Vec<ScheduleRequest> = synth::vm_mix(240, "t")
        .into_iter()
        .map(|vm| ScheduleRequest::new(vm).detail(Detail::Summary))
        .collect();
    let placed: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|t| {
                let (policy, cluster, requests) = (&policy, &cluster, &requests);
                s.spawn(move || {
                    requests
                        .iter()
                        .skip(t)
                        .step_by(2)
                        .filter(|r| policy.schedule(cluster, r).unwrap().chosen.is_some())
                        .count()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let snapshot = cluster.snapshot();
    let pending: usize = snapshot.hosts.iter().map(|h| h.pending.vms.len()).sum();
    assert_eq!(pending, placed);
    for h in &snapshot.hosts {
        let (m, p) = (&h.memory, &h.pending);
        assert!(
            m.committed_mb + p.overcommit_memory_mb <= m.max_scheduling_mb,
            "{} over-committed: {m:?} {p:?}",
            h.id
        );
        let mut pinned = p.pinned_cpus.clone();
        pinned.extend(&h.dedicated_cpus);
        let n = pinned.len();
        pinned.sort_unstable();
        pinned.dedup();
        assert_eq!(pinned.len(), n, "{}: a pCPU pinned twice", h.id);
        // Every pending aggregate is the sum of the host's records.
        assert_eq!(*p, cluster.pending_on_host(&h.id));
    }
}
