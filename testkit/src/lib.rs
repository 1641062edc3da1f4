//! Shared by wasmsched's integration tests and both benchmark harnesses (the criterion
//! benches and `wasmsched-bench`):
//!
//! * [`synth`]: synthetic clusters and the VM mix, generated from fixed seeds so every run
//!   (and the wasm and native backends within a run) sees the same data;
//! * [`native`]: a runtime whose builtin units are compiled natively into the host, the
//!   baseline the wasm modules are compared with;
//! * [`postgres`]: a database of its own per test on a real PostgreSQL server.

pub mod native;
pub mod postgres;
pub mod synth;
