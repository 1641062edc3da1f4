//! Pending resources through the engine: reservations made by `schedule`, seen by the next
//! decision (in wasm), released by the lifecycle, and never over-committing a host, even
//! with several threads scheduling at once.

use integration_tests::{device_filter_wasm, policy, runtime};
use policy_sdk::testing::{host, snapshot, vm, VmBuilder};
use policy_sdk::{AffinityPolarity, HostStatus, Snapshot, Vm, VmStatus};
use std::collections::{BTreeMap, BTreeSet};
use wasmsched::decision::Outcome;
use wasmsched::pending::{PendingRecord, PendingResource};
use wasmsched::plan::Reschedule;
use wasmsched::{Cluster, PlacementKind, Policy, ScheduleRequest};

fn cluster(s: Snapshot) -> Cluster {
    Cluster::new(s, "<test>").unwrap()
}

fn start(v: impl Into<Vm>) -> ScheduleRequest {
    ScheduleRequest::new(v.into())
}

/// 100 hosts whose memory holds exactly ten 1 GiB VMs each (guest memory + 64 MiB
/// overhead), with CPU to spare.
fn exact_fit_cluster() -> Snapshot {
    let room = 10 * (1_024 + 64);
    snapshot()
        .hosts((0..100).map(|i| host(&format!("h{i:03}")).cpu(2, 16, 2).memory_mb(room)))
        .build()
}

fn small_vm(i: usize) -> VmBuilder {
    vm(&format!("vm-{i:04}")).memory_mb(1_024)
}

/// Every host holds exactly ten pending VMs and is filled to its ceiling, not beyond.
fn assert_exactly_full(c: &Cluster) {
    let snapshot = c.snapshot();
    let mut seen = BTreeSet::new();
    for h in &snapshot.hosts {
        let pending = c.pending_on_host(&h.id);
        assert_eq!(
            pending, h.pending,
            "published aggregate of {} is stale",
            h.id
        );
        assert_eq!(pending.vms.len(), 10, "{}: {:?}", h.id, pending.vms);
        assert_eq!(
            pending.overcommit_memory_mb, h.memory.max_scheduling_mb,
            "{} over- or under-committed",
            h.id
        );
        for v in pending.vms {
            assert!(seen.insert(v.clone()), "{v} pending on two hosts");
        }
    }
    assert_eq!(seen.len(), 1_000);
}

#[test]
fn mass_start_of_1000_vms_on_100_exactly_fitting_hosts_never_overcommits() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(exact_fit_cluster());
    let requests: Vec<_> = (0..1_000).map(|i| start(small_vm(i))).collect();
    let decisions = policy.schedule_batch(&c, &requests);
    for (i, d) in decisions.iter().enumerate() {
        let d = d.as_ref().unwrap();
        assert!(d.chosen.is_some(), "VM {i} found no host: {}", d.summary);
        assert_eq!(
            d.reservation.as_ref().unwrap().host,
            *d.chosen.as_ref().unwrap()
        );
    }
    assert_exactly_full(&c);
    // The 1,001st VM fits nowhere, and every host says why.
    let d = policy.schedule(&c, &start(small_vm(1_000))).unwrap();
    assert_eq!(d.chosen, None);
    assert!(
        d.summary
            .contains("100 memory: not enough schedulable memory"),
        "{}",
        d.summary
    );
}

#[test]
fn four_threads_mass_starting_on_one_cluster_never_overcommit_a_host() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(exact_fit_cluster());
    let revalidated: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let (policy, c) = (&policy, &c);
                scope.spawn(move || {
                    let requests: Vec<_> = (t * 250..(t + 1) * 250)
                        .map(|i| start(small_vm(i)))
                        .collect();
                    let mut revalidated = 0;
                    for d in policy.schedule_batch(c, &requests) {
                        let d = d.unwrap();
                        assert!(d.chosen.is_some(), "{}: {}", d.vm, d.summary);
                        revalidated += usize::from(d.reservation.unwrap().revalidated);
                    }
                    revalidated
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_exactly_full(&c);
    eprintln!("{revalidated} of 1000 reservations were re-checked on a newer epoch");
}

#[test]
fn negative_affinity_mass_start_spreads_the_group_over_distinct_hosts() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let members: Vec<String> = (0..8).map(|i| format!("web-{i}")).collect();
    let ids: Vec<&str> = members.iter().map(String::as_str).collect();
    let mut group: Vec<&str> = ids.clone();
    group.push("web-extra");
    // One host is much idler: without pending VMs every member would pick it.
    let s = snapshot()
        .hosts((0..8).map(|i| {
            host(&format!("h{i}"))
                .memory_mb(65_536)
                .cpu_usage(if i == 3 { 1 } else { 60 })
        }))
        .affinity_group("web-spread", AffinityPolarity::Negative, true, &group)
        .build();
    let c = cluster(s);
    let requests: Vec<_> = ids.iter().map(|id| start(vm(id))).collect();

    // The seed's bug: decisions that do not see each other all choose the idle host.
    let view = c.view();
    let blind: BTreeSet<String> = requests
        .iter()
        .map(|r| policy.evaluate(&view, r).unwrap().chosen.unwrap())
        .collect();
    assert_eq!(blind, BTreeSet::from(["h3".to_string()]));
    drop(view);

    let chosen: BTreeSet<String> = policy
        .schedule_batch(&c, &requests)
        .into_iter()
        .map(|d| d.unwrap().chosen.unwrap())
        .collect();
    assert_eq!(chosen.len(), 8, "{chosen:?}");
    // A ninth member finds every host taken by a pending member.
    let d = policy.schedule(&c, &start(vm("web-extra"))).unwrap();
    assert_eq!(d.chosen, None, "{d}");
    for h in &d.hosts {
        assert!(
            matches!(&h.outcome, Outcome::Rejected { unit, code, detail }
                if &**unit == "vm-affinity" && code == "negative_affinity" && detail.contains("pending here")),
            "{h:?}"
        );
    }
}

#[test]
fn negative_affinity_mass_start_from_four_threads_still_spreads() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let members: Vec<String> = (0..16).map(|i| format!("db-{i:02}")).collect();
    let ids: Vec<&str> = members.iter().map(String::as_str).collect();
    let c = cluster(
        snapshot()
            .hosts((0..16).map(|i| host(&format!("h{i:02}")).memory_mb(65_536)))
            .affinity_group("db-spread", AffinityPolarity::Negative, true, &ids)
            .build(),
    );
    let chosen: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = ids
            .chunks(4)
            .map(|chunk| {
                let (policy, c) = (&policy, &c);
                scope.spawn(move || {
                    let requests: Vec<_> = chunk.iter().map(|id| start(vm(id))).collect();
                    policy
                        .schedule_batch(c, &requests)
                        .into_iter()
                        .map(|d| d.unwrap().chosen.unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let distinct: BTreeSet<&String> = chosen.iter().collect();
    assert_eq!(distinct.len(), 16, "{chosen:?}");
}

#[test]
fn a_custom_kind_is_aggregated_and_filtered_on_by_a_wasm_unit() {
    let rt = runtime();
    rt.load_file(&device_filter_wasm()).unwrap();
    let p = policy(
        &rt,
        "name = \"gpus\"\n[[filters]]\nunit = \"memory\"\n[[filters]]\nunit = \"devices\"\n\
         [filters.params]\nkind = \"gpu\"\n[[weights]]\nunit = \"cpu-load\"\n",
    );
    let c = cluster(
        snapshot()
            .host(host("two").custom_free("gpu", 2).cpu_usage(10))
            .host(host("one").custom_free("gpu", 1).cpu_usage(20))
            .host(host("none").cpu_usage(0))
            .build(),
    );
    let gpu_vm = |id: &str| start(vm(id).needs("gpu", 1));
    let mut chosen = Vec::new();
    for id in ["g1", "g2", "g3"] {
        let d = p.schedule(&c, &gpu_vm(id)).unwrap();
        chosen.push(d.chosen.clone().unwrap_or_else(|| panic!("{d}")));
    }
    chosen.sort();
    assert_eq!(chosen, ["one", "two", "two"]);
    assert_eq!(c.pending_on_host("two").custom_of("gpu"), 2);
    assert_eq!(c.pending_of_vm("g1").custom_of("gpu"), 1);

    let d = p.schedule(&c, &gpu_vm("g4")).unwrap();
    assert_eq!(d.chosen, None);
    match &d.hosts[0].outcome {
        Outcome::Rejected { unit, code, detail } => {
            assert_eq!((&**unit, code.as_str()), ("devices", "not_enough_devices"));
            assert_eq!(detail, "0 gpu available (2 free - 2 pending), 1 needed");
        }
        other => panic!("{other:?}"),
    }
    // A VM without GPUs still goes anywhere; releasing one GPU VM frees its GPU.
    assert!(p
        .schedule(&c, &start(vm("plain")))
        .unwrap()
        .chosen
        .is_some());
    c.vm_failed("g1").unwrap();
    assert!(p.schedule(&c, &gpu_vm("g4")).unwrap().chosen.is_some());
}

#[test]
fn vm_started_moves_pending_into_host_usage_and_a_second_start_changes_nothing() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(snapshot().host(host("h").cpu(1, 4, 1)).build());
    let d = policy
        .schedule(&c, &start(vm("v").memory_mb(2_048).vcpus(2)))
        .unwrap();
    let reserved = d.reservation.unwrap();
    assert_eq!(
        reserved.resources,
        [
            PendingResource::Vm,
            PendingResource::CpuCores { count: 2 },
            PendingResource::Memory { mb: 64 },
            PendingResource::OvercommitMemory { mb: 2_112 },
            // 10% per vCPU on a 4-core host: 2 x 10 / 4 = 5%.
            PendingResource::CpuLoad { percent: 5 },
        ]
    );
    let pending = c.pending_on_host("h");
    assert_eq!(
        (pending.cpu_cores, pending.overcommit_memory_mb),
        (2, 2_112)
    );

    let release = c.vm_started("v").unwrap();
    assert_eq!(release.records.len(), 5);
    let s = c.snapshot();
    let h = &s.hosts[0];
    assert!(h.pending.is_empty(), "{:?}", h.pending);
    assert_eq!(h.memory.committed_mb, 2_112);
    assert_eq!(h.memory.free_mb, 16_384 - 2_112);
    assert_eq!((h.running_vms, h.cpu_usage_percent), (1, 5));
    let v = s.vms.iter().find(|v| v.id == "v").unwrap();
    assert_eq!(
        (v.status, v.current_host.as_deref()),
        (VmStatus::Up, Some("h"))
    );

    let epoch = c.epoch();
    let again = c.vm_started("v").unwrap();
    assert!(again.records.is_empty() && again.epoch.is_none());
    assert_eq!(c.epoch(), epoch, "a second start publishes nothing");
}

#[test]
fn a_failed_start_is_rescheduled_on_untried_hosts_until_attempts_run_out() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(
        snapshot()
            .hosts((0..4).map(|i| host(&format!("h{i}")).cpu_usage(10 * i)))
            .build(),
    );
    let first = policy.schedule(&c, &start(vm("v"))).unwrap();
    let mut tried = vec![first.chosen.unwrap()];
    for attempt in 2..=3 {
        let failed = policy.vm_failed(&c, "v").unwrap();
        assert_eq!(failed.placement.as_ref().map(|p| &p.host), tried.last());
        assert_eq!(failed.release.records.len(), 5, "attempt {attempt}");
        let Reschedule::Decided {
            decision: d,
            avoided,
        } = failed.reschedule
        else {
            panic!("attempt {attempt}: {:?}", failed.reschedule)
        };
        assert_eq!(avoided, tried);
        let host = d.chosen.clone().unwrap();
        assert!(!tried.contains(&host), "{host} was tried already");
        for t in &tried {
            let outcome = &d.hosts.iter().find(|h| &h.host == t).unwrap().outcome;
            assert_eq!(
                outcome,
                &Outcome::NotCandidate {
                    reason: "blacklisted".into()
                }
            );
        }
        assert_eq!(c.pending_on_host(&host).vms, ["v"]);
        tried.push(host);
    }
    let failed = policy.vm_failed(&c, "v").unwrap();
    match failed.reschedule {
        Reschedule::GaveUp { tried: gave_up } => assert_eq!(gave_up, tried),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.pending_record_count(), 0);
    // Failing it again is a no-op.
    let again = policy.vm_failed(&c, "v").unwrap();
    assert!(matches!(again.reschedule, Reschedule::NotPlaced));
    assert!(again.release.records.is_empty());
}

#[test]
fn a_finished_migration_moves_usage_and_a_failed_one_leaves_the_vm_on_its_source() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let running = vm("m")
        .memory_mb(4_096)
        .vcpus(2)
        .cpu_usage(40)
        .current_host("src");
    let c = cluster(
        snapshot()
            .host(
                host("src")
                    .cpu(1, 4, 1)
                    .committed_mb(4_160)
                    .running_vms(1)
                    .cpu_usage(20),
            )
            .host(host("dst").cpu(1, 4, 1))
            .vm(running.clone())
            .build(),
    );
    let request = ScheduleRequest::migration(running.clone().build()).unwrap();
    let d = policy.schedule(&c, &request).unwrap();
    assert_eq!(d.chosen.as_deref(), Some("dst"));
    // A migrating VM's pending load is its current usage: 40% x 2 vCPUs / 4 cores.
    assert!(d
        .reservation
        .unwrap()
        .resources
        .contains(&PendingResource::CpuLoad { percent: 20 }));
    c.migration_failed("m").unwrap();
    assert!(c.pending_on_host("dst").is_empty());
    let v = c.snapshot().vms[0].clone();
    assert_eq!(v.current_host.as_deref(), Some("src"));

    policy.schedule(&c, &request).unwrap();
    c.migration_finished("m").unwrap();
    let s = c.snapshot();
    let (src, dst) = (&s.hosts[0], &s.hosts[1]);
    assert_eq!(
        (
            src.running_vms,
            src.memory.committed_mb,
            src.cpu_usage_percent
        ),
        (0, 0, 0)
    );
    assert_eq!(
        (
            dst.running_vms,
            dst.memory.committed_mb,
            dst.cpu_usage_percent
        ),
        (1, 4_160, 20)
    );
    assert_eq!(s.vms[0].current_host.as_deref(), Some("dst"));
    assert!(dst.pending.is_empty());
}

#[test]
fn removing_a_host_releases_its_records_and_hands_back_its_pending_vms() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(
        snapshot()
            .host(host("a").cpu_usage(0))
            .host(host("b").cpu_usage(50))
            .vm(vm("old").current_host("a"))
            .build(),
    );
    let d = policy.schedule(&c, &start(vm("new"))).unwrap();
    assert_eq!(d.chosen.as_deref(), Some("a"));
    c.reserve(&vm("on-b").build(), "b", PlacementKind::Start)
        .unwrap();
    let before_b = c.pending_on_host("b");
    assert_eq!(before_b.vms, ["on-b"]);

    let removed = c.remove_host("a").unwrap();
    assert!(removed.displaced.iter().any(|p| p.vm.id == "new"));
    assert_eq!(removed.stopped, ["old"]);
    assert!(c.pending_on_host("a").is_empty());
    assert_eq!(
        c.pending_on_host("b"),
        before_b,
        "other hosts keep their records"
    );
    let s = c.snapshot();
    assert_eq!(s.hosts.len(), 1);
    assert_eq!(s.hosts[0].pending, before_b);
    assert_eq!(s.vms[0].current_host, None);
    // Removing it again, and clearing unknown VMs, change nothing.
    let epoch = c.epoch();
    assert!(c.remove_host("a").unwrap().release.records.is_empty());
    assert!(c.release_vm("ghost").unwrap().records.is_empty());
    assert!(c.vm_started("ghost").unwrap().records.is_empty());
    assert!(c.migration_failed("ghost").unwrap().records.is_empty());
    assert_eq!(c.epoch(), epoch);
}

#[test]
fn a_host_going_down_fails_and_reschedules_the_vms_placed_on_it() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(
        snapshot()
            .host(host("a").cpu_usage(0))
            .host(host("b").cpu_usage(50))
            .build(),
    );
    for id in ["x", "y"] {
        assert_eq!(
            policy
                .schedule(&c, &start(vm(id)))
                .unwrap()
                .chosen
                .as_deref(),
            Some("a")
        );
    }
    let failed = policy.host_down(&c, "a", HostStatus::Down).unwrap();
    assert_eq!(failed.len(), 2);
    for f in &failed {
        match &f.reschedule {
            Reschedule::Decided { decision, .. } => {
                assert_eq!(decision.chosen.as_deref(), Some("b"))
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(c.pending_on_host("a").is_empty());
    assert_eq!(c.pending_on_host("b").vms, ["x", "y"]);
}

#[test]
fn pending_aggregates_belong_to_the_manager() {
    // A hand-written aggregate in a snapshot is refused, naming the field.
    let s = snapshot()
        .host(host("a"))
        .host(host("b").pending_memory_mb(5))
        .build();
    let err = Cluster::new(s, "c.json").unwrap_err().to_string();
    assert!(err.starts_with("c.json: hosts[1].pending: "), "{err}");
    // VMs waiting for launch in a file become pending records on their host.
    let s = snapshot()
        .host(host("a"))
        .vm(vm("w")
            .memory_mb(512)
            .current_host("a")
            .status(VmStatus::WaitForLaunch))
        .build();
    let c = cluster(s);
    assert_eq!(c.pending_on_host("a").vms, ["w"]);
    assert_eq!(c.snapshot().hosts[0].pending.overcommit_memory_mb, 576);
    // Direct aggregate changes are refused; a replaced host keeps the records' aggregate.
    let err = c
        .apply(vec![policy_sdk::wire::sync::Change::SetPending {
            host: 0,
            pending: Default::default(),
        }])
        .unwrap_err()
        .to_string();
    assert!(err.contains("computed from pending records"), "{err}");
    c.apply(vec![policy_sdk::wire::sync::Change::ReplaceHost {
        host: 0,
        value: host("a").cpu_usage(70).build(),
    }])
    .unwrap();
    let h = &c.snapshot().hosts[0];
    assert_eq!(
        (h.cpu_usage_percent, h.pending.vms.clone()),
        (70, vec!["w".to_string()])
    );
}

#[test]
fn negative_or_overflowing_amounts_are_errors_naming_the_field() {
    // Negative: refused when the file is read.
    let err = wasmsched::parse_document::<Vm>(
        r#"{"id": "v", "custom_resources": [{"kind": "gpu", "amount": -1}]}"#,
        wasmsched::Format::Json,
        "vm.json",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("custom_resources[0].amount"), "{err}");
    // Too large: refused by the request check, before any decision.
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(snapshot().host(host("a")).build());
    let huge = vm("v").needs("gpu", 1).needs("vf", u64::MAX).build();
    let err = policy.schedule(&c, &start(huge)).unwrap_err().to_string();
    assert!(err.contains("custom_resources[1].amount"), "{err}");
    // Records whose sum overflows on a host: refused whole, nothing recorded.
    let record = |vm: &str| PendingRecord {
        host: "a".into(),
        vm: vm.into(),
        resource: PendingResource::CpuCores {
            count: u32::MAX - 1,
        },
    };
    let err = c
        .add_pending(vec![record("x"), record("y")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cpu_cores.count: the host's total overflows"),
        "{err}"
    );
    assert_eq!(c.pending_record_count(), 0);
    let err = c.add_pending(vec![PendingRecord {
        host: "nowhere".into(),
        ..record("x")
    }]);
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("unknown host \"nowhere\""));
}

#[test]
fn reserved_memory_is_per_host_exact_after_mixed_lifecycle_events() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(
        snapshot()
            .hosts((0..5).map(|i| host(&format!("h{i}")).memory_mb(65_536)))
            .build(),
    );
    let sizes: BTreeMap<String, u64> = (0..30)
        .map(|i| (format!("v{i:02}"), 512 * (1 + i % 4)))
        .collect();
    for (id, mb) in &sizes {
        policy.schedule(&c, &start(vm(id).memory_mb(*mb))).unwrap();
    }
    for (n, id) in sizes.keys().enumerate() {
        match n % 3 {
            0 => drop(c.vm_started(id).unwrap()),
            1 => drop(c.vm_failed(id).unwrap()),
            _ => {}
        }
        // Releasing twice never disturbs the rest.
        c.release_vm(&sizes.keys().nth(n / 2).unwrap().clone())
            .unwrap();
    }
    let s = c.snapshot();
    for h in &s.hosts {
        let expected: u64 = c
            .pending_records_on_host(&h.id)
            .iter()
            .filter_map(|r| match r.resource {
                PendingResource::OvercommitMemory { mb } => Some(mb),
                _ => None,
            })
            .sum();
        assert_eq!(h.pending.overcommit_memory_mb, expected, "{}", h.id);
        let from_vms: u64 = h.pending.vms.iter().map(|v| sizes[v] + 64).sum();
        assert_eq!(expected, from_vms, "{}", h.id);
    }
}
