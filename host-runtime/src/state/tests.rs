//! State transitions of a cluster, without the engine or a policy: reservations and what
//! each lifecycle report releases, the usage it accounts, the attempt history, the change
//! log deltas are cut from, memory-change records, and the batches `apply` refuses.

use super::*;
use policy_sdk::model::index::SnapshotIndex;
use policy_sdk::testing::{host, snapshot, vm};
use policy_sdk::wire::sync::Change;
use policy_sdk::{HostIndex, HostStatus, HostUsage, MemoryDevice, Snapshot, Vm, VmStatus};

/// Three idle hosts of 64 GiB (`a`, `b`, `c`) and a running VM `run` on `c`.
fn cluster() -> Cluster {
    Cluster::new(base(), "<test>").unwrap()
}

fn base() -> Snapshot {
    snapshot()
        .host(host("a").memory_mb(65_536))
        .host(host("b").memory_mb(65_536))
        .host(host("c").memory_mb(65_536).running_vms(1))
        .vm(vm("run")
            .memory_mb(4_096)
            .vcpus(2)
            .current_host("c")
            .build())
        .build()
}

fn small(id: &str) -> Vm {
    vm(id).memory_mb(2_048).vcpus(2).build()
}

fn host_of<'s>(snapshot: &'s Snapshot, id: &str) -> &'s policy_sdk::Host {
    snapshot.hosts.iter().find(|h| h.id == id).unwrap()
}

/// A case: its name, the steps, the pending VMs per host afterwards, the VMs placed
/// afterwards.
type Case = (
    &'static str,
    &'static [Step],
    &'static [(&'static str, &'static [&'static str])],
    &'static [&'static str],
);

/// One lifecycle step.
enum Step {
    Reserve(&'static str, &'static str),
    Started(&'static str),
    Failed(&'static str),
    Released(&'static str),
}

#[test]
fn lifecycle_sequences_leave_exactly_the_records_of_placed_vms() {
    use Step::*;
    // (name, steps, pending VMs per host afterwards, placed VMs afterwards)
    let cases: &[Case] = &[
        (
            "a reservation is pending on its host",
            &[Reserve("v", "a")],
            &[("a", &["v"]), ("b", &[])],
            &["v"],
        ),
        (
            "a VM placed again moves its records",
            &[Reserve("v", "a"), Reserve("v", "b")],
            &[("a", &[]), ("b", &["v"])],
            &["v"],
        ),
        (
            "a started VM holds nothing pending",
            &[Reserve("v", "a"), Started("v")],
            &[("a", &[])],
            &[],
        ),
        (
            "a failed VM holds nothing pending",
            &[Reserve("v", "a"), Reserve("w", "a"), Failed("v")],
            &[("a", &["w"])],
            &["w"],
        ),
        (
            "releasing twice releases nothing the second time",
            &[
                Reserve("v", "a"),
                Reserve("w", "a"),
                Released("v"),
                Released("v"),
            ],
            &[("a", &["w"])],
            &["w"],
        ),
        (
            "reports about unknown VMs change nothing",
            &[
                Reserve("w", "b"),
                Started("ghost"),
                Failed("ghost"),
                Released("ghost"),
            ],
            &[("b", &["w"])],
            &["w"],
        ),
    ];
    for (name, steps, pending, placed) in cases {
        let c = cluster();
        for step in *steps {
            match step {
                Reserve(v, h) => drop(c.reserve(&small(v), h, PlacementKind::Start).unwrap()),
                Started(v) => drop(c.vm_started(v).unwrap()),
                Failed(v) => drop(c.vm_failed(v).unwrap()),
                Released(v) => drop(c.release_vm(v).unwrap()),
            }
        }
        for (h, vms) in *pending {
            let aggregate = c.pending_on_host(h);
            assert_eq!(aggregate.vms, *vms, "{name}: pending VMs on {h}");
            // The aggregate published in the snapshot is the sum of the records.
            assert_eq!(host_of(&c.snapshot(), h).pending, aggregate, "{name}: {h}");
        }
        let mut now: Vec<String> = ["v", "w"]
            .iter()
            .filter(|v| c.placement(v).is_some())
            .map(|v| v.to_string())
            .collect();
        now.sort();
        assert_eq!(now, *placed, "{name}: placed VMs");
    }
}

#[test]
fn a_started_vm_moves_its_pending_amounts_into_the_hosts_usage() {
    let c = cluster();
    let before = host_of(&c.snapshot(), "a").clone();
    let reservation = c.reserve(&small("v"), "a", PlacementKind::Start).unwrap();
    assert!(reservation.epoch > 1);
    let release = c.vm_started("v").unwrap();
    assert!(!release.records.is_empty());
    let snapshot = c.snapshot();
    let after = host_of(&snapshot, "a");
    assert_eq!(after.running_vms, before.running_vms + 1);
    // Guest memory plus the 64 MiB overhead is committed and no longer free.
    assert_eq!(
        after.memory.committed_mb,
        before.memory.committed_mb + 2_048 + 64
    );
    assert_eq!(after.memory.free_mb, before.memory.free_mb - 2_048 - 64);
    let vm = snapshot.vms.iter().find(|v| v.id == "v").unwrap();
    assert_eq!(
        (vm.status, vm.current_host.as_deref()),
        (VmStatus::Up, Some("a"))
    );
    // Without accounting, the host's figures wait for the next report.
    let c = cluster();
    c.set_pending_rules(PendingRules {
        account_started_vms: false,
        ..PendingRules::default()
    });
    c.reserve(&small("v"), "a", PlacementKind::Start).unwrap();
    c.vm_started("v").unwrap();
    assert_eq!(host_of(&c.snapshot(), "a").memory, before.memory);
}

#[test]
fn a_finished_migration_moves_usage_from_source_to_destination() {
    let c = cluster();
    let running = c.snapshot().vms[0].clone();
    let source_before = host_of(&c.snapshot(), "c").clone();
    let kind = PlacementKind::Migration { source: "c".into() };
    c.reserve(&running, "a", kind.clone()).unwrap();
    c.migration_finished("run").unwrap();
    let snapshot = c.snapshot();
    let source = host_of(&snapshot, "c");
    assert_eq!(source.running_vms, source_before.running_vms - 1);
    assert_eq!(host_of(&snapshot, "a").running_vms, 1);
    assert_eq!(snapshot.vms[0].current_host.as_deref(), Some("a"));
    // A failed migration leaves the VM where it was and releases the destination.
    let c = cluster();
    c.reserve(&running, "b", kind).unwrap();
    let failed = c.vm_failed("run").unwrap();
    assert!(matches!(
        failed.placement.map(|p| p.kind),
        Some(PlacementKind::Migration { .. })
    ));
    assert!(c.pending_on_host("b").vms.is_empty());
    assert_eq!(c.snapshot().vms[0].current_host.as_deref(), Some("c"));
}

#[test]
fn a_failed_start_may_be_retried_until_it_runs_out_of_attempts() {
    let c = cluster();
    c.set_pending_rules(PendingRules {
        max_start_attempts: 2,
        ..PendingRules::default()
    });
    c.reserve(&small("v"), "a", PlacementKind::Start).unwrap();
    let (_, retry) = c.fail_placement("v", true).unwrap();
    assert_eq!(retry, Retry::Allowed(vec!["a".into()]));
    c.reserve(&small("v"), "b", PlacementKind::Start).unwrap();
    let (failed, retry) = c.fail_placement("v", true).unwrap();
    assert_eq!(retry, Retry::GaveUp(vec!["a".into(), "b".into()]));
    assert_eq!(failed.placement.unwrap().host, "b");
    // Giving up forgets the history: a new start begins counting again.
    c.reserve(&small("v"), "c", PlacementKind::Start).unwrap();
    let (_, retry) = c.fail_placement("v", true).unwrap();
    assert_eq!(retry, Retry::Allowed(vec!["c".into()]));
    // A failure reported without a retry forgets it too.
    c.reserve(&small("v"), "a", PlacementKind::Start).unwrap();
    c.vm_failed("v").unwrap();
    c.reserve(&small("v"), "b", PlacementKind::Start).unwrap();
    let (_, retry) = c.fail_placement("v", true).unwrap();
    assert_eq!(retry, Retry::Allowed(vec!["b".into()]));
}

#[test]
fn vms_waiting_for_launch_are_pending_from_the_start_and_go_down_when_they_fail() {
    let mut s = base();
    let mut waiting = small("w");
    waiting.status = VmStatus::WaitForLaunch;
    waiting.current_host = Some("b".into());
    s.vms.push(waiting);
    let c = Cluster::new(s, "<test>").unwrap();
    assert_eq!(c.pending_on_host("b").vms, ["w"]);
    c.vm_failed("w").unwrap();
    let vm = c
        .snapshot()
        .vms
        .iter()
        .find(|v| v.id == "w")
        .cloned()
        .unwrap();
    assert_eq!((vm.status, vm.current_host), (VmStatus::Down, None));
    assert!(c.pending_on_host("b").vms.is_empty());
}

#[test]
fn removing_a_host_displaces_its_placements_and_stops_its_vms() {
    let c = cluster();
    c.reserve(&small("v"), "c", PlacementKind::Start).unwrap();
    c.reserve(&small("w"), "a", PlacementKind::Start).unwrap();
    let removed = c.remove_host("c").unwrap();
    let displaced: Vec<&str> = removed.displaced.iter().map(|p| p.vm.id.as_str()).collect();
    assert_eq!(displaced, ["v"]);
    assert_eq!(removed.stopped, ["run"]);
    assert!(c.placement("v").is_none());
    assert!(c.placement("w").is_some());
    assert!(c.host_index("c").is_none());
    // Removing it again is a no-op.
    assert!(c.remove_host("c").unwrap().displaced.is_empty());
}

#[test]
fn a_host_going_down_fails_its_placements_in_vm_order() {
    let c = cluster();
    for id in ["z", "m", "b"] {
        c.reserve(&small(id), "a", PlacementKind::Start).unwrap();
    }
    c.reserve(&small("other"), "b", PlacementKind::Start)
        .unwrap();
    let failed = c.host_down("a", HostStatus::Down).unwrap();
    let order: Vec<&str> = failed.iter().map(|f| f.vm.as_str()).collect();
    assert_eq!(order, ["b", "m", "z"]);
    assert_eq!(host_of(&c.snapshot(), "a").status, HostStatus::Down);
    assert!(c.pending_on_host("a").vms.is_empty());
    assert_eq!(c.pending_on_host("b").vms, ["other"]);
}

#[test]
fn apply_refuses_bad_batches_whole_and_names_what_is_wrong() {
    let c = cluster();
    let epoch = c.epoch();
    let mut renamed = host_of(&c.snapshot(), "a").clone();
    renamed.id = "a2".into();
    let cases: Vec<(Vec<Change>, &str)> = vec![
        (
            vec![Change::SetPending {
                host: 0,
                pending: Default::default(),
            }],
            "pending aggregates are computed from pending records",
        ),
        (
            vec![Change::AddPending {
                host: 0,
                added: Default::default(),
            }],
            "AddPending",
        ),
        (vec![Change::RemoveHost { host: 0 }], "Cluster::remove_host"),
        (
            vec![Change::ReplaceHost {
                host: 0,
                value: renamed,
            }],
            "cannot change a host's id",
        ),
        (
            vec![
                Change::SetHostStatus {
                    host: 0,
                    status: HostStatus::Maintenance,
                },
                Change::AddHost(host("b").build()),
            ],
            "already in the cluster",
        ),
        (
            vec![Change::SetHostStatus {
                host: 9,
                status: HostStatus::Down,
            }],
            "host index 9",
        ),
    ];
    for (changes, expected) in cases {
        let err = c.apply(changes).unwrap_err().to_string();
        assert!(err.contains(expected), "{expected}: {err}");
        assert_eq!(c.epoch(), epoch, "{expected}: nothing applied");
        assert_eq!(host_of(&c.snapshot(), "a").status, HostStatus::Up);
    }
}

#[test]
fn deltas_are_cut_from_the_change_log_while_it_holds_them() {
    let c = cluster();
    let start = c.epoch();
    for status in [
        HostStatus::Maintenance,
        HostStatus::Up,
        HostStatus::Maintenance,
    ] {
        c.set_host_status("a", status).unwrap();
    }
    let view = c.view();
    assert_eq!(view.epoch(), start + 3);
    let counted = view.with_changes_since(start, |changes| changes.len());
    assert_eq!(counted, Some(3));
    assert_eq!(
        view.with_changes_since(start + 2, |changes| changes.len()),
        Some(1)
    );
    // Nothing to catch up, or a copy from before the log: no delta.
    assert_eq!(view.with_changes_since(start + 3, |c| c.len()), None);
    assert_eq!(view.with_changes_since(0, |c| c.len()), None);
    // The full form is made once per epoch (and type), and the call that made it knows.
    let made = std::cell::Cell::new(0);
    for i in 0..3 {
        let (form, by_this_call) = view.full_encoding(|| {
            made.set(made.get() + 1);
            vec![1u8]
        });
        assert_eq!((form.as_slice(), by_this_call), (&[1u8][..], i == 0));
    }
    assert_eq!(made.get(), 1);
    let (_, by_this_call) = view.full_encoding(|| "another form");
    assert!(by_this_call, "a form of another type is made anew");
    c.set_host_status("a", HostStatus::Up).unwrap();
    let (_, by_this_call) = c.view().full_encoding(|| vec![2u8]);
    assert!(by_this_call, "the next epoch's form is made anew");
}

/// Records a planned 1 GiB DIMM plug into VM `run` on host `c`.
fn plug_1g_into_run(c: &Cluster) {
    let device = MemoryDevice {
        id: "dimm1".into(),
        size_mb: 1_024,
        node: 0,
        hotplugged: true,
        unplugging: false,
    };
    let pending = PendingResource::HotplugMemory {
        mb: 1_024,
        node: None,
        hugepage_size_kb: None,
    };
    let mut ledger = c.ledger();
    c.record_memory_plug(&mut ledger, "run", "c", device, pending)
        .unwrap();
}

#[test]
fn a_memory_plug_is_pending_until_confirmed_or_failed() {
    for confirm in [true, false] {
        let c = cluster();
        plug_1g_into_run(&c);
        assert_eq!(c.pending_on_host("c").memory_mb, 1_024);
        assert_eq!(c.memory_changes_in_flight().len(), 1);
        let done = if confirm {
            c.confirm_memory_change("run")
        } else {
            c.fail_memory_change("run")
        }
        .unwrap()
        .unwrap();
        let grown = if confirm { 4_096 + 1_024 } else { 4_096 };
        assert_eq!(done.memory_mb, grown, "confirm {confirm}");
        assert_eq!(c.pending_on_host("c").memory_mb, 0);
        assert!(c.memory_changes_in_flight().is_empty());
        // A second report finds nothing in flight.
        assert!(c.confirm_memory_change("run").unwrap().is_none());
    }
}

#[test]
fn a_memory_change_record_restored_in_a_fresh_cluster_is_pending_and_confirmable_again() {
    let c = cluster();
    plug_1g_into_run(&c);
    assert!(c.memory_change("other").is_none());
    let record = c.memory_change("run").expect("a plug in flight");
    // What a store keeps: the record as JSON.
    let stored = serde_json::to_string(&record).unwrap();
    let restored = cluster();
    restored
        .restore_memory_change(serde_json::from_str(&stored).unwrap())
        .unwrap();
    assert_eq!(restored.pending_on_host("c").memory_mb, 1_024);
    assert_eq!(restored.memory_change("run"), Some(record.clone()));
    assert!(
        restored.restore_memory_change(record).is_err(),
        "one change in flight per VM"
    );
    let done = restored.confirm_memory_change("run").unwrap().unwrap();
    assert_eq!(done.memory_mb, 4_096 + 1_024);
    assert_eq!(restored.pending_on_host("c").memory_mb, 0);
}

#[test]
fn a_usage_refresh_is_one_compact_epoch_and_views_keep_the_old_figures() {
    use policy_sdk::HostUsage;
    let c = cluster();
    let before = c.view();
    let usage = |cpu: u32, free: u64| HostUsage {
        cpu_usage_percent: cpu,
        free_mb: free,
        swap_free_mb: 512,
        running_vms: 3,
    };
    let epoch = c
        .update_usage([("a", usage(40, 1_000)), ("c", usage(75, 2_000))])
        .unwrap();
    assert_eq!(epoch, before.epoch() + 1);
    let now = c.snapshot();
    assert_eq!(HostUsage::of(host_of(&now, "a")), usage(40, 1_000));
    assert_eq!(HostUsage::of(host_of(&now, "c")), usage(75, 2_000));
    assert_eq!(host_of(&now, "b"), host_of(before.snapshot(), "b"));
    assert_eq!(host_of(before.snapshot(), "a").cpu_usage_percent, 0);
    // The guests get one SetUsage change, not whole hosts.
    let changes = c
        .view()
        .with_changes_since(before.epoch(), |changes| {
            changes.into_iter().cloned().collect::<Vec<_>>()
        })
        .unwrap();
    assert!(matches!(changes.as_slice(), [Change::SetUsage(u)] if u.len() == 2));
    // An unknown host changes nothing.
    assert!(c.update_usage([("nope", usage(1, 1))]).is_err());
    assert_eq!(c.epoch(), epoch);
}

/// A refresh finds each host it names whatever the order of its report: in snapshot order
/// (matched without a lookup by id), reversed, a subset, starting in the middle, a host
/// named twice (the later figures win), and one unknown id anywhere fails it, changing
/// nothing.
#[test]
fn usage_reports_in_any_order_reach_the_hosts_they_name() {
    let usage = |cpu: u32| HostUsage {
        cpu_usage_percent: cpu,
        free_mb: 100 * u64::from(cpu),
        swap_free_mb: 7,
        running_vms: cpu / 10,
    };
    // A report as (host, CPU %); the hosts' CPU % after it (0: unchanged), or none if
    // refused.
    type Report = &'static [(&'static str, u32)];
    let cases: [(&str, Report, Option<[u32; 3]>); 7] = [
        (
            "snapshot order",
            &[("a", 11), ("b", 12), ("c", 13)],
            Some([11, 12, 13]),
        ),
        (
            "reversed",
            &[("c", 21), ("b", 22), ("a", 23)],
            Some([23, 22, 21]),
        ),
        ("a subset", &[("a", 31), ("c", 33)], Some([31, 0, 33])),
        (
            "from the middle",
            &[("b", 42), ("c", 43)],
            Some([0, 42, 43]),
        ),
        (
            "named twice",
            &[("a", 51), ("b", 52), ("a", 53)],
            Some([53, 52, 0]),
        ),
        ("unknown in order's place", &[("a", 61), ("x", 62)], None),
        (
            "unknown last",
            &[("a", 71), ("b", 72), ("c", 73), ("x", 74)],
            None,
        ),
    ];
    for (case, report, want) in cases {
        let c = cluster();
        let before = c.snapshot();
        let result = c.update_usage(report.iter().map(|&(id, cpu)| (id, usage(cpu))));
        let now = c.snapshot();
        match want {
            Some(cpus) => {
                result.unwrap_or_else(|e| panic!("{case}: {e}"));
                for (id, cpu) in ["a", "b", "c"].into_iter().zip(cpus) {
                    let got = HostUsage::of(host_of(&now, id));
                    if cpu == 0 {
                        assert_eq!(host_of(&now, id), host_of(&before, id), "{case}: {id}");
                    } else {
                        assert_eq!(got, usage(cpu), "{case}: {id}");
                    }
                }
            }
            None => {
                let error = result.expect_err(case).to_string();
                assert!(error.contains('x'), "{case}: {error}");
                assert_eq!(
                    now.epoch, before.epoch,
                    "{case}: a refused report changes nothing"
                );
            }
        }
    }
}

#[test]
fn a_reservation_is_logged_as_what_it_adds_and_a_release_as_the_whole_aggregate() {
    let c = cluster();
    // Three VMs on `a`, so that its aggregate lists more than the newest one.
    for id in ["v1", "v2", "v3"] {
        c.reserve(&small(id), "a", PlacementKind::Start).unwrap();
    }
    let changes_since = |from: u64| {
        c.view()
            .with_changes_since(from, |changes| {
                changes.into_iter().cloned().collect::<Vec<_>>()
            })
            .unwrap()
    };
    let before = c.epoch();
    let on_a = host_of(&c.snapshot(), "a").pending.clone();
    c.reserve(&small("v0"), "a", PlacementKind::Start).unwrap();
    let after = host_of(&c.snapshot(), "a").pending.clone();
    match changes_since(before).as_slice() {
        [Change::AddPending { host: 0, added }] => {
            assert_eq!(added.vms, ["v0"], "only the new VM's id travels");
            assert_eq!(added.memory_mb, after.memory_mb - on_a.memory_mb);
            let mut merged = on_a.clone();
            merged.merge(added).unwrap();
            assert_eq!(merged, after, "merged, it gives the ledger's aggregate");
        }
        other => panic!("a reservation should log one AddPending on host 0, got {other:?}"),
    }
    // A release lowers the aggregate: the whole new aggregate travels.
    let before = c.epoch();
    c.release_vm("v2").unwrap();
    match changes_since(before).as_slice() {
        [Change::SetPending { host: 0, pending }] => {
            assert_eq!(pending.vms, ["v0", "v1", "v3"]);
            assert_eq!(pending, &host_of(&c.snapshot(), "a").pending);
        }
        other => panic!("a release should log one SetPending on host 0, got {other:?}"),
    }
    // After a release, the host's next reservation travels as what it adds again.
    let before = c.epoch();
    c.reserve(&small("v5"), "a", PlacementKind::Start).unwrap();
    match changes_since(before).as_slice() {
        [Change::AddPending { host: 0, added }] => assert_eq!(added.vms, ["v5"]),
        other => panic!("a reservation after a release should log one AddPending, got {other:?}"),
    }
}

#[test]
fn a_commit_refuses_an_added_aggregate_it_cannot_merge_and_changes_nothing() {
    let c = cluster();
    c.reserve(&small("v1"), "a", PlacementKind::Start).unwrap();
    let epoch = c.epoch();
    let before = c.snapshot();
    let added = |memory_mb| policy_sdk::PendingAggregate {
        memory_mb,
        ..Default::default()
    };
    let cases: Vec<(&str, Vec<Change>, &str)> = vec![
        (
            "a total that overflows",
            vec![Change::AddPending {
                host: 0,
                added: added(u64::MAX),
            }],
            "memory_mb: the host's total overflows",
        ),
        (
            "after the host's aggregate was set in the batch",
            vec![
                Change::SetPending {
                    host: 0,
                    pending: added(1),
                },
                Change::AddPending {
                    host: 0,
                    added: added(1),
                },
            ],
            "must come before",
        ),
        (
            "after the host list changed in the batch",
            vec![
                Change::AddHost(host("d").build()),
                Change::AddPending {
                    host: 1,
                    added: added(1),
                },
            ],
            "must come before",
        ),
        (
            "a host index out of range",
            vec![Change::AddPending {
                host: 7,
                added: added(1),
            }],
            "host index 7",
        ),
    ];
    for (name, changes, expected) in cases {
        let err = c.commit(&c.ledger(), changes).unwrap_err().to_string();
        assert!(err.contains(expected), "{name}: {err}");
        assert_eq!(c.epoch(), epoch, "{name}: nothing applied");
        assert_eq!(*c.snapshot(), *before, "{name}: nothing applied");
    }
    // A mergeable one is applied.
    c.commit(
        &c.ledger(),
        vec![Change::AddPending {
            host: 0,
            added: added(5),
        }],
    )
    .unwrap();
    assert_eq!(
        host_of(&c.snapshot(), "a").pending.memory_mb,
        host_of(&before, "a").pending.memory_mb + 5
    );
}

#[test]
fn commits_while_views_are_held_continue_on_spares_brought_up_to_date() {
    let c = cluster();
    // Alternate: hold a view across each reservation, as a second thread deciding would,
    // so that commits find the current snapshot held and reuse an earlier one.
    let mut held = Vec::new();
    for i in 0..12 {
        held.push(c.view());
        if held.len() > 2 {
            held.remove(0);
        }
        let host = ["a", "b", "c"][i % 3];
        c.reserve(&small(&format!("v{i}")), host, PlacementKind::Start)
            .unwrap();
        let now = c.snapshot();
        for h in ["a", "b", "c"] {
            assert_eq!(
                host_of(&now, h).pending,
                c.pending_on_host(h),
                "step {i}, host {h}"
            );
        }
        assert_eq!(now.epoch, c.epoch());
    }
    // The views still show their own epochs.
    for view in &held {
        let pending: usize = view
            .snapshot()
            .hosts
            .iter()
            .map(|h| h.pending.vms.len())
            .sum();
        assert_eq!(pending as u64, view.epoch() - 1);
    }
}

#[test]
fn hosts_with_equal_cpu_flags_share_one_list_as_they_come_in() {
    let flagged = |id: &str, flags: &[&str]| host(id).cpu_flags(flags);
    let c = Cluster::new(
        snapshot()
            .host(flagged("a", &["aes", "avx2"]))
            .host(flagged("b", &["vmx"]))
            .host(flagged("c", &["aes", "avx2"]))
            .build(),
        "<test>",
    )
    .unwrap();
    let s = c.snapshot();
    assert!(s.hosts[0].cpu_flags.shares_storage(&s.hosts[2].cpu_flags));
    assert!(!s.hosts[0].cpu_flags.shares_storage(&s.hosts[1].cpu_flags));
    // A host replaced or added with its neighbour's flags shares its neighbour's list.
    c.apply(vec![
        Change::ReplaceHost {
            host: 1,
            value: flagged("b", &["aes", "avx2"]).build(),
        },
        Change::AddHost(flagged("d", &["aes", "avx2"]).build()),
    ])
    .unwrap();
    let s = c.snapshot();
    for i in 1..4 {
        assert!(
            s.hosts[i].cpu_flags.shares_storage(&s.hosts[0].cpu_flags),
            "host {i}"
        );
        assert_eq!(s.hosts[i].cpu_flags.as_slice(), ["aes", "avx2"]);
    }
}

#[test]
fn a_host_is_judged_again_outside_the_ledger_lock_on_the_epoch_it_is_reserved_on() {
    let c = cluster();
    let decided = c.epoch();
    let gib = |id: &str| vm(id).memory_mb(1_024).build();
    // Nothing committed since the decision: reserved at once, not judged again.
    let r = c
        .reserve_decided(decided, &gib("first"), "a", PlacementKind::Start, |_| {
            panic!("judged again although nothing changed")
        })
        .unwrap()
        .unwrap();
    assert!(!r.revalidated);
    // A commit since the decision (the reservation above), and another one while the host
    // is being judged: it is judged again on the newer view, outside the lock each time,
    // and reserved on the epoch it was last judged on.
    let mut judged = Vec::new();
    let r = c
        .reserve_decided(
            decided,
            &gib("second"),
            "a",
            PlacementKind::Start,
            |latest| {
                assert!(!c.ledger_is_held(), "judged under the ledger lock");
                judged.push(latest.epoch());
                if judged.len() == 1 {
                    c.reserve(&gib("meanwhile"), "b", PlacementKind::Start)
                        .unwrap();
                }
                Ok(true)
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(judged.len(), 2, "{judged:?}");
    assert!(judged[1] > judged[0]);
    assert!(r.revalidated);
    assert_eq!(r.epoch, judged[1] + 1, "reserved on the epoch last judged");
    // Judged not to fit any more: nothing is reserved.
    let r = c
        .reserve_decided(decided, &gib("third"), "a", PlacementKind::Start, |_| {
            Ok(false)
        })
        .unwrap();
    assert!(r.is_none());
    assert!(c.placement("third").is_none());
}

#[test]
fn a_reservation_prepared_before_the_lock_is_made_again_when_the_rules_or_the_vm_changed() {
    let c = cluster();
    let gib = |id: &str| vm(id).memory_mb(1_024).build();
    let memory_of = |resources: &[PendingResource]| {
        resources.iter().find_map(|res| match res {
            PendingResource::Memory { mb } => Some(*mb),
            _ => None,
        })
    };
    let prepare = |id: &str| {
        c.prepare_reservation(&c.view(), &gib(id), "a", &PlacementKind::Start)
            .unwrap()
    };
    let resources_of = |prepared: &placement::PreparedReservation| -> Vec<PendingResource> {
        prepared
            .records
            .iter()
            .map(|r| r.resource.clone())
            .collect()
    };
    // Nothing changed since it was prepared: recorded as prepared.
    let prepared = prepare("plain");
    let expected = resources_of(&prepared);
    let r = c
        .reserve_prepared(&mut c.ledger(), prepared, false)
        .unwrap();
    assert_eq!(r.resources, expected);
    assert_eq!(c.pending_records_of_vm("plain").len(), expected.len());
    // The pending rules changed after it was prepared: the records follow the new rules.
    let prepared = prepare("late");
    assert_eq!(memory_of(&resources_of(&prepared)), Some(64));
    let mut rules = c.pending_rules();
    rules.memory_overhead_mb = 200;
    c.set_pending_rules(rules);
    let r = c
        .reserve_prepared(&mut c.ledger(), prepared, false)
        .unwrap();
    assert_eq!(memory_of(&r.resources), Some(200));
    assert_eq!(c.pending_of_vm("late").memory_mb, 200);
    // The VM was placed elsewhere meanwhile: its records there are released and it holds
    // exactly the new reservation's records, on the prepared host.
    let prepared = prepare("raced");
    c.reserve(&gib("raced"), "b", PlacementKind::Start).unwrap();
    let r = c
        .reserve_prepared(&mut c.ledger(), prepared, false)
        .unwrap();
    let records = c.pending_records_of_vm("raced");
    assert_eq!(records.len(), r.resources.len());
    assert!(records.iter().all(|rec| rec.host == "a"), "{records:?}");
    assert!(c.pending_records_on_host("b").is_empty());
}

#[test]
fn a_view_finds_its_own_hosts_after_the_cluster_removed_one_before_them() {
    let c = cluster();
    let before = c.view();
    c.remove_host("a").unwrap();
    let after = c.view();
    // The cluster's id index is of the latest epoch: the older view must not take it.
    let cases = [
        (&before, "a", Some(0)),
        (&before, "b", Some(1)),
        (&before, "c", Some(2)),
        (&after, "a", None),
        (&after, "b", Some(0)),
        (&after, "c", Some(1)),
        (&after, "nope", None),
    ];
    for (view, id, expected) in cases {
        assert_eq!(
            view.host_index(id),
            expected,
            "{id} at epoch {}",
            view.epoch()
        );
    }
}

/// A thread that finds the ledger lock held waits first without sleeping, then sleeps:
/// either way it takes the lock only once the holder lets go, here after far longer than
/// the wait without sleeping, and sees what the holder did under it.
#[test]
fn a_thread_waiting_for_the_ledger_longer_than_the_spin_gets_it_once_the_holder_lets_go() {
    let c = cluster();
    let released = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let mut held = c.ledger();
        let waiter = s.spawn(|| {
            let ledger = c.ledger();
            (
                released.load(std::sync::atomic::Ordering::SeqCst),
                ledger.placements.contains_key("under-lock"),
            )
        });
        std::thread::sleep(cluster::LEDGER_SPIN * 50);
        held.placements.insert(
            "under-lock".into(),
            Placement {
                vm: small("under-lock"),
                host: "a".into(),
                kind: PlacementKind::Start,
            },
        );
        released.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(held);
        assert_eq!(waiter.join().unwrap(), (true, true));
    });
}

/// Commits made while views of earlier epochs are held continue on spare snapshots
/// together with their indexes: after each change (pending pinned pCPUs, a status, usage
/// figures) the index answers as a fresh one, and only the commits before a spare was free
/// copied it.
#[test]
fn commits_while_views_are_held_reuse_spare_indexes_brought_up_to_date() {
    let c = cluster();
    let hosts = ["a", "b", "c"];
    // Changes of each kind an index keeps something of, in turn.
    let change = |i: usize| {
        let host = hosts[i % 3];
        match i % 4 {
            0 | 1 => {
                c.add_pending(vec![PendingRecord {
                    host: host.into(),
                    vm: format!("v{i}"),
                    resource: PendingResource::PinnedCpus {
                        cpus: vec![i as u32, 70 + i as u32],
                    },
                }])
                .unwrap();
            }
            2 => {
                let status = [HostStatus::Maintenance, HostStatus::Up][(i / 4) % 2];
                c.set_host_status(host, status).unwrap();
            }
            _ => {
                let mut usage = HostUsage::of(host_of(&c.snapshot(), host));
                usage.free_mb -= 1_024;
                c.update_usage([(host, usage)]).unwrap();
            }
        }
    };
    // Hold a view across each change, as a second thread deciding would, with the index's
    // words filled in as a native unit's decision fills them.
    let mut held = Vec::new();
    for i in 0..16 {
        let view = c.view();
        for (k, h) in view.snapshot().hosts.iter().enumerate() {
            view.derived().cpu_counts(k as HostIndex, h);
            view.derived().unavailable_pcpus(k as HostIndex, h);
        }
        held.push(view);
        if held.len() > 2 {
            held.remove(0);
        }
        change(i);
        let now = c.view();
        let fresh = SnapshotIndex::build(now.snapshot());
        for (k, h) in now.snapshot().hosts.iter().enumerate() {
            let k = k as HostIndex;
            if let Some(kept) = now.derived().kept_cpu_counts(k) {
                assert_eq!(
                    kept,
                    fresh.cpu_counts(k, h),
                    "step {i}, host {k}: kept counts"
                );
            }
            assert_eq!(
                now.derived().unavailable_pcpus(k, h),
                fresh.unavailable_pcpus(k, h),
                "step {i}, host {k}: unavailable pCPUs"
            );
        }
        assert_eq!(
            now.derived().host_statuses(now.snapshot()),
            fresh.host_statuses(now.snapshot()),
            "step {i}: statuses"
        );
    }
    // Only the first two commits, before any spare was free, copied the index.
    assert_eq!(c.index_copies(), 2);
}
