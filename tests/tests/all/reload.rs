//! Hot reload with real files and real `notify` events: modules appear, are replaced by
//! rename, copied slowly, broken, deleted, reloaded 50 times under load; and a corpus of
//! hostile hand-written modules, each refused with a clear error while the engine keeps
//! serving. Every wait polls for the expected state with a generous timeout.

use integration_tests::{
    max_vms_wasm, policy, wait_for, wat, wat_guest, wat_module, with_custom_section,
};
use policy_sdk::testing::{host, snapshot, vm};
use policy_sdk::wire::abi::ABI_VERSION;
use policy_sdk::UnitKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmsched::{
    BreakerConfig, Cluster, Error, FileLoad, Policy, Runtime, RuntimeStatus, ScheduleRequest,
    UnitFault, WatchMode, WatchOptions,
};

const LONG: Duration = Duration::from_secs(20);
const UNIT: &str = "max-vms-per-host";
const POLICY: &str =
    "name = \"p\"\n[[filters]]\nunit = \"max-vms-per-host\"\n[[weights]]\nunit = \"cpu-load\"\n";

fn cluster() -> Cluster {
    Cluster::new(
        snapshot()
            .host(host("a"))
            .host(host("b").cpu_usage(50))
            .build(),
        "<test>",
    )
    .unwrap()
}

fn runtime() -> Runtime {
    Runtime::builder()
        .cache_dir(None)
        .default_deadline(Duration::from_millis(300))
        .default_memory_limit_mb(64)
        .build()
        .unwrap()
}

fn options() -> WatchOptions {
    WatchOptions {
        settle: Duration::from_millis(400),
        ..WatchOptions::default()
    }
}

fn good_wasm() -> Vec<u8> {
    std::fs::read(max_vms_wasm()).unwrap()
}

/// Writes `bytes` next to `dest` under a hidden name, then renames it into place (how
/// editors and deploy tools replace files).
fn install(dest: &Path, bytes: &[u8]) {
    let tmp = dest.with_file_name(format!(
        ".{}.tmp",
        dest.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

fn serving_hash(rt: &Runtime, unit: &str) -> Option<String> {
    rt.unit(unit).map(|h| h.module().hash().to_string())
}

fn sha(bytes: &[u8]) -> String {
    let rt = Runtime::builder()
        .builtins(false)
        .cache_dir(None)
        .build()
        .unwrap();
    rt.load_module("x.wasm", bytes).unwrap().hash().to_string()
}

fn problem(status: &RuntimeStatus, file: &Path) -> Option<String> {
    let file = file.display().to_string();
    status
        .problems
        .iter()
        .find(|p| p.file == file)
        .and_then(|p| p.error.as_ref())
        .map(|e| e.reason.clone())
}

/// Waits for the module written just before the watcher started: a file younger than the
/// settle time is loaded once it has settled.
fn loaded(rt: &Runtime) {
    wait_for("the module present at start to be loaded", LONG, || {
        rt.unit(UNIT)
    });
}

fn decide(policy: &Policy) -> wasmsched::Decision {
    policy
        .evaluate(&cluster().view(), &ScheduleRequest::new(vm("v").build()))
        .unwrap()
}

#[test]
fn a_new_module_dropped_into_the_directory_becomes_usable() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.watch(dir.path(), options()).unwrap();
    assert!(rt.unit(UNIT).is_none());
    install(&dir.path().join("max.wasm"), &good_wasm());
    wait_for("the new module to be published", LONG, || rt.unit(UNIT));
    let p = policy(&rt, POLICY);
    assert_eq!(decide(&p).chosen.as_deref(), Some("a"));
    let status = rt.status();
    let m = status
        .modules
        .iter()
        .find(|m| m.file.ends_with("max.wasm"))
        .expect("status lists the module");
    assert_eq!(m.hash.len(), 64);
    assert!(m.loaded_at_unix_ms > 0);
    assert!(status
        .watch
        .as_ref()
        .is_some_and(|w| w.running && w.mode == WatchMode::Native));
    assert!(rt.stop_watching());
    assert!(!rt.stop_watching(), "a second stop finds nothing to stop");
}

#[test]
fn a_module_replaced_by_rename_serves_new_decisions_while_old_handles_keep_the_old_version() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("max.wasm");
    std::fs::write(&file, good_wasm()).unwrap();
    let rt = runtime();
    rt.watch(dir.path(), options()).unwrap();
    loaded(&rt);
    let p = policy(&rt, POLICY);
    let v1 = rt.unit(UNIT).unwrap().module().clone();
    decide(&p);
    let v1_syncs = v1.stats().full_syncs;
    assert!(v1_syncs >= 1, "the first decision ran on v1");

    let v2_bytes = with_custom_section(&good_wasm(), "v2");
    install(&file, &v2_bytes);
    let v2_hash = sha(&v2_bytes);
    wait_for("v2 to be published", LONG, || {
        (serving_hash(&rt, UNIT)? == v2_hash).then_some(())
    });
    let v2 = rt.unit(UNIT).unwrap().module().clone();
    assert!(!Arc::ptr_eq(&v1, &v2));
    let d = decide(&p);
    assert_eq!(d.chosen.as_deref(), Some("a"));
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert!(
        v2.stats().full_syncs >= 1,
        "the policy parsed before the reload now runs v2"
    );
    assert_eq!(
        v1.stats().full_syncs,
        v1_syncs,
        "v1 no longer called by new decisions"
    );
    // Whoever still holds v1 (a decision in flight) finishes on it.
    assert_eq!(v1.hash(), sha(&good_wasm()));
    assert!(p.stale_units().is_empty());
}

#[test]
fn a_module_copied_slowly_in_chunks_is_never_loaded_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.watch(dir.path(), options()).unwrap();
    let bytes = good_wasm();
    let full_hash = sha(&bytes);
    let file = dir.path().join("slow.wasm");
    let stop = Arc::new(AtomicBool::new(false));
    // Watch every published version of the unit while the copy runs.
    let seen = {
        let rt = rt.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            // One last look after `stop`: on a loaded machine this thread may not have run
            // between the publication and the stop.
            loop {
                let last = stop.load(Ordering::Relaxed);
                if let Some(h) = serving_hash(&rt, UNIT) {
                    if !seen.contains(&h) {
                        seen.push(h);
                    }
                }
                if last {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        })
    };
    {
        use std::io::Write;
        let mut out = std::fs::File::create(&file).unwrap();
        for chunk in bytes.chunks(bytes.len() / 8 + 1) {
            out.write_all(chunk).unwrap();
            out.flush().unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    wait_for("the complete module to be published", LONG, || {
        (serving_hash(&rt, UNIT)? == full_hash).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let seen = seen.join().unwrap();
    assert_eq!(
        seen,
        vec![full_hash],
        "only the complete file was ever published"
    );
    assert!(
        problem(&rt.status(), &file).is_none(),
        "no error was reported for the partial file"
    );
}

#[test]
fn wait_for_file_returns_once_a_copied_module_serves_or_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("max.wasm");
    let unwatched = runtime();
    let error = unwatched.wait_for_file(&file, LONG).unwrap_err();
    assert!(error.to_string().contains("no policy directory"), "{error}");

    let rt = runtime();
    rt.watch(dir.path(), options()).unwrap();
    // A plain copy (not a rename): the watcher reads it only once it has settled.
    std::fs::write(&file, good_wasm()).unwrap();
    match rt.wait_for_file(&file, LONG).unwrap() {
        FileLoad::Serving(module) => assert_eq!(module.hash(), sha(&good_wasm())),
        other => panic!("expected the module to serve, got {other:?}"),
    }
    // No race left: the very next decision uses the unit.
    let p = policy(&rt, POLICY);
    assert_eq!(decide(&p).chosen.as_deref(), Some("a"));

    std::fs::write(&file, wat_module(ABI_VERSION, 0, "")).unwrap();
    match rt.wait_for_file(&file, LONG).unwrap() {
        FileLoad::Rejected(e) => assert!(e.reason.contains("manifest"), "{e:?}"),
        other => panic!("expected the broken version to be rejected, got {other:?}"),
    }
    assert_eq!(
        serving_hash(&rt, UNIT),
        Some(sha(&good_wasm())),
        "the good version keeps serving"
    );
}

#[test]
fn wait_for_file_times_out_while_a_file_has_not_settled() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("max.wasm");
    let rt = runtime();
    let slow = WatchOptions {
        settle: Duration::from_secs(3600),
        ..WatchOptions::default()
    };
    rt.watch(dir.path(), slow).unwrap();
    std::fs::write(&file, good_wasm()).unwrap();
    let outcome = rt.wait_for_file(&file, Duration::from_millis(200)).unwrap();
    assert!(matches!(outcome, FileLoad::TimedOut), "{outcome:?}");
    assert!(rt.unit(UNIT).is_none());
}

#[test]
fn a_broken_replacement_is_refused_and_the_old_version_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("max.wasm");
    std::fs::write(&file, good_wasm()).unwrap();
    let rt = runtime();
    rt.watch(dir.path(), options()).unwrap();
    loaded(&rt);
    let p = policy(&rt, POLICY);
    let good = serving_hash(&rt, UNIT).unwrap();
    let generation = rt.generation();
    install(&file, &wat_module(ABI_VERSION, 0, ""));
    let reason = wait_for("the broken version to be reported", LONG, || {
        problem(&rt.status(), &file)
    });
    assert!(reason.contains("manifest"), "{reason}");
    assert_eq!(serving_hash(&rt, UNIT).as_deref(), Some(good.as_str()));
    assert_eq!(rt.generation(), generation, "nothing was published");
    assert_eq!(decide(&p).chosen.as_deref(), Some("a"));
    let status = rt.status();
    let m = status.modules.iter().find(|m| m.hash == good).unwrap();
    assert!(
        m.last_error.as_ref().is_some_and(|e| e.reason == reason),
        "the serving module shows the last error: {m:?}"
    );
    // Fixing the file clears the error.
    install(&file, &with_custom_section(&good_wasm(), "fixed"));
    wait_for("the fixed version to be published", LONG, || {
        (serving_hash(&rt, UNIT)? != good).then_some(())
    });
    assert!(problem(&rt.status(), &file).is_none());
}

#[test]
fn a_deleted_module_is_unpublished_and_a_policy_using_it_keeps_its_last_good_version_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("max.wasm");
    std::fs::write(&file, good_wasm()).unwrap();
    let rt = runtime();
    rt.watch(dir.path(), options()).unwrap();
    loaded(&rt);
    let p = policy(&rt, POLICY);
    std::fs::remove_file(&file).unwrap();
    wait_for("the unit to disappear", LONG, || {
        rt.unit(UNIT).is_none().then_some(())
    });
    assert!(!rt
        .status()
        .modules
        .iter()
        .any(|m| m.file.ends_with("max.wasm")));
    // A new policy cannot use it...
    let err = Policy::parse(&rt, POLICY, wasmsched::Format::Toml, "p.toml").unwrap_err();
    assert!(
        err.to_string()
            .contains("no filter unit named \"max-vms-per-host\""),
        "{err}"
    );
    // ...the existing one keeps deciding with the last good version and says so.
    let d = decide(&p);
    assert_eq!(d.chosen.as_deref(), Some("a"));
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
    assert!(d.warnings[0].contains("no loaded module provides the unit any more"));
    let stale = p.stale_units();
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].unit, UNIT);
    // Re-created: the policy picks it up again and the warning goes away.
    install(&file, &good_wasm());
    wait_for("the unit to come back", LONG, || rt.unit(UNIT));
    assert!(decide(&p).warnings.is_empty());
    assert!(p.stale_units().is_empty());
}

#[test]
fn a_renamed_module_keeps_its_units_published() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("a.wasm");
    std::fs::write(&old, good_wasm()).unwrap();
    let rt = runtime();
    rt.watch(dir.path(), options()).unwrap();
    loaded(&rt);
    let new = dir.path().join("b.wasm");
    std::fs::rename(&old, &new).unwrap();
    let file = new.display().to_string();
    wait_for("the unit to be served from the new name", LONG, || {
        (rt.unit(UNIT)?.module().file() == file).then_some(())
    });
    assert!(
        rt.status().problems.is_empty(),
        "{:?}",
        rt.status().problems
    );
}

#[test]
fn twenty_reloads_while_another_thread_schedules_lose_no_decision() {
    const ROUNDS: u64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("max.wasm");
    std::fs::write(&file, good_wasm()).unwrap();
    let rt = runtime();
    // Each version is installed by one rename, so a short settle time is enough and keeps
    // the rounds quick.
    rt.watch(
        dir.path(),
        WatchOptions {
            settle: Duration::from_millis(100),
            ..WatchOptions::default()
        },
    )
    .unwrap();
    loaded(&rt);
    let p = policy(&rt, POLICY);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let scheduler = {
        let (stop, ok, failed, p) = (stop.clone(), ok.clone(), failed.clone(), p.clone());
        std::thread::spawn(move || {
            let c = cluster();
            let mut errors = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match p.schedule(&c, &ScheduleRequest::new(vm(&format!("vm-{i}")).build())) {
                    Ok(d) if d.chosen.is_some() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        c.release_vm(&format!("vm-{i}")).ok();
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{other:?}"));
                    }
                }
            }
            errors
        })
    };
    for round in 1..=ROUNDS {
        let bytes = with_custom_section(&good_wasm(), &format!("round-{round}"));
        let hash = sha(&bytes);
        install(&file, &bytes);
        wait_for(&format!("reload {round}"), LONG, || {
            (serving_hash(&rt, UNIT)? == hash).then_some(())
        });
        let before = ok.load(Ordering::Relaxed);
        wait_for("a decision on the new version", LONG, || {
            (ok.load(Ordering::Relaxed) > before).then_some(())
        });
    }
    stop.store(true, Ordering::Relaxed);
    let errors = scheduler.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed decisions: {errors:?}"
    );
    assert!(ok.load(Ordering::Relaxed) >= ROUNDS);
    assert!(rt.status().problems.is_empty());
}

#[test]
fn the_polling_watcher_picks_up_changes_too() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.watch(
        dir.path(),
        WatchOptions::polling(Duration::from_millis(100)),
    )
    .unwrap();
    install(&dir.path().join("max.wasm"), &good_wasm());
    wait_for("the module to be published by polling", LONG, || {
        rt.unit(UNIT)
    });
    std::fs::remove_file(dir.path().join("max.wasm")).unwrap();
    wait_for("the module to be unpublished by polling", LONG, || {
        rt.unit(UNIT).is_none().then_some(())
    });
    assert!(rt
        .status()
        .watch
        .is_some_and(|w| matches!(w.mode, WatchMode::Poll(_))));
}

/// Hostile modules, hand-written in WAT: each is refused with an error naming the file and
/// the reason, while a good module in the same directory keeps serving.
#[test]
fn hostile_modules_are_refused_with_clear_errors_and_the_engine_keeps_serving() {
    const LOOP: &str = "(loop $l (br $l)) unreachable";
    // Grows until refused, then aborts as an allocator would.
    let bomb_fn = "(func $grow (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable)";
    let recurse_fn = "(func $deep (param i32) (result i32) (i32.add (call $deep (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))";
    let filter = UnitKind::Filter;
    let corpus: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "infinite-loop",
            wat_guest("spin", filter, LOOP, ""),
            "trial call of filter unit \"spin\" (VM \"small\" and no candidate hosts): deadline of 300 ms exceeded",
        ),
        (
            "memory-bomb",
            wat_guest("bomb", filter, "call $grow i64.const 0", bomb_fn),
            "trial call of filter unit \"bomb\" (VM \"small\" and no candidate hosts): memory cap of 64 MiB exceeded",
        ),
        (
            "deep-recursion",
            wat_guest(
                "deep",
                filter,
                "(drop (call $deep (i32.const 0))) i64.const 0",
                recurse_fn,
            ),
            "trial call of filter unit \"deep\" (VM \"small\" and no candidate hosts): trap: wasm trap: call stack exhausted",
        ),
        (
            "trap-everywhere",
            wat(r#"(module (memory (export "memory") 1)
                (func (export "wasmsched_abi_version") (result i32) unreachable)
                (func (export "wasmsched_input") (param i32) (result i32) unreachable)
                (func (export "wasmsched_manifest") (result i64) unreachable)
                (func (export "wasmsched_sync") (param i32) (result i64) unreachable)
                (func (export "wasmsched_call") (param i32) (result i64) unreachable)
                (func (export "wasmsched_batch") (param i32) (result i64) unreachable))"#),
            "wasmsched_abi_version: trap: wasm trap: wasm `unreachable` instruction executed",
        ),
        (
            "huge-result",
            wat_guest("huge", filter, "i64.const 0x00001000ffffffff", ""),
            "exceeds the output cap",
        ),
        (
            "oob-pointer",
            wat_guest("oob", filter, "i64.const 0xfffff00000000010", ""),
            "result at 0xfffff000 (+16) is outside guest memory",
        ),
        (
            "wrong-abi",
            wat_module(99, 0, ""),
            "ABI version 99 is not supported",
        ),
        (
            "wasi-import",
            wat_module(
                ABI_VERSION,
                0,
                r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
            ),
            "imports `wasi_snapshot_preview1::fd_write`, which the host does not provide",
        ),
        (
            "unknown-import",
            wat_module(ABI_VERSION, 0, r#"(import "env" "steal_secrets" (func))"#),
            "imports `env::steal_secrets`",
        ),
        (
            "no-memory",
            wat("(module (func (export \"wasmsched_abi_version\") (result i32) i32.const 3))"),
            "missing export `memory`",
        ),
        (
            "lying-manifest",
            // Declares a filter, answers with penalties (the bytes of `Penalties([])`).
            wat_guest(
                "liar",
                filter,
                "i64.const 0x0000500000000002",
                r#"(data (i32.const 20480) "\01\00")"#,
            ),
            "the manifest declares a filter, but it answered with penalties",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.wasm"), good_wasm()).unwrap();
    let rt = runtime();
    rt.watch(dir.path(), options()).unwrap();
    loaded(&rt);
    let p = policy(&rt, POLICY);
    let generation = rt.generation();
    for (name, bytes, expected) in &corpus {
        let file = dir.path().join(format!("{name}.wasm"));
        install(&file, bytes);
        let reason = wait_for(&format!("{name} to be refused"), LONG, || {
            problem(&rt.status(), &file)
        });
        assert!(reason.contains(expected), "{name}: {reason}");
        assert!(
            reason.len() < 600,
            "{name}: the reason stays readable: {reason}"
        );
        assert_eq!(
            decide(&p).chosen.as_deref(),
            Some("a"),
            "{name}: engine still serves"
        );
    }
    assert_eq!(
        rt.generation(),
        generation,
        "no hostile module was ever published"
    );
    assert_eq!(
        rt.status().problems.len(),
        corpus.len(),
        "every hostile file is listed: {:?}",
        rt.status().problems
    );
}

#[test]
fn repeated_faults_trip_the_circuit_breaker_which_applies_the_failure_mode_and_recovers() {
    let rt = Runtime::builder()
        .cache_dir(None)
        .circuit_breaker(BreakerConfig {
            threshold: 3,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
        })
        .build()
        .unwrap();
    let module = rt.load_file(&integration_tests::misbehave_wasm()).unwrap();
    let chaos = |mode: &str, failure: &str| {
        policy(
            &rt,
            &format!("name = \"c\"\n[[filters]]\nunit = \"chaos\"\nfailure = \"{failure}\"\n[filters.params]\nmode = \"{mode}\"\n"),
        )
    };
    let c = cluster();
    let request = ScheduleRequest::new(vm("v").build());
    let trap = chaos("trap", "closed");
    for _ in 0..3 {
        assert!(matches!(
            trap.evaluate(&c.view(), &request),
            Err(Error::Unit {
                fault: UnitFault::Trap(_),
                ..
            })
        ));
    }
    assert!(module.breaker().open, "{:?}", module.breaker());
    let discarded = module.stats().instances_discarded;
    // Open: even a healthy call is not made; the unit's failure mode applies.
    match chaos("pass", "closed").evaluate(&c.view(), &request) {
        Err(Error::Unit {
            unit,
            fault: UnitFault::CircuitOpen { failures: 3, .. },
            ..
        }) => {
            assert_eq!(unit, "chaos")
        }
        other => panic!("expected an open breaker, got {other:?}"),
    }
    let open = chaos("pass", "open").evaluate(&c.view(), &request).unwrap();
    assert_eq!(open.unit_failures.len(), 1);
    assert!(open.unit_failures[0].error.contains("circuit breaker open"));
    assert_eq!(
        module.stats().instances_discarded,
        discarded,
        "the guest was not called"
    );
    let status = rt.status();
    let m = status
        .modules
        .iter()
        .find(|m| m.module == "misbehave")
        .unwrap();
    assert!(m.breaker.open && m.breaker.trips == 1, "{:?}", m.breaker);
    // After the back-off a trial call goes through; success closes the breaker.
    let d = wait_for("the breaker to let a trial call through", LONG, || {
        chaos("pass", "closed").evaluate(&c.view(), &request).ok()
    });
    assert_eq!(d.chosen.as_deref(), Some("a"));
    assert!(!module.breaker().open);
    assert_eq!(module.breaker().consecutive_failures, 0);
}

#[test]
fn sync_dir_loads_reports_by_file_and_refuses_a_second_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.wasm"), good_wasm()).unwrap();
    std::fs::write(dir.path().join("bad.wasm"), b"not wasm").unwrap();
    std::fs::write(dir.path().join(".hidden.wasm"), b"ignored").unwrap();
    let rt = runtime();
    let report = rt.sync_dir(dir.path()).unwrap();
    assert_eq!(report.loaded.len(), 1);
    assert_eq!(report.rejected.len(), 1);
    assert!(report.rejected[0]
        .to_string()
        .contains("bad.wasm: not a WebAssembly module"));
    assert!(rt.unit(UNIT).is_some());
    let other: PathBuf = tempfile::tempdir().unwrap().path().to_path_buf();
    assert!(rt.sync_dir(&other).is_err());
    // Nothing changed: a second sync does nothing.
    let again = rt.sync_dir(dir.path()).unwrap();
    assert!(!again.changed() && again.rejected.is_empty());
}

/// Regression (clones shared one live resolution): a policy and a changed copy of it, after
/// a reload, each decide with their own settings, in whichever order they run. Before,
/// clones shared the cache of the newest resolution, so the copy that resolved first after
/// the reload set the selector and factors the other one ran with.
#[test]
fn regression_policy_copies_never_run_each_others_settings_after_a_reload() {
    let rt = integration_tests::runtime();
    let cluster = Cluster::new(
        snapshot()
            .host(host("idle").cpu_usage(5).committed_mb(14_000))
            .host(host("roomy").cpu_usage(60).committed_mb(1_000))
            .build(),
        "<test>",
    )
    .unwrap();
    let request = ScheduleRequest::new(vm("v").memory_mb(1_024).build());
    let original = Policy::builtin_default(&rt).unwrap();
    let by_memory = original
        .clone()
        .with_factor("cpu-load", 0)
        .unwrap()
        .with_factor("free-memory", 10)
        .unwrap()
        .with_selector(wasmsched::SelectorKind::RawSum);
    let chosen = |p: &Policy| p.evaluate(&cluster.view(), &request).unwrap().chosen;
    let before = (chosen(&original), chosen(&by_memory));
    assert_ne!(
        before.0, before.1,
        "the settings must lead to different hosts"
    );
    for copy_first in [true, false] {
        // A reload: a new module is published (a new generation of the module set).
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("extra-{copy_first}.wasm"));
        std::fs::write(
            &file,
            with_custom_section(&good_wasm(), &format!("{copy_first}")),
        )
        .unwrap();
        rt.load_file(&file).unwrap();
        let after = if copy_first {
            let copy = chosen(&by_memory);
            (chosen(&original), copy)
        } else {
            (chosen(&original), chosen(&by_memory))
        };
        assert_eq!(after, before, "copy decided first: {copy_first}");
        rt.remove_module(&file.display().to_string());
    }
}

/// Regression (files skipped without a word, and file names printed raw): entries of the
/// policy directory that look like modules but cannot be read as one are listed in status
/// with the reason, and a control character in a file name is escaped wherever the name is
/// shown.
#[test]
fn regression_skipped_entries_are_in_status_with_the_reason_and_names_are_escaped() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("folder.wasm")).unwrap();
    std::os::unix::fs::symlink(d.join("missing"), d.join("dangling.wasm")).unwrap();
    std::os::unix::fs::symlink(d.join("loop.wasm"), d.join("loop.wasm")).unwrap();
    std::fs::write(d.join("UPPER.WASM"), good_wasm()).unwrap();
    std::fs::write(
        d.join(std::ffi::OsStr::from_bytes(b"bad-\xff.wasm")),
        good_wasm(),
    )
    .unwrap();
    let fifo = d.join("pipe.wasm");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    std::fs::write(d.join("forged\nline.wasm"), b"not wasm").unwrap();
    let rt = Runtime::builder().cache_dir(None).build().unwrap();
    rt.sync_dir(d).unwrap();
    let status = rt.status();
    let reason = |name: &str| {
        status
            .problems
            .iter()
            .find(|p| p.file.ends_with(name))
            .and_then(|p| p.error.as_ref())
            .map(|e| e.reason.clone())
            .unwrap_or_else(|| panic!("{name} not in status: {:?}", status.problems))
    };
    assert!(reason("folder.wasm").contains("a directory"));
    assert!(reason("dangling.wasm").contains("a link that leads nowhere"));
    assert!(reason("loop.wasm").contains("a link that leads nowhere"));
    assert!(reason("UPPER.WASM").contains("lower case"));
    assert!(
        status
            .problems
            .iter()
            .any(|p| p.file.starts_with(&d.display().to_string())
                && p.error
                    .as_ref()
                    .is_some_and(|e| e.reason.contains("not UTF-8"))),
        "{:?}",
        status.problems
    );
    if made.is_ok_and(|s| s.success()) {
        assert!(reason("pipe.wasm").contains("not a regular file"));
    }
    // The broken module with a newline in its name: rejected, its name escaped.
    let forged = status
        .problems
        .iter()
        .find(|p| p.file.contains("forged"))
        .expect("the broken module is a problem");
    assert!(
        forged.file.ends_with("forged\\nline.wasm"),
        "{}",
        forged.file
    );
    assert!(!forged.file.contains('\n'));
    let error = forged.error.as_ref().unwrap();
    assert!(!error.file.contains('\n'), "{error:?}");
    // Only the builtins serve; nothing of the directory was loaded.
    assert!(status
        .modules
        .iter()
        .all(|m| m.file.starts_with("builtin:")));
}

/// Regression (a start function that loops was reported as "wasm trap: interrupt", and a
/// deep recursion's 20-line backtrace landed in the status line): the first is the deadline,
/// the second one line.
#[test]
fn regression_start_loops_are_deadlines_and_traps_are_one_line() {
    let looping_start = wat_guest(
        "spin-at-start",
        UnitKind::Filter,
        "i64.const 0",
        "(func $spin (loop $l (br $l))) (start $spin)",
    );
    let rt = runtime();
    let err = rt
        .load_module("spin.wasm", &looping_start)
        .unwrap_err()
        .to_string();
    assert!(err.contains("deadline of"), "{err}");
    assert!(!err.contains("interrupt"), "{err}");
    let recursing = wat_guest(
        "deep",
        UnitKind::Filter,
        "call $down i64.const 0",
        "(func $down (call $down))",
    );
    let err = rt
        .load_module("deep.wasm", &recursing)
        .unwrap_err()
        .to_string();
    assert!(err.contains("stack"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
}
