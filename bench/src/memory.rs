//! Peak memory, measured in a child process of the harness so that the other measurements
//! (and their clusters) do not inflate it.

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;
use wasmsched::{Policy, Runtime, ScheduleRequest};
use wasmsched_testkit::synth::{self, VmKind};

/// Resident memory after one step of the child.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stage {
    /// What had been done.
    pub after: String,
    /// `VmRSS`, MiB.
    pub rss_mib: f64,
    /// `VmHWM` (peak resident set so far), MiB.
    pub hwm_mib: f64,
}

/// Peak memory with every builtin module loaded and a cluster snapshot synced into them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Memory {
    /// Hosts of the snapshot.
    pub hosts: usize,
    /// Builtin modules loaded (from a warm compiled-module cache).
    pub modules: usize,
    /// `VmHWM` at the end: the process's peak resident set.
    pub peak_mib: f64,
    /// Resident memory along the way.
    pub stages: Vec<Stage>,
}

/// Reads a `/proc/self/status` field in KiB and returns MiB.
fn status_mib(field: &str) -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("peak memory needs /proc/self/status (Linux)")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    let kib: f64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("cannot parse {line:?}"))?;
    Ok(kib / 1024.0)
}

fn stage(after: &str) -> Result<Stage> {
    Ok(Stage {
        after: after.to_string(),
        rss_mib: status_mib("VmRSS:")?,
        hwm_mib: status_mib("VmHWM:")?,
    })
}

/// The child's work: load every builtin module from `cache`, build a `hosts`-host cluster
/// with pending records, and decide one VM of each kind with the default policy (every
/// module of the policy then holds a decoded copy of the snapshot). Prints the result as
/// JSON on stdout.
pub fn child(hosts: usize, cache: &Path) -> Result<()> {
    let mut stages = vec![stage("start")?];
    let runtime = Runtime::builder()
        .cache_dir(Some(cache.to_path_buf()))
        .build()?;
    let modules = runtime.modules().len();
    stages.push(stage("builtin modules loaded")?);
    let policy = Policy::builtin_default(&runtime)?;
    let (cluster, _) = synth::realistic_cluster(hosts)?;
    stages.push(stage("snapshot built")?);
    let view = cluster.view();
    for kind in VmKind::ALL {
        let request = ScheduleRequest::new(kind.vm(&format!("probe-{}", kind.name())));
        std::hint::black_box(policy.evaluate(&view, &request)?);
    }
    stages.push(stage("one decision per VM kind")?);
    let memory = Memory {
        hosts,
        modules,
        peak_mib: status_mib("VmHWM:")?,
        stages,
    };
    println!("{}", serde_json::to_string(&memory)?);
    Ok(())
}

/// Runs [`child`] in a new process of this executable and returns its result.
pub fn measure(hosts: usize, cache: &Path) -> Result<Memory> {
    let exe = std::env::current_exe().context("cannot find the harness executable")?;
    let output = Command::new(exe)
        .arg("--measure-memory")
        .arg("--memory-hosts")
        .arg(hosts.to_string())
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .context("cannot start the memory child process")?;
    if !output.status.success() {
        bail!(
            "memory child failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("bad memory child output: {stdout}"))
}
