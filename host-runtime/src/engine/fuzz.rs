//! Entry points for fuzz and property tests: what the host makes of bytes a guest hands
//! back (a manifest, a sync answer, a unit's result), through the same decoding and shape
//! checks as a real call, without a guest.

use crate::engine::module::{BatchAnswers, BatchShape};
use crate::engine::trial;
use crate::error::UnitFault;
use policy_sdk::wire::abi::{BatchResponse, CallResponse};
use policy_sdk::wire::codec;
use policy_sdk::wire::sync::SyncResponse;
use policy_sdk::{Manifest, UnitKind};

/// Which guest answer some bytes are taken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestOutput {
    /// The result of `wasmsched_manifest` (an optional manifest, then validated).
    Manifest,
    /// The result of `wasmsched_sync`.
    Sync,
    /// The result of `wasmsched_call` for a unit of this kind over this many candidates
    /// (decoded, then checked for the right kind and number of results).
    Call {
        /// The unit's declared kind.
        kind: UnitKind,
        /// Candidate hosts the call was about.
        candidates: usize,
    },
    /// The result of `wasmsched_batch` for this many filters and weights over this many
    /// candidates (decoded, then every answer checked for its kind and count).
    Batch {
        /// Filters of the batch.
        filters: usize,
        /// Weights of the batch.
        weights: usize,
        /// Candidate hosts the batch was about.
        candidates: usize,
    },
}

/// Decodes and checks `bytes` as the host does with a guest's answer; `Err` says why the
/// host would refuse it. Never panics, whatever the bytes.
pub fn decode_guest_output(what: GuestOutput, bytes: &[u8]) -> Result<(), String> {
    match what {
        GuestOutput::Manifest => {
            let manifest: Option<Manifest> =
                codec::decode(bytes).map_err(|e| format!("does not decode: {e}"))?;
            match manifest {
                Some(m) => m.validate().map_err(|e| e.to_string()),
                None => Err("the module has no units".into()),
            }
        }
        GuestOutput::Sync => codec::decode::<SyncResponse>(bytes)
            .map(|_| ())
            .map_err(|e| format!("does not decode: {e}")),
        GuestOutput::Call { kind, candidates } => {
            let response = codec::decode::<CallResponse>(bytes)
                .map_err(|e| UnitFault::BadOutput(format!("result does not decode: {e}")));
            trial::check_response(kind, candidates, response)
        }
        GuestOutput::Batch {
            filters,
            weights,
            candidates,
        } => {
            let response =
                BatchResponse::decode(bytes).map_err(|e| format!("does not decode: {e}"))?;
            let shape = BatchShape {
                filters,
                weights,
                candidates,
            };
            BatchAnswers::of(response, &shape)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}
