//! The guest side of the wasmsched ABI: names, version, messages and the entry points the
//! [`export_units!`](crate::export_units) macro wires to wasm exports. `ABI.md` describes the
//! same contract for implementers in other languages; `host-runtime/src/engine/abi.rs` is the host
//! side. Keep the three in step.
//!
//! Summary: the guest owns all of its memory. The host asks for an input buffer
//! (`wasmsched_input(len) -> ptr`), writes one encoded message there, and calls
//! `wasmsched_sync(len)` or `wasmsched_call(len)`. Results come back packed in an `i64`
//! (`ptr << 32 | len`) pointing at a guest-owned output buffer that stays valid until the
//! next call into the guest.

use crate::model::manifest::ParamValue;
use crate::model::verdict::{BalanceAction, Penalty, Verdicts};
use crate::model::{HostIndex, Vm};
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// The ABI version this SDK implements. Bump on any incompatible change of exports,
/// message layout or semantics.
pub const ABI_VERSION: u32 = 10;

/// Oldest ABI version the host accepts. Version 10 may send a large full snapshot in parts
/// (`FullBegin`, `FullHosts`, `FullEnd`), which an older guest cannot take; version 9 sends
/// a filter's rejections as columns
/// (packed positions and code indexes; details only when some rejection has one), which an
/// older host would misread; version 8 added `details` to unit calls and batches.
pub const MIN_SUPPORTED_ABI_VERSION: u32 = 10;

/// Newest ABI version the host accepts.
pub const MAX_SUPPORTED_ABI_VERSION: u32 = 10;

/// The only import module a policy module may import from.
pub const HOST_MODULE: &str = "wasmsched";

/// Names of the exports a policy module must provide.
pub mod export {
    /// The module's linear memory.
    pub const MEMORY: &str = "memory";
    /// `() -> i32`: the ABI version the module was built for.
    pub const ABI_VERSION: &str = "wasmsched_abi_version";
    /// `(len: i32) -> i32`: pointer to a guest buffer of at least `len` bytes for the next
    /// message.
    pub const INPUT: &str = "wasmsched_input";
    /// `() -> i64`: packed pointer/length of the encoded [`Manifest`](crate::Manifest).
    pub const MANIFEST: &str = "wasmsched_manifest";
    /// `(len: i32) -> i64`: apply a [`SyncMessage`](super::SyncMessage) of `len` bytes in the
    /// input buffer; returns a packed [`SyncResponse`](super::SyncResponse).
    pub const SYNC: &str = "wasmsched_sync";
    /// `(len: i32) -> i64`: run a [`CallRequest`](super::CallRequest) of `len` bytes in the
    /// input buffer; returns a packed [`CallResponse`](super::CallResponse).
    pub const CALL: &str = "wasmsched_call";
    /// `(len: i32) -> i64`: run a [`BatchRequest`](super::BatchRequest) of `len` bytes in the
    /// input buffer (several units of the module in one crossing); returns a packed
    /// [`BatchResponse`](super::BatchResponse). ABI version 6.
    pub const BATCH: &str = "wasmsched_batch";
}

/// Names of the functions the host provides in [`HOST_MODULE`].
pub mod import {
    /// `(level: i32, ptr: i32, len: i32)`: log a UTF-8 message. Levels: see
    /// [`LogLevel`](super::LogLevel).
    pub const LOG: &str = "log";
}

/// Log levels for the `log` import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum LogLevel {
    /// Very verbose.
    Trace = 0,
    /// Debugging.
    Debug = 1,
    /// Informational.
    Info = 2,
    /// Something looks wrong.
    Warn = 3,
    /// Something failed (a guest panic is logged at this level before the trap).
    Error = 4,
}

impl LogLevel {
    /// The level for a raw value (out-of-range values become `Error`).
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            _ => LogLevel::Error,
        }
    }
}

/// Packs a guest pointer and length into the `i64` returned by `manifest`, `sync`, `call`.
pub fn pack(ptr: u32, len: u32) -> u64 {
    ((ptr as u64) << 32) | len as u64
}

/// Splits a packed result into `(ptr, len)`.
pub fn unpack(packed: u64) -> (u32, u32) {
    ((packed >> 32) as u32, packed as u32)
}
/// One invocation of one unit over all candidate hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRequest {
    /// Index of the unit in the manifest.
    pub unit: u32,
    /// The snapshot epoch the call is about; the guest fails the call if it holds another.
    pub epoch: u64,
    /// Every parameter the unit declares, validated and with defaults filled in.
    pub params: Vec<(String, ParamValue)>,
    /// The VM being scheduled (filters and weights); `None` for balance units.
    pub vm: Option<Vm>,
    /// Candidate host indices, unique and in range (packed little-endian `u32`s).
    #[serde(with = "crate::model::verdict::packed::u32s")]
    pub candidates: Vec<HostIndex>,
    /// Whether the caller reads reject details: `false` for a decision that reports only
    /// the hosts turned away per unit and code (a summary), so units may leave a
    /// rejection's detail empty instead of writing it (see
    /// [`Context::reject`](crate::Context::reject)). Added in ABI 8.
    pub details: bool,
}

impl CallRequest {
    /// The borrowed form of this request, as [`UnitSet::evaluate`](crate::UnitSet::evaluate)
    /// takes it.
    pub fn as_call(&self) -> Call<'_> {
        Call {
            unit: self.unit,
            epoch: self.epoch,
            params: &self.params,
            vm: self.vm.as_ref(),
            candidates: &self.candidates,
            details: self.details,
        }
    }
}

/// A [`CallRequest`] that borrows its parts: what the host encodes (the same bytes as the
/// owned request, without cloning parameters, VM or candidate list) and what native callers
/// pass to [`UnitSet::evaluate`](crate::UnitSet::evaluate).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Call<'a> {
    /// Index of the unit in the manifest.
    pub unit: u32,
    /// The snapshot epoch the call is about.
    pub epoch: u64,
    /// Every declared parameter, defaults filled in.
    pub params: &'a [(String, ParamValue)],
    /// The VM being scheduled; `None` for balance units.
    pub vm: Option<&'a Vm>,
    /// Candidate host indices (packed little-endian `u32`s).
    #[serde(serialize_with = "crate::model::verdict::packed::u32s::serialize")]
    pub candidates: &'a [HostIndex],
    /// See [`CallRequest::details`].
    pub details: bool,
}

/// A unit's answer to a [`CallRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CallResponse {
    /// Filter: the verdicts over the candidates, compact (only the rejected ones).
    Verdicts(Verdicts),
    /// Weight: one penalty per candidate, in candidate order (packed little-endian `i64`s).
    Penalties(#[serde(with = "crate::model::verdict::packed::i64s")] Vec<Penalty>),
    /// Balance: proposed actions.
    Actions(Vec<BalanceAction>),
    /// The guest could not run the call (bad unit index, stale epoch, missing VM...).
    Failed(String),
    /// Weight: the same penalty for every candidate (the unit does not tell hosts apart
    /// for this VM).
    SamePenalty(Penalty),
}

/// One unit of a [`BatchRequest`]: its index in the manifest and every parameter it declares,
/// validated and with defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchUnit {
    /// Index of the unit in the manifest.
    pub unit: u32,
    /// Every declared parameter, defaults filled in.
    pub params: Vec<(String, ParamValue)>,
}

/// [`BatchUnit`] borrowing its parameters (what the host encodes).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BatchUnitRef<'a> {
    /// Index of the unit in the manifest.
    pub unit: u32,
    /// Every declared parameter, defaults filled in.
    pub params: &'a [(String, ParamValue)],
}

/// Several filter and weight units of one module over one VM, in one crossing: the filters
/// run in order, each over the candidates every filter before it in the batch passed; then the
/// weights run over the candidates all of the batch's filters passed. The guest does exactly
/// what one [`CallRequest`] per unit, narrowing the candidates between filters, would do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRequest {
    /// The snapshot epoch the batch is about; the guest fails the batch if it holds another.
    pub epoch: u64,
    /// The VM being scheduled.
    pub vm: Vm,
    /// Candidate host indices, unique and in range (packed little-endian `u32`s).
    #[serde(with = "crate::model::verdict::packed::u32s")]
    pub candidates: Vec<HostIndex>,
    /// Filter units, in the order they run.
    pub filters: Vec<BatchUnit>,
    /// Weight units, run over the candidates every filter of the batch passed.
    pub weights: Vec<BatchUnit>,
    /// See [`CallRequest::details`].
    pub details: bool,
}

impl BatchRequest {
    /// The borrowed form of this request, as [`UnitSet::evaluate_batch`](crate::UnitSet::evaluate_batch)
    /// takes it (`units` holds the filters' and then the weights' arguments).
    pub fn as_batch<'a>(&'a self, units: &'a mut Vec<BatchUnitRef<'a>>) -> Batch<'a> {
        units.clear();
        units.extend(
            self.filters
                .iter()
                .chain(&self.weights)
                .map(|u| BatchUnitRef {
                    unit: u.unit,
                    params: &u.params,
                }),
        );
        let (filters, weights) = units.split_at(self.filters.len());
        Batch {
            epoch: self.epoch,
            vm: &self.vm,
            candidates: &self.candidates,
            filters,
            weights,
            details: self.details,
        }
    }
}

/// A [`BatchRequest`] that borrows its parts: what the host encodes (the same bytes as the
/// owned request) and what native callers pass to
/// [`UnitSet::evaluate_batch`](crate::UnitSet::evaluate_batch).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Batch<'a> {
    /// The snapshot epoch the batch is about.
    pub epoch: u64,
    /// The VM being scheduled.
    pub vm: &'a Vm,
    /// Candidate host indices (packed little-endian `u32`s).
    #[serde(serialize_with = "crate::model::verdict::packed::u32s::serialize")]
    pub candidates: &'a [HostIndex],
    /// Filter units, in the order they run.
    pub filters: &'a [BatchUnitRef<'a>],
    /// Weight units.
    pub weights: &'a [BatchUnitRef<'a>],
    /// See [`CallRequest::details`].
    pub details: bool,
}

impl<'a> Batch<'a> {
    /// The single-unit call of `unit` of this batch over `candidates`.
    pub fn call(&self, unit: &BatchUnitRef<'a>, candidates: &'a [HostIndex]) -> Call<'a> {
        Call {
            unit: unit.unit,
            epoch: self.epoch,
            params: unit.params,
            vm: Some(self.vm),
            candidates,
            details: self.details,
        }
    }
}

/// The answer to a [`BatchRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BatchResponse {
    /// One answer per unit, in the request's order. A filter's [`Verdicts`] are over the
    /// candidates it was given (those every earlier filter of the batch passed; a filter that
    /// answered [`CallResponse::Failed`] passed them all; a filter left with no candidate is
    /// not run and answers empty verdicts). The weights' penalties are over the candidates
    /// every filter of the batch passed.
    Answers {
        /// Per filter, in order.
        filters: Vec<CallResponse>,
        /// Per weight, in order.
        weights: Vec<CallResponse>,
    },
    /// The guest could not run the batch at all (stale epoch, undecodable request...).
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::vm;
    use crate::wire::codec;

    #[test]
    fn borrowed_call_encodes_to_the_bytes_of_the_owned_request() {
        let request = CallRequest {
            unit: 3,
            epoch: 42,
            params: alloc::vec![("overhead_mb".into(), ParamValue::Int(64))],
            vm: Some(vm("v").memory_mb(2_048).build()),
            candidates: alloc::vec![7, 1, 300],
            details: false,
        };
        let borrowed = codec::encode(&request.as_call()).unwrap();
        assert_eq!(borrowed, codec::encode(&request).unwrap());
        assert_eq!(codec::decode::<CallRequest>(&borrowed).unwrap(), request);
    }

    #[test]
    fn borrowed_batch_encodes_to_the_bytes_of_the_owned_request() {
        let request = BatchRequest {
            epoch: 7,
            vm: vm("v").memory_mb(1_024).build(),
            candidates: alloc::vec![0, 2, 5],
            filters: alloc::vec![
                BatchUnit {
                    unit: 0,
                    params: alloc::vec![]
                },
                BatchUnit {
                    unit: 2,
                    params: alloc::vec![("x".into(), ParamValue::Bool(true))]
                },
            ],
            weights: alloc::vec![BatchUnit {
                unit: 1,
                params: alloc::vec![]
            }],
            details: false,
        };
        let mut units = Vec::new();
        let borrowed = codec::encode(&request.as_batch(&mut units)).unwrap();
        assert_eq!(borrowed, codec::encode(&request).unwrap());
        assert_eq!(codec::decode::<BatchRequest>(&borrowed).unwrap(), request);
    }
}
