//! End-to-end tests of the `wasmsched` binary: real builtin modules, real files.

mod common;

use common::example_unit;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn wasmsched(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmsched"))
        .args(args)
        .arg("--no-cache")
        .current_dir(repo())
        .output()
        .expect("wasmsched runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn demo_prints_decisions_with_reasons() {
    let out = wasmsched(&["demo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // A VM that fits somewhere gets a host; one that fits nowhere explains why.
    assert!(
        text.contains("VM web-1: 5/6 hosts available, chose"),
        "{text}"
    );
    assert!(text.contains("VM huge: 0/6 hosts available: "), "{text}");
    assert!(text.contains("memory: not enough"), "{text}");
    assert!(text.contains("1 host is maintenance"), "{text}");
    assert!(text.contains("rejected"), "{text}");
}

#[test]
fn demo_json_is_a_list_of_decisions() {
    let out = wasmsched(&["demo", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let decisions = value.as_array().expect("an array");
    assert_eq!(decisions.len(), 4);
    assert_eq!(decisions[0]["vm"], "web-1");
    assert!(decisions[0]["chosen"].is_string());
    assert!(decisions[3]["chosen"].is_null());
}

#[test]
fn schedule_uses_a_custom_unit_dropped_into_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(example_unit(), dir.path().join("max_vms_per_host.wasm")).unwrap();
    let policies = dir.path().to_str().unwrap();
    let out = wasmsched(&[
        "schedule",
        "--policies",
        policies,
        "--policy",
        "examples/policies/max-vms.toml",
        "--cluster",
        "examples/clusters/small.json",
        "--vm",
        "examples/vms/web.json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // rack1-b runs 16 VMs in the sample cluster: over the limit of 10 set by the policy.
    assert!(text.contains("max-vms-per-host: too_many_vms"), "{text}");

    let units = wasmsched(&["units", "--policies", policies]);
    assert!(
        stdout(&units).contains("max-vms-per-host"),
        "{}",
        stdout(&units)
    );
}

#[test]
fn schedule_exits_3_when_no_host_fits() {
    let out = wasmsched(&[
        "schedule",
        "--cluster",
        "examples/clusters/small.json",
        "--vm",
        "examples/vms/huge.json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).contains("0/6 hosts available"));
}

#[test]
fn units_lists_builtins_with_kind_and_parameters() {
    let out = wasmsched(&["units"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for unit in ["memory", "cpu", "cpu-load", "free-memory"] {
        assert!(
            text.lines().any(|l| l.starts_with(unit)),
            "{unit} missing in {text}"
        );
    }
    assert!(text.contains("overhead_mb"), "{text}");
}

#[test]
fn check_validates_a_module_and_prints_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let out = wasmsched(&["builtins", "--out", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let module = dir.path().join("basic.wasm");
    let out = wasmsched(&["check", module.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for part in [
        "ok, the engine loads it",
        "module basic",
        "imports wasmsched.log",
        "trial passed",
        "- overhead_mb: int in 0..=65536 = 64",
    ] {
        assert!(text.contains(part), "{part:?} missing from\n{text}");
    }
}

#[test]
fn check_rejects_a_file_that_is_not_wasm_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.wasm");
    std::fs::write(&path, "hello").unwrap();
    let out = wasmsched(&["check", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("notes.wasm") && err.contains("not a WebAssembly module"),
        "{err}"
    );
}

#[test]
fn schedule_names_file_and_field_of_a_malformed_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-cluster.json");
    std::fs::write(
        &path,
        r#"{"hosts": [{"id": "a"}, {"id": "b", "memory": {"free_mb": "lots"}}]}"#,
    )
    .unwrap();
    let out = wasmsched(&[
        "schedule",
        "--cluster",
        path.to_str().unwrap(),
        "--vm",
        "examples/vms/web.json",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("bad-cluster.json") && err.contains("hosts[1].memory.free_mb"),
        "{err}"
    );
}

const MASS_START: [&str; 5] = [
    "simulate",
    "--cluster",
    "examples/mass-start/cluster.json",
    "--events",
    "examples/mass-start/events.json",
];

#[test]
fn simulate_replays_the_mass_start_example() {
    let out = wasmsched(&MASS_START);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("#0 start web-1, web-2, "), "{text}");
    // Each web VM of the enforcing negative group gets a host of its own, one by one.
    assert!(text.contains("  web-1 -> host-"), "{text}");
    assert!(text.contains("(1/8 hosts available)"), "{text}");
    // One VM fits nowhere once the others' pending memory counts; that is not an error.
    assert!(
        text.contains("  batch-big: no host: 0/8 hosts available: "),
        "{text}"
    );
    assert!(text.contains("scheduled again without "), "{text}");
    assert!(text.contains("  pending: "), "{text}");
    assert!(text.contains("\nsummary: "), "{text}");
    assert!(text.contains("1 not placed (batch-big)"), "{text}");
}

#[test]
fn simulate_json_puts_the_eight_web_vms_on_eight_hosts() {
    let mut args = MASS_START.to_vec();
    args.push("--json");
    let out = wasmsched(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let outcomes = value["outcomes"].as_array().expect("outcomes");
    let start = &outcomes[0];
    assert_eq!(start["event"]["event"], "start");
    let web: Vec<&serde_json::Value> = start["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["vm"].as_str().unwrap().starts_with("web-"))
        .collect();
    assert_eq!(web.len(), 8);
    let hosts: std::collections::BTreeSet<&str> = web
        .iter()
        .map(|d| d["chosen"].as_str().expect("every web VM is placed"))
        .collect();
    assert_eq!(hosts.len(), 8, "{hosts:?}");
    // Every host has something pending after the mass start.
    assert_eq!(start["pending"].as_array().unwrap().len(), 8);
    let summary = &value["summary"];
    assert_eq!(summary["not_placed"], serde_json::json!(["batch-big"]));
    assert_eq!(summary["events"], outcomes.len());
    assert_eq!(summary["hosts"].as_array().unwrap().len(), 8);
}

#[test]
fn simulate_names_the_event_of_an_unknown_vm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo-events.json");
    std::fs::write(
        &path,
        r#"{"events": [{"event": "start", "vms": ["web-1"]}, {"event": "vm_up", "vm": "web-11"}]}"#,
    )
    .unwrap();
    let out = wasmsched(&[
        "simulate",
        "--cluster",
        "examples/mass-start/cluster.json",
        "--events",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("typo-events.json")
            && err.contains("events[1].vm")
            && err.contains("\"web-11\""),
        "{err}"
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

#[test]
fn simulate_reads_toml_events_and_names_an_unknown_host() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.toml");
    std::fs::write(
        &path,
        "[[events]]\nevent = \"start\"\nvms = [\"web-1\"]\n\n\
         [[events]]\nevent = \"host_down\"\nhost = \"host-80\"\n",
    )
    .unwrap();
    let out = wasmsched(&[
        "simulate",
        "--cluster",
        "examples/mass-start/cluster.json",
        "--events",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("events.toml: events[1].host: unknown host \"host-80\""),
        "{err}"
    );
}

#[test]
fn schedule_places_the_hp_examples_with_numa_and_pinning_reservations() {
    let out = wasmsched(&[
        "schedule",
        "--cluster",
        "examples/hp/cluster.json",
        "--vm",
        "examples/hp/vms/db-numa.json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "64 hugepages of 1048576 KiB, 32768 MiB on NUMA node 0, 32768 MiB on NUMA node 1"
        ),
        "{text}"
    );
    assert!(text.contains("hugepages: not_enough_hugepages"), "{text}");
    let out = wasmsched(&[
        "schedule",
        "--cluster",
        "examples/hp/cluster.json",
        "--vm",
        "examples/hp/vms/ml-train.json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("cpu-pinning: pcpu_offline: pinned pCPU(s) 18 offline or absent"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn migrate_honours_migration_modes_and_host_maintenance() {
    let args = |extra: &[&str]| {
        let mut a = vec!["migrate", "--cluster", "examples/hp/cluster.json"];
        a.extend_from_slice(extra);
        wasmsched(&a)
    };
    let out = args(&["--vm", "trading-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("VM trading-1 (manual-only, user-forced migration): hp-1 -> hp-2"),
        "{}",
        stdout(&out)
    );
    let out = args(&["--vm", "trading-1", "--trigger", "automatic"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).contains("automatic migration of a manual-only VM is not allowed"));
    let out = args(&["--host", "hp-1", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "pinned-to-host VM stays: {}",
        stderr(&out)
    );
    let plans: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let kinds: Vec<&str> = plans
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["scheduled", "scheduled", "not_allowed"]);
    // The HP VM (manual-only by default) is warned about twice: HP, and manual-only.
    assert_eq!(plans[0]["warnings"].as_array().unwrap().len(), 2);
    let out = args(&["--vm", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("\"nope\": not in the cluster"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn memory_plans_a_plug_an_exact_unplug_and_names_bad_sizes() {
    let run = |to: &str, json: bool| {
        let mut args = vec![
            "memory",
            "--cluster",
            "examples/memory/cluster.json",
            "--vm",
            "db-1",
            "--to",
            to,
        ];
        if json {
            args.push("--json");
        }
        wasmsched(&args)
    };
    // Grow 10752 -> 12 GiB: one 1536 MiB DIMM, pending on h1.
    let out = run("12G", false);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("plug dimm4: 1536 MiB on guest node 0"),
        "{text}"
    );
    assert!(text.contains("<size unit='KiB'>1572864</size>"), "{text}");
    assert!(
        text.contains("pending on h1 until confirmed or failed: hot-plugged memory 1536 MiB"),
        "{text}"
    );
    // Shrink by 1024 MiB over DIMMs 768, 512, 512, 768: the two 512s (greedy would take
    // a 768 and stop short).
    let out = run("9728M", true);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(plan["change"]["kind"], "unplug");
    let ids: Vec<&str> = plan["change"]["dimms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dimm1", "dimm2"]);
    // 256 MiB less has no exact subset: exit code 3 and the nearest sizes.
    let out = run("10496", false);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("no exact unplug"), "{text}");
    assert!(
        text.contains("nearest above: -512 MiB (to 10240 MiB)"),
        "{text}"
    );
    // Bad sizes name the value.
    for (to, expected) in [
        (
            "10000",
            "changes the memory by 752 MiB, which is not a multiple of 128 MiB",
        ),
        ("1.5G", "--to: memory size \"1.5G\": unknown suffix"),
    ] {
        let out = run(to, false);
        assert_eq!(out.status.code(), Some(1), "{to}");
        assert!(stderr(&out).contains(expected), "{to}: {}", stderr(&out));
    }
}

/// Regression (`wasmsched units | head -1` panicked with exit 101 on the closed pipe): the
/// reader goes away before the output is written; the process ends quietly, as Unix tools
/// do, without a panic.
#[test]
fn regression_a_closed_output_pipe_ends_the_command_without_a_panic() {
    use std::process::Stdio;
    for args in [&["units"][..], &["demo"][..], &["units", "--json"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wasmsched"))
            .args(args)
            .arg("--no-cache")
            .current_dir(repo())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader closes before anything is written
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {err}");
    }
}

/// Regression (ANSI colours were written into log files): logs going anywhere but a
/// terminal carry no escape sequences.
#[test]
fn regression_logs_written_to_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().to_str().unwrap();
    assert!(wasmsched(&["builtins", "--out", policies]).status.success());
    // `watch` logs every module it loads (info).
    let out = wasmsched(&["watch", "--policies", policies, "--exit-after", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(!err.is_empty(), "debug logging produced nothing");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

/// Regression (`watch --json` printed a human line before its JSON): standard output is
/// one JSON document.
#[test]
fn regression_watch_json_prints_only_json_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let out = wasmsched(&[
        "watch",
        "--policies",
        dir_arg,
        "--exit-after",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let value: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
    assert!(value["modules"].is_array(), "{value}");
    assert!(stderr(&out).contains("watching"), "{}", stderr(&out));
}

/// Regression (inputs accepted silently or reported without the file or flag at fault):
/// each is an error naming what is wrong.
#[test]
fn regression_bad_command_line_inputs_name_the_flag_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let bad_vm = dir.path().join("bad-vm.json");
    std::fs::write(
        &bad_vm,
        r#"{"id": "v", "memory_mb": 1024, "min_guaranteed_memory_mb": 2048}"#,
    )
    .unwrap();
    let policies = dir.path().to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "watch",
                "--policies",
                policies,
                "--settle-ms",
                "18446744073709551615",
            ],
            "--settle-ms",
        ),
        (
            vec![
                "schedule",
                "--cluster",
                "examples/clusters/small.json",
                "--vm",
                "examples/vms/web.json",
                "--blacklist",
                "host-1,host-99",
            ],
            "--blacklist: unknown host \"host-99\"",
        ),
        (
            vec![
                "schedule",
                "--cluster",
                "examples/clusters/small.json",
                "--vm",
                "examples/vms/web.json",
                "--whitelist",
                "nowhere",
            ],
            "--whitelist: unknown host \"nowhere\"",
        ),
        (
            vec!["builtins", "--out", file.to_str().unwrap()],
            "not-a-dir: exists and is not a directory",
        ),
        (
            vec![
                "schedule",
                "--cluster",
                "examples/clusters/small.json",
                "--vm",
                bad_vm.to_str().unwrap(),
            ],
            "bad-vm.json: VM \"v\": min_guaranteed_memory_mb: 2048 MiB is more",
        ),
        (
            vec![
                "balance",
                "--cluster",
                "examples/clusters/small.json",
                "--policy",
                "nonesuch",
            ],
            "nonesuch",
        ),
    ];
    for (args, expected) in cases {
        let out = wasmsched(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = stderr(&out);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// Regression (nothing was logged when a fixed file brought back the serving version): a
/// module is broken in place, then the serving version is put back; the watcher says the
/// file is fixed.
#[test]
fn regression_watch_logs_a_file_fixed_by_putting_the_serving_version_back() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(example_unit()).unwrap();
    let module = dir.path().join("max_vms.wasm");
    let put = |bytes: &[u8]| {
        let tmp = dir.path().join(".incoming");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &module).unwrap();
    };
    put(&good);
    let child = Command::new(env!("CARGO_BIN_EXE_wasmsched"))
        .args(["watch", "--policies", dir.path().to_str().unwrap()])
        .args(["--settle-ms", "0", "--exit-after", "14", "--no-cache"])
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Generous pauses: each step is seen by the watcher on a loaded 2-core machine too.
    std::thread::sleep(std::time::Duration::from_millis(5_000));
    put(b"\0asm broken");
    std::thread::sleep(std::time::Duration::from_millis(4_000));
    put(&good);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("rejected") || err.contains("refused"), "{err}");
    assert!(err.contains("file fixed"), "{err}");
}
