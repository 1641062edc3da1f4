//! Shared helpers for the integration tests: runtimes without a shared cache, the paths of
//! the fixture modules built from source by `build.rs`, and small WAT modules for
//! load-time failures.

use std::path::PathBuf;
use wasmsched::{Policy, Runtime};

/// The example operator unit, compiled to wasm by the build.
pub fn max_vms_wasm() -> PathBuf {
    PathBuf::from(env!("WASM_MAX_VMS_PER_HOST"))
}

/// The misbehaving fixture module, compiled to wasm by the build.
pub fn misbehave_wasm() -> PathBuf {
    PathBuf::from(env!("WASM_MISBEHAVE_GUEST"))
}

/// The custom-resource filter fixture (unit `devices`), compiled to wasm by the build.
pub fn device_filter_wasm() -> PathBuf {
    PathBuf::from(env!("WASM_DEVICE_FILTER_GUEST"))
}

/// A runtime with the builtins, sharing one compiled-module cache with every other test of
/// this build (see [`shared_cache_dir`]). Tests about compilation or the cache itself build
/// their runtime with `cache_dir(None)` or a directory of their own.
pub fn runtime() -> Runtime {
    Runtime::builder()
        .cache_dir(Some(shared_cache_dir()))
        .build()
        .expect("runtime builds")
}

/// The builtins on both backends, each named for assertion messages: as wasm modules (see
/// [`runtime`]) and as native units (the same unit code compiled into the test binary), for
/// behaviour that must hold on each.
pub fn both_backends() -> [(&'static str, Runtime); 2] {
    [
        ("wasm", runtime()),
        ("native", wasmsched_testkit::native::runtime()),
    ]
}

/// The compiled-module cache shared by the tests of one build: under the build's `OUT_DIR`,
/// so `cargo clean` removes it and a changed build starts from an empty one. Without it every
/// test compiled the builtin modules again with Cranelift (about 1.5 s of CPU each), which
/// was most of this binary's run time; loading from the cache still runs every load-time check
/// (ABI version, manifest, smoke sync and the trial over generated hosts).
pub fn shared_cache_dir() -> PathBuf {
    PathBuf::from(concat!(env!("OUT_DIR"), "/module-cache"))
}

/// A runtime with the builtins plus the misbehaving fixture module.
pub fn runtime_with_misbehave() -> Runtime {
    let rt = runtime();
    rt.load_file(&misbehave_wasm()).expect("fixture loads");
    rt
}

/// Parses a TOML policy against a runtime, panicking with the error.
pub fn policy(rt: &Runtime, toml: &str) -> Policy {
    Policy::parse(rt, toml, wasmsched::Format::Toml, "test-policy.toml")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Compiles WAT text to wasm bytes.
pub fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("valid WAT")
}

/// A module with every required export in place; `abi_version` is what it reports and
/// `extra` is spliced into the module body (imports, data...). `manifest` returns
/// `manifest_packed`.
pub fn wat_module(abi_version: u32, manifest_packed: u64, extra: &str) -> Vec<u8> {
    wat(&format!(
        r#"(module
            {extra}
            (memory (export "memory") 1)
            (func (export "wasmsched_abi_version") (result i32) i32.const {abi_version})
            (func (export "wasmsched_input") (param i32) (result i32) i32.const 1024)
            (func (export "wasmsched_manifest") (result i64) i64.const {manifest_packed})
            (func (export "wasmsched_sync") (param i32) (result i64) i64.const 0)
            (func (export "wasmsched_call") (param i32) (result i64) i64.const 0)
            (func (export "wasmsched_batch") (param i32) (result i64) i64.const 0))"#
    ))
}

/// `wasm` with a custom section appended: the same behaviour, different bytes and hash (a
/// new "version" of a module for reload tests).
pub fn with_custom_section(wasm: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"wasmsched-test-version";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// Bytes as a WAT string literal.
pub fn wat_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A hand-written guest that passes every load-time check until its `wasmsched_call`
/// runs: it declares one filter unit `name` (or `kind`), answers the smoke syncs (a snapshot
/// whole or in parts), and runs
/// `call_body` (which must leave an i64 packed result) for every call and every batch (a
/// batch it breaks is run again unit by unit, so the call's misbehaviour is what a test
/// sees). `extra` is spliced
/// into the module (helper functions, globals). Its memory is 4 pages: the first holds
/// data (free from 20480 on), the host writes its messages from 65536 on.
pub fn wat_guest(unit: &str, kind: policy_sdk::UnitKind, call_body: &str, extra: &str) -> Vec<u8> {
    wat_guest_with_sync(unit, kind, "", call_body, extra)
}

/// [`wat_guest`] whose `wasmsched_sync` first runs `sync_prelude` (with the message length
/// in local 0), e.g. to remember how big the last snapshot was: a guest can then misbehave
/// only once it was sent a cluster with hosts.
pub fn wat_guest_with_sync(
    unit: &str,
    kind: policy_sdk::UnitKind,
    sync_prelude: &str,
    call_body: &str,
    extra: &str,
) -> Vec<u8> {
    use policy_sdk::wire::abi::{pack, ABI_VERSION};
    use policy_sdk::wire::codec;
    use policy_sdk::wire::sync::SyncResponse;
    use policy_sdk::{Manifest, UnitDescriptor};
    let manifest = codec::encode(&Some(Manifest {
        abi_version: ABI_VERSION,
        module: format!("hostile-{unit}"),
        version: "0.0.1".into(),
        units: vec![UnitDescriptor {
            name: unit.into(),
            kind,
            description: "hand-written test guest".into(),
            params: Vec::new(),
        }],
    }))
    .unwrap();
    let synced = codec::encode(&SyncResponse::Synced { epoch: 0 }).unwrap();
    let receiving = codec::encode(&SyncResponse::Receiving { hosts: 0 }).unwrap();
    wat(&format!(
        r#"(module
            (memory (export "memory") 4)
            (data (i32.const 4096) "{m}")
            (data (i32.const 8192) "{s}")
            (data (i32.const 8448) "{r}")
            {extra}
            (func (export "wasmsched_abi_version") (result i32) i32.const {ABI_VERSION})
            (func (export "wasmsched_input") (param i32) (result i32) i32.const 65536)
            (func (export "wasmsched_manifest") (result i64) i64.const {mp})
            (func (export "wasmsched_sync") (param i32) (result i64) {sync_prelude}
                ;; The start of a snapshot in parts (form 2) waits for hosts; the rest syncs.
                (if (result i64) (i32.eq (i32.load8_u (i32.const 65536)) (i32.const 2))
                    (then i64.const {rp}) (else i64.const {sp})))
            (func (export "wasmsched_call") (param i32) (result i64) {call_body})
            (func (export "wasmsched_batch") (param i32) (result i64) {call_body}))"#,
        m = wat_bytes(&manifest),
        s = wat_bytes(&synced),
        mp = pack(4096, manifest.len() as u32),
        sp = pack(8192, synced.len() as u32),
        r = wat_bytes(&receiving),
        rp = pack(8448, receiving.len() as u32),
    ))
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes (then panics
/// with `what`). For hot-reload tests: file events and reloads take an unknown time on a
/// loaded machine, so tests wait for the state, never for a fixed time.
pub fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
