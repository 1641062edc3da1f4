//! `wasmsched build`: compiles a unit crate to a size-optimized `wasm32-unknown-unknown`
//! module.
//!
//! The release profile is tuned for size whatever the crate's `Cargo.toml` says (command
//! line `--config` settings win over the manifest): `opt-level = "s"`, `lto`, one codegen
//! unit, `panic = "abort"`, symbols stripped; code generation for wasm SIMD
//! ([`guest_build::RUSTFLAGS_CONFIG`]). The wasm target is installed with rustup when
//! it is missing (the same code the workspace's own guest build uses). `CARGO_TARGET_DIR`
//! is honoured, so several unit crates can share compiled dependencies.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use wasmsched::{Error, Result};

/// The target units are compiled for.
pub const TARGET: &str = guest_build::TARGET;

/// Release-profile settings every `wasmsched build` uses.
pub const SIZE_PROFILE: &[&str] = &[
    "profile.release.opt-level=\"s\"",
    "profile.release.lto=true",
    "profile.release.codegen-units=1",
    "profile.release.panic=\"abort\"",
    "profile.release.strip=true",
    "profile.release.debug=false",
];

/// A built module.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BuiltModule {
    /// Where the `.wasm` file is.
    pub module: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Builds the crate in `crate_dir` and returns its module. Cargo's progress goes to
/// standard error; `note` hears what the toolkit itself does (installing the target).
/// Fails with one clear message when cargo (or rustup, for a missing target) is not
/// installed, and with cargo's exit status when the crate does not compile (cargo has
/// printed why).
pub fn build(crate_dir: &Path, note: impl FnMut(&str)) -> Result<BuiltModule> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    build_with(&cargo, crate_dir, note)
}

fn build_with(cargo: &str, crate_dir: &Path, mut note: impl FnMut(&str)) -> Result<BuiltModule> {
    let manifest = std::path::absolute(crate_dir.join("Cargo.toml"))
        .map_err(|e| Error::io(crate_dir.display().to_string(), e.to_string()))?;
    if !manifest.is_file() {
        return Err(Error::input(
            crate_dir.display().to_string(),
            None,
            "no Cargo.toml here: give the directory of a unit crate (made by `wasmsched new`)",
        ));
    }
    match Command::new(cargo)
        .arg("--version")
        .current_dir(crate_dir)
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Err(toolchain_missing(
                cargo,
                String::from_utf8_lossy(&out.stderr).trim(),
            ))
        }
        Err(e) => return Err(toolchain_missing(cargo, &e.to_string())),
    }
    let lock_dir = target_dir(crate_dir);
    guest_build::ensure_target(&lock_dir, Some(crate_dir), &mut note)
        .map_err(|fix| Error::io("rustup", fix))?;

    let mut cmd = Command::new(cargo);
    cmd.current_dir(crate_dir)
        .args(["build", "--release", "--lib", "--target", TARGET])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for setting in SIZE_PROFILE.iter().chain([&guest_build::RUSTFLAGS_CONFIG]) {
        cmd.arg("--config").arg(setting);
    }
    let output = cmd
        .output()
        .map_err(|e| toolchain_missing(cargo, &e.to_string()))?;
    if !output.status.success() {
        return Err(Error::input(
            crate_dir.display().to_string(),
            None,
            format!(
                "cargo build failed ({}); its messages are above",
                output.status
            ),
        ));
    }
    let module = wasm_artifact(&String::from_utf8_lossy(&output.stdout)).ok_or_else(|| {
        Error::input(
            manifest.display().to_string(),
            Some("lib.crate-type".into()),
            "the build made no .wasm file: the library needs crate-type = [\"cdylib\", \"rlib\"]",
        )
    })?;
    let bytes = std::fs::metadata(&module)
        .map_err(|e| Error::io(module.display().to_string(), e.to_string()))?
        .len();
    Ok(BuiltModule { module, bytes })
}

fn toolchain_missing(cargo: &str, why: &str) -> Error {
    Error::io(
        cargo,
        format!(
            "cannot run cargo ({why}); install Rust with rustup (https://rustup.rs), then: rustup target add {TARGET}"
        ),
    )
}

/// The crate's target directory as cargo will use it (for the target-install lock).
fn target_dir(crate_dir: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir.join("target"))
}

/// The `.wasm` file among the artifacts cargo reported (`--message-format=json`).
fn wasm_artifact(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
        })
        .rfind(|f| f.extension().is_some_and(|e| e == "wasm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_is_the_wasm_file_among_the_artifacts() {
        let messages = r#"{"reason":"compiler-artifact","filenames":["/t/libserde.rlib","/t/libserde.rmeta"]}
{"reason":"compiler-message","message":{}}
{"reason":"compiler-artifact","filenames":["/t/wasm32-unknown-unknown/release/old_hosts.wasm","/t/libold_hosts.rlib"]}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            wasm_artifact(messages),
            Some(PathBuf::from(
                "/t/wasm32-unknown-unknown/release/old_hosts.wasm"
            ))
        );
        assert_eq!(
            wasm_artifact(r#"{"reason":"compiler-artifact","filenames":["/t/liba.rlib"]}"#),
            None
        );
    }

    #[test]
    fn a_directory_without_a_crate_is_refused_before_cargo_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let error = build(tmp.path(), |_| {}).unwrap_err().to_string();
        assert!(error.contains("no Cargo.toml"), "{error}");
    }

    #[test]
    fn a_missing_cargo_is_one_message_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
        let missing = tmp.path().join("no-such-cargo");
        let error = build_with(missing.to_str().unwrap(), tmp.path(), |_| {})
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot run cargo"), "{error}");
        assert!(error.contains("rustup"), "{error}");
    }
}
