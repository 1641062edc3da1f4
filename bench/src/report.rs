//! The report: everything measured in one run, the targets checked against it, and
//! rendering as plain or markdown tables.

use crate::memory::Memory;
use crate::round2::{MassThreads, Refresh, Split};
use crate::runs::{HostsPoint, KindLatency, MassStart, ModuleLoad, Scaling, SizeLatency, Sync};
use crate::stats::Comparison;
use serde::Serialize;

/// Where and how the numbers were taken.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    /// UTC date of the run (YYYY-MM-DD).
    pub date: String,
    /// CPUs available to the process.
    pub cpus: usize,
    /// CPU model from `/proc/cpuinfo`, when known.
    pub cpu_model: String,
    /// `release` or `debug` (debug numbers are not meaningful).
    pub profile: String,
    /// `--quick`: fewer iterations and smaller workloads.
    pub quick: bool,
    /// The harness's command line.
    pub command: String,
    /// Wall time of the whole run, seconds.
    pub harness_seconds: f64,
}

/// One of the targets next to what was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured.
    pub name: String,
    /// The goal, e.g. `< 3 ms`.
    pub goal: String,
    /// The measured value (absent when the run did not measure it).
    pub measured: Option<f64>,
    /// Unit of `measured`.
    pub unit: String,
    /// `met`, `missed` or `not measured`.
    pub status: String,
    /// `met`, `missed by X` or why it was not measured.
    pub detail: String,
}

/// A target's direction.
enum Goal {
    Below(f64),
    AtMost(f64),
    AtLeast(f64),
}

fn target(name: &str, goal: Goal, measured: Option<f64>, unit: &str, absent: &str) -> Target {
    let (goal_text, missed_by) = match goal {
        Goal::Below(limit) => (format!("< {limit} {unit}"), measured.map(|m| m - limit)),
        Goal::AtMost(limit) => (format!("<= {limit} {unit}"), measured.map(|m| m - limit)),
        Goal::AtLeast(limit) => (format!(">= {limit} {unit}"), measured.map(|m| limit - m)),
    };
    let limit = match goal {
        Goal::Below(l) | Goal::AtMost(l) | Goal::AtLeast(l) => l,
    };
    let met = |by: f64| match goal {
        Goal::Below(_) => by < 0.0,
        Goal::AtMost(_) | Goal::AtLeast(_) => by <= 0.0,
    };
    let (status, detail) = match missed_by {
        None => ("not measured".to_string(), absent.to_string()),
        Some(by) if met(by) => ("met".to_string(), "met".to_string()),
        Some(by) => (
            "missed".to_string(),
            format!(
                "missed by {} {unit} ({:.0}% of the goal)",
                fmt_num(by),
                by / limit * 100.0
            ),
        ),
    };
    Target {
        name: name.to_string(),
        goal: goal_text.trim().to_string(),
        measured,
        unit: unit.to_string(),
        status,
        detail,
    }
}

/// Everything measured in one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Run metadata.
    pub meta: Meta,
    /// Decision latency of the builtin default policy per cluster size and VM kind.
    pub latency: Vec<SizeLatency>,
    /// Mass start throughput.
    pub mass_start: MassStart,
    /// Snapshot sync cost per cluster size.
    pub sync: Vec<Sync>,
    /// Module load time.
    pub module_load: ModuleLoad,
    /// Peak memory.
    pub memory: Memory,
    /// Cost vs hosts (from `latency`).
    pub scaling_hosts: Vec<HostsPoint>,
    /// Cost vs units and pending records.
    pub scaling: Scaling,
    /// Host stats refresh (every host's usage changes, then one decision).
    pub refresh: Refresh,
    /// Mass start on one and more threads.
    pub mass_threads: MassThreads,
    /// One decision over a large cluster, split across cores.
    pub split: Split,
    /// The targets.
    pub targets: Vec<Target>,
}

/// Everything the targets are checked against.
pub struct Measured<'a> {
    /// Latency per size.
    pub latency: &'a [SizeLatency],
    /// Snapshot sync per size.
    pub sync: &'a [Sync],
    /// Mass start (one thread, `schedule_batch`).
    pub mass: &'a MassStart,
    /// Mass start on several threads.
    pub threads: &'a MassThreads,
    /// Host stats refresh.
    pub refresh: &'a Refresh,
    /// Large cluster split across cores.
    pub split: &'a Split,
    /// Module load.
    pub load: &'a ModuleLoad,
    /// Peak memory.
    pub memory: &'a Memory,
}

/// Checks the targets of issue 18 (ratios measured in the same run) and those kept from
/// issue 8 against the measurements.
pub fn targets(m: &Measured<'_>) -> Vec<Target> {
    let size = |hosts: usize| m.latency.iter().find(|s| s.hosts == hosts);
    let missing = |hosts: usize| format!("the run had no {hosts}-host size (--sizes)");
    let mut targets = Vec::new();
    for (hosts, limit) in [(10_000, 1.2), (1_000, 1.3)] {
        targets.push(target(
            &format!("1. wasm/native p50 at {hosts} hosts, summary decisions (all VM kinds)"),
            Goal::AtMost(limit),
            size(hosts).map(|s| s.summary_overall.ratio_p50),
            "x",
            &missing(hosts),
        ));
        targets.push(target(
            &format!("1. wasm/native p50 at {hosts} hosts, full decisions (all VM kinds)"),
            Goal::AtMost(limit),
            size(hosts).map(|s| s.overall.ratio_p50),
            "x",
            &missing(hosts),
        ));
    }
    targets.push(target(
        &format!(
            "2. mass start {} VMs onto {} hosts, wasm/native time",
            m.mass.vms, m.mass.hosts
        ),
        Goal::AtMost(1.25),
        Some(m.mass.ratio),
        "x",
        "",
    ));
    let two = m.threads.wasm.iter().find(|r| r.threads == 2);
    targets.push(target(
        &format!(
            "2. mass start on 2 threads, one cluster, wasm: throughput / 1 thread ({} VMs, {} hosts)",
            m.threads.vms, m.threads.hosts
        ),
        Goal::AtLeast(1.7),
        two.map(|r| r.speedup),
        "x",
        "the run had no 2-thread mass start (--threads)",
    ));
    let over = m
        .threads
        .wasm
        .iter()
        .chain(&m.threads.native)
        .map(|r| r.over_committed_hosts)
        .max()
        .unwrap_or(0);
    targets.push(target(
        "2. over-committed hosts after the threaded mass starts",
        Goal::AtMost(0.0),
        Some(over as f64),
        "hosts",
        "",
    ));
    targets.push(target(
        &format!(
            "3. host stats refresh of {} hosts + decision / steady decision (wasm)",
            m.refresh.hosts
        ),
        Goal::AtMost(2.0),
        Some(m.refresh.wasm.ratio),
        "x",
        "",
    ));
    let sync_10k = m.sync.iter().find(|s| s.hosts == 10_000);
    targets.push(target(
        "4. first decision after a full snapshot at 10,000 hosts, over a steady one (wasm)",
        Goal::AtMost(25.0),
        sync_10k.map(|s| s.wasm.full_ms - s.wasm.steady_ms),
        "ms",
        &missing(10_000),
    ));
    let large = m.split.sizes.last();
    let cpus = m.split.cpus;
    targets.push(target(
        &format!(
            "5. one decision at {} hosts: cores kept busy (wasm, {cpus} CPUs)",
            large.map_or(0, |s| s.hosts)
        ),
        Goal::AtLeast(if cpus >= 2 { 1.5 } else { 1.0 }),
        large.and_then(|s| s.wasm_cores_used),
        "cores",
        "no /proc/self/stat (Linux only)",
    ));
    targets.push(target(
        &format!(
            "5. p50 growth from {} to {} hosts (wasm, summary, all kinds; linear = {:.1}x)",
            m.split.sizes.first().map_or(0, |s| s.hosts),
            large.map_or(0, |s| s.hosts),
            m.split.hosts_ratio
        ),
        Goal::AtMost(m.split.hosts_ratio),
        Some(m.split.wasm_growth),
        "x",
        "",
    ));
    targets.push(target(
        "6. load of all builtin modules from the compiled cache",
        Goal::Below(50.0),
        Some(m.load.cached.total_ms),
        "ms",
        "",
    ));
    targets.push(target(
        &format!(
            "6. peak memory, all builtins + {}-host snapshot",
            m.memory.hosts
        ),
        Goal::Below(200.0),
        Some(m.memory.peak_mib),
        "MiB",
        "",
    ));
    targets.push(target(
        "issue 8: decision p50 at 10,000 hosts (wasm, all VM kinds, summary)",
        Goal::Below(3.0),
        size(10_000).map(|s| s.summary_overall.wasm.p50_ms),
        "ms",
        &missing(10_000),
    ));
    targets.push(target(
        &format!(
            "issue 8: mass start {} VMs onto {} hosts (wasm, 1 thread)",
            m.mass.vms, m.mass.hosts
        ),
        Goal::AtLeast(5_000.0),
        Some(m.mass.wasm.decisions_per_s),
        "decisions/s",
        "",
    ));
    targets
}

/// One latency table: a row per cluster size and VM kind, then the size's "all" row, for the
/// decision shape `pick` selects.
fn latency_table(
    title: &str,
    sizes: &[SizeLatency],
    pick: impl Fn(&SizeLatency) -> (&Vec<KindLatency>, &Comparison),
) -> Table {
    let mut t = Table::new(
        title,
        &[
            "hosts",
            "VM kind",
            "available",
            "wasm p50",
            "wasm p99",
            "native p50",
            "native p99",
            "ratio p50",
            "samples",
        ],
    );
    for size in sizes {
        let (kinds, overall) = pick(size);
        let rows = kinds
            .iter()
            .map(|k| (k.kind.name(), k.available_hosts.to_string(), &k.comparison))
            .chain([("all", String::new(), overall)]);
        for (kind, available, c) in rows {
            t.row(vec![
                size.hosts.to_string(),
                kind.to_string(),
                available,
                n(c.wasm.p50_ms),
                n(c.wasm.p99_ms),
                n(c.native.p50_ms),
                n(c.native.p99_ms),
                format!("{:.2}x", c.ratio_p50),
                c.wasm.samples.to_string(),
            ]);
        }
    }
    t
}

/// A table: a title, headers and rows of cells.
#[derive(Debug)]
pub struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(title: &str, headers: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders as aligned plain text.
    pub fn plain(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].len())
                    .chain([self.headers[c].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            cells
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut out = format!("{}\n{}\n", self.title, "=".repeat(self.title.len()));
        out.push_str(&line(&self.headers));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }

    /// Renders as a GitHub markdown table under a `####` heading.
    pub fn markdown(&self) -> String {
        let mut out = format!("#### {}\n\n", self.title);
        out.push_str(&format!("| {} |\n", self.headers.join(" | ")));
        out.push_str(&format!(
            "|{}\n",
            self.headers.iter().map(|_| "---|").collect::<String>()
        ));
        for row in &self.rows {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        out
    }
}

/// A number with a sensible number of digits for a table.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1_000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn n(v: f64) -> String {
    fmt_num(v)
}

impl Report {
    /// Every table of the report, in reading order.
    pub fn tables(&self) -> Vec<Table> {
        let mut tables = Vec::new();

        let mut t = Table::new("Targets", &["target", "goal", "measured", "status"]);
        for target in &self.targets {
            t.row(vec![
                target.name.clone(),
                target.goal.clone(),
                target
                    .measured
                    .map(|m| format!("{} {}", n(m), target.unit))
                    .unwrap_or_else(|| "-".into()),
                target.detail.clone(),
            ]);
        }
        tables.push(t);

        tables.push(latency_table(
            "Decision latency, summary decisions (Detail::Summary: chosen host and best runners-up), builtin default policy (12 units), what-if on a fixed view (ms)",
            &self.latency,
            |size| (&size.summary_kinds, &size.summary_overall),
        ));
        tables.push(latency_table(
            "Decision latency, full reports (Detail::Full: every host's outcome and weights), builtin default policy (12 units), what-if on a fixed view (ms)",
            &self.latency,
            |size| (&size.kinds, &size.overall),
        ));

        let m = &self.mass_start;
        let mut t = Table::new(
            &format!(
                "Mass start: {} VMs onto {} hosts, schedule_batch of summary decisions, fresh cluster per run",
                m.vms, m.hosts
            ),
            &[
                "backend",
                "median run (ms)",
                "decisions/s",
                "placed",
                "unplaced",
                "runs",
            ],
        );
        for (name, b) in [("wasm", &m.wasm), ("native", &m.native)] {
            t.row(vec![
                name.to_string(),
                n(b.median_ms),
                format!("{:.0}", b.decisions_per_s),
                b.placed.to_string(),
                b.unplaced.to_string(),
                b.runs_ms.len().to_string(),
            ]);
        }
        t.row(vec![
            "ratio".into(),
            format!("{:.2}x", m.ratio),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
        ]);
        tables.push(t);

        let mt = &self.mass_threads;
        let mut t = Table::new(
            &format!(
                "Mass start on threads: {} VMs onto {} hosts, each thread calls Policy::schedule for its share on one cluster (own clusters: each thread places every VM on a cluster of its own, what the machine gives threads that share nothing)",
                mt.vms, mt.hosts
            ),
            &[
                "backend",
                "threads",
                "median run (ms)",
                "decisions/s",
                "vs 1 thread",
                "placed",
                "over-committed hosts",
                "runs",
            ],
        );
        let own = &mt.wasm_own_clusters;
        let rows = mt
            .wasm
            .iter()
            .map(|r| ("wasm", r.threads.to_string(), r))
            .chain([("wasm", format!("{}, own clusters", own.threads), own)])
            .chain(
                mt.native
                    .iter()
                    .map(|r| ("native", r.threads.to_string(), r)),
            );
        for (name, threads, r) in rows {
            t.row(vec![
                name.to_string(),
                threads,
                n(r.median_ms),
                format!("{:.0}", r.decisions_per_s),
                format!("{:.2}x", r.speedup),
                r.placed.to_string(),
                r.over_committed_hosts.to_string(),
                r.runs_ms.len().to_string(),
            ]);
        }
        tables.push(t);

        let r = &self.refresh;
        let mut t = Table::new(
            &format!(
                "Host stats refresh: usage of all {} hosts changes (one SetUsage change, {:.1} KiB per module), then a plain VM decision; medians of {} rounds (ms)",
                r.hosts,
                r.delta_message_bytes as f64 / 1024.0,
                r.runs
            ),
            &[
                "backend",
                "update_usage",
                "refresh + decision",
                "steady decision",
                "ratio",
            ],
        );
        for (name, b) in [("wasm", &r.wasm), ("native", &r.native)] {
            t.row(vec![
                name.to_string(),
                n(b.update_ms),
                n(b.refresh_and_decide_ms),
                n(b.steady_ms),
                format!("{:.2}x", b.ratio),
            ]);
        }
        tables.push(t);

        let sp = &self.split;
        let mut t = Table::new(
            &format!(
                "Large clusters: summary decisions of the VM mix, and cores kept busy by back-to-back wasm decisions ({} CPUs)",
                sp.cpus
            ),
            &[
                "hosts",
                "wasm p50",
                "native p50",
                "ratio",
                "wasm cores used",
                "window (ms)",
                "samples",
            ],
        );
        for s in &sp.sizes {
            t.row(vec![
                s.hosts.to_string(),
                n(s.comparison.wasm.p50_ms),
                n(s.comparison.native.p50_ms),
                format!("{:.2}x", s.comparison.ratio_p50),
                s.wasm_cores_used
                    .map(|c| format!("{c:.2}"))
                    .unwrap_or_else(|| "-".into()),
                n(s.cores_window_ms),
                s.comparison.wasm.samples.to_string(),
            ]);
        }
        t.row(vec![
            "growth".into(),
            format!("{:.2}x", sp.wasm_growth),
            "".into(),
            "".into(),
            "".into(),
            "".into(),
            format!("linear: {:.1}x", sp.hosts_ratio),
        ]);
        tables.push(t);

        let mut t = Table::new(
            "Snapshot sync: plain VM decision on a fresh cluster (full) / after one reservation (delta) / unchanged (steady), medians (ms)",
            &[
                "hosts",
                "full msg",
                "encode (1 core)",
                "delta msg",
                "wasm full",
                "wasm delta",
                "wasm steady",
                "native full",
                "native delta",
                "native steady",
            ],
        );
        for s in &self.sync {
            t.row(vec![
                s.hosts.to_string(),
                format!("{:.1} KiB", s.full_message_bytes as f64 / 1024.0),
                n(s.full_encode_ms),
                format!("{} B", s.delta_message_bytes),
                n(s.wasm.full_ms),
                n(s.wasm.delta_ms),
                n(s.wasm.steady_ms),
                n(s.native.full_ms),
                n(s.native.delta_ms),
                n(s.native.steady_ms),
            ]);
        }
        tables.push(t);

        let l = &self.module_load;
        let mut headers = vec!["case", "total (ms)", "runs"];
        headers.extend(l.files.iter().map(String::as_str));
        let mut t = Table::new(
            &format!(
                "Module load: all {} builtin modules ({:.0} KiB of wasm), engine included (ms)",
                l.files.len(),
                l.wasm_bytes as f64 / 1024.0
            ),
            &headers,
        );
        for (name, times) in [
            ("cold (empty cache, compile)", &l.cold),
            ("cached (compiled cache)", &l.cached),
        ] {
            let mut row = vec![
                name.to_string(),
                n(times.total_ms),
                times.runs_ms.len().to_string(),
            ];
            row.extend(times.modules.iter().map(|(_, ms)| n(*ms)));
            t.row(row);
        }
        tables.push(t);

        let mem = &self.memory;
        let mut t = Table::new(
            &format!(
                "Peak memory (child process): {} builtin modules from the cache, {}-host snapshot",
                mem.modules, mem.hosts
            ),
            &["after", "VmRSS (MiB)", "VmHWM (MiB)"],
        );
        for s in &mem.stages {
            t.row(vec![s.after.clone(), n(s.rss_mib), n(s.hwm_mib)]);
        }
        tables.push(t);

        let mut t = Table::new(
            "Scaling with hosts: default policy, all VM kinds, p50 (ms)",
            &["hosts", "wasm", "native", "ratio", "wasm per 1k hosts"],
        );
        for p in &self.scaling_hosts {
            t.row(vec![
                p.hosts.to_string(),
                n(p.wasm_p50_ms),
                n(p.native_p50_ms),
                format!("{:.2}x", p.ratio_p50),
                n(p.wasm_p50_ms_per_1k_hosts),
            ]);
        }
        tables.push(t);

        let s = &self.scaling;
        let mut t = Table::new(
            &format!(
                "Scaling with units: {} hosts, {} VM, p50 (ms)",
                s.hosts,
                s.kind.name()
            ),
            &["units", "wasm", "native", "ratio", "units in the policy"],
        );
        for p in &s.units {
            t.row(vec![
                p.units.to_string(),
                n(p.comparison.wasm.p50_ms),
                n(p.comparison.native.p50_ms),
                format!("{:.2}x", p.comparison.ratio_p50),
                p.names.join(", "),
            ]);
        }
        tables.push(t);

        let mut t = Table::new(
            &format!(
                "Scaling with pending records: {} hosts, default policy, {} VM, p50 (ms)",
                s.hosts,
                s.kind.name()
            ),
            &["other VMs pending", "records", "wasm", "native", "ratio"],
        );
        for p in &s.pending {
            t.row(vec![
                p.pending_vms.to_string(),
                p.setup.records.to_string(),
                n(p.comparison.wasm.p50_ms),
                n(p.comparison.native.p50_ms),
                format!("{:.2}x", p.comparison.ratio_p50),
            ]);
        }
        tables.push(t);
        tables
    }

    /// The run's header line.
    pub fn header(&self) -> String {
        format!(
            "wasmsched-bench {}: {} CPUs ({}), {} build{}, {:.0} s",
            self.meta.date,
            self.meta.cpus,
            self.meta.cpu_model,
            self.meta.profile,
            if self.meta.quick { ", --quick" } else { "" },
            self.meta.harness_seconds
        )
    }
}
