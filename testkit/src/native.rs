//! The builtin units compiled natively into the host: the same unit code as the shipped
//! wasm modules, without the sandbox. The benchmarks' baseline, and the reference the
//! tests compare wasm decisions with.

use wasmsched::{Policy, Runtime};

/// A runtime without the wasm builtins and without a compiled-module cache, with the
/// builtin units registered natively as the wasm builtins group them (`scheduling`,
/// `balance`).
pub fn runtime() -> Runtime {
    let runtime = Runtime::builder()
        .builtins(false)
        .cache_dir(None)
        .build()
        .expect("a runtime without modules builds");
    for (label, units) in [
        ("native:scheduling", builtin_scheduling::units()),
        ("native:balance", builtin_balance::units()),
    ] {
        runtime
            .add_native(label, units)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
    }
    runtime
}

/// A runtime with the builtin wasm modules as shipped and no compiled-module cache.
pub fn wasm_runtime() -> Runtime {
    Runtime::builder()
        .cache_dir(None)
        .build()
        .expect("the builtin modules load")
}

/// The builtin default policy twice: over the wasm modules as shipped, and over the same
/// unit code compiled natively ([`runtime`]).
pub fn default_policies() -> (Policy, Policy) {
    (
        Policy::builtin_default(&wasm_runtime()).expect("default policy (wasm)"),
        Policy::builtin_default(&runtime()).expect("default policy (native)"),
    )
}
