//! Bad input: every case gets a clear error naming the file and the field or reason, and a
//! rejected module never replaces or disturbs a working one.

use integration_tests::{max_vms_wasm, runtime, wat, wat_module};
use policy_sdk::testing::{host, snapshot, vm};
use policy_sdk::wire::abi::ABI_VERSION;
use wasmsched::{parse_document, Format};
use wasmsched::{Cluster, Error, Policy, ScheduleRequest};

fn message(e: Error) -> String {
    e.to_string()
}

#[test]
fn malformed_or_schema_violating_documents_name_file_and_field() {
    let cases: &[(&str, Format, &str, &[&str])] = &[
        (
            "cluster.json",
            Format::Json,
            r#"{"hosts": [{"id": "a", "cpu": {"sockets": -1}}]}"#,
            &["cluster.json", "hosts[0].cpu.sockets"],
        ),
        (
            "cluster.json",
            Format::Json,
            r#"{"hosts": [{"id": "a", "stauts": "up"}]}"#,
            &["cluster.json", "hosts[0]", "stauts"],
        ),
        (
            "cluster.json",
            Format::Json,
            r#"{"hosts": [{"id": "a", "status": "sleeping"}]}"#,
            &["hosts[0].status", "sleeping"],
        ),
        (
            "cluster.json",
            Format::Json,
            r#"{"hosts": [ {"id": "a"} "#,
            &["cluster.json", "EOF"],
        ),
        (
            "cluster.toml",
            Format::Toml,
            "[[hosts]]\nid = \"a\"\n[hosts.memory]\nfree_mb = \"lots\"\n",
            &["cluster.toml", "hosts[0].memory.free_mb", "line"],
        ),
    ];
    for (label, format, text, needles) in cases {
        let err =
            message(parse_document::<policy_sdk::Snapshot>(text, *format, label).unwrap_err());
        for needle in *needles {
            assert!(err.contains(needle), "{text}: {err:?} lacks {needle:?}");
        }
    }
    let vm_err = message(
        parse_document::<policy_sdk::Vm>(
            r#"{"id": "v", "memory_mb": "4G"}"#,
            Format::Json,
            "vm.json",
        )
        .unwrap_err(),
    );
    assert!(vm_err.contains("vm.json: memory_mb"), "{vm_err}");
}

/// Regression (nonsense accepted silently): documents and clusters that cannot describe a
/// real cluster are errors naming the file and field, whatever their origin.
#[test]
fn regression_nonsense_clusters_and_vms_are_errors_naming_the_field() {
    let doc_cases: &[(&str, &str)] = &[
        // serde fills a struct from an array of its fields: `[]` was an empty cluster.
        ("[]", "c.json: hosts: the cluster has no hosts"),
        ("{}", "c.json: hosts: the cluster has no hosts"),
    ];
    for (text, expected) in doc_cases {
        let err = parse_document::<policy_sdk::Snapshot>(text, Format::Json, "c.json")
            .and_then(|s| Cluster::new(s, "c.json"))
            .unwrap_err();
        assert!(message(err).starts_with(expected), "{text:?}");
    }
    let base = || host("a").cpu(2, 4, 2);
    let cluster_cases: Vec<(policy_sdk::Snapshot, &str)> = vec![
        (
            snapshot().host(base().dedicated_cpus([1, 16])).build(),
            "c.json: hosts[0].dedicated_cpus[1]: pCPU 16 does not exist: the host has 16",
        ),
        (
            snapshot().host(base().online_cpus([0, 99])).build(),
            "c.json: hosts[0].online_cpus[1]: pCPU 99 does not exist",
        ),
        (
            snapshot()
                .host(base().numa_node(0, [0, 1], 1_024).numa_node(0, [2], 1_024))
                .build(),
            "c.json: hosts[0].numa_nodes[1].index: NUMA node 0 is listed twice",
        ),
        (
            snapshot()
                .host(base().numa_node(0, [0, 1], 1_024).numa_node(1, [1, 2], 1_024))
                .build(),
            "c.json: hosts[0].numa_nodes[1].cpus: pCPU 1 is in NUMA node 0 too",
        ),
        (
            snapshot().host(base().numa_node(0, [0, 40], 1_024)).build(),
            "c.json: hosts[0].numa_nodes[0].cpus[1]: pCPU 40 does not exist",
        ),
        (
            snapshot().host(base().memory_mb(1_024).free_mb(2_048)).build(),
            "c.json: hosts[0].memory.free_mb: 2048 MiB free is more than the 1024 MiB",
        ),
        (
            snapshot().host(base().cpu_usage(101)).build(),
            "c.json: hosts[0].cpu_usage_percent: 101% is more than 100%",
        ),
        (
            snapshot().overcommit_percent(0).host(base()).build(),
            "c.json: cluster.memory_overcommit_percent: 0 is out of range",
        ),
        (
            snapshot().overcommit_percent(u32::MAX).host(base()).build(),
            "c.json: cluster.memory_overcommit_percent: 4294967295 is out of range",
        ),
        (
            snapshot().host(host("a\nforged log line")).build(),
            "c.json: hosts[0].id: contains the control character '\\n'",
        ),
        (
            snapshot()
                .host(base())
                .vm(vm("v").memory_mb(2_048).min_guaranteed_mb(4_096))
                .build(),
            "c.json: vms[0].min_guaranteed_memory_mb: 4096 MiB is more than the VM's memory_mb",
        ),
        (
            snapshot()
                .host(base())
                .vm(vm("v").memory_mb(4_096).vcpus(2).vnuma(0, 1_024, [0], &[]).vnuma(1, 1_024, [1], &[]))
                .build(),
            "c.json: vms[0].numa_nodes: the vNUMA nodes' memory adds up to 2048 MiB, the VM has 4096 MiB",
        ),
    ];
    for (snapshot, expected) in cluster_cases {
        let err = message(Cluster::new(snapshot, "c.json").unwrap_err());
        assert!(err.starts_with(expected), "\n got: {err}\nwant: {expected}");
    }
    // The same rules for a VM in a request.
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = Cluster::new(snapshot().host(base()).build(), "c.json").unwrap();
    let request = ScheduleRequest::new(vm("r").memory_mb(1_024).min_guaranteed_mb(2_048).build());
    let err = message(policy.schedule(&c, &request).unwrap_err());
    assert!(
        err.starts_with("VM \"r\": min_guaranteed_memory_mb: 2048 MiB is more"),
        "{err}"
    );
}

#[test]
fn inconsistent_clusters_are_rejected_naming_the_field() {
    let dup = snapshot().host(host("a")).host(host("a")).build();
    assert_eq!(
        message(Cluster::new(dup, "c.json").unwrap_err()),
        "c.json: hosts[1].id: duplicate host id \"a\""
    );
    let orphan = snapshot()
        .host(host("a"))
        .vm(vm("v").current_host("nowhere"))
        .build();
    assert_eq!(
        message(Cluster::new(orphan, "c.json").unwrap_err()),
        "c.json: vms[0].current_host: unknown host \"nowhere\""
    );
}

#[test]
fn invalid_policies_name_the_file_and_field() {
    let rt = runtime();
    let cases: &[(&str, &str)] = &[
        ("name = \"p\"\n[[filters]]\nunit = \"memroy\"\n", "p.toml: filters[0].unit: no filter unit named \"memroy\" is loaded (known filters: cpu, cpu-level, cpu-pinning, hugepages, memory, numa, vm-affinity)"),
        ("name = \"p\"\n[[filters]]\nunit = \"cpu-load\"\n", "p.toml: filters[0].unit: unit \"cpu-load\" is a weight, not a filter"),
        ("name = \"p\"\n[[filters]]\nunit = \"memory\"\n[filters.params]\noverhead_mb = \"big\"\n", "p.toml: filters[0].params.overhead_mb: expected int in 0..=65536, got \"big\""),
        ("name = \"p\"\n[[filters]]\nunit = \"memory\"\n[filters.params]\noverhead_mb = 100000\n", "p.toml: filters[0].params.overhead_mb: expected int in 0..=65536, got 100000"),
        ("name = \"p\"\n[[filters]]\nunit = \"memory\"\n[filters.params]\noverhaed_mb = 1\n", "p.toml: filters[0].params.overhaed_mb: unit \"memory\" has no parameter \"overhaed_mb\" (it has: overhead_mb)"),
        ("name = \"p\"\n[[filters]]\nunit = \"memory\"\nfactor = 2\n", "p.toml: filters[0].factor: only weights take a factor"),
        ("name = \"p\"\n[[weights]]\nunit = \"cpu-load\"\nfactor = -1\n", "p.toml: weights[0].factor: must be in 0..=1000000, got -1"),
        ("name = \"p\"\n[[weights]]\nunit = \"cpu-load\"\n[[weights]]\nunit = \"cpu-load\"\n", "p.toml: weights[1].unit: unit \"cpu-load\" is listed twice"),
        ("name = \"p\"\nselector = \"random\"\n", "p.toml: selector: unknown variant `random`"),
        ("name = \"p\"\n[[filters]]\nunit = \"memory\"\ndeadline_ms = 0\n", "p.toml: filters[0].deadline_ms: must be in 1..=600000, got 0"),
        ("nmae = \"p\"\n", "p.toml: nmae: unknown field `nmae`, expected one of `name`"),
        // Regression (the TOML parser's own overflow error named only the line).
        ("name = \"p\"\n[[filters]]\nunit = \"memory\"\ndeadline_ms = 99999999999999999999\n", "p.toml: filters[0].deadline_ms: "),
        ("name = \"p\"\n[[filters]]\nunit = \"cpu\"\n[[filters]]\nunit = \"memory\"\nmemory_limit_mb = 18446744073709551616\n", "p.toml: filters[1].memory_limit_mb: "),
        ("name = \"p\"\n[[filters]]\nunit = \"memory\"\n[filters.params]\noverhead_mb = 99999999999999999999\n", "p.toml: filters[0].params.overhead_mb: "),
    ];
    for (text, expected) in cases {
        let err = message(Policy::parse(&rt, text, Format::Toml, "p.toml").unwrap_err());
        assert!(
            err.starts_with(expected),
            "policy {text:?}\n got: {err}\nwant: {expected}"
        );
    }
    let json = Policy::parse(
        &rt,
        r#"{"name": "p", "weights": [{"unit": "cpu-load", "factor": "x"}]}"#,
        Format::Json,
        "p.json",
    );
    assert!(message(json.unwrap_err()).starts_with("p.json: weights[0].factor: invalid type"));
}

#[test]
fn bad_modules_are_rejected_at_load_with_the_file_name_and_reason() {
    let rt = runtime();
    let builtin_units = rt.units().len();
    // A manifest that is not bincode: pointer 2048, 8 bytes of 0xff.
    let bad_manifest = wat_module(
        ABI_VERSION,
        (2048u64 << 32) | 8,
        r#"(data (i32.const 2048) "\ff\ff\ff\ff\ff\ff\ff\ff")"#,
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("notes.wasm", b"plain text, not wasm".to_vec(), "module notes.wasm: not a WebAssembly module"),
        ("truncated.wasm", b"\0asm\x01\0\0\0\x01".to_vec(), "module truncated.wasm: does not compile"),
        ("abi99.wasm", wat_module(99, 0, ""), "module abi99.wasm: ABI version 99 is not supported; this host accepts 11..=11"),
        ("abi1.wasm", wat_module(1, 0, ""), "module abi1.wasm: ABI version 1 is not supported; this host accepts 11..=11"),
        ("abi2.wasm", wat_module(2, 0, ""), "module abi2.wasm: ABI version 2 is not supported; this host accepts 11..=11"),
        ("abi4.wasm", wat_module(4, 0, ""), "module abi4.wasm: ABI version 4 is not supported; this host accepts 11..=11"),
        ("abi5.wasm", wat_module(5, 0, ""), "module abi5.wasm: ABI version 5 is not supported; this host accepts 11..=11"),
        ("abi6.wasm", wat_module(6, 0, ""), "module abi6.wasm: ABI version 6 is not supported; this host accepts 11..=11"),
        ("abi7.wasm", wat_module(7, 0, ""), "module abi7.wasm: ABI version 7 is not supported; this host accepts 11..=11"),
        ("abi8.wasm", wat_module(8, 0, ""), "module abi8.wasm: ABI version 8 is not supported; this host accepts 11..=11"),
        ("abi9.wasm", wat_module(9, 0, ""), "module abi9.wasm: ABI version 9 is not supported; this host accepts 11..=11"),
        ("abi10.wasm", wat_module(10, 0, ""), "module abi10.wasm: ABI version 10 is not supported; this host accepts 11..=11"),
        (
            "nobatch.wasm",
            wat(&format!(
                r#"(module (memory (export "memory") 1)
                (func (export "wasmsched_abi_version") (result i32) i32.const {ABI_VERSION})
                (func (export "wasmsched_input") (param i32) (result i32) i32.const 1024)
                (func (export "wasmsched_manifest") (result i64) i64.const 0)
                (func (export "wasmsched_sync") (param i32) (result i64) i64.const 0)
                (func (export "wasmsched_call") (param i32) (result i64) i64.const 0))"#
            )),
            "module nobatch.wasm: missing export `wasmsched_batch`",
        ),
        ("empty.wasm", wat("(module (memory (export \"memory\") 1))"), "module empty.wasm: missing export `wasmsched_abi_version`"),
        ("nomem.wasm", wat("(module)"), "module nomem.wasm: missing export `memory`"),
        (
            "wasi.wasm",
            wat_module(ABI_VERSION, 0, r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#),
            "module wasi.wasm: imports `wasi_snapshot_preview1::fd_write`, which the host does not provide",
        ),
        (
            "badlog.wasm",
            wat_module(ABI_VERSION, 0, r#"(import "wasmsched" "log" (func (param i32)))"#),
            "module badlog.wasm: imports `wasmsched::log`",
        ),
        ("manifest.wasm", bad_manifest, "module manifest.wasm: manifest: bad output: result does not decode"),
        ("outside.wasm", wat_module(ABI_VERSION, (0xffff_0000u64 << 32) | 16, ""), "module outside.wasm: manifest: bad output: result at 0xffff0000"),
        (
            "wrongtype.wasm",
            wat("(module (memory (export \"memory\") 1) (func (export \"wasmsched_abi_version\") (result i64) i64.const 1))"),
            "module wrongtype.wasm: export `wasmsched_abi_version` has the wrong type; expected () -> (i32)",
        ),
    ];
    for (file, bytes, expected) in cases {
        let err = message(rt.load_module(file, &bytes).unwrap_err());
        assert!(
            err.starts_with(expected),
            "{file}\n got: {err}\nwant: {expected}"
        );
    }
    // Nothing was registered and the builtins still serve.
    assert_eq!(rt.units().len(), builtin_units);
    let d = Policy::builtin_default(&rt)
        .unwrap()
        .schedule(
            &Cluster::new(snapshot().host(host("a")).build(), "<t>").unwrap(),
            &ScheduleRequest::new(vm("v").build()),
        )
        .unwrap();
    assert_eq!(d.chosen.as_deref(), Some("a"));
}

#[test]
fn a_policy_directory_loads_good_modules_and_reports_bad_ones_by_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(max_vms_wasm(), dir.path().join("max_vms.wasm")).unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"\0asm garbage").unwrap();
    std::fs::write(dir.path().join("README.txt"), b"ignored").unwrap();
    let rt = runtime();
    let report = rt.load_dir(dir.path()).unwrap();
    assert_eq!(report.loaded.len(), 1);
    assert_eq!(report.rejected.len(), 1);
    assert!(message(report.rejected.into_iter().next().unwrap()).contains("broken.wasm"));
    assert!(rt.unit("max-vms-per-host").is_some());
}

#[test]
fn a_unit_name_already_taken_is_refused_without_touching_the_registry() {
    let rt = runtime();
    rt.load_file(&max_vms_wasm()).unwrap();
    let before = rt.units().len();
    let err = message(rt.load_file(&max_vms_wasm()).unwrap_err());
    assert!(
        err.contains("unit \"max-vms-per-host\" is already provided by"),
        "{err}"
    );
    assert_eq!(rt.units().len(), before);
}

#[test]
fn invalid_vm_requests_are_errors_naming_the_field() {
    let rt = runtime();
    let p = Policy::builtin_default(&rt).unwrap();
    let c = Cluster::new(snapshot().host(host("a")).build(), "<t>").unwrap();
    let err = message(
        p.schedule(&c, &ScheduleRequest::new(vm("v").cpu(0, 1, 1).build()))
            .unwrap_err(),
    );
    assert!(err.contains("VM \"v\": cpu"), "{err}");
    let err = message(
        p.schedule(&c, &ScheduleRequest::new(vm("").build()))
            .unwrap_err(),
    );
    assert!(err.contains("id: must not be empty"), "{err}");
}

/// Every failure has a kind a surface maps to a status (HTTP 400/404/409/422/502, exit
/// codes): invalid input, something unknown, a request that cannot follow the state, a
/// rejected module, an I/O failure, a unit fault.
#[test]
fn error_kinds_let_a_surface_map_each_failure() {
    use wasmsched::{ErrorKind, MigrationTrigger};
    let rt = runtime();
    let policy = Policy::builtin_default(&rt).unwrap();
    let c = Cluster::new(
        snapshot().host(host("h1")).vm(vm("down").build()).build(),
        "<test>",
    )
    .unwrap();
    let cases: Vec<(&str, Error, ErrorKind)> = vec![
        (
            "a VM without an id",
            policy
                .schedule(&c, &ScheduleRequest::new(vm("").build()))
                .unwrap_err(),
            ErrorKind::InvalidInput,
        ),
        (
            "a malformed cluster document",
            parse_document::<policy_sdk::Snapshot>("{\"hosts\": 3}", Format::Json, "c.json")
                .unwrap_err(),
            ErrorKind::InvalidInput,
        ),
        (
            "an unknown VM",
            policy
                .migrate(&c, "ghost", MigrationTrigger::UserForced)
                .unwrap_err(),
            ErrorKind::NotFound,
        ),
        (
            "an unknown host",
            c.set_host_status("nowhere", policy_sdk::HostStatus::Down)
                .unwrap_err(),
            ErrorKind::NotFound,
        ),
        (
            "an unknown builtin policy",
            Policy::builtin(&rt, "nonesuch").unwrap_err(),
            ErrorKind::NotFound,
        ),
        (
            "migrating a VM that does not run",
            policy
                .migrate(&c, "down", MigrationTrigger::UserForced)
                .unwrap_err(),
            ErrorKind::Conflict,
        ),
        (
            "a memory hot set of a VM that does not run",
            policy.hot_set_memory(&c, "down", 4_096).unwrap_err(),
            ErrorKind::Conflict,
        ),
        (
            "a module that is not wasm",
            rt.load_module("junk.wasm", b"not wasm").unwrap_err(),
            ErrorKind::ModuleRejected,
        ),
        (
            "a cluster file that does not exist",
            Cluster::from_file("/nonexistent/cluster.json".as_ref()).unwrap_err(),
            ErrorKind::Io,
        ),
    ];
    for (what, err, kind) in cases {
        assert_eq!(err.kind(), kind, "{what}: {err}");
    }
}
