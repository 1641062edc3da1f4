//! End-to-end tests of the `wasmsched` binary: real builtin modules, real files.

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
    std::fs::copy(
        env!("WASM_EXAMPLE_MAX_VMS_PER_HOST"),
        dir.path().join("max_vms_per_host.wasm"),
    )
    .unwrap();
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
    assert!(stdout(&out).contains("module basic"), "{}", stdout(&out));
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
