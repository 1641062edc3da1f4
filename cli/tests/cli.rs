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

/// `units` said `(string)` in text where `--json` said `"str"`: every parameter's type word is
/// now the same in both.
#[test]
fn regression_units_text_and_json_name_parameter_types_with_the_same_word() {
    let text = stdout(&wasmsched(&["units"]));
    let out = wasmsched(&["units", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut words = std::collections::BTreeSet::new();
    for unit in report["units"].as_array().unwrap() {
        for param in unit["params"].as_array().unwrap() {
            let word = match &param["ty"] {
                serde_json::Value::String(word) => word.clone(),
                serde_json::Value::Object(map) => map.keys().next().unwrap().clone(),
                other => panic!("unexpected type {other}"),
            };
            let name = param["name"].as_str().unwrap();
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("- {name} = ")))
                .unwrap_or_else(|| panic!("{name} missing in {text}"));
            assert!(line.contains(&format!("({word}")), "{word}: {line}");
            words.insert(word);
        }
    }
    // The builtins declare int and bool parameters (every type's word is checked in
    // policy-sdk's `param_type_words_are_the_same_in_text_and_json`).
    for word in ["int", "bool"] {
        assert!(words.contains(word), "no {word} parameter in {words:?}");
    }
}

#[test]
fn check_validates_a_module_and_prints_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let out = wasmsched(&["builtins", "--out", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let module = dir.path().join("scheduling.wasm");
    let out = wasmsched(&["check", module.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for part in [
        "ok, the engine loads it",
        "module scheduling",
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmsched"))
        .args(["watch", "--policies", dir.path().to_str().unwrap()])
        .args(["--settle-ms", "0", "--exit-after", "120", "--no-cache"])
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Each step waits for the watcher to log the previous one (a loaded 2-core machine
    // may take seconds to compile the module), not for a fixed time.
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr_pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr_pipe).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let mut wait_for = |wanted: &[&str]| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !wanted.iter().any(|w| log.contains(w)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    log.push_str(&line);
                    log.push('\n');
                }
                Err(_) => panic!("waited for {wanted:?}; the watcher logged:\n{log}"),
            }
        }
    };
    wait_for(&["watching"]);
    put(b"\0asm broken");
    wait_for(&["rejected", "refused"]);
    put(&good);
    wait_for(&["file fixed"]);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the watcher kept running through the broken file"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The tokens of the explain line of `weight` under `host` (`weight cpu-load raw 5 rank 4
/// x 2 = 8`).
fn explain_weight_line(text: &str, host: &str, weight: &str) -> Vec<String> {
    let mut in_host = false;
    for line in text.lines() {
        if !line.starts_with(' ') {
            in_host = line.starts_with(&format!("{host} "));
        } else if in_host && line.trim_start().starts_with(&format!("weight {weight} ")) {
            return line.split_whitespace().map(str::to_string).collect();
        }
    }
    panic!("no weight {weight} under {host} in:\n{text}");
}

#[test]
fn schedule_explain_shows_every_filter_verdict_rank_factor_contribution_and_the_choice() {
    let args = [
        "schedule",
        "--cluster",
        "examples/clusters/small.json",
        "--vm",
        "examples/vms/web.json",
        "--explain",
    ];
    let out = wasmsched(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("how weights combine (rank selector):"),
        "{text}"
    );
    assert!(text.contains("lower is better"), "{text}");
    assert!(
        text.contains("host-5 (rack3-a): not a candidate: host is maintenance"),
        "{text}"
    );
    assert!(
        text.contains("host-4 (rack2-b): chosen, total 8\n  filters: memory pass, cpu pass, cpu-level pass, cpu-pinning pass, hugepages pass, numa pass, vm-affinity pass\n"),
        "{text}"
    );
    // host-4 has the lowest CPU load (5%) of the 5 candidates: rank 4, x2 = 8.
    assert_eq!(
        explain_weight_line(&text, "host-4", "cpu-load"),
        ["weight", "cpu-load", "raw", "5", "rank", "4", "x", "2", "=", "8"]
    );
    assert!(
        text.contains("choice: host-4 with the highest total 8; next host-2 with 7"),
        "{text}"
    );

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = wasmsched(&json_args);
    assert!(out.status.success(), "{}", stderr(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(value["selector"], "rank");
    assert_eq!(value["filters"].as_array().unwrap().len(), 7);
    assert_eq!(
        value["explanation"]["choice"],
        "host-4 with the highest total 8; next host-2 with 7"
    );
    assert!(value["explanation"]["text"]
        .as_str()
        .unwrap()
        .contains("choice: host-4"));
    // The same arithmetic as data: per weight the rank is the number of candidates with a
    // strictly higher raw penalty, the contribution rank x factor, the total their sum.
    let candidates: Vec<&serde_json::Value> = value["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["score"].is_number())
        .collect();
    assert_eq!(candidates.len(), 5);
    for (w, weight) in candidates[0]["weights"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let raws: Vec<i64> = candidates
            .iter()
            .map(|h| h["weights"][w]["raw"].as_i64().unwrap())
            .collect();
        for (h, host) in candidates.iter().enumerate() {
            let score = &host["weights"][w];
            let rank = raws.iter().filter(|r| **r > raws[h]).count() as i64;
            assert_eq!(score["unit"], weight["unit"]);
            assert_eq!(score["rank"], rank, "{score}");
            assert_eq!(
                score["contribution"].as_f64().unwrap(),
                (rank * score["factor"].as_i64().unwrap()) as f64,
                "{score}"
            );
        }
    }
    for host in &candidates {
        let sum: f64 = host["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["contribution"].as_f64().unwrap())
            .sum();
        assert_eq!(host["score"].as_f64().unwrap(), sum, "{host}");
    }
    let chosen = value["hosts"][3].clone();
    assert_eq!(chosen["outcome"]["kind"], "chosen");
    assert_eq!(chosen["weights"][0]["unit"], "cpu-load");
    assert_eq!(chosen["weights"][0]["raw"], 5);
    assert_eq!(chosen["weights"][0]["rank"], 4);
    assert_eq!(chosen["weights"][0]["factor"], 2);
    assert_eq!(chosen["weights"][0]["contribution"], 8.0);
}

/// Two hosts alike but for load and memory: `light` (10% CPU, 16 GiB) and `roomy` (50% CPU,
/// 64 GiB). A VM of 40 GiB fits only on `roomy`.
fn write_diff_inputs(dir: &Path) {
    let host = |id: &str, cpu: u32, memory_mb: u64| {
        serde_json::json!({
            "id": id, "name": id, "status": "up",
            "cpu": {"sockets": 1, "cores_per_socket": 16, "threads_per_core": 1},
            "memory": {"physical_mb": memory_mb, "free_mb": memory_mb, "committed_mb": 0,
                       "max_scheduling_mb": memory_mb, "swap_free_mb": 0},
            "cpu_usage_percent": cpu, "running_vms": 0
        })
    };
    let cluster = serde_json::json!({
        "cluster": {"id": "diff", "name": "diff", "memory_overcommit_percent": 100},
        "hosts": [host("light", 10, 16_384), host("roomy", 50, 65_536)],
        "vms": []
    });
    let vm = |id: &str, memory_mb: u64| {
        serde_json::json!({"id": id, "memory_mb": memory_mb,
            "cpu": {"sockets": 1, "cores_per_socket": 1, "threads_per_core": 1}})
    };
    let events = serde_json::json!({
        "vms": [vm("v1", 1024), vm("big", 40_960), vm("v2", 1024), vm("v3", 1024)],
        "events": [
            {"event": "start", "vms": ["v1", "big", "v2"]},
            {"event": "vm_up", "vm": "v1"},
            {"event": "start", "vms": ["v3"]}
        ]
    });
    std::fs::write(dir.join("cluster.json"), cluster.to_string()).unwrap();
    std::fs::write(dir.join("events.json"), events.to_string()).unwrap();
    for (name, cpu, memory) in [("memory-first", 1, 3), ("cpu-first", 3, 1)] {
        std::fs::write(
            dir.join(format!("{name}.toml")),
            format!(
                "name = \"{name}\"\n[[filters]]\nunit = \"memory\"\n[[filters]]\nunit = \"cpu\"\n\
                 [[weights]]\nunit = \"cpu-load\"\nfactor = {cpu}\n\
                 [[weights]]\nunit = \"free-memory\"\nfactor = {memory}\n"
            ),
        )
        .unwrap();
    }
}

#[test]
fn diff_reports_exactly_the_decisions_two_policies_make_differently() {
    let dir = tempfile::tempdir().unwrap();
    write_diff_inputs(dir.path());
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (cluster, events) = (file("cluster.json"), file("events.json"));
    let (a, b) = (file("memory-first.toml"), file("cpu-first.toml"));
    let base = ["diff", "--cluster", &cluster, "--events", &events];

    // memory x3 sends every VM to roomy; CPU x3 sends every VM that fits to light. `big`
    // fits only on roomy, so both agree on it.
    let mut args = base.to_vec();
    args.extend(["--policy", &a, "--policy", &b, "--json"]);
    let out = wasmsched(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(
        value["policies"],
        serde_json::json!(["memory-first", "cpu-first"])
    );
    assert_eq!(value["decisions"], 4);
    let differences: Vec<(u64, &str, &str, &str)> = value["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["event"].as_u64().unwrap(),
                d["vm"].as_str().unwrap(),
                d["a"]["chosen"].as_str().unwrap(),
                d["b"]["chosen"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        differences,
        [
            (0, "v1", "roomy", "light"),
            (0, "v2", "roomy", "light"),
            (2, "v3", "roomy", "light"),
        ]
    );
    // Each side carries its full decision with the weights' arithmetic.
    let first = &value["differences"][0];
    assert_eq!(first["a"]["hosts"][1]["weights"][1]["factor"], 3);
    assert_eq!(first["b"]["hosts"][0]["weights"][0]["factor"], 3);

    // The text names each differing decision and explains both sides.
    args.pop();
    let out = wasmsched(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(
            "diff: policy A \"memory-first\" vs policy B \"cpu-first\": 3 of 4 decisions differ\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("\n#0 start v1, big, v2: VM v1: A roomy, B light\n"),
        "{text}"
    );
    assert!(
        text.contains("\n#2 start v3: VM v3: A roomy, B light\n"),
        "{text}"
    );
    assert!(!text.contains("VM big: A"), "{text}");
    assert_eq!(text.matches("  --- under A\n").count(), 3, "{text}");
    assert!(
        text.contains("choice: roomy with the highest total 3; next light with 1"),
        "{text}"
    );

    // A policy against itself: identical, exit 0.
    let mut same = base.to_vec();
    same.extend(["--policy", &a, "--policy", &a]);
    let out = wasmsched(&same);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(": 0 of 4 decisions differ"));

    // Bad input: exit 2 with the reason.
    let mut one = base.to_vec();
    one.extend(["--policy", &a]);
    let out = wasmsched(&one);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("exactly two policies"),
        "{}",
        stderr(&out)
    );
    let missing = file("missing.json");
    let out = wasmsched(&[
        "diff",
        "--cluster",
        &missing,
        "--events",
        &events,
        "--policy",
        &a,
        "--policy",
        &b,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing.json"), "{}", stderr(&out));
}
