//! The compiled-module cache: native code compiled from a module, kept in the user's cache
//! directory and keyed by the module's content hash and the engine's compatibility hash, so
//! a restart loads every module without compiling it again. Artifacts are only ever read
//! from this directory, never from the (untrusted) policy directory.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::Path;
use wasmtime::{Engine, Module};

/// Compiles `bytes` (a module whose SHA-256 is `hash`, from `file`), through the cache in
/// `cache_dir` when there is one.
pub(crate) fn compile(
    engine: &Engine,
    cache_dir: Option<&Path>,
    file: &str,
    hash: &str,
    bytes: &[u8],
) -> Result<Module> {
    let cached = cache_dir.map(|dir| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        dir.join(format!("{hash}-{:016x}.cwasm", hasher.finish()))
    });
    if let Some(path) = &cached {
        if path.is_file() {
            // SAFETY: the cache directory only holds artifacts this runtime serialized
            // itself, keyed by the module's content hash and the engine's compatibility
            // hash; artifacts are never taken from the policy directory.
            match unsafe { Module::deserialize_file(engine, path) } {
                Ok(module) => return Ok(module),
                Err(e) => {
                    tracing::debug!("ignoring unusable cache entry {}: {e:#}", path.display())
                }
            }
        }
    }
    let module = Module::from_binary(engine, bytes)
        .map_err(|e| Error::module(file, format!("does not compile: {e:#}")))?;
    if let Some(path) = &cached {
        if let Err(e) = write_entry(path, &module) {
            tracing::debug!("cannot write cache entry {}: {e:#}", path.display());
        }
    }
    Ok(module)
}

/// Writes an entry atomically (a temporary file renamed into place).
fn write_entry(path: &Path, module: &Module) -> anyhow::Result<()> {
    let dir = path.parent().expect("cache path has a parent");
    std::fs::create_dir_all(dir)?;
    let bytes = module.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// SHA-256 of `bytes`, hex: a module's content hash.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
