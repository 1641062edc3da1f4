//! Memory hot plug and hot unplug through the engine with the real builtin wasm filters:
//! plans, the pending memory of a plug seen by the next decision on the host and released
//! on confirm or failure, unplug choice, and bad input.

use integration_tests::runtime;
use policy_sdk::testing::{host, snapshot, vm, HostBuilder, VmBuilder};
use policy_sdk::{Architecture, MemoryDevice, Snapshot, VmStatus};
use wasmsched::pending::PendingResource;
use wasmsched::plan::MemoryChange;
use wasmsched::{Cluster, Policy, ScheduleRequest};

fn cluster(s: Snapshot) -> Cluster {
    Cluster::new(s, "<test>").unwrap()
}

/// An 8 GiB host already running a 4 GiB VM (4096 + 64 MiB overhead committed).
fn host_running_4g(id: &str) -> HostBuilder {
    host(id).memory_mb(8_192).free_mb(4_032).committed_mb(4_160)
}

fn db() -> VmBuilder {
    vm("db").memory_mb(4_096).vcpus(2).current_host("h1")
}

/// Whether a new 2 GiB VM (2112 MiB with overhead) would be placed on h1 now.
fn new_2g_vm_fits(policy: &Policy, c: &Cluster) -> bool {
    let request = ScheduleRequest::new(vm("new").memory_mb(2_048).build());
    let decision = policy.evaluate(&c.view(), &request).unwrap();
    decision.chosen.as_deref() == Some("h1")
}

#[test]
fn a_plug_is_pending_for_the_next_decision_on_its_host_and_confirm_moves_it_into_the_vm() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(snapshot().host(host_running_4g("h1")).vm(db()).build());
    assert!(new_2g_vm_fits(&policy, &c), "fits before the plug");

    // 4032 MiB free: the grown VM (6144 + 64) would not fit if its current 4 GiB were
    // counted again, so a plan proves the filters see the host without it.
    let plan = policy.hot_set_memory(&c, "db", 6_144).unwrap();
    let MemoryChange::Plug { dimm, pending, .. } = &plan.change else {
        panic!("expected a plug: {plan}");
    };
    assert_eq!(dimm.device.id, "dimm0");
    assert_eq!((dimm.device.size_mb, dimm.device.node), (2_048, 0));
    assert!(
        dimm.xml.contains("<size unit='KiB'>2097152</size>"),
        "{}",
        dimm.xml
    );
    assert!(!dimm.xml.contains("<source>"), "{}", dimm.xml);
    assert_eq!(
        *pending,
        PendingResource::HotplugMemory {
            mb: 2_048,
            node: None,
            hugepage_size_kb: None
        }
    );
    let published = &c.snapshot().hosts[0].pending;
    assert_eq!(published.memory_mb, 2_048);
    assert_eq!(published.overcommit_memory_mb, 2_048);
    assert!(
        published.vms.is_empty(),
        "the running VM is not a pending VM"
    );
    assert_eq!(*published, c.pending_on_host("h1"));

    // The next decision on h1 sees it: 4032 - 2048 free is too little for 2112.
    let request = ScheduleRequest::new(vm("new").memory_mb(2_048).build());
    let decision = policy.schedule(&c, &request).unwrap();
    assert_eq!(decision.chosen, None, "{decision}");
    assert!(
        decision.summary.contains("memory: not enough memory"),
        "{decision}"
    );

    let done = c
        .confirm_memory_change("db")
        .unwrap()
        .expect("a plug in flight");
    assert_eq!((done.kind, done.memory_mb), ("plug", 6_144));
    assert_eq!(done.release.records.len(), 1);
    let s = c.snapshot();
    assert!(s.hosts[0].pending.is_empty(), "{:?}", s.hosts[0].pending);
    let grown = s.vms.iter().find(|v| v.id == "db").unwrap();
    assert_eq!(grown.memory_mb, 6_144);
    assert_eq!(grown.memory_devices.len(), 1);
    assert!(grown.memory_devices[0].hotplugged);
    // The memory moved into the host's usage (until the next host report).
    assert_eq!(s.hosts[0].memory.free_mb, 4_032 - 2_048);
    assert_eq!(s.hosts[0].memory.committed_mb, 4_160 + 2_048);
    assert!(
        !new_2g_vm_fits(&policy, &c),
        "the plugged memory is used now"
    );
    assert!(c.confirm_memory_change("db").unwrap().is_none(), "twice");
    assert_eq!(c.snapshot().vms[0].memory_mb, 6_144, "not grown twice");
}

#[test]
fn a_failed_plug_releases_its_pending_memory_and_the_vm_keeps_its_size() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(snapshot().host(host_running_4g("h1")).vm(db()).build());
    let plan = policy.hot_set_memory(&c, "db", 6_144).unwrap();
    assert!(matches!(plan.change, MemoryChange::Plug { .. }), "{plan}");
    assert!(!new_2g_vm_fits(&policy, &c), "pending while in flight");
    // A second change while one is in flight is refused, naming it.
    let err = policy
        .hot_set_memory(&c, "db", 8_192)
        .unwrap_err()
        .to_string();
    assert!(err.contains("memory plug in flight"), "{err}");

    let done = c
        .fail_memory_change("db")
        .unwrap()
        .expect("a plug in flight");
    assert_eq!(done.memory_mb, 4_096);
    assert_eq!(c.pending_record_count(), 0);
    assert!(c.snapshot().hosts[0].pending.is_empty());
    assert_eq!(
        c.snapshot().hosts[0].memory.free_mb,
        4_032,
        "no usage moved"
    );
    assert!(c.snapshot().vms[0].memory_devices.is_empty());
    assert!(new_2g_vm_fits(&policy, &c), "released");
    assert!(c.fail_memory_change("db").unwrap().is_none(), "twice");
}

#[test]
fn a_plug_the_host_cannot_take_is_refused_with_reasons_and_records_nothing() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    // (case, host, VM, new size, expected reason)
    let cases: Vec<(&str, HostBuilder, VmBuilder, u64, &str)> = vec![
        (
            "free memory minus pending",
            host_running_4g("h1"),
            db(),
            4_096 + 4_096,
            "free memory: 4032 MiB (4032 free - 0 pending), 4096 MiB needed",
        ),
        (
            "overcommit ceiling",
            host_running_4g("h1").max_scheduling_mb(5_000),
            db(),
            4_096 + 1_024,
            "schedulable memory: 840 MiB (5000 max - 4160 committed - 0 pending)",
        ),
        (
            // The engine's checks pass; the cpu filter, run for the grown VM on its own
            // host, does not (the VM has more vCPUs than the host has cores).
            "a policy filter",
            host_running_4g("h1").cpu(1, 2, 1),
            db().vcpus(4),
            4_096 + 1_024,
            "cpu: not_enough_cores: 2 cores available, 4 vCPUs needed",
        ),
        (
            "hugepages",
            host_running_4g("h1").hugepages(2_048, 100),
            db().hugepages(2_048),
            4_096 + 1_024,
            "hugepages: 100 free 2048 KiB pages (100 free - 0 pending), 512 needed",
        ),
        (
            "strictly pinned host node",
            host_running_4g("h1")
                .numa_node(0, [0, 1, 2, 3], 3_000)
                .numa_node(1, [4, 5, 6, 7], 500),
            db().vnuma(0, 4_096, [], &[1]),
            4_096 + 1_024,
            "NUMA node 1: 500 MiB free after pending, 1024 MiB needed",
        ),
    ];
    for (case, h, v, to, reason) in cases {
        let c = cluster(snapshot().host(h).vm(v).build());
        let plan = policy.hot_set_memory(&c, "db", to).unwrap();
        let MemoryChange::Refused { reasons, .. } = &plan.change else {
            panic!("{case}: expected a refusal: {plan}");
        };
        assert!(
            reasons.iter().any(|r| r.contains(reason)),
            "{case}: {reasons:?}"
        );
        assert!(!plan.is_possible(), "{case}");
        assert_eq!(c.pending_record_count(), 0, "{case}");
        assert!(c.memory_changes_in_flight().is_empty(), "{case}");
    }
}

#[test]
fn a_plug_on_a_pinned_hugepage_vm_binds_the_dimm_and_pends_pages_on_the_node() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let h = host_running_4g("h1")
        .hugepages(2_048, 2_000)
        .numa_node(0, [0, 1, 2, 3], 1_000)
        .numa_node(1, [4, 5, 6, 7], 3_000)
        .node_hugepages(0, 2_048, 500)
        .node_hugepages(1, 2_048, 1_500);
    let v = db()
        .hugepages(2_048)
        .vnuma(0, 2_048, [], &[0])
        .vnuma(1, 2_048, [], &[1]);
    let c = cluster(snapshot().host(h).vm(v).build());
    let plan = policy.hot_set_memory(&c, "db", 4_096 + 2_048).unwrap();
    let MemoryChange::Plug { dimm, .. } = &plan.change else {
        panic!("expected a plug: {plan}");
    };
    // Guest node 0's host node has only 1000 MiB: the DIMM goes to guest node 1.
    assert_eq!((dimm.device.node, dimm.host_node), (1, Some(1)));
    assert_eq!(dimm.pagesize_kb, Some(2_048));
    assert!(
        dimm.xml.contains(
            "<source>\n    <nodemask>1</nodemask>\n    <pagesize unit='KiB'>2048</pagesize>"
        ),
        "{}",
        dimm.xml
    );
    let pending = c.pending_on_host("h1");
    assert_eq!(pending.hugepages_of(2_048), 1_024);
    assert_eq!(pending.numa_memory_of(1), 2_048);
    assert_eq!(
        pending.memory_mb, 0,
        "hugepage memory is not regular free memory"
    );
    c.confirm_memory_change("db").unwrap().unwrap();
    let s = c.snapshot();
    assert_eq!(s.hosts[0].free_hugepages[0].count, 2_000 - 1_024);
    assert_eq!(s.hosts[0].numa_nodes[1].free_memory_mb, 3_000 - 2_048);
    assert_eq!(s.vms[0].numa_nodes[1].memory_mb, 2_048 + 2_048);
}

/// `db` with 4 GiB of boot memory plus hot-plugged DIMMs of 768, 512 and 512 MiB.
fn db_with_dimms() -> VmBuilder {
    db().memory_mb(4_096 + 768 + 512 + 512)
        .dimm(768)
        .dimm(512)
        .dimm(512)
}

#[test]
fn an_unplug_picks_the_exact_subset_greedy_misses_and_confirm_removes_it() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let h = host("h1").memory_mb(16_384).committed_mb(6_000);
    let c = cluster(snapshot().host(h).vm(db_with_dimms()).build());
    // Remove 1024 MiB: greedy largest-first would take 768 and stop short.
    let plan = policy.hot_set_memory(&c, "db", 4_096 + 768).unwrap();
    let MemoryChange::Unplug {
        dimms, total_mb, ..
    } = &plan.change
    else {
        panic!("expected an unplug: {plan}");
    };
    let ids: Vec<&str> = dimms.iter().map(|d| d.device.id.as_str()).collect();
    assert_eq!(ids, ["dimm1", "dimm2"]);
    assert_eq!(*total_mb, 1_024);
    assert!(
        dimms[1].xml.contains("<alias name='dimm2'/>"),
        "{}",
        dimms[1].xml
    );
    let marked: Vec<bool> = c.snapshot().vms[0]
        .memory_devices
        .iter()
        .map(|d| d.unplugging)
        .collect();
    assert_eq!(marked, [false, true, true]);
    assert_eq!(c.pending_record_count(), 0, "an unplug reserves nothing");

    let done = c.confirm_memory_change("db").unwrap().unwrap();
    assert_eq!((done.kind, done.memory_mb), ("unplug", 4_096 + 768));
    let s = c.snapshot();
    assert_eq!(s.vms[0].memory_devices.len(), 1);
    assert_eq!(s.vms[0].memory_devices[0].id, "dimm0");
    assert_eq!(s.hosts[0].memory.committed_mb, 6_000 - 1_024);

    // Now only the 768 DIMM is left: 512 less is not exact; nearest: none below, 768
    // above.
    let plan = policy.hot_set_memory(&c, "db", 4_096 + 256).unwrap();
    let MemoryChange::NoExactUnplug {
        below,
        above,
        removable_mb,
        ..
    } = &plan.change
    else {
        panic!("expected no exact unplug: {plan}");
    };
    assert_eq!(removable_mb, &[768]);
    assert_eq!(*below, None);
    let above = above.as_ref().unwrap();
    assert_eq!((above.reduction_mb, above.memory_mb), (768, 4_096));
    assert!(plan.to_string().contains("no exact unplug"), "{plan}");
    assert!(c.memory_changes_in_flight().is_empty());
}

#[test]
fn a_failed_unplug_clears_the_marks_and_marked_or_boot_dimms_are_never_chosen() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = cluster(snapshot().host(host("h1")).vm(db_with_dimms()).build());
    let plan = policy.hot_set_memory(&c, "db", 4_096 + 768 + 512).unwrap();
    assert!(matches!(plan.change, MemoryChange::Unplug { .. }), "{plan}");
    c.fail_memory_change("db").unwrap().unwrap();
    let s = c.snapshot();
    assert!(s.vms[0].memory_devices.iter().all(|d| !d.unplugging));
    assert_eq!(s.vms[0].memory_mb, 4_096 + 768 + 512 + 512);

    // A DIMM already being unplugged and a boot DIMM (not hot-plugged) are not removable.
    let v = db()
        .memory_mb(4_096 + 512 + 512 + 1_024)
        .memory_device(MemoryDevice {
            id: "boot".into(),
            size_mb: 1_024,
            node: 0,
            hotplugged: false,
            unplugging: false,
        })
        .memory_device(MemoryDevice {
            id: "leaving".into(),
            size_mb: 512,
            node: 0,
            hotplugged: true,
            unplugging: true,
        })
        .dimm(512);
    let c = cluster(snapshot().host(host("h1")).vm(v).build());
    let plan = policy.hot_set_memory(&c, "db", 4_096 + 1_024).unwrap();
    let MemoryChange::NoExactUnplug {
        removable_mb,
        below,
        ..
    } = &plan.change
    else {
        panic!("expected no exact unplug: {plan}");
    };
    assert_eq!(removable_mb, &[512]);
    assert_eq!(
        below.as_ref().map(|b| b.devices.clone()),
        Some(vec!["dimm2".to_string()])
    );
}

#[test]
fn bad_input_is_an_error_naming_the_value() {
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    // (case, snapshot, VM id, new size, expected message)
    let cases: Vec<(&str, Snapshot, &str, u64, &str)> = vec![
        (
            "unknown VM",
            snapshot().host(host("h1")).vm(db()).build(),
            "nope",
            8_192,
            "unknown VM \"nope\"",
        ),
        (
            "VM not running",
            snapshot()
                .host(host("h1"))
                .vm(vm("db").memory_mb(4_096))
                .build(),
            "db",
            8_192,
            "VM \"db\" is down without a host: memory can be hot set only on a running",
        ),
        (
            "VM migrating",
            snapshot()
                .host(host("h1"))
                .vm(db().status(VmStatus::MigratingFrom))
                .build(),
            "db",
            8_192,
            "VM \"db\" is migrating_from on \"h1\"",
        ),
        (
            "x86 size not a multiple of 128",
            snapshot().host(host("h1")).vm(db()).build(),
            "db",
            4_096 + 100,
            "changes the memory by 100 MiB, which is not a multiple of 128 MiB (the x86_64",
        ),
        (
            "ppc size not a multiple of 256",
            snapshot()
                .architecture(Architecture::Ppc64)
                .host(host("h1"))
                .vm(db())
                .build(),
            "db",
            4_096 + 128,
            "by 128 MiB, which is not a multiple of 256 MiB (the ppc64 size factor)",
        ),
        (
            "no free slot",
            snapshot()
                .max_memory_slots(2)
                .host(host("h1"))
                .vm(db().memory_mb(4_096 + 256).dimm(128).dimm(128))
                .build(),
            "db",
            4_096 + 256 + 128,
            "all 2 memory slots are taken (2 devices); a hot plug of 128 MiB needs one more",
        ),
        (
            "more devices than slots",
            snapshot()
                .max_memory_slots(1)
                .host(host("h1"))
                .vm(db().memory_mb(4_096 + 256).dimm(128).dimm(128))
                .build(),
            "db",
            4_096,
            "memory_devices: 2 devices, more than the 1 memory slots allowed",
        ),
        (
            "shrink below the guaranteed memory",
            snapshot()
                .host(host("h1"))
                .vm(db_with_dimms().min_guaranteed_mb(5_000))
                .build(),
            "db",
            4_096 + 768,
            "new memory size 4864 MiB is below its guaranteed memory of 5000 MiB",
        ),
        (
            "hugepage size does not divide the plug",
            snapshot()
                .host(host("h1").hugepages(1_048_576, 8))
                .vm(db().hugepages(1_048_576))
                .build(),
            "db",
            4_096 + 512,
            "a hot plug of 512 MiB is not a whole number of the VM's 1048576 KiB hugepages",
        ),
    ];
    for (case, s, id, to, expected) in cases {
        let c = cluster(s);
        let err = policy.hot_set_memory(&c, id, to).unwrap_err().to_string();
        assert!(err.contains(expected), "{case}: {err}");
        assert_eq!(c.pending_record_count(), 0, "{case}");
    }
    // A ppc64 plug of 256 MiB is fine; the same size is an unchanged no-op.
    let c = cluster(
        snapshot()
            .architecture(Architecture::Ppc64)
            .host(host("h1"))
            .vm(db())
            .build(),
    );
    let plan = policy.hot_set_memory(&c, "db", 4_096).unwrap();
    assert!(matches!(plan.change, MemoryChange::Unchanged));
    let plan = policy.hot_set_memory(&c, "db", 4_096 + 256).unwrap();
    assert_eq!(plan.factor_mb, 256);
    assert!(matches!(plan.change, MemoryChange::Plug { .. }), "{plan}");
}
