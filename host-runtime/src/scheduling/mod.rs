//! The scheduling layer: policies, the scheduler (candidates, filters, weights, selector,
//! the optimistic reservation), decisions, rescheduling after a failure, migration,
//! balance and host power management, and memory hot-set planning. It runs units through
//! the engine and records its choices in the state.
//!
//! Every operation is a method of [`Policy`] (in `policy.rs`); the files here hold the
//! logic behind each.

mod balance;
mod decision;
mod memory;
mod migration;
mod policy;
mod power;
mod request;
mod reschedule;
mod scheduler;
mod selector;
mod shadow;

pub use balance::{BalancePlan, PlannedAction, RefusedAction};
pub use decision::{Decision, Explanation, HostOutcome, Outcome, UnitFailure, WeightScore};
pub use memory::{MemoryChange, MemoryPlan, PlannedDimm, Reduction};
pub use migration::{Migration, MigrationTrigger};
pub use policy::{FailureMode, Policy, PolicyUnit, SelectorKind, StaleUnit};
pub use power::{StartOutcome, WakeUp};
pub use request::{Detail, ScheduleRequest};
pub use reschedule::{Reschedule, VmFailed};
pub use shadow::{ShadowDifference, ShadowEffect, ShadowStatus, ShadowUnitStatus, SHADOW_EXAMPLES};
