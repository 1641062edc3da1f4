//! Shared by wasmsched's integration tests and both benchmark harnesses (the criterion
//! benches and `wasmsched-bench`):
//!
//! * [`synth`]: synthetic clusters and the VM mix, generated from fixed seeds so every run
//!   (and the wasm and native backends within a run) sees the same data;
//! * [`native`]: a runtime whose builtin units are compiled natively into the host, the
//!   baseline the wasm modules are compared with.

pub mod native;
pub mod synth;
