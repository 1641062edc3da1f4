//! Hardening against a hostile environment: a compiled-module cache someone else wrote to,
//! and input files that are not what they claim (`/dev/zero`, a FIFO, a huge sparse file).
//! Each test is named after the bug it keeps fixed.

use integration_tests::{max_vms_wasm, policy};
use policy_sdk::testing::{host, snapshot, vm};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wasmsched::{Cluster, LoadedModule, Policy, Runtime, ScheduleRequest};

/// A bad input file must be refused within this time (the issue: within a second).
const QUICK: Duration = Duration::from_secs(1);

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// A 2.5 GB file that takes no disk space.
fn sparse_file(path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    file.set_len(2_500_000_000).unwrap();
}

/// Runs `read`, asserting it fails within [`QUICK`] with an error naming `path` and
/// containing `why`.
fn refused_quickly<T: std::fmt::Debug>(
    path: &Path,
    why: &str,
    read: impl FnOnce(&Path) -> wasmsched::Result<T>,
) {
    let start = Instant::now();
    let result = read(path);
    let took = start.elapsed();
    let error = result.expect_err("a hostile file must be refused");
    let text = error.to_string();
    assert!(took < QUICK, "took {took:?} to refuse {}", path.display());
    assert!(
        text.contains(&path.display().to_string()) && text.contains(why),
        "error should name {} and say {why:?}: {text}",
        path.display()
    );
}

fn runtime() -> Runtime {
    integration_tests::runtime()
}

/// Every reader of operator files: module, cluster, VM, policy, events (a scenario is read
/// by the same `read_document`).
fn every_reader(path: &Path, why: &str) {
    let rt = runtime();
    refused_quickly(path, why, |p| rt.load_file(p));
    refused_quickly(path, why, Runtime::read_module_file);
    refused_quickly(path, why, Cluster::from_file);
    refused_quickly(path, why, wasmsched::read_document::<policy_sdk::Vm>);
    refused_quickly(path, why, |p| {
        wasmsched::read_document::<serde_json::Value>(p)
    });
    refused_quickly(path, why, |p| Policy::from_file(&rt, p));
}

#[test]
fn regression_dev_zero_is_refused_by_metadata_not_read_forever() {
    every_reader(
        Path::new("/dev/zero"),
        "not a regular file (a character device)",
    );
}

#[test]
fn regression_fifo_input_is_refused_instead_of_blocking_forever() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["cluster.json", "policy.toml", "module.wasm"] {
        let fifo = dir.path().join(name);
        mkfifo(&fifo);
        every_reader(&fifo, "not a regular file (a FIFO)");
    }
}

#[test]
fn regression_sparse_2_5gb_file_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.json");
    sparse_file(&big);
    every_reader(&big, "is 2500000000 bytes, above the limit");
}

#[test]
fn regression_sparse_module_dropped_in_policy_dir_is_rejected_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.wasm");
    std::fs::copy(max_vms_wasm(), &good).unwrap();
    let big = dir.path().join("big.wasm");
    sparse_file(&big);
    let rt = runtime();
    let start = Instant::now();
    let report = rt.sync_dir(dir.path()).unwrap();
    assert!(start.elapsed() < QUICK * 10, "took {:?}", start.elapsed());
    assert_eq!(report.loaded, vec![good.display().to_string()]);
    assert_eq!(report.rejected.len(), 1, "{:?}", report.rejected);
    let text = report.rejected[0].to_string();
    assert!(
        text.contains("big.wasm") && text.contains("above the limit of 64 MiB"),
        "{text}"
    );
    assert!(rt.unit("max-vms-per-host").is_some());
}

#[test]
fn regression_directory_named_like_a_document_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("cluster.json");
    std::fs::create_dir(&fake).unwrap();
    refused_quickly(
        &fake,
        "not a regular file (a directory)",
        Cluster::from_file,
    );
}

#[test]
fn bounded_reader_reads_ordinary_files_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.json");
    std::fs::write(&path, b"[1, 2, 3]").unwrap();
    assert_eq!(wasmsched::read_bounded(&path, 9).unwrap(), b"[1, 2, 3]");
    let error = wasmsched::read_bounded(&path, 8).unwrap_err().to_string();
    assert!(
        error.contains("is 9 bytes, above the limit of 8 bytes"),
        "{error}"
    );
    let value: Vec<u32> = wasmsched::read_document(&path).unwrap();
    assert_eq!(value, vec![1, 2, 3]);
}

// ---- the compiled-module cache -------------------------------------------------------

const POLICY: &str = "name = \"p\"\n[[filters]]\nunit = \"max-vms-per-host\"\n";

fn cached_runtime(cache: &Path) -> Runtime {
    Runtime::builder()
        .builtins(false)
        .cache_dir(Some(cache.to_path_buf()))
        .build()
        .unwrap()
}

/// Loads the example module and makes one decision with it.
fn decide(rt: &Runtime) -> String {
    rt.load_file(&max_vms_wasm())
        .unwrap_or_else(|e| panic!("{e}"));
    let cluster =
        Cluster::new(snapshot().host(host("a")).host(host("b")).build(), "<test>").unwrap();
    let decision = policy(rt, POLICY)
        .schedule(
            &cluster,
            &ScheduleRequest::new(vm("v").memory_mb(512).build()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    decision.chosen.expect("a host is chosen")
}

/// The cache entry of the example module in `cache`.
fn entry(cache: &Path) -> PathBuf {
    let hash = LoadedModule::hash_of(&std::fs::read(max_vms_wasm()).unwrap());
    entries(cache)
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&hash))
        .expect("the module has a cache entry")
}

fn entries(cache: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache)
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
                .collect()
        })
        .unwrap_or_default()
}

/// Flips the first 64 bytes of the `.text` section of the ELF artifact inside an entry:
/// loading it would run garbage instructions (SIGILL/SIGTRAP kill the test binary).
fn flip_text_bytes(entry: &Path) {
    let mut bytes = std::fs::read(entry).unwrap();
    let elf = bytes
        .windows(4)
        .position(|w| w == b"\x7fELF")
        .expect("the entry holds an ELF artifact");
    let image = &bytes[elf..];
    let u16_at = |o: usize| u16::from_le_bytes(image[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(image[o..o + 8].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let section = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(section(shstrndx) + 0x18);
    let u32_at = |o: usize| u32::from_le_bytes(image[o..o + 4].try_into().unwrap()) as usize;
    let text = (0..shnum)
        .find(|&i| image[strtab + u32_at(section(i))..].starts_with(b".text\0"))
        .expect("the artifact has a .text section");
    let (offset, size) = (u64_at(section(text) + 0x18), u64_at(section(text) + 0x20));
    assert!(size >= 64, ".text of {size} bytes");
    for b in &mut bytes[elf + offset..elf + offset + 64] {
        *b ^= 0xff;
    }
    std::fs::write(entry, bytes).unwrap();
}

#[test]
fn regression_tampered_cache_entry_is_recompiled_not_executed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let chosen = decide(&cached_runtime(&cache));
    let entry = entry(&cache);
    flip_text_bytes(&entry);
    let tampered = std::fs::read(&entry).unwrap();
    // A new process (runtime) with the same cache: the entry fails its check, is
    // discarded and the module recompiled; the decision is the same.
    assert_eq!(decide(&cached_runtime(&cache)), chosen);
    let rewritten = std::fs::read(&entry).expect("the entry is written again");
    assert_ne!(rewritten, tampered, "the tampered entry must be replaced");
    // The rewritten entry is good: a third runtime uses it.
    assert_eq!(decide(&cached_runtime(&cache)), chosen);
    assert_eq!(std::fs::read(&entry).unwrap(), rewritten);
}

#[test]
fn regression_cache_entry_copied_from_another_users_cache_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mine, theirs) = (dir.path().join("mine"), dir.path().join("theirs"));
    decide(&cached_runtime(&mine));
    decide(&cached_runtime(&theirs));
    // Another cache's entry, correctly tagged under its own key, then tampered: the
    // attacker cannot produce a tag under my key.
    let foreign = entry(&theirs);
    flip_text_bytes(&foreign);
    std::fs::copy(&foreign, entry(&mine)).unwrap();
    decide(&cached_runtime(&mine));
    assert_ne!(
        std::fs::read(entry(&mine)).unwrap(),
        std::fs::read(&foreign).unwrap()
    );
}

#[test]
fn regression_cache_dir_writable_by_others_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    decide(&cached_runtime(&cache));
    let entry = entry(&cache);
    flip_text_bytes(&entry);
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    // The directory is ignored entirely: the tampered entry is neither run nor touched.
    let tampered = std::fs::read(&entry).unwrap();
    decide(&cached_runtime(&cache));
    assert_eq!(std::fs::read(&entry).unwrap(), tampered);
    assert_eq!(entries(&cache).len(), 1);
}

#[test]
fn regression_cache_key_readable_by_others_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    decide(&cached_runtime(&cache));
    let key = cache.join("key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600,
        "the key is made private"
    );
    let entry = entry(&cache);
    flip_text_bytes(&entry);
    let tampered = std::fs::read(&entry).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    decide(&cached_runtime(&cache));
    assert_eq!(std::fs::read(&entry).unwrap(), tampered);
}
