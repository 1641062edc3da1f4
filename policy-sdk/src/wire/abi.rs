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
use crate::wire::codec::{self, raw, CodecError};
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// The ABI version this SDK implements. Bump on any incompatible change of exports,
/// message layout or semantics.
pub const ABI_VERSION: u32 = 11;

/// Oldest ABI version the host accepts. Version 11 sends a reservation as the resources it
/// adds to its host (`Change::AddPending`), which an older guest cannot decode; version 10
/// may send a large full snapshot in parts (`FullBegin`, `FullHosts`, `FullEnd`), which an
/// older guest cannot take; version 9 sends a filter's rejections as columns (packed
/// positions and code indexes; details only when some rejection has one), which an older
/// host would misread; version 8 added `details` to unit calls and batches.
pub const MIN_SUPPORTED_ABI_VERSION: u32 = 11;

/// Newest ABI version the host accepts.
pub const MAX_SUPPORTED_ABI_VERSION: u32 = 11;

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
    /// `(len: i32) -> i64`: apply a [`SyncMessage`](crate::wire::sync::SyncMessage) of `len`
    /// bytes in the input buffer; returns a packed
    /// [`SyncResponse`](crate::wire::sync::SyncResponse).
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

/// Variant numbers as serde gives them (declaration order), for the hand-written form of a
/// batch's answer: [`BatchResponse::Answers`], then [`CallResponse`]'s.
mod variant {
    pub const ANSWERS: u64 = 0;
    pub const VERDICTS: u64 = 0;
    pub const PENALTIES: u64 = 1;
    pub const FAILED: u64 = 3;
    pub const SAME_PENALTY: u64 = 4;
}

impl BatchResponse {
    /// Encodes the response into `out` (replacing what it held): the bytes
    /// [`codec::encode_into`] gives, written by hand (a batch is answered on every
    /// decision). A response holding balance actions, which no batch gives, is left to
    /// serde.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let answers = match self {
            BatchResponse::Answers { filters, weights } => [filters, weights],
            BatchResponse::Failed(_) => return codec::encode_into(self, out),
        };
        if answers
            .iter()
            .any(|list| list.iter().any(|a| matches!(a, CallResponse::Actions(_))))
        {
            return codec::encode_into(self, out);
        }
        out.clear();
        raw::put_u64(out, variant::ANSWERS);
        for list in answers {
            raw::put_len(out, list.len());
            for answer in list {
                match answer {
                    CallResponse::Verdicts(verdicts) => {
                        raw::put_u64(out, variant::VERDICTS);
                        verdicts.put_wire(out);
                    }
                    CallResponse::Penalties(penalties) => {
                        raw::put_u64(out, variant::PENALTIES);
                        crate::model::verdict::packed::i64s::put(out, penalties);
                    }
                    CallResponse::Failed(message) => {
                        raw::put_u64(out, variant::FAILED);
                        raw::put_str(out, message);
                    }
                    CallResponse::SamePenalty(penalty) => {
                        raw::put_u64(out, variant::SAME_PENALTY);
                        raw::put_i64(out, *penalty);
                    }
                    CallResponse::Actions(_) => unreachable!("left to serde above"),
                }
            }
        }
        Ok(())
    }

    /// Decodes a response: by hand for the forms a batch gives (verdicts, penalties, one
    /// penalty for all, a unit's failure), by serde for anything else and for any input
    /// the hand-written reader does not take whole, so that an error is serde's.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        // Serde's decoder counts at most 8 bytes against its limit per byte it reads (a
        // one-byte integer counts as its full width), so a message of up to an eighth of
        // the limit cannot exceed it: such a message is one serde would take, if the
        // reader takes it.
        let read = (bytes.len() <= codec::MAX_MESSAGE_BYTES / 8)
            .then(|| Self::read(&mut raw::Reader::new(bytes)))
            .flatten();
        match read {
            Some(response) => Ok(response),
            None => codec::decode(bytes),
        }
    }

    /// The hand-written reader of [`BatchResponse::decode`]: `None` for anything it does
    /// not take whole.
    fn read(reader: &mut raw::Reader<'_>) -> Option<Self> {
        if u64::from(reader.u32()?) != variant::ANSWERS {
            return None;
        }
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let n = reader.length()?;
            list.reserve_exact(n);
            for _ in 0..n {
                list.push(match u64::from(reader.u32()?) {
                    variant::VERDICTS => CallResponse::Verdicts(Verdicts::read_wire(reader)?),
                    variant::PENALTIES => CallResponse::Penalties(
                        crate::model::verdict::packed::i64s::from_le_bytes(reader.bytes()?)?,
                    ),
                    variant::FAILED => CallResponse::Failed(reader.string()?),
                    variant::SAME_PENALTY => CallResponse::SamePenalty(reader.i64()?),
                    _ => return None,
                });
            }
        }
        let [filters, weights] = lists;
        reader
            .is_done()
            .then_some(BatchResponse::Answers { filters, weights })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::verdict::Verdict;
    use crate::testing::{vm, XorShift};

    /// A batch response of random answers of every form a batch gives, of up to `n`
    /// verdicts or penalties each.
    fn random_batch_response(rng: &mut XorShift, n: u64) -> BatchResponse {
        let texts = [
            "",
            "not_enough_memory",
            "zu wenig Speicher: 1 024 MiB ≠ 4 096",
            "x",
        ];
        let answer = |rng: &mut XorShift| match rng.below(6) {
            0 | 1 => {
                let verdicts = (0..rng.below(n))
                    .map(|_| match rng.below(3) {
                        0 => Verdict::reject(
                            texts[1 + rng.below(3) as usize].to_string(),
                            texts[rng.below(4) as usize],
                        ),
                        _ => Verdict::Pass,
                    })
                    .collect();
                CallResponse::Verdicts(Verdicts::from_verdicts(verdicts))
            }
            2 => CallResponse::Penalties(
                (0..rng.below(n))
                    .map(|i| match i % 4 {
                        0 => rng.below(1_000) as i64,
                        1 => -(rng.below(u64::MAX) as i64),
                        2 => i64::MIN + rng.below(3) as i64,
                        _ => rng.below(u64::MAX) as i64,
                    })
                    .collect(),
            ),
            3 => CallResponse::SamePenalty(
                [0, 1, 1_000, -5, i64::MAX, i64::MIN][rng.below(6) as usize],
            ),
            _ => CallResponse::Failed(texts[rng.below(4) as usize].repeat(rng.below(n) as usize)),
        };
        let filters = (0..rng.below(9)).map(|_| answer(rng)).collect();
        let weights = (0..rng.below(9)).map(|_| answer(rng)).collect();
        BatchResponse::Answers { filters, weights }
    }

    /// The hand-written form of a batch response is byte for byte its serde form, and
    /// reads back to the same response, for random responses of every answer a batch
    /// gives, and for the forms left to serde (a failed batch, balance actions).
    #[test]
    fn a_batch_response_is_written_and_read_by_hand_as_serde_does() {
        let mut rng = XorShift::new(18);
        let mut responses: Vec<BatchResponse> = (0..400)
            .map(|_| random_batch_response(&mut rng, 300))
            .collect();
        responses.push(BatchResponse::Failed("stale epoch".into()));
        responses.push(BatchResponse::Answers {
            filters: alloc::vec![CallResponse::Verdicts(Verdicts::passing(3))],
            weights: alloc::vec![CallResponse::Actions(alloc::vec![])],
        });
        let mut out = alloc::vec![9, 9, 9];
        for response in responses {
            response.encode_into(&mut out).unwrap();
            assert_eq!(out, codec::encode(&response).unwrap(), "{response:?}");
            assert_eq!(BatchResponse::decode(&out), Ok(response.clone()));
            if matches!(&response, BatchResponse::Answers { weights, .. } if weights.iter().all(|w| !matches!(w, CallResponse::Actions(_))))
            {
                assert_eq!(
                    BatchResponse::read(&mut raw::Reader::new(&out)),
                    Some(response),
                    "the hand-written reader takes it"
                );
            }
        }
    }

    /// A damaged message decodes exactly as serde decodes it, to the same response or the
    /// same error: cut at every length, with a byte inserted or a byte replaced at every
    /// position (by the markers of wider integers, 0, 255 and a flipped bit), and padded.
    #[test]
    fn a_damaged_batch_response_decodes_as_serde_decodes_it() {
        let mut rng = XorShift::new(7);
        let (mut checked, mut taken) = (0, 0);
        for _ in 0..12 {
            let response = random_batch_response(&mut rng, 6);
            let bytes = codec::encode(&response).unwrap();
            let mut damaged: Vec<Vec<u8>> = (0..bytes.len()).map(|n| bytes[..n].to_vec()).collect();
            for at in 0..bytes.len() {
                for value in [
                    0,
                    1,
                    250,
                    251,
                    252,
                    253,
                    254,
                    255,
                    bytes[at] ^ 1,
                    bytes[at] ^ 0x80,
                ] {
                    let mut b = bytes.clone();
                    b[at] = value;
                    damaged.push(b);
                    let mut b = bytes.clone();
                    b.insert(at, value);
                    damaged.push(b);
                }
            }
            let mut padded = bytes.clone();
            padded.push(0);
            damaged.push(padded);
            for b in damaged {
                assert_eq!(
                    BatchResponse::decode(&b),
                    codec::decode::<BatchResponse>(&b),
                    "{b:?}"
                );
                checked += 1;
                taken += usize::from(BatchResponse::read(&mut raw::Reader::new(&b)).is_some());
            }
        }
        // Both sides of the comparison were exercised: damage the reader took (a value
        // changed) and damage it left to serde.
        assert!(
            taken > 1_000 && checked - taken > 1_000,
            "{taken} of {checked} taken"
        );
    }

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
