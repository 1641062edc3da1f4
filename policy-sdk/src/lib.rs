//! # policy-sdk
//!
//! Shared by the wasmsched host and by policy modules compiled to WebAssembly:
//!
//! * [`model`]: the cluster snapshot (hosts, VMs, pending aggregates) and the VM request;
//!   what units return ([`model::verdict`]: verdicts, penalties, balance actions); what a
//!   module declares about its units ([`model::manifest`]); CPU pinning strings, dedicated
//!   pCPU allocation and the vNUMA assignment search ([`model::topology`], shared by the
//!   builtin high-performance units and the engine); data derived from a snapshot once
//!   ([`model::index`], host CPU flags as bit sets);
//! * [`wire`]: the versioned guest ABI ([`wire::abi`], see `ABI.md`), snapshot sync
//!   messages ([`wire::sync`]) and the codec ([`wire::codec`]);
//! * [`guest`]: for unit authors, one trait per unit kind ([`Filter`], [`Weight`],
//!   [`Balance`]), a [`Context`], and the [`export_units!`] macro;
//! * `testing` (the `testing` feature): fluent builders for hosts, VMs, NUMA nodes and
//!   snapshots, for native unit tests.
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

pub mod guest;
pub mod model;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod wire;

pub use guest::{
    push_penalties, Balance, Context, Filter, KeptCounts, KeptMasks, KeptPages, MemoryRooms,
    UnitSet, Weight,
};
pub use model::manifest::{Manifest, ParamSpec, ParamType, ParamValue, UnitDescriptor, UnitKind};
pub use model::verdict::{BalanceAction, Penalty, PowerAction, Rejection, Verdict, Verdicts};
pub use model::*;
pub use wire::abi::LogLevel;
