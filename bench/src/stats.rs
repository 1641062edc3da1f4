//! Timing helpers and latency summaries.

use serde::Serialize;
use std::time::{Duration, Instant};

/// Runs `f` and returns its result with the wall-clock time it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// Milliseconds of a duration, as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// Latency summary of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Number of samples.
    pub samples: usize,
    /// Median (nearest rank).
    pub p50_ms: f64,
    /// 99th percentile (nearest rank; with fewer than 100 samples, the largest or close to it).
    pub p99_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// Fastest sample.
    pub min_ms: f64,
}

impl Latency {
    /// Summarizes samples given in milliseconds (at least one).
    pub fn of(samples_ms: &[f64]) -> Latency {
        assert!(!samples_ms.is_empty(), "no samples");
        let mut sorted = samples_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        Latency {
            samples: sorted.len(),
            p50_ms: percentile(&sorted, 50.0),
            p99_ms: percentile(&sorted, 99.0),
            mean_ms: sorted.iter().sum::<f64>() / sorted.len() as f64,
            min_ms: sorted[0],
        }
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of unsorted values (at least one).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 50.0)
}

/// Wasm latency next to native latency for the same work, and their ratio.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Comparison {
    /// The units run as wasm modules.
    pub wasm: Latency,
    /// The same unit code compiled into the host.
    pub native: Latency,
    /// `wasm.p50_ms / native.p50_ms`.
    pub ratio_p50: f64,
    /// `wasm.p99_ms / native.p99_ms`.
    pub ratio_p99: f64,
}

impl Comparison {
    /// Summarizes paired samples.
    pub fn of(wasm_ms: &[f64], native_ms: &[f64]) -> Comparison {
        let wasm = Latency::of(wasm_ms);
        let native = Latency::of(native_ms);
        Comparison {
            wasm,
            native,
            ratio_p50: wasm.p50_ms / native.p50_ms,
            ratio_p99: wasm.p99_ms / native.p99_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let l = Latency::of(&samples);
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.min_ms, 1.0);
        assert_eq!(Latency::of(&[3.0]).p99_ms, 3.0);
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
    }
}
