//! The builtin `high-performance` module through the engine: its units in the default
//! policy (wasm), the pending pinned pCPUs and vNUMA memory a decision records, NUMA-pinned
//! mass starts, and migration of high-performance and pinned VMs by migration mode.

use integration_tests::{both_backends, runtime};
use policy_sdk::testing::{host, snapshot, vm, HostBuilder, VmBuilder, XorShift};
use policy_sdk::{MigrationMode, PinningPolicy, Snapshot, Vm, VmType};
use wasmsched::decision::Outcome;
use wasmsched::pending::PendingResource;
use wasmsched::{Cluster, Error, Migration, MigrationTrigger, Policy, ScheduleRequest};

fn cluster(s: Snapshot) -> Cluster {
    Cluster::new(s, "<test>").unwrap()
}

fn default_policy() -> Policy {
    Policy::builtin_default(&runtime()).unwrap()
}

/// 2 sockets x 4 cores x 2 threads (pCPUs 0-15), NUMA node 0 = pCPUs 0-7, node 1 = 8-15,
/// 8 GiB free per node, 1 GiB hugepages.
fn hp_host(id: &str) -> HostBuilder {
    host(id)
        .cpu(2, 4, 2)
        .memory_mb(65_536)
        .numa_node(0, 0..8, 8_192)
        .numa_node(1, 8..16, 8_192)
        .hugepages(1_048_576, 16)
}

/// A request for a VM of `vcpus` vCPUs with the dedicated pinning policy (1 GiB).
fn dedicated(id: &str, vcpus: u32) -> ScheduleRequest {
    ScheduleRequest::new(
        vm(id)
            .vcpus(vcpus)
            .memory_mb(1_024)
            .pinning_policy(PinningPolicy::Dedicated)
            .build(),
    )
}

fn rejection(d: &wasmsched::Decision, host: &str) -> String {
    let o = d.hosts.iter().find(|o| o.host == host).unwrap();
    match &o.outcome {
        Outcome::Rejected { unit, code, detail } => format!("{unit}: {code}: {detail}"),
        other => format!("{other:?}"),
    }
}

#[test]
fn default_policy_runs_every_high_performance_unit_in_wasm() {
    let p = default_policy();
    let filters: Vec<&str> = p.filters().iter().map(|u| u.name()).collect();
    let weights: Vec<(&str, i64)> = p.weights().iter().map(|u| (u.name(), u.factor())).collect();
    for f in ["cpu-level", "cpu-pinning", "hugepages", "numa"] {
        assert!(filters.contains(&f), "{f} missing from {filters:?}");
    }
    assert!(
        weights.contains(&("high-performance-cpu", 4)),
        "{weights:?}"
    );
    assert!(
        weights.contains(&("cpu-and-numa-pinning", 5)),
        "{weights:?}"
    );
    for u in p.filters().iter().chain(p.weights()) {
        if ["cpu-level", "numa", "high-performance-cpu"].contains(&u.name()) {
            assert_eq!(u.module_file(), "builtin:scheduling.wasm");
        }
    }
}

/// Each filter's reject reaches the decision with its detail, through the wasm module.
#[test]
fn high_performance_rejections_reach_the_decision() {
    let s = snapshot()
        .cluster_cpu("Skylake", &["sse4_2", "avx2"])
        .host(hp_host("ok").cpu_flags(&["sse4_2", "avx2"]))
        .host(hp_host("old-cpu").cpu_flags(&["sse4_2"]))
        .host(
            hp_host("offline")
                .cpu_flags(&["sse4_2", "avx2"])
                .online_cpus((0..16).filter(|&c| c != 3)),
        )
        .host(
            host("flat")
                .cpu(2, 4, 2)
                .memory_mb(65_536)
                .cpu_flags(&["sse4_2", "avx2"]),
        )
        .build();
    let c = cluster(s);
    let v = vm("hp")
        .vm_type(VmType::HighPerformance)
        .vcpus(2)
        .memory_mb(2_048)
        .pinning("0#2-3_1#10")
        .vnuma(0, 1_024, [0], &[0])
        .vnuma(1, 1_024, [1], &[1])
        .build();
    let d = default_policy()
        .evaluate(&c.view(), &ScheduleRequest::new(v))
        .unwrap();
    assert_eq!(d.chosen.as_deref(), Some("ok"), "{}", d.summary);
    assert_eq!(
        rejection(&d, "old-cpu"),
        "cpu-level: missing_cpu_flags: missing flags of the cluster CPU model: avx2"
    );
    assert_eq!(
        rejection(&d, "offline"),
        "cpu-pinning: pcpu_offline: pinned pCPU(s) 3 offline or absent"
    );
    assert_eq!(
        rejection(&d, "flat"),
        "numa: no_numa_support: the VM has pinned vNUMA nodes; the host has no NUMA support"
    );
}

#[test]
fn malformed_pinning_is_an_error_at_the_request() {
    let c = cluster(snapshot().host(hp_host("h")).build());
    let cases = [
        (
            "0#1-3_1",
            "cpu_pinning: pinning `0#1-3_1`: entry 2 `1` has no `#`",
        ),
        (
            "0#3-1",
            "cpu_pinning: pinning `0#3-1`: entry 1: range `3-1` must go upwards",
        ),
        (
            "0#1_7#2",
            "cpu_pinning: pinning `0#1_7#2`: vCPU 7 is pinned but the VM has 2",
        ),
    ];
    for (text, want) in cases {
        let v = vm("v").vcpus(2).pinning(text).build();
        let err = default_policy()
            .schedule(&c, &ScheduleRequest::new(v))
            .unwrap_err();
        assert!(matches!(err, Error::Input { .. }), "{text}: {err:?}");
        assert!(err.to_string().contains(want), "{text}: {err}");
    }
    assert!(c.pending_records_on_host("h").is_empty());
}

fn records_of(c: &Cluster, vm: &str) -> Vec<PendingResource> {
    c.pending_records_of_vm(vm)
        .into_iter()
        .map(|r| r.resource)
        .collect()
}

#[test]
fn dedicated_pcpus_become_pending_and_the_next_decision_avoids_them() {
    // Threads count as cores, so the `cpu` filter leaves room for the shared VM below.
    let c = cluster(
        snapshot()
            .count_threads_as_cores(true)
            .host(hp_host("h").dedicated_cpus([0, 1]))
            .build(),
    );
    let p = default_policy();
    // Socket 1 (pCPUs 8-15) is the freest: the VM goes there whole.
    let d = p.schedule(&c, &dedicated("a", 6)).unwrap();
    assert_eq!(d.chosen.as_deref(), Some("h"));
    assert!(
        records_of(&c, "a").contains(&PendingResource::PinnedCpus {
            cpus: vec![8, 9, 10, 11, 12, 13]
        }),
        "{:?}",
        records_of(&c, "a")
    );
    // The next one goes to what is now the freest socket, 0, after the running VM's 0-1.
    p.schedule(&c, &dedicated("b", 4)).unwrap();
    assert!(records_of(&c, "b").contains(&PendingResource::PinnedCpus {
        cpus: vec![2, 3, 4, 5]
    }));
    // A manual pin on a pending dedicated pCPU is rejected, naming it.
    let d = p
        .schedule(
            &c,
            &ScheduleRequest::new(vm("c").vcpus(1).pinning("0#9").build()),
        )
        .unwrap();
    assert_eq!(d.chosen, None);
    assert_eq!(
        rejection(&d, "h"),
        "cpu-pinning: pcpu_dedicated: pinned pCPU(s) dedicated to another VM: 9 (pending)"
    );
    // Releasing `a` frees its pCPUs for the next decision.
    c.release_vm("a").unwrap();
    let d = p
        .schedule(
            &c,
            &ScheduleRequest::new(vm("c").vcpus(1).pinning("0#9").build()),
        )
        .unwrap();
    assert_eq!(d.chosen.as_deref(), Some("h"));
}

/// The pCPU counts the `cpu` and `cpu-pinning` filters read are kept per host in the
/// snapshot's index (the guest's, and the cluster's for native units) and recounted only
/// when a host's pending aggregate changes: every reservation and release must reach them
/// before the next decision, on both backends.
#[test]
fn free_pcpu_counts_follow_each_reservation_and_release_on_both_backends() {
    for (backend, rt) in &both_backends() {
        let p = Policy::builtin_default(rt).unwrap();
        // 16 pCPUs, 8 cores.
        let c = cluster(snapshot().host(hp_host("h")).build());
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let d = p.schedule(&c, &dedicated(id, 4)).unwrap();
            assert_eq!(d.chosen.as_deref(), Some("h"), "{backend}: VM {i}");
        }
        let d = p.schedule(&c, &dedicated("e", 1)).unwrap();
        assert_eq!(d.chosen, None, "{backend}");
        assert_eq!(
            rejection(&d, "h"),
            "cpu-pinning: not_enough_free_pcpus: needs 1 free online pCPU(s), host has 0",
            "{backend}"
        );
        let shared = ScheduleRequest::new(vm("s").vcpus(1).memory_mb(1_024).build());
        let d = p.schedule(&c, &shared).unwrap();
        assert_eq!(
            rejection(&d, "h"),
            "cpu: not_enough_cores: 0 cores available, 1 vCPUs needed \
             (8 cores, 0 dedicated, 16 pending pinned)",
            "{backend}"
        );
        c.release_vm("b").unwrap();
        let d = p.schedule(&c, &dedicated("e", 5)).unwrap();
        assert_eq!(
            rejection(&d, "h"),
            "cpu-pinning: not_enough_free_pcpus: needs 5 free online pCPU(s), host has 4",
            "{backend}"
        );
        let d = p.schedule(&c, &dedicated("e", 4)).unwrap();
        assert_eq!(d.chosen.as_deref(), Some("h"), "{backend}");
    }
}

#[test]
fn vnuma_assignment_becomes_pending_numa_memory_per_host_node() {
    let c = cluster(snapshot().host(hp_host("h")).build());
    let v = vm("v")
        .vcpus(4)
        .memory_mb(10_240)
        .pinning("0#0_1#1_2#8_3#9")
        .vnuma(0, 5_120, [0, 1], &[0, 1])
        .vnuma(1, 5_120, [2, 3], &[0, 1])
        .build();
    let d = default_policy()
        .schedule(&c, &ScheduleRequest::new(v))
        .unwrap();
    assert_eq!(d.chosen.as_deref(), Some("h"));
    let records = records_of(&c, "v");
    // CPU pinning puts vNUMA 0 on node 0 and vNUMA 1 on node 1.
    assert!(records.contains(&PendingResource::NumaMemory { node: 0, mb: 5_120 }));
    assert!(records.contains(&PendingResource::NumaMemory { node: 1, mb: 5_120 }));
    assert_eq!(c.pending_on_host("h").numa_memory_of(0), 5_120);
    // A second such VM no longer fits the nodes (3 GiB left on each).
    let w = vm("w")
        .vcpus(1)
        .memory_mb(4_096)
        .vnuma(0, 4_096, [0], &[0, 1])
        .build();
    let d = default_policy()
        .schedule(&c, &ScheduleRequest::new(w))
        .unwrap();
    assert_eq!(d.chosen, None);
    assert!(
        rejection(&d, "h").starts_with("numa: not_enough_numa_memory"),
        "{}",
        rejection(&d, "h")
    );
}

/// A mass start of NUMA-pinned VMs of random sizes onto hosts with two nodes: no host node
/// is ever given more pending memory than it has free, and VMs that do not fit are refused
/// by the `numa` filter rather than stacked.
#[test]
fn mass_start_of_numa_pinned_vms_never_overfills_a_host_node() {
    let hosts: Vec<HostBuilder> = (0..20).map(|i| hp_host(&format!("h{i:02}"))).collect();
    let c = cluster(snapshot().hosts(hosts).build());
    let p = default_policy();
    let mut rng = XorShift::new(42);
    let requests: Vec<ScheduleRequest> = (0..200)
        .map(|i| {
            let a = 512 * (1 + rng.below(6));
            let b = 512 * (1 + rng.below(6));
            let nodes: &[u32] = [&[0u32][..], &[1], &[0, 1]][rng.below(3) as usize];
            ScheduleRequest::new(
                vm(&format!("vm{i:03}"))
                    .vcpus(2)
                    .memory_mb(a + b)
                    .vnuma(0, a, [0], nodes)
                    .vnuma(1, b, [1], &[0, 1])
                    .build(),
            )
        })
        .collect();
    let decisions = p.schedule_batch(&c, &requests);
    let placed = decisions
        .iter()
        .filter(|d| d.as_ref().unwrap().chosen.is_some())
        .count();
    let refused = decisions.len() - placed;
    assert!(placed > 50, "only {placed} placed");
    assert!(refused > 0, "the cluster should fill up");
    let snapshot = c.snapshot();
    for h in &snapshot.hosts {
        let pending = c.pending_on_host(&h.id);
        for node in &h.numa_nodes {
            let used = pending.numa_memory_of(node.index);
            assert!(
                used <= node.free_memory_mb,
                "{} node {}: {used} MiB pending > {} MiB free",
                h.id,
                node.index,
                node.free_memory_mb
            );
        }
    }
    for d in decisions.iter().map(|d| d.as_ref().unwrap()) {
        if d.chosen.is_none() {
            assert!(d.summary.contains("numa"), "{}", d.summary);
        }
    }
}

/// Hugepages of a VM become pending pages of its size; the next VM sees them.
#[test]
fn pending_hugepages_are_counted_by_page_size() {
    let c = cluster(
        snapshot()
            .host(hp_host("h").hugepages(2_048, 4_096))
            .build(),
    );
    let p = default_policy();
    let giant =
        |id: &str| ScheduleRequest::new(vm(id).memory_mb(10_240).hugepages(1_048_576).build());
    assert_eq!(
        p.schedule(&c, &giant("a")).unwrap().chosen.as_deref(),
        Some("h")
    );
    let d = p.schedule(&c, &giant("b")).unwrap();
    assert_eq!(d.chosen, None);
    assert_eq!(
        rejection(&d, "h"),
        "hugepages: not_enough_hugepages: needs 10 pages of 1048576 KiB; 6 available (16 free, 10 pending)"
    );
    // 2 MiB pages are untouched by the 1 GiB reservation.
    let small = ScheduleRequest::new(vm("c").memory_mb(8_192).hugepages(2_048).build());
    assert_eq!(p.schedule(&c, &small).unwrap().chosen.as_deref(), Some("h"));
}

fn running(v: VmBuilder, on: &str) -> Vm {
    v.current_host(on).memory_mb(1_024).vcpus(2).build()
}

fn migration_cluster(vms: Vec<Vm>) -> Cluster {
    let mut s = snapshot()
        .host(hp_host("src").cpu_flags(&["avx512f", "sse4_2"]))
        .host(
            hp_host("dst1")
                .cpu_flags(&["avx512f", "sse4_2"])
                .cpu_usage(50),
        )
        .host(hp_host("dst2").cpu_flags(&["sse4_2"]).cpu_usage(10));
    for v in vms {
        s = s.vm(v);
    }
    cluster(s.build())
}

/// Every migration mode against every trigger.
#[test]
fn migration_modes_decide_which_triggers_move_a_vm() {
    use MigrationMode::*;
    use MigrationTrigger::*;
    let cases = [
        (Migratable, Automatic, true),
        (Migratable, UserForced, true),
        (Migratable, HostMaintenance, true),
        (ManualOnly, Automatic, false),
        (ManualOnly, UserForced, true),
        (ManualOnly, HostMaintenance, true),
        (PinnedToHost, Automatic, false),
        (PinnedToHost, UserForced, false),
        (PinnedToHost, HostMaintenance, false),
    ];
    let p = default_policy();
    for (mode, trigger, moves) in cases {
        let c = migration_cluster(vec![running(vm("v").migration(mode), "src")]);
        let m = p.migrate(&c, "v", trigger).unwrap();
        match (&m, moves) {
            (Migration::Scheduled { decision, .. }, true) => {
                let to = decision.chosen.as_deref().unwrap();
                assert_ne!(to, "src", "{mode:?}/{trigger:?}: the source is excluded");
                assert_eq!(c.placement("v").unwrap().host, to);
            }
            (Migration::NotAllowed { reason, .. }, false) => {
                assert!(!reason.is_empty());
                assert!(c.placement("v").is_none(), "{mode:?}/{trigger:?} reserved");
            }
            _ => panic!("{mode:?}/{trigger:?}: {m:?}"),
        }
    }
}

#[test]
fn new_hp_and_pinned_vms_default_to_manual_only_migration() {
    let p = default_policy();
    let c = migration_cluster(vec![
        running(vm("hp").vm_type(VmType::HighPerformance), "src"),
        running(vm("pinned").pinning("0#1"), "src"),
        running(vm("plain"), "src"),
    ]);
    for id in ["hp", "pinned"] {
        let m = p.migrate(&c, id, MigrationTrigger::Automatic).unwrap();
        match m {
            Migration::NotAllowed { mode, reason, .. } => {
                assert_eq!(mode, MigrationMode::ManualOnly);
                assert!(reason.contains("manual migration only"), "{reason}");
            }
            other => panic!("{id}: {other:?}"),
        }
        let m = p.migrate(&c, id, MigrationTrigger::UserForced).unwrap();
        assert!(m.destination().is_some(), "{id}: {m:?}");
    }
    let m = p.migrate(&c, "plain", MigrationTrigger::Automatic).unwrap();
    assert!(m.destination().is_some(), "{m:?}");
}

#[test]
fn host_maintenance_moves_manual_only_vms_warns_for_hp_and_never_moves_pinned_to_host() {
    let p = default_policy();
    let c = migration_cluster(vec![
        running(vm("plain"), "src"),
        running(vm("hp").vm_type(VmType::HighPerformance), "src"),
        running(vm("stuck").migration(MigrationMode::PinnedToHost), "src"),
        running(vm("elsewhere"), "dst1"),
    ]);
    let plans = p.evacuate_host(&c, "src").unwrap();
    let summary: Vec<(String, Option<String>, usize)> = plans
        .iter()
        .map(|m| match m {
            Migration::Scheduled {
                decision, warnings, ..
            } => (decision.vm.clone(), decision.chosen.clone(), warnings.len()),
            Migration::NotAllowed { vm, .. } => (vm.clone(), None, 0),
        })
        .collect();
    assert_eq!(summary.len(), 3, "only the VMs on the host: {summary:?}");
    assert!(summary[0].1.is_some() && summary[0].2 == 0, "{summary:?}");
    // The HP VM is manual-only by default: the HP warning and the manual-only one.
    assert!(summary[1].1.is_some() && summary[1].2 == 2, "{summary:?}");
    assert!(matches!(
        &plans[2],
        Migration::NotAllowed {
            mode: MigrationMode::PinnedToHost,
            ..
        }
    ));
    if let Migration::Scheduled { warnings, .. } = &plans[1] {
        assert!(warnings[0].contains("performance may drop"), "{warnings:?}");
    }
}

/// Regression (host maintenance warned for HP and pinned VMs but not for VMs whose mode is
/// manual-only, which the reference also warns about): a plain manual-only VM moved for
/// maintenance carries a warning, a migratable one none.
#[test]
fn regression_host_maintenance_warns_when_it_moves_a_manual_only_vm() {
    let p = default_policy();
    let c = migration_cluster(vec![
        running(vm("manual").migration(MigrationMode::ManualOnly), "src"),
        running(vm("free").migration(MigrationMode::Migratable), "src"),
    ]);
    let warnings: Vec<Vec<String>> = p
        .evacuate_host(&c, "src")
        .unwrap()
        .into_iter()
        .map(|m| match m {
            Migration::Scheduled { warnings, .. } => warnings,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(warnings.len(), 2);
    assert_eq!(warnings[0].len(), 1, "{warnings:?}");
    assert!(
        warnings[0][0].contains("VM manual allows manual migration only"),
        "{warnings:?}"
    );
    assert!(warnings[1].is_empty(), "{warnings:?}");
}

/// A running passthrough VM needs its current CPU's flags on the destination: `dst2` lacks
/// `avx512f` that the source host has.
#[test]
fn migrating_passthrough_vm_needs_its_source_cpu_flags() {
    let p = default_policy();
    let c = migration_cluster(vec![running(
        vm("pt").passthrough().migration(MigrationMode::Migratable),
        "src",
    )]);
    let m = p.migrate(&c, "pt", MigrationTrigger::Automatic).unwrap();
    let Migration::Scheduled { decision, .. } = &m else {
        panic!("{m:?}")
    };
    assert_eq!(
        decision.chosen.as_deref(),
        Some("dst1"),
        "{}",
        decision.summary
    );
    assert_eq!(
        rejection(decision, "dst2"),
        "cpu-level: missing_cpu_flags: missing flags of the VM's current CPU: avx512f"
    );
}

/// No destination holds the VM's topology (4 sockets): the least loaded, least pinned
/// suitable host wins and the migration says why.
#[test]
fn without_an_exact_fit_the_least_loaded_least_pinned_host_wins() {
    let p = default_policy();
    let s = snapshot()
        .host(hp_host("src"))
        .host(hp_host("busy").cpu_usage(70))
        .host(hp_host("pinned").cpu_usage(20).dedicated_cpus([0, 1, 2, 3]))
        .host(hp_host("free").cpu_usage(20).memory_mb(32_768))
        .vm(vm("hp")
            .vm_type(VmType::HighPerformance)
            .cpu(4, 1, 1)
            .memory_mb(1_024)
            .current_host("src"))
        .build();
    let c = cluster(s);
    let m = p.migrate(&c, "hp", MigrationTrigger::UserForced).unwrap();
    let Migration::Scheduled {
        decision, fallback, ..
    } = &m
    else {
        panic!("{m:?}")
    };
    assert_eq!(decision.chosen.as_deref(), Some("free"));
    let why = fallback.as_deref().unwrap();
    assert!(
        why.contains("no suitable host fits")
            && why.contains("chose free")
            && why.contains("of 3 suitable"),
        "{why}"
    );
    // With a host that fits exactly, the weights decide and there is no fallback.
    let s = snapshot()
        .host(hp_host("src"))
        .host(hp_host("free").cpu_usage(0))
        .host(host("big").cpu(4, 4, 2).memory_mb(65_536).cpu_usage(90))
        .vm(vm("hp")
            .vm_type(VmType::HighPerformance)
            .cpu(4, 1, 1)
            .memory_mb(1_024)
            .current_host("src"))
        .build();
    let c = cluster(s);
    let m = p.migrate(&c, "hp", MigrationTrigger::UserForced).unwrap();
    let Migration::Scheduled {
        decision, fallback, ..
    } = &m
    else {
        panic!("{m:?}")
    };
    assert_eq!(
        decision.chosen.as_deref(),
        Some("big"),
        "{}",
        decision.summary
    );
    assert!(fallback.is_none());
}

#[test]
fn migrating_an_unknown_or_stopped_vm_is_an_error_naming_it() {
    let p = default_policy();
    let c = cluster(snapshot().host(hp_host("h")).vm(vm("down")).build());
    let err = p
        .migrate(&c, "ghost", MigrationTrigger::UserForced)
        .unwrap_err();
    assert!(
        err.to_string().contains("\"ghost\": not in the cluster"),
        "{err}"
    );
    let err = p
        .migrate(&c, "down", MigrationTrigger::UserForced)
        .unwrap_err();
    assert!(err.to_string().contains("\"down\": not running"), "{err}");
}

#[test]
fn a_vm_with_dedicated_hosts_only_goes_to_them() {
    let c = cluster(
        snapshot()
            .hosts((0..4).map(|i| hp_host(&format!("h{i}"))))
            .build(),
    );
    let v = vm("v").dedicated_hosts(&["h2"]).build();
    let d = default_policy()
        .schedule(&c, &ScheduleRequest::new(v))
        .unwrap();
    assert_eq!(d.chosen.as_deref(), Some("h2"));
    assert!(matches!(
        &d.hosts[0].outcome,
        Outcome::NotCandidate { reason } if reason == "not one of the VM's dedicated hosts"
    ));
}
