//! # wasmsched
//!
//! Loads scheduling policy units compiled to WebAssembly and runs them over cluster
//! snapshots. The nouns, and how long each lives:
//!
//! * [`Runtime`]: one per process. A wasmtime engine (epoch deadlines, memory caps, no
//!   WASI) and a registry of units by name. Built with [`Runtime::builder`]; follows a
//!   policy directory with [`Runtime::watch`] (hot reload, [`Runtime::status`]).
//! * [`LoadedModule`]: a validated module (manifest, compiled code, pooled instances).
//! * [`Policy`]: a validated cluster policy (filters, weights with factors, balance unit,
//!   selector, parameters). Every decision is one of its methods: [`Policy::schedule`]
//!   (reserves on the chosen host), [`Policy::evaluate`] (a what-if), [`Policy::migrate`],
//!   [`Policy::balance`], [`Policy::hot_set_memory`], [`Policy::vm_failed`].
//! * [`Cluster`]: a cluster's snapshot over time (epochs) and its pending resources: what
//!   placed-but-not-started VMs hold on their hosts; [`ClusterView`] is one epoch. The
//!   engine reports what happened: [`Cluster::vm_started`], [`Cluster::vm_failed`],
//!   [`Cluster::migration_finished`], [`Cluster::migration_failed`],
//!   [`Cluster::remove_host`], [`Cluster::confirm_memory_change`].
//! * [`Decision`]: the answer to one [`ScheduleRequest`], explaining itself.
//! * [`Error`]: one error type; [`Error::kind`] tells a surface how to map it.
//!
//! The parts of these nouns live in modules named after them: [`decision`] (per-host
//! outcomes, weight scores), [`plan`] (balance actions, memory changes, reschedules),
//! [`pending`] (pending records) and [`status`] (modules, files, watcher, breaker).
//!
//! ```no_run
//! use wasmsched::{Cluster, Policy, Runtime, ScheduleRequest};
//! # fn main() -> wasmsched::Result<()> {
//! let runtime = Runtime::builder().build()?;            // builtin units loaded
//! let policy = Policy::builtin_default(&runtime)?;
//! let cluster = Cluster::from_file("examples/clusters/small.json".as_ref())?;
//! let vm = wasmsched::read_document("examples/vms/web.json".as_ref())?;
//! let decision = policy.schedule(&cluster, &ScheduleRequest::new(vm))?;
//! println!("{decision}");
//! # Ok(()) }
//! ```
//!
//! ## Layers
//!
//! `state` (snapshots, the pending ledger, placements) knows neither the engine nor
//! scheduling; `engine` (wasmtime, modules, the ABI, reload) reads state views;
//! `scheduling` (policies, decisions, planning) uses both. `error` and `files` serve all
//! three. A check in CI keeps the direction.

#![warn(missing_docs)]

mod engine;
mod error;
mod files;
mod scheduling;
mod state;

pub use engine::{
    BreakerConfig, CallLimits, FileLoad, LoadTrial, LoadedModule, ReloadReport, Runtime,
    RuntimeBuilder, RuntimeStatus, UnitInfo, WatchMode, WatchOptions, MAX_MODULE_BYTES,
};
pub use error::{Error, ErrorKind, Result, UnitFault};
pub use files::{parse_document, read_bounded, read_document, Format, MAX_DOCUMENT_BYTES};
pub use scheduling::{
    BalancePlan, Decision, Detail, FailureMode, MemoryPlan, Migration, MigrationTrigger, Policy,
    PolicyUnit, ScheduleRequest, SelectorKind, StaleUnit, StartOutcome, VmFailed,
};
pub use state::{
    Cluster, ClusterView, FailedPlacement, HostRemoved, MemoryChangeDone, MemoryChangeKind,
    MemoryChangeRecord, PendingRules, Placement, PlacementKind, Release, Reservation,
};

/// The parts of a [`Decision`]: what happened to each host and why.
pub mod decision {
    pub use crate::scheduling::{Explanation, HostOutcome, Outcome, UnitFailure, WeightScore};
}

/// Shadow units: what they would have changed in a decision and their counts per policy
/// ([`Policy::shadow_status`]).
pub mod shadow {
    pub use crate::scheduling::{
        ShadowDifference, ShadowEffect, ShadowStatus, ShadowUnitStatus, SHADOW_EXAMPLES,
    };
}

/// The parts of plans and lifecycle results: balance actions, memory changes, what became
/// of a failed start, the wake-up a VM waits for.
pub mod plan {
    pub use crate::scheduling::{
        MemoryChange, PlannedAction, PlannedDimm, Reduction, RefusedAction, Reschedule, WakeUp,
    };
}

/// Pending resources: what a placed-but-not-started VM holds on its host, one record per
/// resource (see [`Cluster::pending_records_on_host`]).
pub mod pending {
    pub use crate::state::{PendingRecord, PendingResource};
}

/// The parts of [`RuntimeStatus`]: each module, the files that do not serve, the watcher
/// and each module's circuit breaker.
pub mod status {
    pub use crate::engine::{
        BreakerStatus, FileError, FileProblem, ModuleStats, ModuleStatus, WatchStatus,
    };
}

/// Entry points for fuzz and property tests: what the host makes of bytes a guest hands
/// back, without a guest.
pub mod fuzz {
    pub use crate::engine::fuzz::{decode_guest_output, GuestOutput};
}

/// Re-export of the shared model and ABI crate.
pub use policy_sdk as sdk;

/// The README's Rust snippets, compiled (and run, unless marked `no_run`) as doctests, so
/// the examples a new user copies stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The Rust snippets of the unit authors' guide (`docs/writing-units.md`), compiled as
/// doctests like the README's.
#[cfg(doctest)]
#[doc = include_str!("../../docs/writing-units.md")]
pub struct WritingUnitsDoctests;
