//! The integration tests: one test binary (as wasmtime does), one module per topic, every
//! test against real wasm modules compiled from source by the build.

mod bad_input;
mod balance;
mod batch;
mod builtins;
mod custom_unit;
mod faults;
mod fuzz;
mod hardening;
mod high_performance;
mod layers;
mod memory_hotplug;
mod pending;
mod refresh;
mod reload;
mod shadow;
mod trial;
