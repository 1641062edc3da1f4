//! The compiled-module cache: native code compiled from a module, kept in the user's cache
//! directory and keyed by the module's content hash and the engine's compatibility hash, so
//! a restart loads every module without compiling it again. Artifacts are only ever read
//! from this directory, never from the (untrusted) policy directory.
//!
//! Loading an artifact runs its native code outside the sandbox, so nothing is trusted
//! blindly:
//!
//! * The directory must be owned by the current user and writable by no one else, and no
//!   directory above it may be writable by others without the sticky bit (as ssh checks
//!   its keys). Otherwise the cache is not used at all, with a warning.
//! * Every entry carries an HMAC-SHA-256 tag over the engine's compatibility hash, the
//!   module's content hash and the artifact, keyed by a random per-user secret
//!   (`key`, 32 bytes, mode 0600) that only the cache writer can read. An entry whose tag
//!   does not verify is discarded, logged and recompiled; its code is never loaded.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;
use wasmtime::{Engine, Module};

/// First bytes of every entry (format version 1: magic, tag, artifact).
const MAGIC: &[u8; 8] = b"wsmcch1\n";
/// Length of the HMAC-SHA-256 tag.
const TAG_LEN: usize = 32;
/// Length of the secret key.
const KEY_LEN: usize = 32;
/// Largest entry read back.
const MAX_ENTRY_BYTES: u64 = 1 << 30;
/// SHA-256 block size, for HMAC.
const BLOCK: usize = 64;

/// A verified cache directory and its secret key.
pub(crate) struct Cache {
    dir: PathBuf,
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("dir", &self.dir).finish()
    }
}

impl Cache {
    /// Opens (creating it, mode 0700) the cache directory and its key. Returns `None`,
    /// after a warning, when the directory or the key cannot be trusted or made: the
    /// runtime then compiles every module and caches nothing.
    pub(crate) fn open(dir: &Path) -> Option<Cache> {
        match Self::try_open(dir) {
            Ok(cache) => Some(cache),
            Err(why) => {
                tracing::warn!(
                    target: "wasmsched::cache",
                    dir = %dir.display(),
                    "compiled-module cache not used: {why}"
                );
                None
            }
        }
    }

    fn try_open(dir: &Path) -> std::result::Result<Cache, String> {
        create_private_dir(dir).map_err(|e| format!("cannot create it: {e}"))?;
        check_dir_is_private(dir)?;
        let key = load_or_create_key(&dir.join("key"))?;
        Ok(Cache {
            dir: dir.to_path_buf(),
            key,
        })
    }

    /// Where the entry of a module with content hash `hash` lives for this engine.
    fn entry_path(&self, engine: &Engine, hash: &str) -> (PathBuf, u64) {
        let compat = compatibility(engine);
        (self.dir.join(format!("{hash}-{compat:016x}.cwasm")), compat)
    }

    /// The tag of an artifact for a module hash and engine compatibility hash.
    fn tag(&self, compat: u64, hash: &str, artifact: &[u8]) -> [u8; TAG_LEN] {
        // Each field is length-prefixed, so no two different entries give one message.
        let hash_len = (hash.len() as u64).to_le_bytes();
        hmac_sha256(
            &self.key,
            &[
                MAGIC.as_slice(),
                &compat.to_le_bytes(),
                &hash_len,
                hash.as_bytes(),
                artifact,
            ],
        )
    }

    /// A verified entry's module, or `None` (missing, or discarded with a warning).
    fn load(&self, engine: &Engine, file: &str, hash: &str) -> Option<Module> {
        let (path, compat) = self.entry_path(engine, hash);
        let bytes = match crate::files::read_limited(&path, MAX_ENTRY_BYTES) {
            Ok(bytes) => bytes,
            Err(_) if !path.exists() => return None,
            Err(why) => {
                self.discard(&path, file, &why);
                return None;
            }
        };
        let header = MAGIC.len() + TAG_LEN;
        if bytes.len() < header || !bytes.starts_with(MAGIC) {
            self.discard(&path, file, "not a wasmsched cache entry");
            return None;
        }
        let (tag, artifact) = bytes[MAGIC.len()..].split_at(TAG_LEN);
        if !constant_time_eq(tag, &self.tag(compat, hash, artifact)) {
            self.discard(
                &path,
                file,
                "integrity check failed (changed by someone other than this cache's writer)",
            );
            return None;
        }
        // SAFETY: the artifact carries a valid HMAC under the secret key that only this
        // user's cache writer holds, so it is exactly what `Module::serialize` produced for
        // this module's content hash on a compatible engine.
        match unsafe { Module::deserialize(engine, artifact) } {
            Ok(module) => Some(module),
            Err(e) => {
                self.discard(&path, file, &format!("unusable: {e:#}"));
                None
            }
        }
    }

    fn discard(&self, path: &Path, file: &str, why: &str) {
        tracing::warn!(
            target: "wasmsched::cache",
            entry = %path.display(),
            file,
            "cache entry discarded, recompiling: {why}"
        );
        let _ = std::fs::remove_file(path);
    }

    /// Writes an entry atomically (a private temporary file renamed into place).
    fn store(&self, engine: &Engine, hash: &str, module: &Module) -> anyhow::Result<()> {
        let (path, compat) = self.entry_path(engine, hash);
        let artifact = module.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let tag = self.tag(compat, hash, &artifact);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            unique_suffix(),
            path.file_name().unwrap().to_string_lossy()
        ));
        let written = create_private_file(&tmp).and_then(|mut out| {
            out.write_all(MAGIC)?;
            out.write_all(&tag)?;
            out.write_all(&artifact)?;
            out.sync_all()
        });
        let renamed = written.and_then(|()| std::fs::rename(&tmp, &path));
        if renamed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(renamed?)
    }
}

/// Compiles `bytes` (a module whose SHA-256 is `hash`, from `file`), through `cache` when
/// there is one. Compilation runs on its own thread and is abandoned (the module refused)
/// when it takes longer than `timeout`.
pub(crate) fn compile(
    engine: &Engine,
    cache: Option<&Cache>,
    file: &str,
    hash: &str,
    bytes: &[u8],
    timeout: Duration,
) -> Result<Module> {
    if let Some(module) = cache.and_then(|c| c.load(engine, file, hash)) {
        return Ok(module);
    }
    let module = compile_bounded(engine, file, bytes, timeout)?;
    if let Some(cache) = cache {
        if let Err(e) = cache.store(engine, hash, &module) {
            tracing::debug!(target: "wasmsched::cache", file, "cannot write cache entry: {e:#}");
        }
    }
    Ok(module)
}

/// Compiles on a helper thread, waiting at most `timeout`.
fn compile_bounded(engine: &Engine, file: &str, bytes: &[u8], timeout: Duration) -> Result<Module> {
    let (tx, rx) = mpsc::channel();
    let engine2 = engine.clone();
    let owned = bytes.to_vec();
    std::thread::Builder::new()
        .name("wasmsched-compile".into())
        .spawn(move || {
            let _ = tx.send(Module::from_binary(&engine2, &owned));
        })
        .map_err(|e| Error::Engine(format!("cannot start a compiler thread: {e}")))?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(module)) => Ok(module),
        Ok(Err(e)) => Err(Error::module(file, format!("does not compile: {e:#}"))),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::module(
            file,
            format!(
                "compilation took longer than {} ms; refused (the compiler finishes in the background and its result is dropped)",
                timeout.as_millis()
            ),
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(Error::module(file, "the compiler thread panicked"))
        }
    }
}

/// A name part no other writer uses at the same time: the process id and a counter (two
/// runtimes of one process may write the same entry at once).
fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

fn compatibility(engine: &Engine) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

/// Creates `dir` and missing parents; the ones created are private (0700 on Unix).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Creates a new file readable and writable by its owner only.
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// The cache directory must be ours and writable by no one else; a directory above it
/// writable by others must have the sticky bit (like `/tmp`).
#[cfg(unix)]
fn check_dir_is_private(dir: &Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let me = effective_uid();
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot inspect it: {e}"))?;
    if !meta.is_dir() {
        return Err("not a directory (a symlink or a file)".into());
    }
    if meta.uid() != me {
        return Err(format!(
            "owned by uid {}, not by this user (uid {me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by group or others (mode {:o}); run `chmod go-w {}`",
            meta.mode() & 0o7777,
            dir.display()
        ));
    }
    let canonical = dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve it: {e}"))?;
    for ancestor in canonical.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor)
            .map_err(|e| format!("cannot inspect {}: {e}", ancestor.display()))?;
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.mode() & 0o022 != 0 && !sticky {
            return Err(format!(
                "{} above it is writable by group or others (mode {:o})",
                ancestor.display(),
                meta.mode() & 0o7777
            ));
        }
        if meta.uid() != me && meta.uid() != 0 {
            return Err(format!(
                "{} above it is owned by uid {}, neither this user nor root",
                ancestor.display(),
                meta.uid()
            ));
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_dir_is_private(_dir: &Path) -> std::result::Result<(), String> {
    Ok(())
}

#[cfg(unix)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Reads the secret key, or makes one (32 random bytes, mode 0600) when there is none.
fn load_or_create_key(path: &Path) -> std::result::Result<[u8; KEY_LEN], String> {
    if !path.exists() {
        let mut key = [0u8; KEY_LEN];
        random_bytes(&mut key).map_err(|e| format!("cannot make a key: {e}"))?;
        let tmp = path.with_file_name(format!(".key-{}", unique_suffix()));
        let written = create_private_file(&tmp).and_then(|mut f| {
            f.write_all(&key)?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("cannot write {}: {e}", tmp.display()));
        }
        // A link fails when another process made the key first: then use theirs.
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => return Ok(key),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot write {}: {e}", path.display())),
        }
    }
    check_key_is_private(path)?;
    let bytes = crate::files::read_limited(path, KEY_LEN as u64)
        .map_err(|e| format!("key {}: {e}", path.display()))?;
    bytes
        .try_into()
        .map_err(|_| format!("key {} is not {KEY_LEN} bytes", path.display()))
}

#[cfg(unix)]
fn check_key_is_private(path: &Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot inspect key {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("key {} is not a regular file", path.display()));
    }
    if meta.uid() != effective_uid() || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "key {} must be owned by this user with mode 600 (it has uid {}, mode {:o})",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_key_is_private(_path: &Path) -> std::result::Result<(), String> {
    Ok(())
}

/// Fills `out` from the operating system's random source.
#[cfg(unix)]
fn random_bytes(out: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(out)
}

/// Fills `out` from the standard library's randomly seeded hasher keys.
#[cfg(not(unix))]
fn random_bytes(out: &mut [u8]) -> std::io::Result<()> {
    use std::hash::BuildHasher;
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        (i, std::time::SystemTime::now()).hash(&mut h);
        chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
    }
    Ok(())
}

/// HMAC-SHA-256 (RFC 2104) of the concatenation of `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; TAG_LEN] {
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let mut inner = Sha256::new();
    inner.update(pad(0x36));
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(pad(0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// SHA-256 of `bytes`, hex: a module's content hash.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let tag = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_6_long_key() {
        let key = [0xaau8; 131];
        let tag = hmac_sha256(
            &key,
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn tag_depends_on_key_and_every_field() {
        let cache = |key: u8| Cache {
            dir: PathBuf::new(),
            key: [key; KEY_LEN],
        };
        let base = cache(1).tag(7, "ab", b"code");
        assert_eq!(base, cache(1).tag(7, "ab", b"code"));
        assert_ne!(base, cache(2).tag(7, "ab", b"code"));
        assert_ne!(base, cache(1).tag(8, "ab", b"code"));
        assert_ne!(base, cache(1).tag(7, "abc", b"ode"));
        assert_ne!(base, cache(1).tag(7, "ab", b"cod3"));
    }
}
