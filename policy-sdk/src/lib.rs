//! # policy-sdk
//!
//! Shared by the wasmsched host and by policy modules compiled to WebAssembly:
//!
//! * [`model`]: the cluster snapshot (hosts, VMs, pending aggregates) and the VM request;
//! * [`verdict`]: what units return (verdicts, penalties, balance actions);
//! * [`manifest`]: what a module declares about its units and their parameters;
//! * [`abi`]: the versioned guest ABI (see `ABI.md`) and [`codec`], the wire codec;
//! * [`topology`]: CPU pinning strings, dedicated pCPU allocation and the vNUMA assignment
//!   search, shared by the builtin high-performance units and the engine;
//! * [`index`]: data derived from a snapshot once (host CPU flags as bit sets), kept up to
//!   date by the guest glue and the runtime;
//! * [`guest`]: for unit authors, one trait per unit kind ([`Filter`], [`Weight`],
//!   [`Balance`]), a [`Context`], and the [`export_units!`] macro.
//!
//! A minimal filter:
//!
//! ```
//! use policy_sdk::{Context, Filter, Host, Verdict, Vm};
//!
//! #[derive(Default)]
//! struct NeedsTwoSockets;
//!
//! impl Filter for NeedsTwoSockets {
//!     const NAME: &'static str = "two-sockets";
//!     fn check(&self, _ctx: &Context<'_>, _vm: &Vm, host: &Host) -> Verdict {
//!         if host.cpu.sockets >= 2 {
//!             Verdict::Pass
//!         } else {
//!             Verdict::reject("too_few_sockets", format!("{} socket(s)", host.cpu.sockets))
//!         }
//!     }
//! }
//!
//! policy_sdk::export_units! {
//!     module: "example",
//!     version: "0.1.0",
//!     units: [filter NeedsTwoSockets],
//! }
//! # assert_eq!(units().manifest().units[0].name, "two-sockets");
//! ```

#![warn(missing_docs)]

extern crate alloc;

pub mod abi;
pub mod codec;
pub mod guest;
pub mod index;
pub mod manifest;
pub mod model;
pub mod testing;
pub mod topology;
pub mod verdict;

pub use abi::LogLevel;
pub use guest::{Balance, Context, Filter, UnitSet, Weight};
pub use manifest::{Manifest, ParamSpec, ParamType, ParamValue, UnitDescriptor, UnitKind};
pub use model::*;
pub use verdict::{BalanceAction, Penalty, PowerAction, Rejection, Verdict, Verdicts};
