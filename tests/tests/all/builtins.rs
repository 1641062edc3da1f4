//! The builtin modules, compiled to wasm by the build, driven through the runtime.

use integration_tests::{both_backends, policy, runtime};
use policy_sdk::testing::{host, snapshot, vm, XorShift};
use policy_sdk::{AffinityPolarity, HostStatus, Snapshot, UnitKind};
use wasmsched::decision::Outcome;
use wasmsched::{Cluster, Detail, PlacementKind, Policy, ScheduleRequest};

fn cluster(s: Snapshot) -> Cluster {
    Cluster::new(s, "<test>").unwrap()
}

#[test]
fn builtins_are_embedded_and_registered_by_name() {
    let rt = runtime();
    let units = rt.units();
    let kinds: Vec<(&str, UnitKind)> = units.iter().map(|u| (u.name.as_str(), u.kind)).collect();
    assert_eq!(
        kinds,
        [
            ("cpu", UnitKind::Filter),
            ("cpu-and-numa-pinning", UnitKind::Weight),
            ("cpu-level", UnitKind::Filter),
            ("cpu-load", UnitKind::Weight),
            ("cpu-pinning", UnitKind::Filter),
            ("evenly-distributed", UnitKind::Balance),
            ("free-memory", UnitKind::Weight),
            ("high-performance-cpu", UnitKind::Weight),
            ("hugepages", UnitKind::Filter),
            ("memory", UnitKind::Filter),
            ("numa", UnitKind::Filter),
            ("power-saving", UnitKind::Balance),
            ("power-saving-cpu", UnitKind::Weight),
            ("power-saving-memory", UnitKind::Weight),
            ("vm-affinity", UnitKind::Filter),
            ("vm-affinity-weight", UnitKind::Weight),
        ]
    );
    for u in &units {
        let module = match u.name.as_str() {
            n if n.starts_with("power-saving") || n == "evenly-distributed" => "balance",
            _ => "scheduling",
        };
        assert_eq!(
            (u.file.as_str(), u.module.as_str()),
            (format!("builtin:{module}.wasm").as_str(), module),
            "{}",
            u.name
        );
    }
    assert!(rt.modules().iter().all(|m| !m.is_native()));
}

#[test]
fn decision_explains_rejections_per_host_and_in_the_summary() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(
        snapshot()
            .host(host("small-1").memory_mb(2_048))
            .host(host("small-2").memory_mb(2_048))
            .host(host("narrow").memory_mb(65_536).cpu(1, 2, 1))
            .host(
                host("down")
                    .memory_mb(65_536)
                    .status(HostStatus::Maintenance),
            )
            .build(),
    );
    let d = policy
        .schedule(
            &c,
            &ScheduleRequest::new(vm("big").memory_mb(8_192).vcpus(4).build()),
        )
        .unwrap();
    assert_eq!(d.chosen, None);
    assert_eq!(
        d.summary,
        "0/4 hosts available: 2 memory: not enough memory, 1 cpu: not enough cores, 1 host is maintenance"
    );
    match &d.hosts[0].outcome {
        Outcome::Rejected { unit, code, detail } => {
            assert_eq!((&**unit, code.as_str()), ("memory", "not_enough_memory"));
            assert!(detail.contains("8256 MiB needed"), "{detail}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn rank_selector_prefers_idle_roomy_hosts_and_reports_each_weight() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(
        snapshot()
            .host(host("busy").memory_mb(65_536).cpu_usage(90))
            .host(host("idle").memory_mb(65_536).cpu_usage(5))
            .host(
                host("full")
                    .memory_mb(65_536)
                    .committed_mb(60_000)
                    .cpu_usage(5),
            )
            .build(),
    );
    let d = policy
        .schedule(&c, &ScheduleRequest::new(vm("v").build()))
        .unwrap();
    assert_eq!(d.chosen.as_deref(), Some("idle"));
    let idle = &d.hosts[1];
    let weights: Vec<(&str, i64, i64, f64)> = idle
        .weights
        .iter()
        .map(|w| (&*w.unit, w.raw, w.factor, w.contribution))
        .collect();
    // cpu-load: idle and full tie for best (rank 1 of 0..1), x2; free-memory: idle ties busy for best (rank 1), x1.
    assert_eq!(
        weights,
        [
            ("cpu-load", 5, 2, 2.0),
            ("free-memory", -65_536, 1, 1.0),
            ("vm-affinity-weight", 0, 1, 0.0),
            // A plain VM: the high-performance weights score every host alike.
            ("high-performance-cpu", 1, 4, 0.0),
            ("cpu-and-numa-pinning", 1, 5, 0.0)
        ]
    );
    assert_eq!(idle.score, Some(3.0));
}

#[test]
fn ties_are_broken_by_host_id_so_decisions_are_deterministic() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(
        snapshot()
            .host(host("h-c"))
            .host(host("h-a"))
            .host(host("h-b"))
            .build(),
    );
    let request = ScheduleRequest::new(vm("v").build());
    let first = policy.evaluate(&c.view(), &request).unwrap();
    assert_eq!(first.chosen.as_deref(), Some("h-a"));
    for _ in 0..5 {
        let again = policy.evaluate(&c.view(), &request).unwrap();
        assert_eq!(
            serde_json::to_value(&again).unwrap(),
            serde_json::to_value(&first).unwrap()
        );
    }
}

#[test]
fn blacklist_whitelist_and_dedicated_hosts_limit_the_candidates() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(
        snapshot()
            .host(host("a"))
            .host(host("b"))
            .host(host("c"))
            .build(),
    );
    let v = vm("v").build();
    // Each list alone too: the candidate pass reads host ids only when some list is given.
    let cases = [
        (
            ScheduleRequest::new(v.clone())
                .blacklist(["a"])
                .whitelist(["a", "c"]),
            "c",
            "1/3 hosts available, chose c; not available: 1 blacklisted, 1 not in whitelist",
        ),
        (
            ScheduleRequest::new(v.clone()).whitelist(["b"]),
            "b",
            "1/3 hosts available, chose b; not available: 2 not in whitelist",
        ),
        (
            ScheduleRequest::new(v.clone()).blacklist(["a", "b"]),
            "c",
            "1/3 hosts available, chose c; not available: 2 blacklisted",
        ),
        (
            ScheduleRequest::new(vm("v").dedicated_hosts(&["a"]).build()),
            "a",
            "1/3 hosts available, chose a; not available: 2 not one of the VM's dedicated hosts",
        ),
    ];
    for (request, chosen, summary) in cases {
        let d = policy.schedule(&c, &request).unwrap();
        assert_eq!(d.chosen.as_deref(), Some(chosen), "{summary}");
        assert_eq!(d.summary, summary);
    }
}

#[test]
fn selectors_weigh_the_same_penalties_differently() {
    let rt = runtime();
    // cpu-load x1: a=10, b=20, c=90. free-memory x1: a has least, c most.
    let s = snapshot()
        .host(host("a").memory_mb(20_000).cpu_usage(10))
        .host(host("b").memory_mb(21_000).cpu_usage(20))
        .host(host("c").memory_mb(200_000).cpu_usage(90))
        .build();
    let c = cluster(s);
    let pick = |selector: &str| {
        let p = policy(
            &rt,
            &format!(
                "name = \"t\"\nselector = \"{selector}\"\n[[weights]]\nunit = \"cpu-load\"\n[[weights]]\nunit = \"free-memory\"\n"
            ),
        );
        p.schedule(&c, &ScheduleRequest::new(vm("v").build()))
            .unwrap()
            .chosen
            .unwrap()
    };
    // rank: a = 2+0, b = 1+1, c = 0+2 -> tie broken by id: a.
    assert_eq!(pick("rank"), "a");
    // normalized: a = 0 + 1, b = 0.125 + 0.994, c = 1 + 0 -> a.
    assert_eq!(pick("normalized_sum"), "a");
    // raw: a = 10 - 20000, b = 20 - 21000, c = 90 - 200000 -> c.
    assert_eq!(pick("raw_sum"), "c");
}

#[test]
fn pending_aggregates_reach_the_wasm_units_through_delta_sync() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(
        snapshot()
            .host(host("a").memory_mb(10_000))
            .host(host("b").memory_mb(9_000))
            .build(),
    );
    let request = ScheduleRequest::new(vm("v").memory_mb(6_000).build());
    assert_eq!(
        policy.schedule(&c, &request).unwrap().chosen.as_deref(),
        Some("a")
    );
    let module = rt.modules().into_iter().next().unwrap();
    let before = module.stats();

    // The first decision reserved 6,000 + 64 MiB on "a": the next VM no longer fits there.
    let request = ScheduleRequest::new(vm("w").memory_mb(6_000).build());
    let d = policy.schedule(&c, &request).unwrap();
    assert_eq!(d.chosen.as_deref(), Some("b"), "{d}");
    assert!(
        matches!(&d.hosts[0].outcome, Outcome::Rejected { code, .. } if code == "not_enough_schedulable_memory"),
        "{d}"
    );
    let after = module.stats();
    assert_eq!(
        after.full_syncs, before.full_syncs,
        "a changed host must not resend the snapshot"
    );
    assert!(after.delta_syncs > before.delta_syncs);
}

#[test]
fn instances_catch_up_across_many_epochs_by_deltas() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(
        snapshot()
            .hosts((0..20).map(|i| host(&format!("h{i:02}")).cpu_usage(50)))
            .build(),
    );
    let request = ScheduleRequest::new(vm("v").build());
    policy.schedule(&c, &request).unwrap();
    // Make each host in turn the idlest; the guest must see every change.
    for i in 0..20 {
        c.apply(vec![policy_sdk::wire::sync::Change::ReplaceHost {
            host: i,
            value: host(&format!("h{i:02}")).cpu_usage(1).build(),
        }])
        .unwrap();
        if i > 0 {
            c.apply(vec![policy_sdk::wire::sync::Change::ReplaceHost {
                host: i - 1,
                value: host(&format!("h{:02}", i - 1)).cpu_usage(99).build(),
            }])
            .unwrap();
        }
        let d = policy.schedule(&c, &request).unwrap();
        assert_eq!(d.chosen.as_deref(), Some(format!("h{i:02}").as_str()));
    }
}

#[test]
fn the_same_units_compiled_natively_decide_exactly_like_wasm() {
    let wasm = runtime();
    let native = wasmsched_testkit::native::runtime();
    let wasm_policy = Policy::builtin_default(&wasm).unwrap();
    let native_policy = Policy::builtin_default(&native).unwrap();
    // A deterministic pseudo-random cluster.
    let mut rng = XorShift::new(0x2545_f491_4f6c_dd1d);
    let mut next = move |bound: u64| rng.below(bound);
    for round in 0..10 {
        let s = snapshot()
            .hosts((0..50).map(|i| {
                host(&format!("h{i}"))
                    .cpu(1 + next(2) as u32, 2 + next(8) as u32, 1 + next(2) as u32)
                    .memory_mb(4_096 + next(60_000))
                    .committed_mb(next(4_000))
                    .cpu_usage(next(100) as u32)
            }))
            .affinity_group(
                "apart",
                AffinityPolarity::Negative,
                next(2) == 0,
                &["p0", "p1", "p2", "request"],
            )
            .affinity_group(
                "together",
                AffinityPolarity::Positive,
                false,
                &["p3", "request"],
            )
            .build();
        let c = Cluster::new(s, "<random>").unwrap();
        for p in 0..6 {
            let pending = vm(&format!("p{p}")).memory_mb(next(2_000)).build();
            c.reserve(&pending, &format!("h{}", next(50)), PlacementKind::Start)
                .unwrap();
        }
        let request = ScheduleRequest::new(
            vm("request")
                .memory_mb(1_000 + next(30_000))
                .vcpus(1 + next(12) as u32)
                .build(),
        );
        let view = c.view();
        let a = serde_json::to_value(wasm_policy.evaluate(&view, &request).unwrap()).unwrap();
        let b = serde_json::to_value(native_policy.evaluate(&view, &request).unwrap()).unwrap();
        assert_eq!(a, b, "round {round}");
    }
}

/// Clusters large enough to be sent to the guests in parts (ABI 10: `FullBegin`,
/// `FullHosts`..., `FullEnd`), decoded into the snapshot each guest held before (a smaller
/// one, a larger one): the wasm units decide every VM kind exactly as the native ones, and
/// two threads that need the same new cluster at once (one encoding the parts, both
/// taking them) do too.
#[test]
fn snapshots_sent_in_parts_decide_exactly_like_native_units() {
    use wasmsched_testkit::synth::{self, VmKind};
    let [(_, wasm), (_, native)] = both_backends();
    let wasm_policy = Policy::builtin_default(&wasm).unwrap();
    let native_policy = Policy::builtin_default(&native).unwrap();
    let decide = |policy: &Policy, view: &wasmsched::ClusterView, kind: VmKind| {
        let request = ScheduleRequest::new(kind.vm("probe")).detail(Detail::Full);
        serde_json::to_value(policy.evaluate(view, &request).unwrap()).unwrap()
    };
    let full_syncs = || {
        wasm.modules()
            .iter()
            .map(|m| m.stats().full_syncs)
            .sum::<u64>()
    };
    for hosts in [4_500, 300, 5_200] {
        let (cluster, _) = synth::realistic_cluster(hosts).unwrap();
        let view = cluster.view();
        let before = full_syncs();
        for kind in VmKind::ALL {
            let (a, b) = (
                decide(&wasm_policy, &view, kind),
                decide(&native_policy, &view, kind),
            );
            assert_eq!(a, b, "{hosts} hosts, {kind:?}");
        }
        assert_eq!(full_syncs() - before, 1, "{hosts} hosts: one full snapshot");
    }
    let (cluster, _) = synth::realistic_cluster(4_800).unwrap();
    let view = cluster.view();
    let want = decide(&native_policy, &view, VmKind::Plain);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| decide(&wasm_policy, &view, VmKind::Plain)))
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), want, "two threads on a new cluster");
        }
    });
}

#[test]
fn runtime_is_shared_across_threads_and_evaluations_run_in_parallel() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(
        snapshot()
            .hosts((0..100).map(|i| host(&format!("h{i:03}")).cpu_usage(i)))
            .build(),
    );
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (policy, c) = (&policy, &c);
            scope.spawn(move || {
                for i in 0..25 {
                    let d = policy
                        .evaluate(
                            &c.view(),
                            &ScheduleRequest::new(vm(&format!("v{t}-{i}")).build()),
                        )
                        .unwrap();
                    assert_eq!(d.chosen.as_deref(), Some("h000"));
                }
            });
        }
    });
}

/// The full and the summary decision of `request` on the cluster's current view, checked
/// to be the same decision: chosen host, summary line, hosts available. `what` names the
/// case in failures.
fn decide_full_and_summary(
    policy: &Policy,
    c: &Cluster,
    request: &ScheduleRequest,
    what: &dyn std::fmt::Display,
) -> (wasmsched::Decision, wasmsched::Decision) {
    let full = policy.evaluate(&c.view(), request).unwrap();
    let summary = policy
        .evaluate(&c.view(), &request.clone().detail(Detail::Summary))
        .unwrap();
    assert_eq!(summary.chosen, full.chosen, "{what}");
    assert_eq!(summary.summary, full.summary, "{what}");
    assert_eq!(summary.available, full.available, "{what}");
    (full, summary)
}

/// A summary decision is the same decision as a full one (host, summary line, counts) and
/// lists the chosen host and the best runners-up with the scores the full one gives them.
#[test]
fn summary_detail_decides_like_full_and_lists_the_best_hosts() {
    let mut rng = XorShift::new(99);
    let s = snapshot()
        .hosts((0..60).map(|i| {
            let h = host(&format!("h{i:02}"))
                .memory_mb(2_048 + rng.below(16) * 1_024)
                .cpu_usage(rng.below(100) as u32);
            if i % 7 == 0 {
                h.status(HostStatus::Maintenance)
            } else {
                h
            }
        }))
        .build();
    let c = cluster(s);
    let policy = Policy::builtin_default(&runtime()).unwrap();
    for memory in [1_024, 6_144, 12_288, 100_000] {
        let request = ScheduleRequest::new(vm("v").memory_mb(memory).build());
        let (full, summary) = decide_full_and_summary(&policy, &c, &request, &memory);
        assert_eq!(full.hosts.len(), 60);
        assert_eq!(
            summary.hosts.len(),
            full.available.min(Detail::SUMMARY_HOSTS)
        );
        if let Some(chosen) = &full.chosen {
            assert_eq!(&summary.hosts[0].host, chosen);
            assert_eq!(summary.hosts[0].outcome, Outcome::Chosen);
        }
        for pair in summary.hosts.windows(2) {
            assert!(pair[0].score >= pair[1].score, "best first: {pair:?}");
        }
        for h in &summary.hosts {
            let same = full.hosts.iter().find(|f| f.host == h.host).unwrap();
            assert_eq!(h.score, same.score, "{}", h.host);
            assert_eq!(h.weights.len(), same.weights.len());
        }
        // No listed host is worse than one left out.
        if let Some(last) = summary.hosts.last() {
            let listed: Vec<&str> = summary.hosts.iter().map(|h| h.host.as_str()).collect();
            for f in &full.hosts {
                if f.score.is_some() && !listed.contains(&f.host.as_str()) {
                    assert!(f.score <= last.score, "{} left out", f.host);
                }
            }
        }
    }
}

/// Summary decisions ask the units for no reject details (ABI 8: the builtins then skip
/// writing them): as a synthetic cluster fills up with the benchmark's VM mix, every summary
/// decision chooses, counts and sums up like the full one of the same VM on both backends,
/// and the full one still names every rejection's detail.
#[test]
fn summary_decisions_without_details_turn_away_the_same_hosts_as_full_ones() {
    use wasmsched_testkit::synth;
    for (backend, rt) in &both_backends() {
        let policy = Policy::builtin_default(rt).unwrap();
        let (c, _) = synth::realistic_cluster(60).unwrap();
        let mut codes = std::collections::BTreeSet::new();
        for (i, vm) in synth::vm_mix(600, "fill").into_iter().enumerate() {
            let request = ScheduleRequest::new(vm);
            if i % 25 == 0 {
                let what = format!("{backend}, VM {i}");
                let (full, _) = decide_full_and_summary(&policy, &c, &request, &what);
                for h in &full.hosts {
                    if let Outcome::Rejected { unit, code, detail } = &h.outcome {
                        assert!(!detail.is_empty(), "{backend}, VM {i}: {unit}: {code}");
                        codes.insert(format!("{unit}: {code}"));
                    }
                }
            }
            let _ = policy
                .schedule(&c, &request.detail(Detail::Summary))
                .unwrap();
        }
        // The cluster filled up enough for several filters to turn hosts away.
        assert!(codes.len() >= 3, "{backend}: {codes:?}");
    }
}

/// Regression (quadratic work in the `cpu` filter over a host's `dedicated_cpus`): a host
/// listing 40,000 dedicated ids (32 distinct pCPUs, repeated) is decided in wasm under the
/// default 1 s call deadline. Before, each id was searched for among the ids before it
/// (~800 million comparisons) and the request failed at the deadline.
#[test]
fn regression_cpu_filter_decides_a_host_with_40k_dedicated_ids_within_the_deadline() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(
        snapshot()
            .host(
                host("crowded")
                    .cpu(2, 32, 2)
                    .memory_mb(262_144)
                    .dedicated_cpus((0..40_000).map(|i| i % 32)),
            )
            .build(),
    );
    let decision = policy
        .schedule(&c, &ScheduleRequest::new(vm("v").vcpus(2).build()))
        .unwrap();
    assert_eq!(decision.chosen.as_deref(), Some("crowded"), "{decision}");
    // 64 cores less 32 dedicated leave 32: a VM of 33 vCPUs does not fit.
    let big = policy
        .evaluate(
            &c.view(),
            &ScheduleRequest::new(vm("big").vcpus(33).build()),
        )
        .unwrap();
    assert!(
        big.summary.contains("cpu: not enough cores"),
        "{}",
        big.summary
    );
}
