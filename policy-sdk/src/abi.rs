//! The guest side of the wasmsched ABI: names, version, messages and the entry points the
//! [`export_units!`](crate::export_units) macro wires to wasm exports. `ABI.md` describes the
//! same contract for implementers in other languages; `host-runtime/src/abi.rs` is the host
//! side. Keep the three in step.
//!
//! Summary: the guest owns all of its memory. The host asks for an input buffer
//! (`wasmsched_input(len) -> ptr`), writes one encoded message there, and calls
//! `wasmsched_sync(len)` or `wasmsched_call(len)`. Results come back packed in an `i64`
//! (`ptr << 32 | len`) pointing at a guest-owned output buffer that stays valid until the
//! next call into the guest.

use crate::manifest::ParamValue;
use crate::model::{ClusterInfo, Host, HostIndex, HostStatus, PendingAggregate, Snapshot, Vm};
use crate::verdict::{BalanceAction, Penalty, Verdicts};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// The ABI version this SDK implements. Bump on any incompatible change of exports,
/// message layout or semantics.
pub const ABI_VERSION: u32 = 3;

/// Oldest ABI version the host accepts.
pub const MIN_SUPPORTED_ABI_VERSION: u32 = 3;

/// Newest ABI version the host accepts.
pub const MAX_SUPPORTED_ABI_VERSION: u32 = 3;

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

/// Brings a guest's copy of the snapshot up to date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SyncMessage {
    /// Replace the whole snapshot.
    Full(Snapshot),
    /// Apply changes to the snapshot at `from_epoch`, giving the snapshot at `to_epoch`.
    Delta {
        /// Epoch the guest must hold.
        from_epoch: u64,
        /// Epoch after applying the changes.
        to_epoch: u64,
        /// Changes, in order.
        changes: Vec<Change>,
    },
}

/// One change to a snapshot. Host and guest apply changes with the same function
/// ([`Change::apply`]), so both sides hold the same snapshot after the same changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// A host's pending aggregate changed.
    SetPending {
        /// Host index.
        host: HostIndex,
        /// New aggregate.
        pending: PendingAggregate,
    },
    /// A host's status changed.
    SetHostStatus {
        /// Host index.
        host: HostIndex,
        /// New status.
        status: HostStatus,
    },
    /// A host's data changed (any field).
    ReplaceHost {
        /// Host index.
        host: HostIndex,
        /// New host data.
        value: Host,
    },
    /// A host joined the cluster (appended; existing indices stay valid).
    AddHost(Host),
    /// A host left the cluster (later hosts move down one index).
    RemoveHost {
        /// Host index.
        host: HostIndex,
    },
    /// A VM was added or changed (matched by id; appended when new).
    UpsertVm(Vm),
    /// A VM left the cluster (by id; later VMs move down one index).
    RemoveVm(String),
    /// Cluster settings changed.
    SetCluster(ClusterInfo),
    /// The snapshot's wall-clock time ([`Snapshot::time_unix`]) moved.
    SetTime {
        /// Unix seconds.
        time_unix: u64,
    },
}

fn host_mut(snapshot: &mut Snapshot, host: HostIndex) -> Result<&mut Host, String> {
    let len = snapshot.hosts.len();
    snapshot
        .hosts
        .get_mut(host as usize)
        .ok_or_else(|| format!("change names host index {host}, snapshot has {len}"))
}

impl Change {
    /// Applies this change to `snapshot`, moving its data in. Fails (without changing
    /// anything) when the change names a host index the snapshot lacks.
    pub fn apply(self, snapshot: &mut Snapshot) -> Result<(), String> {
        match self {
            Change::SetPending { host, pending } => host_mut(snapshot, host)?.pending = pending,
            Change::SetHostStatus { host, status } => host_mut(snapshot, host)?.status = status,
            Change::ReplaceHost { host, value } => *host_mut(snapshot, host)? = value,
            Change::AddHost(host) => snapshot.hosts.push(host),
            Change::RemoveHost { host } => {
                host_mut(snapshot, host)?;
                snapshot.hosts.remove(host as usize);
            }
            Change::UpsertVm(vm) => match snapshot.vms.iter_mut().find(|v| v.id == vm.id) {
                Some(existing) => *existing = vm,
                None => snapshot.vms.push(vm),
            },
            Change::RemoveVm(id) => {
                if let Some(pos) = snapshot.vms.iter().position(|v| v.id == id) {
                    snapshot.vms.remove(pos);
                }
            }
            Change::SetCluster(info) => snapshot.cluster = info,
            Change::SetTime { time_unix } => snapshot.time_unix = time_unix,
        }
        Ok(())
    }
}

/// Applies a sync message to a snapshot (the guest's copy, or a host-side mirror).
pub fn apply_sync(snapshot: &mut Snapshot, message: SyncMessage) -> Result<(), String> {
    match message {
        SyncMessage::Full(full) => {
            *snapshot = full;
            Ok(())
        }
        SyncMessage::Delta {
            from_epoch,
            to_epoch,
            changes,
        } => {
            if snapshot.epoch != from_epoch {
                return Err(format!(
                    "delta from epoch {from_epoch} but the guest holds epoch {}",
                    snapshot.epoch
                ));
            }
            for change in changes {
                change.apply(snapshot)?;
            }
            snapshot.epoch = to_epoch;
            Ok(())
        }
    }
}

/// The guest's answer to a sync message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SyncResponse {
    /// The guest now holds this epoch.
    Synced {
        /// Epoch now held.
        epoch: u64,
    },
    /// The message could not be applied; the host must send a full snapshot.
    Failed(String),
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
    #[serde(with = "crate::verdict::packed::u32s")]
    pub candidates: Vec<HostIndex>,
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
    #[serde(serialize_with = "crate::verdict::packed::u32s::serialize")]
    pub candidates: &'a [HostIndex],
}

/// A unit's answer to a [`CallRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CallResponse {
    /// Filter: the verdicts over the candidates, compact (only the rejected ones).
    Verdicts(Verdicts),
    /// Weight: one penalty per candidate, in candidate order (packed little-endian `i64`s).
    Penalties(#[serde(with = "crate::verdict::packed::i64s")] Vec<Penalty>),
    /// Balance: proposed actions.
    Actions(Vec<BalanceAction>),
    /// The guest could not run the call (bad unit index, stale epoch, missing VM...).
    Failed(String),
    /// Weight: the same penalty for every candidate (the unit does not tell hosts apart
    /// for this VM).
    SamePenalty(Penalty),
}

/// The entry points behind the exports generated by [`export_units!`](crate::export_units).
/// Not for direct use.
#[doc(hidden)]
pub mod guest {
    use super::*;
    use crate::codec;
    use crate::guest::UnitSet;
    use core::cell::RefCell;

    struct State {
        units: Option<UnitSet>,
        snapshot: Snapshot,
        /// Derived from `snapshot`; `None` until the first full snapshot.
        index: Option<crate::index::SnapshotIndex>,
        synced: bool,
        input: Vec<u8>,
        output: Vec<u8>,
    }

    std::thread_local! {
        static STATE: RefCell<State> = const {
            RefCell::new(State {
                units: None,
                snapshot: Snapshot {
                    epoch: 0,
                    time_unix: 0,
                    cluster: ClusterInfo {
                        id: String::new(),
                        name: String::new(),
                        cpu_model: String::new(),
                        cpu_flags: Vec::new(),
                        memory_overcommit_percent: 100,
                        count_threads_as_cores: false,
                        affinity_groups: Vec::new(),
                        architecture: crate::model::Architecture::X86_64,
                        max_memory_slots: crate::model::DEFAULT_MAX_MEMORY_SLOTS,
                    },
                    hosts: Vec::new(),
                    vms: Vec::new(),
                },
                index: None,
                synced: false,
                input: Vec::new(),
                output: Vec::new(),
            })
        };
    }

    fn with_state<R>(make: fn() -> UnitSet, f: impl FnOnce(&mut State) -> R) -> R {
        STATE.with(|cell| {
            let mut state = cell.borrow_mut();
            if state.units.is_none() {
                install_panic_hook();
                state.units = Some(make());
            }
            f(&mut state)
        })
    }

    fn install_panic_hook() {
        std::panic::set_hook(alloc::boxed::Box::new(|info| {
            crate::guest::log(LogLevel::Error, &format!("panic: {info}"));
        }));
    }

    fn respond<T: Serialize>(state: &mut State, value: &T) -> u64 {
        if let Err(e) = codec::encode_into(value, &mut state.output) {
            panic!("wasmsched guest could not encode its response: {e}");
        }
        pack(
            state.output.as_ptr() as usize as u32,
            state.output.len() as u32,
        )
    }

    /// `wasmsched_abi_version`.
    pub fn abi_version() -> u32 {
        ABI_VERSION
    }

    /// `wasmsched_input`.
    pub fn input(make: fn() -> UnitSet, len: u32) -> u32 {
        with_state(make, |state| {
            state.input.clear();
            state.input.resize(len as usize, 0);
            state.input.as_mut_ptr() as usize as u32
        })
    }

    /// `wasmsched_manifest`.
    pub fn manifest(make: fn() -> UnitSet) -> u64 {
        with_state(make, |state| {
            let manifest = state.units.as_ref().map(UnitSet::manifest);
            respond(state, &manifest)
        })
    }

    /// `wasmsched_sync`.
    pub fn sync(make: fn() -> UnitSet, len: u32) -> u64 {
        with_state(make, |state| {
            let len = (len as usize).min(state.input.len());
            let response = match codec::decode::<SyncMessage>(&state.input[..len]) {
                Err(e) => SyncResponse::Failed(format!("cannot decode sync message: {e}")),
                Ok(message) => {
                    let full = matches!(message, SyncMessage::Full(_));
                    if !full && !state.synced {
                        SyncResponse::Failed("delta before any full snapshot".into())
                    } else {
                        let touched = match &message {
                            SyncMessage::Delta { changes, .. } => {
                                Some(crate::index::Touched::of(changes))
                            }
                            SyncMessage::Full(_) => None,
                        };
                        match apply_sync(&mut state.snapshot, message) {
                            Ok(()) => {
                                match (touched, state.index.as_mut()) {
                                    (Some(touched), Some(index)) => {
                                        index.refresh(&state.snapshot, &touched)
                                    }
                                    _ => {
                                        state.index = Some(crate::index::SnapshotIndex::build(
                                            &state.snapshot,
                                        ))
                                    }
                                }
                                state.synced = true;
                                SyncResponse::Synced {
                                    epoch: state.snapshot.epoch,
                                }
                            }
                            Err(e) => {
                                state.synced = false;
                                SyncResponse::Failed(e)
                            }
                        }
                    }
                }
            };
            respond(state, &response)
        })
    }

    /// `wasmsched_call`.
    pub fn call(make: fn() -> UnitSet, len: u32) -> u64 {
        with_state(make, |state| {
            let len = (len as usize).min(state.input.len());
            let response = match codec::decode::<CallRequest>(&state.input[..len]) {
                Err(e) => CallResponse::Failed(format!("cannot decode call request: {e}")),
                Ok(request) if !state.synced || request.epoch != state.snapshot.epoch => {
                    CallResponse::Failed(format!(
                        "call for epoch {} but the guest holds epoch {} (synced: {})",
                        request.epoch, state.snapshot.epoch, state.synced
                    ))
                }
                Ok(request) => match state.units.as_ref() {
                    Some(units) => units.evaluate_indexed(
                        &state.snapshot,
                        state.index.as_ref(),
                        request.as_call(),
                    ),
                    None => CallResponse::Failed("module not initialized".into()),
                },
            };
            respond(state, &response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::testing::vm;

    #[test]
    fn borrowed_call_encodes_to_the_bytes_of_the_owned_request() {
        let request = CallRequest {
            unit: 3,
            epoch: 42,
            params: alloc::vec![("overhead_mb".into(), ParamValue::Int(64))],
            vm: Some(vm("v").memory_mb(2_048).build()),
            candidates: alloc::vec![7, 1, 300],
        };
        let borrowed = codec::encode(&request.as_call()).unwrap();
        assert_eq!(borrowed, codec::encode(&request).unwrap());
        assert_eq!(codec::decode::<CallRequest>(&borrowed).unwrap(), request);
    }
}
