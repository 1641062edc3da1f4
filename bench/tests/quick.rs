//! Runs the harness binary in `--quick` mode on tiny workloads and checks the report's
//! structure and that every measured number is positive. No timing assertions: the numbers
//! of a debug build on a shared machine mean nothing.

use serde_json::Value;
use std::process::Command;

/// Fields whose numbers must be positive wherever they appear.
const POSITIVE_SUFFIXES: &[&str] = &[
    "_ms",
    "_per_s",
    "_mib",
    "_bytes",
    "ratio",
    "ratio_p50",
    "ratio_p99",
];

fn check_positive(value: &Value, path: &str, checked: &mut usize) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let here = format!("{path}.{key}");
                if let Some(n) = v.as_f64() {
                    if POSITIVE_SUFFIXES.iter().any(|s| key.ends_with(s)) {
                        assert!(n > 0.0 && n.is_finite(), "{here} = {n} is not positive");
                        *checked += 1;
                    }
                }
                check_positive(v, &here, checked);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let here = format!("{path}[{i}]");
                if let Some(n) = v.as_f64() {
                    // Arrays of numbers are run times (`runs_ms`) or per-module times.
                    assert!(n > 0.0 && n.is_finite(), "{here} = {n} is not positive");
                    *checked += 1;
                }
                check_positive(v, &here, checked);
            }
        }
        _ => {}
    }
}

fn latency_is_complete(summary: &Value) {
    for backend in ["wasm", "native"] {
        let l = &summary[backend];
        assert!(l["samples"].as_u64().unwrap() > 0, "{backend}: no samples");
        assert!(l["p99_ms"].as_f64().unwrap() >= l["p50_ms"].as_f64().unwrap());
    }
}

#[test]
fn quick_run_writes_a_complete_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_wasmsched-bench"))
        .args([
            "--quick",
            "--sizes",
            "12,30",
            "--mass-vms",
            "40",
            "--mass-hosts",
            "10",
            "--scaling-hosts",
            "12",
            "--pending-levels",
            "0,10,40",
            "--memory-hosts",
            "50",
            "--refresh-hosts",
            "30",
            "--split-hosts",
            "12,30",
            "--threads",
            "1,2",
            "--markdown",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "harness failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("#### Targets"), "markdown tables: {stdout}");
    assert!(stdout.contains("| hosts | VM kind |"), "{stdout}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for section in [
        "meta",
        "latency",
        "mass_start",
        "sync",
        "module_load",
        "memory",
        "scaling_hosts",
        "scaling",
        "refresh",
        "mass_threads",
        "split",
        "targets",
    ] {
        assert!(!report[section].is_null(), "no {section} section");
    }
    assert_eq!(report["meta"]["quick"], true);

    let sizes = report["latency"].as_array().unwrap();
    assert_eq!(sizes.len(), 2);
    for (size, detail) in sizes
        .iter()
        .flat_map(|s| [(s, "kinds"), (s, "summary_kinds")])
    {
        let kinds = size[detail].as_array().unwrap();
        let names: Vec<&str> = kinds.iter().map(|k| k["kind"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "plain",
                "hp-pinned",
                "numa-pinned",
                "hugepages",
                "dedicated"
            ]
        );
        // Every kind gets every iteration on each backend, though the kinds take turns.
        let iterations = size["iterations"].as_u64().unwrap();
        for kind in kinds {
            latency_is_complete(kind);
            assert!(kind["available_hosts"].as_u64().unwrap() > 0, "{kind}");
            for backend in ["wasm", "native"] {
                assert_eq!(kind[backend]["samples"], iterations, "{kind}");
            }
        }
        latency_is_complete(&size["overall"]);
        latency_is_complete(&size["summary_overall"]);
        for overall in ["overall", "summary_overall"] {
            assert_eq!(
                size[overall]["wasm"]["samples"],
                5 * iterations,
                "{overall}"
            );
        }
    }

    let mass = &report["mass_start"];
    assert_eq!(mass["vms"], 40);
    assert_eq!(mass["hosts"], 10);
    assert_eq!(report["sync"].as_array().unwrap().len(), 2);
    // Every builtin module is loaded and measured.
    let builtins = wasmsched::Runtime::builtin_modules().len();
    assert_eq!(
        report["module_load"]["files"].as_array().unwrap().len(),
        builtins
    );
    assert_eq!(report["memory"]["modules"], builtins);
    assert_eq!(report["memory"]["stages"].as_array().unwrap().len(), 4);
    assert_eq!(report["scaling"]["units"].as_array().unwrap().len(), 3);
    let units: Vec<u64> = report["scaling"]["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["units"].as_u64().unwrap())
        .collect();
    assert_eq!(units, [2, 6, 12]);
    assert_eq!(report["scaling"]["pending"].as_array().unwrap().len(), 3);
    assert_eq!(report["scaling_hosts"].as_array().unwrap().len(), 2);

    assert_eq!(report["refresh"]["hosts"], 30);
    let threads: Vec<u64> = report["mass_threads"]["wasm"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["threads"].as_u64().unwrap())
        .collect();
    assert_eq!(threads, [1, 2]);
    for backend in ["wasm", "native"] {
        for run in report["mass_threads"][backend].as_array().unwrap() {
            assert_eq!(run["over_committed_hosts"], 0, "{run}");
        }
    }
    let split: Vec<u64> = report["split"]["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["hosts"].as_u64().unwrap())
        .collect();
    assert_eq!(split, [12, 30]);

    let targets = report["targets"].as_array().unwrap();
    // Issue 18: four ratios, mass start ratio, 2 threads, over-commit, refresh, full
    // snapshot, large cluster cores and growth, load, memory; issue 8: p50, mass start.
    assert_eq!(targets.len(), 15);
    for t in targets {
        let status = t["status"].as_str().unwrap();
        assert!(
            ["met", "missed", "not measured"].contains(&status),
            "{status}"
        );
    }
    // No 10,000-host size in this run: the 10k targets say so.
    assert_eq!(targets[0]["status"], "not measured");
    assert_eq!(targets[8]["status"], "not measured");

    let mut checked = 0;
    check_positive(&report, "report", &mut checked);
    assert!(checked > 100, "only {checked} numbers checked");
}
