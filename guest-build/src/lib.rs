//! Compiles policy-unit crates of this workspace to `wasm32-unknown-unknown` from inside a
//! build script, the way wasmtime's own test programs are built: a nested `cargo build` with
//! its own target directory (so it never waits on the outer build's lock), the
//! `wasm-guest` profile, and a clean environment.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The wasm target guests are built for.
pub const TARGET: &str = "wasm32-unknown-unknown";

/// The `--config` setting of every guest build, builtin or an operator's: code generation
/// for wasm SIMD (128-bit vectors), which wasmtime's Cranelift compiles on any x86-64 CPU
/// (SSE2, the architecture's baseline, is enough) and on aarch64. LLVM then vectorizes the
/// guests' sums and scans over hosts; the builtin default policy's summary decisions at
/// 1,000 hosts took 4-9% less time in wasm, hugepage VMs gaining most (see
/// `docs/performance.md`). A `RUSTFLAGS` in the environment of an operator's
/// `wasmsched build` replaces it, as cargo's rules say.
pub const RUSTFLAGS_CONFIG: &str =
    "target.wasm32-unknown-unknown.rustflags=[\"-C\", \"target-feature=+simd128\"]";

/// One guest crate to build.
#[derive(Debug, Clone)]
pub struct Guest {
    /// Cargo package name (e.g. `builtin-basic`).
    pub package: &'static str,
    /// Directory watched for changes, relative to the workspace root: the crate's, or one
    /// that also holds the crates it is built from.
    pub dir: &'static str,
}

/// A built guest module.
#[derive(Debug, Clone)]
pub struct Built {
    /// Cargo package name.
    pub package: &'static str,
    /// Path of the `.wasm` file.
    pub wasm: PathBuf,
}

/// Builds the guests and returns where their `.wasm` files are. Call from a build script;
/// `manifest_dir` is the calling crate's `CARGO_MANIFEST_DIR`. Panics with a one-line fix
/// when the wasm target is missing, and with cargo's output when a guest fails to compile.
pub fn build(manifest_dir: &Path, guests: &[Guest]) -> Vec<Built> {
    let workspace = workspace_root(manifest_dir);
    for dir in ["policy-sdk", "Cargo.lock", "Cargo.toml"]
        .iter()
        .map(|d| workspace.join(d))
        .chain(guests.iter().map(|g| workspace.join(g.dir)))
    {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    println!("cargo:rerun-if-env-changed=WASMSCHED_GUEST_TARGET_DIR");

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = std::env::var_os("WASMSCHED_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| outer_target_dir(&workspace).join("wasm-guests"));
    ensure_target_installed(&target_dir);

    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&workspace)
        .arg("build")
        .arg("--target")
        .arg(TARGET)
        .arg("--profile")
        .arg("wasm-guest")
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--config")
        .arg(RUSTFLAGS_CONFIG);
    for g in guests {
        cmd.arg("-p").arg(g.package);
    }
    // The outer build's settings must not leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cargo}` to build the wasm policy modules: {e}"));
    if !output.status.success() {
        panic!(
            "building the wasm policy modules failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    guests
        .iter()
        .map(|g| {
            let wasm = target_dir
                .join(TARGET)
                .join("wasm-guest")
                .join(format!("{}.wasm", g.package.replace('-', "_")));
            assert!(wasm.exists(), "guest build produced no {}", wasm.display());
            Built {
                package: g.package,
                wasm,
            }
        })
        .collect()
}

/// Makes sure the wasm target is installed, installing it when rustup can; panics with the
/// one-line fix otherwise. Build scripts of several crates may get here at once: the
/// install runs under a file lock in the guests' target directory, once.
fn ensure_target_installed(target_dir: &Path) {
    let note = |line: &str| println!("cargo:warning={line}");
    if let Err(fix) = ensure_target(target_dir, None, note) {
        panic!("{fix}");
    }
}

/// Makes sure the [`TARGET`] is installed for the toolchain `rustc` resolves to in `dir`
/// (the current directory when `None`: a `rust-toolchain.toml` there picks the toolchain),
/// running `rustup target add` when it is missing, under a file lock in `lock_dir` so that
/// concurrent builds install it once. `note` hears what is done (the install, a failure
/// of rustup). Returns the one-line fix when the target is still missing afterwards; `Ok`
/// when there is no `rustc` to ask (the build itself then says what is wrong).
pub fn ensure_target(
    lock_dir: &Path,
    dir: Option<&Path>,
    mut note: impl FnMut(&str),
) -> Result<(), String> {
    let Some(sysroot) = sysroot(dir) else {
        return Ok(());
    };
    let installed = || sysroot.join("lib/rustlib").join(TARGET).exists();
    if installed() {
        return Ok(());
    }
    let lock = std::fs::create_dir_all(lock_dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_dir.join(".install-target.lock"))
    });
    let lock = lock.and_then(|file| file.lock().map(|()| file));
    if !installed() {
        install_target(dir, &mut note);
    }
    drop(lock);
    if installed() {
        Ok(())
    } else {
        Err(format!(
            "the {TARGET} target is not installed; fix with: rustup target add {TARGET}"
        ))
    }
}

fn sysroot(dir: Option<&Path>) -> Option<PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut cmd = Command::new(&rustc);
    cmd.arg("--print").arg("sysroot");
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let output = cmd.output().ok()?;
    output
        .status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim().to_string()))
}

/// Installs the wasm target for the toolchain running this build, when rustup is there.
/// `RUSTUP_TOOLCHAIN` (set by rustup's proxies) names the active toolchain, so the target
/// lands where this `rustc` looks for it; rustup only installs the targets listed in
/// `rust-toolchain.toml` when it installs the toolchain itself, so a stable toolchain that
/// was already there lacks it. Without rustup (or offline) the caller's one-line fix stands.
fn install_target(dir: Option<&Path>, note: &mut dyn FnMut(&str)) {
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", TARGET]);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    if let Ok(toolchain) = std::env::var("RUSTUP_TOOLCHAIN") {
        cmd.args(["--toolchain", &toolchain]);
    }
    note(&format!(
        "installing the {TARGET} target: rustup target add {TARGET}"
    ));
    match cmd.output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => note(&format!(
            "rustup target add {TARGET} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(e) => note(&format!("rustup is not available ({e})")),
    }
}

fn workspace_root(manifest_dir: &Path) -> PathBuf {
    manifest_dir
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .map(|text| text.contains("[workspace]"))
                .unwrap_or(false)
        })
        .unwrap_or(manifest_dir)
        .to_path_buf()
}

fn outer_target_dir(workspace: &Path) -> PathBuf {
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out (or with a target triple
    // in between); walk up to the directory that holds the `build` folder's profile dir.
    if let Ok(out_dir) = std::env::var("OUT_DIR") {
        let out_dir = PathBuf::from(out_dir);
        if let Some(build) = out_dir
            .ancestors()
            .find(|p| p.file_name().is_some_and(|n| n == "build"))
        {
            if let Some(target) = build.parent().and_then(Path::parent) {
                return target.to_path_buf();
            }
        }
    }
    workspace.join("target")
}
