//! The engine layer: one wasmtime engine per process, modules and their pooled instances,
//! per-call limits and the circuit breaker, the host side of the guest ABI (including
//! snapshot sync from state views), the compiled-module cache, hot reload of a policy
//! directory, and the builtin modules.
//!
//! It reads [`ClusterView`](crate::state::ClusterView)s to sync guests and knows nothing of
//! policies or decisions: the scheduling layer calls units through [`LoadedModule`].

pub(crate) mod abi;
pub(crate) mod builtin;
mod cache;
mod full_sync;
pub(crate) mod fuzz;
mod module;
mod reload;
mod runtime;
mod trial;

pub use module::{BreakerConfig, BreakerStatus, CallLimits, LoadedModule, ModuleStats};
pub use reload::{
    FileError, FileLoad, FileProblem, ModuleStatus, ReloadReport, RuntimeStatus, WatchMode,
    WatchOptions, WatchStatus,
};
pub(crate) use runtime::Registry;
pub use runtime::{Runtime, RuntimeBuilder, UnitHandle, UnitInfo, MAX_MODULE_BYTES};
pub use trial::LoadTrial;
