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

/// A runtime with the builtins and no compiled-module cache.
pub fn runtime() -> Runtime {
    Runtime::builder()
        .cache_dir(None)
        .build()
        .expect("runtime builds")
}

/// A runtime with the builtins plus the misbehaving fixture module.
pub fn runtime_with_misbehave() -> Runtime {
    let rt = runtime();
    rt.load_file(&misbehave_wasm()).expect("fixture loads");
    rt
}

/// Parses a TOML policy against a runtime, panicking with the error.
pub fn policy(rt: &Runtime, toml: &str) -> Policy {
    Policy::parse(rt, toml, wasmsched::files::Format::Toml, "test-policy.toml")
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
            (func (export "wasmsched_call") (param i32) (result i64) i64.const 0))"#
    ))
}
