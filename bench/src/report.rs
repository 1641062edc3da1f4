//! The report: everything measured in one run, the targets checked against it, and
//! rendering as plain or markdown tables.

use crate::memory::Memory;
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
    /// The targets.
    pub targets: Vec<Target>,
}

/// Checks the targets against the measurements.
pub fn targets(
    latency: &[SizeLatency],
    mass: &MassStart,
    load: &ModuleLoad,
    memory: &Memory,
) -> Vec<Target> {
    let at_10k = latency.iter().find(|s| s.hosts == 10_000);
    let no_10k = "the run had no 10000-host size (--sizes)";
    vec![
        target(
            "decision p50 at 10,000 hosts (wasm, all VM kinds, summary decision)",
            Goal::Below(3.0),
            at_10k.map(|s| s.summary_overall.wasm.p50_ms),
            "ms",
            no_10k,
        ),
        target(
            "wasm/native p50 ratio at 10,000 hosts (summary decision)",
            Goal::AtMost(1.3),
            at_10k.map(|s| s.summary_overall.ratio_p50),
            "x",
            no_10k,
        ),
        target(
            "decision p50 at 10,000 hosts (wasm, all VM kinds, full report)",
            Goal::Below(3.0),
            at_10k.map(|s| s.overall.wasm.p50_ms),
            "ms",
            no_10k,
        ),
        target(
            "wasm/native p50 ratio at 10,000 hosts (full report)",
            Goal::AtMost(1.3),
            at_10k.map(|s| s.overall.ratio_p50),
            "x",
            no_10k,
        ),
        target(
            &format!(
                "mass start {} VMs onto {} hosts (wasm)",
                mass.vms, mass.hosts
            ),
            Goal::AtLeast(5_000.0),
            Some(mass.wasm.decisions_per_s),
            "decisions/s",
            "",
        ),
        target(
            "load of all builtin modules from the compiled cache",
            Goal::Below(50.0),
            Some(load.cached.total_ms),
            "ms",
            "",
        ),
        target(
            &format!("peak memory, all builtins + {}-host snapshot", memory.hosts),
            Goal::Below(200.0),
            Some(memory.peak_mib),
            "MiB",
            "",
        ),
    ]
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

        let mut t = Table::new(
            "Snapshot sync: plain VM decision on a fresh cluster (full) / after one reservation (delta) / unchanged (steady), medians (ms)",
            &[
                "hosts",
                "full msg",
                "encode",
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
