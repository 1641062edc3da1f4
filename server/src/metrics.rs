//! Prometheus metrics, kept in atomics and rendered as the text exposition format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histograms' buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram (cumulative buckets, sum in microseconds).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Everything the service counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Time to decide one VM (the policy run and the reservation, not the commit).
    pub decision_latency: Histogram,
    /// Decisions that chose a host.
    pub decisions_placed: AtomicU64,
    /// Decisions where no host fit.
    pub decisions_no_host: AtomicU64,
    /// Decisions that failed (invalid request, a fail-closed unit fault).
    pub decisions_failed: AtomicU64,
    /// Time of one store transaction (group commit).
    pub store_commit_latency: Histogram,
    /// Submissions committed.
    pub store_submissions: AtomicU64,
    /// Submissions a shared store refused because the cluster's lease had moved on.
    pub store_fenced: AtomicU64,
    /// Cluster leases taken (new clusters, takeovers, handovers).
    pub leases_acquired: AtomicU64,
    /// Cluster leases lost (taken over by another replica, or not renewed in time).
    pub leases_lost: AtomicU64,
    /// Requests forwarded to the replica holding their cluster.
    pub requests_forwarded: AtomicU64,
    /// Requests answered, by status class.
    pub requests_2xx: AtomicU64,
    /// Requests answered 4xx.
    pub requests_4xx: AtomicU64,
    /// Requests answered 5xx.
    pub requests_5xx: AtomicU64,
}

/// Figures read from elsewhere at render time.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Pending records held, over all clusters.
    pub reservations_held: usize,
    /// Placed, not yet started VMs over all clusters.
    pub vms_pending: usize,
    /// Clusters served.
    pub clusters: usize,
    /// Module-set generation (bumped by every reload that changed something).
    pub module_generation: u64,
    /// Modules serving.
    pub modules: usize,
    /// Files of the policy directory refused (or still being written).
    pub rejected_files: usize,
    /// Successful reloads of the watched directory.
    pub reloads: u64,
    /// Per module: (file, instances discarded after a fault, breaker trips, breaker open).
    pub modules_health: Vec<(String, u64, u64, bool)>,
    /// Per shadow unit of each cluster's policy: what it would have changed.
    pub shadow: Vec<ShadowGauge>,
}

/// One shadow unit of a cluster's policy (see `wasmsched::Policy::shadow_status`).
#[derive(Debug)]
pub struct ShadowGauge {
    /// Cluster id.
    pub cluster: String,
    /// Policy name.
    pub policy: String,
    /// `filter` or `weight`.
    pub kind: &'static str,
    /// Unit name.
    pub unit: String,
    /// Decisions the unit would have changed.
    pub changed: u64,
    /// Decisions in which the unit failed.
    pub faults: u64,
}

impl Metrics {
    /// Counts a decision's outcome and latency.
    pub fn decided(&self, placed: Option<bool>, elapsed: Duration) {
        self.decision_latency.observe(elapsed);
        let counter = match placed {
            Some(true) => &self.decisions_placed,
            Some(false) => &self.decisions_no_host,
            None => &self.decisions_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one group commit of `submissions` submissions.
    pub fn store_committed(&self, elapsed: Duration, submissions: usize) {
        self.store_commit_latency.observe(elapsed);
        self.store_submissions
            .fetch_add(submissions as u64, Ordering::Relaxed);
    }

    /// Counts a response by status.
    pub fn answered(&self, status: u16) {
        let counter = match status {
            500.. => &self.requests_5xx,
            400.. => &self.requests_4xx,
            _ => &self.requests_2xx,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        self.decision_latency.render(
            &mut out,
            "wasmsched_decision_seconds",
            "Time to decide and reserve one VM.",
        );
        let _ = writeln!(
            out,
            "# HELP wasmsched_decisions_total Decisions by outcome.\n\
             # TYPE wasmsched_decisions_total counter"
        );
        for (outcome, counter) in [
            ("placed", &self.decisions_placed),
            ("no_host", &self.decisions_no_host),
            ("error", &self.decisions_failed),
        ] {
            let _ = writeln!(
                out,
                "wasmsched_decisions_total{{outcome=\"{outcome}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        self.store_commit_latency.render(
            &mut out,
            "wasmsched_store_commit_seconds",
            "Time of one durable store transaction (group commit).",
        );
        let _ = writeln!(
            out,
            "# HELP wasmsched_store_submissions_total Submissions made durable.\n\
             # TYPE wasmsched_store_submissions_total counter\n\
             wasmsched_store_submissions_total {}",
            self.store_submissions.load(Ordering::Relaxed)
        );
        for (name, help, counter) in [
            (
                "wasmsched_store_fenced_total",
                "Submissions refused because the cluster's lease had moved to another replica.",
                &self.store_fenced,
            ),
            (
                "wasmsched_leases_acquired_total",
                "Cluster leases this replica took.",
                &self.leases_acquired,
            ),
            (
                "wasmsched_leases_lost_total",
                "Cluster leases this replica lost.",
                &self.leases_lost,
            ),
            (
                "wasmsched_requests_forwarded_total",
                "Requests forwarded to the replica holding their cluster.",
                &self.requests_forwarded,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP wasmsched_requests_total HTTP responses by status class.\n\
             # TYPE wasmsched_requests_total counter"
        );
        for (class, counter) in [
            ("2xx", &self.requests_2xx),
            ("4xx", &self.requests_4xx),
            ("5xx", &self.requests_5xx),
        ] {
            let _ = writeln!(
                out,
                "wasmsched_requests_total{{class=\"{class}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        for (name, help, kind, value) in [
            (
                "wasmsched_reservations_held",
                "Pending resource records held over all clusters.",
                "gauge",
                gauges.reservations_held as u64,
            ),
            (
                "wasmsched_vms_pending",
                "VMs placed and not yet started over all clusters.",
                "gauge",
                gauges.vms_pending as u64,
            ),
            (
                "wasmsched_clusters",
                "Clusters served.",
                "gauge",
                gauges.clusters as u64,
            ),
            (
                "wasmsched_module_generation",
                "Generation of the published module set.",
                "gauge",
                gauges.module_generation,
            ),
            (
                "wasmsched_modules",
                "Modules serving.",
                "gauge",
                gauges.modules as u64,
            ),
            (
                "wasmsched_rejected_module_files",
                "Files of the policy directory refused or still being written.",
                "gauge",
                gauges.rejected_files as u64,
            ),
            (
                "wasmsched_reloads_total",
                "Scans of the watched policy directory.",
                "counter",
                gauges.reloads,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP wasmsched_unit_failures_total Unit instances discarded after a fault, by module.\n\
             # TYPE wasmsched_unit_failures_total counter"
        );
        for (file, failures, _, _) in &gauges.modules_health {
            let _ = writeln!(
                out,
                "wasmsched_unit_failures_total{{module=\"{}\"}} {failures}",
                escape(file)
            );
        }
        let _ = writeln!(
            out,
            "# HELP wasmsched_breaker_trips_total Times a module's circuit breaker opened.\n\
             # TYPE wasmsched_breaker_trips_total counter"
        );
        for (file, _, trips, _) in &gauges.modules_health {
            let _ = writeln!(
                out,
                "wasmsched_breaker_trips_total{{module=\"{}\"}} {trips}",
                escape(file)
            );
        }
        let _ = writeln!(
            out,
            "# HELP wasmsched_breaker_open Whether a module's circuit breaker is open.\n\
             # TYPE wasmsched_breaker_open gauge"
        );
        for (file, _, _, open) in &gauges.modules_health {
            let _ = writeln!(
                out,
                "wasmsched_breaker_open{{module=\"{}\"}} {}",
                escape(file),
                u8::from(*open)
            );
        }
        for (name, help, value) in [
            (
                "wasmsched_shadow_changed_total",
                "Decisions a shadow unit would have changed (a shadow filter rejecting the chosen host, a shadow weight making another host best).",
                (|g: &ShadowGauge| g.changed) as fn(&ShadowGauge) -> u64,
            ),
            (
                "wasmsched_shadow_faults_total",
                "Decisions in which a shadow unit failed (the decision was not affected).",
                |g: &ShadowGauge| g.faults,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for g in &gauges.shadow {
                let _ = writeln!(
                    out,
                    "{name}{{cluster=\"{}\",policy=\"{}\",kind=\"{}\",unit=\"{}\"}} {}",
                    escape(&g.cluster),
                    escape(&g.policy),
                    g.kind,
                    escape(&g.unit),
                    value(g)
                );
            }
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
