//! The load-time trial runs every unit over a generated cluster with hosts: modules that
//! misbehave only once they are given hosts (loop, trap, flood memory, hand back a bad
//! pointer, garbage or the wrong number of results) are refused by `check`
//! (`Runtime::load_module`) and by hot reload, where the old version keeps serving. And a
//! module that takes long to compile neither holds other files' reloads back nor escapes
//! the compile-time bound.

use integration_tests::{policy, wait_for, wat_bytes, wat_guest_with_sync};
use policy_sdk::testing::{host, snapshot, vm};
use policy_sdk::wire::abi::{pack, CallResponse};
use policy_sdk::wire::codec;
use policy_sdk::{Penalty, UnitKind};
use std::path::Path;
use std::time::{Duration, Instant};
use wasmsched::{BreakerConfig, Cluster, Runtime, ScheduleRequest, WatchOptions};

const LONG: Duration = Duration::from_secs(30);

fn runtime() -> Runtime {
    Runtime::builder()
        .cache_dir(None)
        .default_deadline(Duration::from_millis(300))
        .default_memory_limit_mb(64)
        // The hand-written guests cannot follow epochs: keep their clean failures from
        // opening the breaker.
        .circuit_breaker(BreakerConfig {
            threshold: 0,
            ..BreakerConfig::default()
        })
        .build()
        .unwrap()
}

/// Remembers whether the last snapshot synced was a real cluster (the empty snapshot of the
/// smoke sync is a few bytes; the trial's generated cluster is kilobytes).
const SYNC: &str = "(global.set $hosts (i32.gt_u (local.get 0) (i32.const 512)))";

/// A weight unit `w` that answers `SamePenalty(5)`, except that, once it holds a cluster
/// with hosts, it runs `on_hosts` first (which may return its own packed result).
fn weight_guest(on_hosts: &str, extra: &str) -> Vec<u8> {
    let good = codec::encode(&CallResponse::SamePenalty(5 as Penalty)).unwrap();
    let body = format!(
        "(if (global.get $hosts) (then {on_hosts})) i64.const {}",
        pack(20480, good.len() as u32)
    );
    let extra = format!(
        "(global $hosts (mut i32) (i32.const 0)) (data (i32.const 20480) \"{}\") {extra}",
        wat_bytes(&good)
    );
    wat_guest_with_sync("w", UnitKind::Weight, SYNC, &body, &extra)
}

/// Modules that pass every check of an empty cluster and fail only on hosts, with the
/// reason each must be refused for.
fn only_on_hosts() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let grow = "(func $grow (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable)";
    let ret = |packed: u64| format!("(return (i64.const {packed}))");
    vec![
        (
            "loops",
            weight_guest("(loop $l (br $l))", ""),
            "deadline of 300 ms exceeded",
        ),
        (
            "traps",
            weight_guest("unreachable", ""),
            "wasm `unreachable` instruction executed",
        ),
        (
            "floods-memory",
            weight_guest("call $grow", grow),
            "memory cap of 64 MiB exceeded",
        ),
        (
            "bad-pointer",
            weight_guest(&ret(0xfffff000_00000010), ""),
            "outside guest memory",
        ),
        (
            "garbage",
            weight_guest(
                &ret(pack(28672, 6)),
                r#"(data (i32.const 28672) "\ff\ff\ff\ff\ff\ff")"#,
            ),
            "result does not decode",
        ),
        (
            "wrong-count",
            // `Penalties([])`: right for no candidates, wrong for the generated hosts.
            weight_guest(&ret(pack(28672, 2)), r#"(data (i32.const 28672) "\01\00")"#),
            "0 penalties for 8 candidate hosts",
        ),
    ]
}

#[test]
fn the_weight_guest_fixture_loads_and_serves_when_it_behaves() {
    let rt = runtime();
    let module = rt
        .load_module("good.wasm", &weight_guest("", ""))
        .unwrap_or_else(|e| panic!("{e}"));
    rt.add_module(module).unwrap();
    assert!(rt.unit("w").is_some());
}

#[test]
fn regression_units_that_fail_only_on_hosts_are_refused_by_check() {
    let rt = runtime();
    for (name, bytes, expected) in only_on_hosts() {
        let file = format!("{name}.wasm");
        let start = Instant::now();
        let error = rt
            .load_module(&file, &bytes)
            .expect_err(&format!("{name} must be refused"))
            .to_string();
        assert!(
            error.contains(&file)
                && error.contains("trial call of weight unit \"w\"")
                && error.contains(expected),
            "{name}: {error}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{name}: {:?}",
            start.elapsed()
        );
    }
}

fn decide(rt: &Runtime) -> wasmsched::Decision {
    let cluster =
        Cluster::new(snapshot().host(host("a")).host(host("b")).build(), "<test>").unwrap();
    policy(rt, "name = \"p\"\n[[weights]]\nunit = \"w\"\n")
        .evaluate(&cluster.view(), &ScheduleRequest::new(vm("v").build()))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn install(dest: &Path, bytes: &[u8]) {
    let tmp = dest.with_file_name(".incoming.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

#[test]
fn regression_hot_reload_keeps_the_old_version_when_the_new_one_fails_only_on_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.wasm");
    let rt = runtime();
    install(&file, &weight_guest("", ""));
    rt.watch(dir.path(), WatchOptions::default()).unwrap();
    let serving = wait_for("the good version", LONG, || {
        rt.unit("w").map(|h| h.module().hash().to_string())
    });
    // What the good version does in a decision (the hand-written guest cannot follow
    // epochs, so it fails the same clean way every time): a bad version would differ.
    let baseline = format!("{:?}", decide(&rt).unit_failures);
    for (name, bytes, expected) in only_on_hosts() {
        install(&file, &bytes);
        let reason = wait_for(&format!("{name} to be refused"), LONG, || {
            rt.status()
                .problems
                .into_iter()
                .find_map(|p| p.error.filter(|e| e.reason.contains(expected)))
        });
        assert!(reason.reason.contains("trial call"), "{name}: {reason:?}");
        assert_eq!(
            rt.unit("w").map(|h| h.module().hash().to_string()),
            Some(serving.clone()),
            "{name}: the old version keeps serving"
        );
        let failures = format!("{:?}", decide(&rt).unit_failures);
        assert_eq!(
            failures, baseline,
            "{name}: decisions still use the old version"
        );
    }
    rt.stop_watching();
}

/// A module that passes nothing but takes long to compile: one function with a long chain
/// of arithmetic over many live locals (register allocation is the slow part).
fn slow_to_compile(statements: usize) -> Vec<u8> {
    const LOCALS: usize = 64;
    let mut text = String::from("(module (memory (export \"memory\") 1) (func $f (result i64)");
    for i in 0..LOCALS {
        text.push_str(&format!(" (local $l{i} i64)"));
    }
    for i in 0..statements {
        let (a, b) = (i % LOCALS, (i * 7 + 3) % LOCALS);
        text.push_str(&format!(
            " (local.set $l{a} (i64.add (local.get $l{b}) (i64.mul (local.get $l{a}) (i64.const {i}))))"
        ));
    }
    text.push_str(" (local.get $l0)) (export \"f\" (func $f)))");
    integration_tests::wat(&text)
}

#[test]
fn regression_compile_time_is_bounded() {
    let rt = Runtime::builder()
        .cache_dir(None)
        .builtins(false)
        .compile_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let slow = slow_to_compile(200_000);
    let start = Instant::now();
    let error = rt
        .load_module("slow.wasm", &slow)
        .expect_err("a module slower to compile than the bound is refused")
        .to_string();
    assert!(
        error.contains("slow.wasm") && error.contains("compilation took longer than 50 ms"),
        "{error}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn regression_slow_compiling_module_does_not_hold_back_other_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.watch(dir.path(), WatchOptions::default()).unwrap();
    let slow = dir.path().join("slow.wasm");
    let bytes = slow_to_compile(250_000);
    let start = Instant::now();
    install(&slow, &bytes);
    // The slow module is being compiled...
    wait_for("the slow module to be picked up", LONG, || {
        rt.status()
            .problems
            .iter()
            .any(|p| p.file == slow.display().to_string())
            .then_some(())
    });
    // ...when a good one arrives: it is published while the slow one still compiles.
    install(&dir.path().join("w.wasm"), &weight_guest("", ""));
    wait_for("the good module", LONG, || rt.unit("w"));
    let published_after = start.elapsed();
    let slow_state = rt
        .status()
        .problems
        .into_iter()
        .find(|p| p.file == slow.display().to_string())
        .expect("the slow module is still listed");
    assert!(
        slow_state.error.is_none(),
        "the good module waited for the slow one ({published_after:?}): {slow_state:?}"
    );
    // The slow one is refused in the end (it is no policy module).
    let reason = wait_for("the slow module's verdict", LONG, || {
        rt.status()
            .problems
            .into_iter()
            .find(|p| p.file == slow.display().to_string())
            .and_then(|p| p.error)
    });
    eprintln!(
        "good module published after {published_after:?}; slow one refused after {:?}: {}",
        start.elapsed(),
        reason.reason
    );
    assert!(reason.reason.contains("missing export"), "{reason:?}");
    rt.stop_watching();
}
