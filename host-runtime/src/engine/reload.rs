//! Hot reload of a policy directory: a scan that validates changed files off the request
//! path and publishes the new module set in one atomic swap, a watcher thread that runs
//! scans on `notify` events (native or polling), and the status of both.
//!
//! Events are only hints: every scan lists the directory and compares each `*.wasm`
//! file's size and mtime with what was last processed. A changed file is read only once
//! it has stopped changing (its mtime is at least `settle` old, or it did not change for
//! `settle` between two scans) unless it was renamed into the directory, which editors
//! and deploy tools do only with complete files. A file whose content changes while it is
//! read is left for the next scan.

use crate::engine::module::{BreakerStatus, LoadedModule, ModuleStats};
use crate::engine::runtime::{Runtime, RuntimeState};
use crate::error::{Error, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

/// How the watcher learns about changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchMode {
    /// The platform's file events (inotify, FSEvents, ReadDirectoryChangesW).
    Native,
    /// Polling the directory at this interval: for network filesystems and other places
    /// where native events do not arrive.
    Poll(Duration),
}

/// Options of [`Runtime::watch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// Native events or polling.
    pub mode: WatchMode,
    /// Quiet time after the last event before the directory is scanned (bursts of events
    /// give one scan).
    pub debounce: Duration,
    /// How long a written (not renamed-in) file must stay unchanged before it is read.
    pub settle: Duration,
    /// The directory is also scanned this often without any event (events are hints and
    /// can be lost, e.g. on queue overflow).
    pub rescan_interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            mode: WatchMode::Native,
            debounce: Duration::from_millis(50),
            settle: Duration::from_millis(300),
            rescan_interval: Duration::from_secs(5),
        }
    }
}

impl WatchOptions {
    /// Polling at `interval` instead of native events.
    pub fn polling(interval: Duration) -> Self {
        Self {
            mode: WatchMode::Poll(interval),
            ..Self::default()
        }
    }
}

/// What loading a policy directory did: one scan of a watched directory
/// ([`Runtime::watch`], [`Runtime::sync_dir`]) or a one-off [`Runtime::load_dir`].
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Files whose new content was validated and published (new or replaced modules).
    pub loaded: Vec<String>,
    /// Files that disappeared; their modules were unpublished.
    pub removed: Vec<String>,
    /// Files whose content was rejected; a version that was serving keeps serving.
    pub rejected: Vec<Error>,
    /// Files still being written (left for a later scan).
    pub pending: Vec<String>,
}

impl ReloadReport {
    /// Whether the scan changed the published set.
    pub fn changed(&self) -> bool {
        !self.loaded.is_empty() || !self.removed.is_empty()
    }
}

/// A rejected version of a module file.
#[derive(Debug, Clone, Serialize)]
pub struct FileError {
    /// The file.
    pub file: String,
    /// Why it was rejected.
    pub reason: String,
    /// When (milliseconds since the Unix epoch).
    pub at_unix_ms: u64,
}

/// A loaded module as [`Runtime::status`] reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleStatus {
    /// File (or label) it was loaded from.
    pub file: String,
    /// Module name from the manifest.
    pub module: String,
    /// Module version from the manifest.
    pub version: String,
    /// SHA-256 of the bytes (hex), or `native`.
    pub hash: String,
    /// When this version was loaded (milliseconds since the Unix epoch).
    pub loaded_at_unix_ms: u64,
    /// Unit names.
    pub units: Vec<String>,
    /// The last rejected version of the same file, if the newest attempt failed (this
    /// version keeps serving).
    pub last_error: Option<FileError>,
    /// The module's circuit breaker.
    pub breaker: BreakerStatus,
    /// Sync and instance counters.
    pub stats: ModuleStats,
}

/// The watcher as [`Runtime::status`] reports it.
#[derive(Debug, Clone, Serialize)]
pub struct WatchStatus {
    /// Watched directory.
    pub dir: String,
    /// Native events or polling.
    pub mode: WatchMode,
    /// Whether the watcher thread is running.
    pub running: bool,
    /// Scans run since the watcher started (including the first).
    pub scans: u64,
    /// Last watcher error (event queue overflow, directory gone...).
    pub last_error: Option<String>,
}

/// Everything [`Runtime::status`] knows: the published modules, files that were rejected
/// or are still being written, and the watcher.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeStatus {
    /// Generation of the published module set.
    pub generation: u64,
    /// Modules in the published set, in load order.
    pub modules: Vec<ModuleStatus>,
    /// Files of the policy directory whose newest content is not serving: rejected (with
    /// the reason) or pending (still being written). A rejected file whose older version
    /// serves is listed here and in `modules`.
    pub problems: Vec<FileProblem>,
    /// The watcher, when one was started.
    pub watch: Option<WatchStatus>,
}

/// A file of the policy directory whose newest content is not serving.
#[derive(Debug, Clone, Serialize)]
pub struct FileProblem {
    /// The file.
    pub file: String,
    /// Hash of the version still serving from this file, if any.
    pub serving_hash: Option<String>,
    /// The rejection; `None` while the file is still being written.
    pub error: Option<FileError>,
}

/// What became of a module file [`Runtime::wait_for_file`] waited for.
#[derive(Debug, Clone)]
pub enum FileLoad {
    /// The file's current content is published: its units serve the next decision.
    Serving(Arc<LoadedModule>),
    /// The file's current content was rejected (the reason names the file); a version
    /// that served before keeps serving.
    Rejected(FileError),
    /// Neither happened within the timeout (still being written, settling or validated).
    TimedOut,
}

/// Size and modification time: what tells that a file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: SystemTime,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            len: meta.len(),
            mtime: meta.modified()?,
        })
    }
}

#[derive(Debug, Default)]
struct FileState {
    /// The version published from this file.
    serving: Option<Arc<LoadedModule>>,
    /// Stamp of the content last processed (published or rejected).
    processed: Option<Stamp>,
    /// A newer stamp seen and when it was first seen (waiting for the file to settle).
    pending: Option<(Stamp, Instant)>,
    /// Rejection of the newest content.
    error: Option<FileError>,
    /// Generation of the module set when the content was refused because another module
    /// held one of its unit names: tried again once the set changes.
    conflict_at: Option<u64>,
    /// A version being validated on its own thread (watcher scans only).
    loading: Option<Loading>,
}

/// A version of a file validated on a thread of its own, so that a module slow to compile
/// holds back neither the watcher nor other files.
#[derive(Debug)]
struct Loading {
    stamp: Stamp,
    result: mpsc::Receiver<Result<Arc<LoadedModule>>>,
}

/// What the runtime knows about its policy directory.
#[derive(Debug)]
pub(crate) struct DirState {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Entries that look like modules but cannot be one (a directory or FIFO named
    /// `x.wasm`, a dangling or looping link, a name that is not UTF-8, `X.WASM`), with the
    /// reason, as of the last scan: shown in status instead of skipped without a word.
    skipped: Vec<FileError>,
    /// The watcher's queue: a finished background validation asks it for a scan.
    wake: Option<mpsc::Sender<Msg>>,
}

/// A running watcher; dropping it stops the thread at its next wake-up.
pub(crate) struct WatchHandle {
    stop: mpsc::Sender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
    _watcher: Box<dyn notify::Watcher + Send>,
    info: Arc<Mutex<WatchStatus>>,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle")
            .field("info", &self.info)
            .finish()
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(Msg::Stop);
    }
}

enum Msg {
    Event(notify::Result<notify::Event>),
    /// A background validation finished: scan now to publish (or report) it.
    Validated,
    Stop,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn is_module_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm")
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
}

/// A path as logs and status show it: control characters escaped, so a file name cannot
/// forge a log line or a terminal escape.
pub(crate) fn shown_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    if text.chars().any(char::is_control) {
        text.chars().flat_map(char::escape_default).collect()
    } else {
        text.into_owned()
    }
}

/// Why an entry of the policy directory that looks like a module is not read as one, or
/// `None` for a module file (or an entry that does not look like one: hidden files, other
/// extensions).
fn skip_reason(path: &Path) -> Option<String> {
    let name = path.file_name()?;
    let Some(name) = name.to_str() else {
        let lossy = name.to_string_lossy();
        return lossy
            .to_ascii_lowercase()
            .ends_with(".wasm")
            .then(|| "the file name is not UTF-8; rename it".to_string());
    };
    if name.starts_with('.') {
        return None;
    }
    let lower = name.to_ascii_lowercase();
    if !lower.ends_with(".wasm") {
        return None;
    }
    if !name.ends_with(".wasm") {
        return Some("only files ending in `.wasm` (lower case) are modules".into());
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => None,
        Ok(meta) if meta.is_dir() => Some("a directory, not a module file".into()),
        Ok(_) => Some("not a regular file (a FIFO, socket or device)".into()),
        Err(e) if std::fs::symlink_metadata(path).is_ok() => {
            Some(format!("a link that leads nowhere usable: {e}"))
        }
        Err(e) => Some(format!("cannot be read: {e}")),
    }
}

/// Result of one scan: the report and when to look again for files still settling.
struct ScanOutcome {
    report: ReloadReport,
    recheck_in: Option<Duration>,
}

/// See [`Runtime::sync_dir`].
pub(super) fn sync_dir(runtime: &Runtime, dir: &Path) -> Result<ReloadReport> {
    bind_dir(runtime, dir)?;
    Ok(scan(runtime, true, Duration::ZERO, &HashSet::new(), false)?.report)
}

/// See [`Runtime::watch`].
pub(super) fn watch(
    runtime: &Runtime,
    dir: impl Into<PathBuf>,
    options: WatchOptions,
) -> Result<ReloadReport> {
    let dir = dir.into();
    let mut slot = runtime.state.watch.lock().unwrap();
    if slot.is_some() {
        return Err(Error::conflict(
            "the runtime is already watching a policy directory",
        ));
    }
    bind_dir(runtime, &dir)?;
    let (tx, rx) = mpsc::channel();
    let events = tx.clone();
    let handler = move |event: notify::Result<notify::Event>| {
        let _ = events.send(Msg::Event(event));
    };
    let watch_err =
        |e: notify::Error| Error::io(dir.display().to_string(), format!("cannot watch: {e}"));
    let mut watcher: Box<dyn notify::Watcher + Send> = match options.mode {
        WatchMode::Native => Box::new(notify::recommended_watcher(handler).map_err(watch_err)?),
        WatchMode::Poll(interval) => Box::new(
            notify::PollWatcher::new(
                handler,
                notify::Config::default()
                    .with_poll_interval(interval)
                    .with_compare_contents(false),
            )
            .map_err(watch_err)?,
        ),
    };
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(watch_err)?;
    let first = scan(runtime, false, options.settle, &HashSet::new(), false)?;
    if let Some(state) = runtime.state.dir.lock().unwrap().as_mut() {
        state.wake = Some(tx.clone());
    }
    let info = Arc::new(Mutex::new(WatchStatus {
        dir: dir.display().to_string(),
        mode: options.mode,
        running: true,
        scans: 1,
        last_error: None,
    }));
    let thread = {
        let state = Arc::downgrade(&runtime.state);
        let shared = runtime.shared.clone();
        let info = info.clone();
        let recheck = first.recheck_in;
        std::thread::Builder::new()
            .name("wasmsched-watch".into())
            .spawn(move || watch_loop(state, shared, rx, options, info, recheck))
            .map_err(|e| Error::Engine(format!("cannot start the watcher thread: {e}")))?
    };
    tracing::info!(target: "wasmsched::reload", dir = %dir.display(), mode = ?options.mode, "watching");
    *slot = Some(WatchHandle {
        stop: tx,
        thread: Some(thread),
        _watcher: watcher,
        info,
    });
    Ok(first.report)
}

/// See [`Runtime::stop_watching`].
pub(super) fn stop_watching(runtime: &Runtime) -> bool {
    let handle = runtime.state.watch.lock().unwrap().take();
    let Some(mut handle) = handle else {
        return false;
    };
    let _ = handle.stop.send(Msg::Stop);
    if let Some(thread) = handle.thread.take() {
        if thread.thread().id() != std::thread::current().id() {
            let _ = thread.join();
        }
    }
    handle.info.lock().unwrap().running = false;
    true
}

/// See [`Runtime::status`].
pub(super) fn status(runtime: &Runtime) -> RuntimeStatus {
    let registry = runtime.registry();
    let dir = runtime.state.dir.lock().unwrap();
    let file_error = |file: &str| -> Option<FileError> {
        let dir = dir.as_ref()?;
        dir.files
            .iter()
            .find(|(p, _)| shown_path(p) == file)
            .and_then(|(_, s)| s.error.clone())
    };
    let modules = registry
        .modules
        .iter()
        .map(|m| ModuleStatus {
            file: m.file().to_string(),
            module: m.manifest().module.clone(),
            version: m.manifest().version.clone(),
            hash: m.hash().to_string(),
            loaded_at_unix_ms: unix_ms(m.loaded_at()),
            units: m.manifest().units.iter().map(|u| u.name.clone()).collect(),
            last_error: file_error(m.file()),
            breaker: m.breaker(),
            stats: m.stats(),
        })
        .collect();
    let problems = dir
        .as_ref()
        .map(|d| {
            d.files
                .iter()
                .filter(|(_, s)| s.error.is_some() || s.pending.is_some() || s.loading.is_some())
                .map(|(p, s)| FileProblem {
                    file: shown_path(p),
                    serving_hash: s.serving.as_ref().map(|m| m.hash().to_string()),
                    error: s.error.clone(),
                })
                .chain(d.skipped.iter().map(|skipped| FileProblem {
                    file: skipped.file.clone(),
                    serving_hash: None,
                    error: Some(skipped.clone()),
                }))
                .collect()
        })
        .unwrap_or_default();
    let watch = runtime
        .state
        .watch
        .lock()
        .unwrap()
        .as_ref()
        .map(|h| h.info.lock().unwrap().clone());
    RuntimeStatus {
        generation: registry.generation,
        modules,
        problems,
        watch,
    }
}

/// See [`Runtime::wait_for_file`].
pub(super) fn wait_for_file(runtime: &Runtime, path: &Path, timeout: Duration) -> Result<FileLoad> {
    let shown = shown_path(path);
    let Some(name) = path.file_name() else {
        return Err(Error::input(shown, None, "not a file name"));
    };
    if runtime.state.dir.lock().unwrap().is_none() {
        return Err(Error::conflict(
            "the runtime follows no policy directory (start Runtime::watch first)",
        ));
    }
    let deadline = Instant::now() + timeout;
    // The content to wait for: recomputed whenever the file changes on disk.
    let mut seen: Option<(Stamp, String)> = None;
    loop {
        let stamp = Stamp::of(path).map_err(|e| Error::io(&shown, format!("cannot read: {e}")))?;
        if seen.as_ref().is_none_or(|(s, _)| *s != stamp) {
            let bytes = Runtime::read_module_file(path)?;
            seen = Some((stamp, crate::engine::cache::sha256_hex(&bytes)));
        }
        let hash = seen.as_ref().map(|(_, h)| h.as_str()).unwrap_or_default();
        {
            let dir = runtime.state.dir.lock().unwrap();
            let entry = dir.as_ref().and_then(|d| d.files.get(&d.dir.join(name)));
            if let Some(entry) = entry {
                if let Some(serving) = entry.serving.as_ref().filter(|m| m.hash() == hash) {
                    return Ok(FileLoad::Serving(serving.clone()));
                }
                if let (Some(error), Some(processed)) = (&entry.error, entry.processed) {
                    if processed == stamp && entry.loading.is_none() {
                        return Ok(FileLoad::Rejected(error.clone()));
                    }
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(FileLoad::TimedOut);
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(10)));
    }
}

fn bind_dir(runtime: &Runtime, dir: &Path) -> Result<()> {
    let mut state = runtime.state.dir.lock().unwrap();
    match &*state {
        Some(d) if d.dir != dir => Err(Error::conflict(format!(
            "the runtime already follows policy directory {}; cannot also follow {}",
            d.dir.display(),
            dir.display()
        ))),
        Some(_) => Ok(()),
        None => {
            if !dir.is_dir() {
                return Err(Error::input(
                    dir.display().to_string(),
                    None,
                    "not a directory",
                ));
            }
            *state = Some(DirState {
                dir: dir.to_path_buf(),
                files: BTreeMap::new(),
                skipped: Vec::new(),
                wake: None,
            });
            Ok(())
        }
    }
}

/// One scan of the bound directory. `force` reads changed files even if they have not
/// settled; `renamed` are files known to have been renamed into place (complete). With
/// `background`, each changed file is validated on a thread of its own and published by
/// a later scan (the watcher's: the thread asks for one when it is done); otherwise the
/// scan validates every file before it returns.
fn scan(
    runtime: &Runtime,
    force: bool,
    settle: Duration,
    renamed: &HashSet<PathBuf>,
    background: bool,
) -> Result<ScanOutcome> {
    let mut guard = runtime.state.dir.lock().unwrap();
    let state = guard.as_mut().expect("scan of a bound directory");
    let entries = std::fs::read_dir(&state.dir).map_err(|e| {
        Error::input(
            state.dir.display().to_string(),
            None,
            format!("cannot read directory: {e}"),
        )
    })?;
    let listed: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    let mut skipped = Vec::new();
    let mut present: Vec<PathBuf> = Vec::new();
    for path in listed {
        match skip_reason(&path) {
            Some(reason) => skipped.push(FileError {
                file: shown_path(&path),
                reason,
                at_unix_ms: unix_ms(SystemTime::now()),
            }),
            None if is_module_file(&path) => present.push(path),
            None => {}
        }
    }
    present.sort();
    skipped.sort_by(|a, b| a.file.cmp(&b.file));
    for new in skipped
        .iter()
        .filter(|s| !state.skipped.iter().any(|old| old.file == s.file))
    {
        tracing::warn!(target: "wasmsched::reload", file = new.file, "skipped: {}", new.reason);
    }
    state.skipped = skipped;
    let now = Instant::now();
    let mut report = ReloadReport::default();
    let mut recheck_in: Option<Duration> = None;
    let mut wait = |d: Duration| {
        let d = d.max(Duration::from_millis(10));
        recheck_in = Some(recheck_in.map_or(d, |r: Duration| r.min(d)));
    };
    let generation = runtime.generation();
    let mut fresh: Vec<(PathBuf, Arc<LoadedModule>, Stamp)> = Vec::new();
    let mut rejected: Vec<(PathBuf, Stamp, Error)> = Vec::new();
    let mut conflicts: Vec<(PathBuf, Stamp, Error)> = Vec::new();
    for path in &present {
        let file = shown_path(path);
        let Ok(stamp) = Stamp::of(path) else {
            continue; // gone between listing and stat: the next scan sees it
        };
        let entry = state.files.entry(path.clone()).or_default();
        if let Some(loading) = entry.loading.take() {
            if loading.stamp == stamp {
                match loading.result.try_recv() {
                    Ok(Ok(module)) => fresh.push((path.clone(), module, stamp)),
                    Ok(Err(e)) => rejected.push((path.clone(), stamp, e)),
                    Err(mpsc::TryRecvError::Empty) => {
                        entry.loading = Some(loading);
                        report.pending.push(file);
                    }
                    Err(mpsc::TryRecvError::Disconnected) => rejected.push((
                        path.clone(),
                        stamp,
                        Error::module(&file, "validation stopped (its thread panicked)"),
                    )),
                }
                continue;
            }
            // Changed again while being validated: that result is dropped.
        }
        let retry = entry.conflict_at.is_some_and(|g| g != generation);
        if entry.processed == Some(stamp) && !retry {
            entry.pending = None;
            continue;
        }
        if !force && !renamed.contains(path) {
            let age = SystemTime::now()
                .duration_since(stamp.mtime)
                .unwrap_or(Duration::ZERO);
            let unchanged_for = match entry.pending {
                Some((s, since)) if s == stamp => now.duration_since(since),
                _ => {
                    entry.pending = Some((stamp, now));
                    Duration::ZERO
                }
            };
            if age < settle && unchanged_for < settle {
                wait(settle - age.max(unchanged_for));
                report.pending.push(file);
                continue;
            }
        }
        let bytes = match Runtime::read_module_file(path) {
            Ok(b) => b,
            Err(e) => {
                rejected.push((path.clone(), stamp, e));
                continue;
            }
        };
        if Stamp::of(path).ok() != Some(stamp) || bytes.len() as u64 != stamp.len {
            // Written to while we read it: look again once it settles.
            entry.pending = Some((stamp, now));
            wait(settle);
            report.pending.push(file);
            continue;
        }
        if let Some(serving) = &entry.serving {
            let hash = crate::engine::cache::sha256_hex(&bytes);
            if serving.hash() == hash {
                // Touched, same content; or a broken version fixed by putting the serving
                // one back: say so, the rejection no longer stands.
                if entry.error.take().is_some() {
                    tracing::info!(
                        target: "wasmsched::reload",
                        file = shown_path(path),
                        hash = &hash[..12],
                        "file fixed: it holds the serving version again"
                    );
                }
                entry.processed = Some(stamp);
                entry.pending = None;
                continue;
            }
        }
        if background {
            let (tx, rx) = mpsc::channel();
            let worker = runtime.clone();
            let wake = state.wake.clone();
            let name = file.clone();
            let spawned = std::thread::Builder::new()
                .name("wasmsched-validate".into())
                .spawn(move || {
                    let _ = tx.send(worker.load_module(&name, &bytes));
                    if let Some(wake) = wake {
                        let _ = wake.send(Msg::Validated);
                    }
                });
            match spawned {
                Ok(_) => {
                    entry.loading = Some(Loading { stamp, result: rx });
                    report.pending.push(file);
                }
                Err(e) => rejected.push((
                    path.clone(),
                    stamp,
                    Error::module(&file, format!("cannot start a validation thread: {e}")),
                )),
            }
            continue;
        }
        match runtime.load_module(&file, &bytes) {
            Ok(module) => fresh.push((path.clone(), module, stamp)),
            Err(e) => rejected.push((path.clone(), stamp, e)),
        }
    }
    let gone: Vec<PathBuf> = state
        .files
        .keys()
        .filter(|p| present.binary_search(p).is_err())
        .cloned()
        .collect();

    // Publish everything in one swap: removals first (a rename frees the unit names
    // for the new file), then each new version if its unit names are free.
    let mut published: Vec<(PathBuf, Arc<LoadedModule>, Stamp)> = Vec::new();
    if !gone.is_empty() || !fresh.is_empty() {
        let gone_files: Vec<String> = gone.iter().map(|p| shown_path(p)).collect();
        let result = runtime.update(|registry| {
            for file in &gone_files {
                registry.remove(file);
            }
            for (path, module, stamp) in fresh.drain(..) {
                let mut trial = registry.clone();
                trial.remove(module.file());
                match trial.insert(module.clone()) {
                    Ok(()) => {
                        *registry = trial;
                        published.push((path, module, stamp));
                    }
                    Err(e) => conflicts.push((path, stamp, e)),
                }
            }
            Ok(())
        });
        result?;
    }
    let generation = runtime.generation();
    for path in gone {
        let file = shown_path(&path);
        if let Some(old) = state.files.remove(&path) {
            if old.serving.is_some() {
                tracing::info!(target: "wasmsched::reload", file, "module removed; its units are gone (policies using them keep their last good version)");
                report.removed.push(file);
            }
        }
    }
    for (path, module, stamp) in published {
        let file = shown_path(&path);
        let entry = state.files.entry(path).or_default();
        let m = module.manifest();
        let units: Vec<&str> = m.units.iter().map(|u| u.name.as_str()).collect();
        tracing::info!(
            target: "wasmsched::reload",
            file,
            module = m.module,
            version = m.version,
            hash = &module.hash()[..12],
            units = units.join(","),
            "{}",
            if entry.serving.is_some() { "module replaced" } else { "module loaded" }
        );
        entry.serving = Some(module);
        entry.processed = Some(stamp);
        entry.pending = None;
        entry.error = None;
        entry.conflict_at = None;
        report.loaded.push(file);
    }
    let conflicted: Vec<PathBuf> = conflicts.iter().map(|(p, _, _)| p.clone()).collect();
    if report.changed()
        && state
            .files
            .iter()
            .any(|(p, s)| s.conflict_at.is_some() && !conflicted.contains(p))
    {
        // A unit name may have been freed: try the refused files again.
        wait(Duration::ZERO);
    }
    let rejected = rejected
        .into_iter()
        .map(|r| (r, false))
        .chain(conflicts.into_iter().map(|r| (r, true)));
    for ((path, stamp, error), conflict) in rejected {
        let entry = state.files.entry(path.clone()).or_default();
        let reason = match &error {
            Error::Module { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        tracing::warn!(
            target: "wasmsched::reload",
            file = shown_path(&path),
            serving = entry.serving.as_ref().map(|m| &m.hash()[..12]),
            "module rejected: {reason}"
        );
        entry.processed = Some(stamp);
        entry.pending = None;
        entry.loading = None;
        entry.conflict_at = conflict.then_some(generation);
        entry.error = Some(FileError {
            file: shown_path(&path),
            reason,
            at_unix_ms: unix_ms(SystemTime::now()),
        });
        report.rejected.push(error);
    }
    Ok(ScanOutcome { report, recheck_in })
}

/// Whether an event says a module file was renamed into place (so it is complete).
fn renamed_into_place(event: &notify::Event) -> Vec<PathBuf> {
    use notify::event::{ModifyKind, RenameMode};
    match event.kind {
        notify::EventKind::Modify(ModifyKind::Name(RenameMode::To)) => event.paths.clone(),
        notify::EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            event.paths.get(1).cloned().into_iter().collect()
        }
        _ => Vec::new(),
    }
}

fn watch_loop(
    state: Weak<RuntimeState>,
    shared: Arc<crate::engine::runtime::EngineShared>,
    rx: mpsc::Receiver<Msg>,
    options: WatchOptions,
    info: Arc<Mutex<WatchStatus>>,
    first_recheck: Option<Duration>,
) {
    let started = Instant::now();
    // Next scan for files still settling, and next scan after a burst of events.
    let mut recheck: Option<Instant> = first_recheck.map(|d| started + d);
    let mut debounced: Option<Instant> = None;
    // First event of the current burst: a steady stream of events still gets a scan
    // every 20 debounce periods.
    let mut burst_start: Option<Instant> = None;
    let mut renamed: HashSet<PathBuf> = HashSet::new();
    loop {
        let now = Instant::now();
        let due = match (recheck, debounced) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = due
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(options.rescan_interval);
        match rx.recv_timeout(timeout) {
            Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(Msg::Validated) => {
                debounced = Some(Instant::now());
            }
            Ok(Msg::Event(Ok(event))) => {
                let relevant = event.paths.is_empty()
                    || event.need_rescan()
                    || event.paths.iter().any(|p| is_module_file(p));
                if !relevant {
                    continue;
                }
                renamed.extend(renamed_into_place(&event));
                let now = Instant::now();
                let start = *burst_start.get_or_insert(now);
                debounced = Some((now + options.debounce).min(start + options.debounce * 20));
            }
            Ok(Msg::Event(Err(e))) => {
                tracing::warn!(target: "wasmsched::reload", "watcher error: {e}; re-scanning");
                info.lock().unwrap().last_error = Some(e.to_string());
                debounced = Some(Instant::now() + options.debounce);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let Some(state) = state.upgrade() else {
                    break;
                };
                let runtime = Runtime {
                    shared: shared.clone(),
                    state,
                };
                burst_start = None;
                debounced = None;
                let hints = std::mem::take(&mut renamed);
                match scan(&runtime, false, options.settle, &hints, true) {
                    Ok(outcome) => {
                        recheck = outcome.recheck_in.map(|d| Instant::now() + d);
                    }
                    Err(e) => {
                        tracing::warn!(target: "wasmsched::reload", "scan failed: {e}");
                        info.lock().unwrap().last_error = Some(e.to_string());
                        recheck = None;
                    }
                }
                info.lock().unwrap().scans += 1;
            }
        }
    }
    info.lock().unwrap().running = false;
}
