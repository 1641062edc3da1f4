//! # wasmsched host runtime
//!
//! Loads scheduling policy units compiled to WebAssembly and runs them over cluster
//! snapshots. The nouns, and how long each lives:
//!
//! * [`Runtime`]: one per process. A wasmtime engine (epoch deadlines, memory caps, no
//!   WASI) and a registry of units by name. Built with [`Runtime::builder`].
//! * [`LoadedModule`]: a validated module (manifest, compiled code, pooled instances).
//! * [`Policy`]: a validated cluster policy (filters, weights with factors, balance unit,
//!   selector, parameters). It holds the modules it resolved.
//! * [`Cluster`]: a cluster's snapshot over time (epochs) and its pending resources: what
//!   placed-but-not-started VMs hold on their hosts ([`pending`]); [`ClusterView`] is one
//!   epoch. Lifecycle: [`Policy::schedule`] reserves on the chosen host;
//!   [`Cluster::vm_started`], [`Cluster::vm_failed`], [`Cluster::migration_finished`],
//!   [`Cluster::migration_failed`] and [`Cluster::remove_host`] release.
//! * [`MemoryPlan`]: a memory hot plug or unplug of a running VM
//!   ([`Cluster::hot_set_memory`], then [`Cluster::confirm_memory_change`] or
//!   [`Cluster::fail_memory_change`]; see [`memory`]).
//! * [`Decision`]: the answer to one [`ScheduleRequest`], explaining itself.
//!
//! ```no_run
//! use wasmsched::{Cluster, Policy, Runtime, ScheduleRequest};
//! # fn main() -> wasmsched::Result<()> {
//! let runtime = Runtime::builder().build()?;            // builtin units loaded
//! let policy = Policy::builtin_default(&runtime)?;
//! let cluster = Cluster::from_file("examples/clusters/small.json".as_ref())?;
//! let vm = wasmsched::files::read_document("examples/vms/web.json".as_ref())?;
//! let decision = policy.schedule(&cluster, &ScheduleRequest::new(vm))?;
//! println!("{decision}");
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod abi;
mod balance;
pub mod builtin;
mod cluster;
mod error;
pub mod files;
mod lifecycle;
pub mod memory;
pub mod migration;
mod module;
pub mod pending;
mod policy;
pub mod power;
mod reload;
mod runtime;
mod scheduler;
pub mod simulate;
pub mod timeline;

pub use balance::{
    BalancePlan, PlannedAction, RefusedAction, MAX_MIGRATIONS_PER_CYCLE,
    MAX_POWER_ACTIONS_PER_CYCLE,
};
pub use cluster::{Cluster, ClusterView};
pub use error::{Error, Result, UnitFault};
pub use lifecycle::{
    numa_assignment, HostRemoved, PendingRules, Placement, PlacementKind, Release, Reschedule,
    Reservation, VmFailed,
};
pub use memory::{MemoryChange, MemoryChangeDone, MemoryPlan, PlannedDimm, Reduction};
pub use migration::{Migration, MigrationTrigger};
pub use module::{BreakerConfig, BreakerStatus, CallLimits, LoadedModule, ModuleStats};
pub use pending::{PendingRecord, PendingResource};
pub use policy::{
    FailureMode, Policy, PolicyUnit, SelectorKind, StaleUnit, BUILTIN_POLICIES, DEFAULT_POLICY_TOML,
};
pub use reload::{
    FileError, FileProblem, ModuleStatsView, ModuleStatus, ReloadReport, RuntimeStatus, WatchMode,
    WatchOptions, WatchStatus,
};
pub use runtime::{DirReport, Runtime, RuntimeBuilder, UnitHandle, UnitInfo};
pub use scheduler::{
    Decision, Detail, HostOutcome, Outcome, ScheduleRequest, UnitFailure, WeightScore,
    SUMMARY_HOSTS,
};

/// Re-export of the shared model and ABI crate.
pub use policy_sdk as sdk;
