//! `wasmsched-bench`: measures the builtin default policy as wasm modules and as the same
//! unit code linked natively, in one process and one run, and writes a JSON report.
//!
//! ```text
//! cargo run --release -p wasmsched-bench -- [--quick] [--sizes 100,1000,10000,50000] \
//!     [--out docs/bench-report.json] [--markdown]
//! ```
//!
//! See `docs/performance.md` for what each number means and how it is measured.

mod memory;
mod report;
mod round2;
mod runs;
mod stats;

use anyhow::{Context as _, Result};
use clap::Parser;
use report::{Meta, Report};
use runs::Backends;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Benchmark harness for wasmsched: decision latency (wasm vs native), mass start,
/// snapshot sync, module load time and peak memory, checked against the performance targets.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Fewer iterations and smaller workloads (a smoke run; numbers are rough).
    #[arg(long)]
    quick: bool,
    /// Cluster sizes (hosts) of the latency and sync measurements.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000,50000")]
    sizes: Vec<usize>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench-report.json")]
    out: PathBuf,
    /// Print the tables as markdown (for docs/performance.md) instead of plain text.
    #[arg(long)]
    markdown: bool,
    /// VMs of the mass start (default 10000; 1000 with --quick).
    #[arg(long)]
    mass_vms: Option<usize>,
    /// Hosts of the mass start (default 1000; 100 with --quick).
    #[arg(long)]
    mass_hosts: Option<usize>,
    /// Runs of the mass start per backend (default 3; 1 with --quick).
    #[arg(long)]
    mass_runs: Option<usize>,
    /// Hosts of the units and pending-records scaling series.
    #[arg(long, default_value_t = 1_000)]
    scaling_hosts: usize,
    /// Other VMs pending in the pending-records series (default 0,1000,10000; 0,100,1000
    /// with --quick).
    #[arg(long, value_delimiter = ',')]
    pending_levels: Option<Vec<usize>>,
    /// Hosts of the snapshot in the peak-memory measurement.
    #[arg(long, default_value_t = 10_000)]
    memory_hosts: usize,
    /// Thread counts of the threaded mass start (the first is the baseline).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Hosts of the host stats refresh.
    #[arg(long, default_value_t = 10_000)]
    refresh_hosts: usize,
    /// The two cluster sizes of the large-cluster measurement (base, large).
    #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
    split_hosts: Vec<usize>,
    /// Internal: run as the peak-memory child process.
    #[arg(long, hide = true)]
    measure_memory: bool,
    /// Internal: the warm compiled-module cache of the peak-memory child.
    #[arg(long, hide = true)]
    cache_dir: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.measure_memory {
        let cache = args
            .cache_dir
            .context("--measure-memory needs --cache-dir")?;
        return memory::child(args.memory_hosts, &cache);
    }
    let report = run(&args)?;
    for table in report.tables() {
        if args.markdown {
            println!("{}", table.markdown());
        } else {
            println!("{}", table.plain());
        }
    }
    println!("{}", report.header());
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("report written to {}", args.out.display());
    Ok(())
}

/// Progress on stderr, so stdout stays the tables.
fn progress(what: &str) {
    eprintln!("[wasmsched-bench] {what}");
}

/// Runs every measurement.
fn run(args: &Args) -> Result<Report> {
    let started = Instant::now();
    if cfg!(debug_assertions) {
        progress("warning: debug build; use --release for meaningful numbers");
    }
    let quick = args.quick;
    let mass_vms = args.mass_vms.unwrap_or(if quick { 1_000 } else { 10_000 });
    let mass_hosts = args.mass_hosts.unwrap_or(if quick { 100 } else { 1_000 });
    let mass_runs = args.mass_runs.unwrap_or(if quick { 1 } else { 3 }).max(1);
    let pending_levels = args.pending_levels.clone().unwrap_or(if quick {
        vec![0, 100, 1_000]
    } else {
        vec![0, 1_000, 10_000]
    });

    progress("module load: cold compile and compiled cache");
    let (cold_runs, cached_runs) = if quick { (1, 3) } else { (3, 10) };
    let (module_load, warm_cache) = runs::module_load(cold_runs, cached_runs)?;

    progress(&format!(
        "peak memory: child process, {} hosts",
        args.memory_hosts
    ));
    let memory = memory::measure(args.memory_hosts, warm_cache.path())?;
    drop(warm_cache);

    let backends = Backends::new()?;
    let mut latency = Vec::new();
    let mut sync = Vec::new();
    for &hosts in &args.sizes {
        progress(&format!("decision latency: {hosts} hosts"));
        latency.push(runs::latency(&backends, hosts, quick)?);
        progress(&format!("snapshot sync: {hosts} hosts"));
        sync.push(runs::sync(&backends, hosts, quick)?);
    }

    progress(&format!(
        "mass start: {mass_vms} VMs onto {mass_hosts} hosts, {mass_runs} run(s) per backend"
    ));
    let mass_start = runs::mass_start(&backends, mass_vms, mass_hosts, mass_runs)?;

    progress(&format!(
        "scaling: units and pending records at {} hosts",
        args.scaling_hosts
    ));
    let scaling = runs::scaling(&backends, args.scaling_hosts, &pending_levels, quick)?;

    progress(&format!(
        "mass start on threads {:?}: {mass_vms} VMs onto {mass_hosts} hosts",
        args.threads
    ));
    let mut thread_counts = args.threads.clone();
    thread_counts.retain(|&t| t > 0);
    if thread_counts.is_empty() {
        thread_counts.push(1);
    }
    let mass_threads =
        round2::mass_threads(&backends, mass_vms, mass_hosts, mass_runs, &thread_counts)?;

    progress(&format!("host stats refresh: {} hosts", args.refresh_hosts));
    let refresh = round2::refresh(&backends, args.refresh_hosts, quick)?;

    let (split_base, split_large) = match args.split_hosts.as_slice() {
        [base, large, ..] => (*base, *large),
        [large] => (*large / 5, *large),
        [] => (10_000, 50_000),
    };
    progress(&format!(
        "large clusters: {split_base} and {split_large} hosts"
    ));
    let split = round2::split(&backends, split_base, split_large, quick)?;

    let targets = report::targets(&report::Measured {
        latency: &latency,
        sync: &sync,
        mass: &mass_start,
        threads: &mass_threads,
        refresh: &refresh,
        split: &split,
        load: &module_load,
        memory: &memory,
    });
    Ok(Report {
        meta: Meta {
            date: utc_date(SystemTime::now()),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpu_model(),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .into(),
            quick,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            harness_seconds: started.elapsed().as_secs_f64(),
        },
        scaling_hosts: runs::hosts_series(&latency),
        latency,
        mass_start,
        sync,
        module_load,
        memory,
        scaling,
        refresh,
        mass_threads,
        split,
        targets,
    })
}

/// The CPU model name from `/proc/cpuinfo` (`unknown` elsewhere).
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `YYYY-MM-DD` of a time, in UTC (days since the epoch to a proleptic Gregorian date).
fn utc_date(time: SystemTime) -> String {
    let days = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_dates() {
        let at = |secs: u64| utc_date(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01");
        assert_eq!(at(951_782_400), "2000-02-29");
        assert_eq!(at(1_709_251_200), "2024-03-01");
        assert_eq!(at(1_767_225_599), "2025-12-31");
    }
}
