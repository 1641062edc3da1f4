//! The host side of the guest ABI (see `policy-sdk/ABI.md`; the guest side is
//! `policy_sdk::wire::abi`). Everything the guest hands back is treated as hostile: pointers and
//! lengths are bounds-checked, sizes capped, and decoded results validated by the caller.

use crate::engine::module::CallLimits;
use crate::error::UnitFault;
use crate::state::ClusterView;
use policy_sdk::wire::abi::{self as guest_abi, export, import, LogLevel, HOST_MODULE};
use policy_sdk::wire::codec::{self, MAX_MESSAGE_BYTES};
use policy_sdk::wire::sync::SyncMessageRef;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use wasmtime::{
    AsContextMut, Caller, ExternType, Instance, Linker, Memory, Module, ResourceLimiter, Store,
    Trap, TypedFunc, ValType,
};

/// Longest log line kept from a guest (longer ones are cut).
const MAX_LOG_LINE: usize = 4096;
/// Log lines accepted per call; the rest are counted and dropped.
const MAX_LOG_LINES_PER_CALL: u32 = 64;

/// Per-store host state.
#[derive(Debug)]
pub(crate) struct StoreData {
    pub limiter: MemoryLimiter,
    /// Module file name, for log lines.
    pub module: Arc<str>,
    /// Deadline of the current call, for fault reports.
    pub deadline_ms: u64,
    /// Last error-level log line of the current call (a Rust guest's panic message).
    pub last_error: Option<String>,
    /// Log lines seen in the current call.
    pub log_lines: u32,
    /// Largest result the guest may hand back in the current call, in bytes.
    pub max_output_bytes: usize,
}

impl StoreData {
    pub fn new(module: Arc<str>, limits: CallLimits) -> Self {
        Self {
            limiter: MemoryLimiter {
                max_bytes: (limits.memory_limit_mb as usize) << 20,
                hit: false,
            },
            module,
            deadline_ms: limits.deadline_ms,
            last_error: None,
            log_lines: 0,
            max_output_bytes: limits.max_output_bytes(),
        }
    }
}

/// Caps linear memory (and tables) per instance and remembers whether the cap was hit, so
/// the resulting trap can be reported as a memory-cap fault.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    pub max_bytes: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// Adds the host functions of the `wasmsched` import module.
pub(crate) fn link_host_functions(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    linker.func_wrap(
        HOST_MODULE,
        import::LOG,
        |mut caller: Caller<'_, StoreData>, level: u32, ptr: u32, len: u32| {
            let Some(memory) = caller.get_export(export::MEMORY).and_then(|e| e.into_memory())
            else {
                return;
            };
            let data = memory.data(&caller);
            let start = ptr as usize;
            let len = (len as usize).min(MAX_LOG_LINE);
            let Some(bytes) = start
                .checked_add(len)
                .and_then(|end| data.get(start..end))
            else {
                tracing::warn!(module = %caller.data().module, "guest log call with an out-of-bounds buffer");
                return;
            };
            let text = String::from_utf8_lossy(bytes).into_owned();
            let state = caller.data_mut();
            state.log_lines += 1;
            let level = LogLevel::from_raw(level);
            if level == LogLevel::Error {
                state.last_error = Some(text.clone());
            }
            if state.log_lines > MAX_LOG_LINES_PER_CALL {
                return;
            }
            let module = &*state.module;
            match level {
                LogLevel::Trace => tracing::trace!(target: "wasmsched::guest", module, "{text}"),
                LogLevel::Debug => tracing::debug!(target: "wasmsched::guest", module, "{text}"),
                LogLevel::Info => tracing::info!(target: "wasmsched::guest", module, "{text}"),
                LogLevel::Warn => tracing::warn!(target: "wasmsched::guest", module, "{text}"),
                LogLevel::Error => tracing::error!(target: "wasmsched::guest", module, "{text}"),
            }
        },
    )?;
    Ok(())
}

/// Checks that a module imports only the host's own functions, with the right types.
pub(crate) fn check_imports(module: &Module) -> Result<(), String> {
    for import in module.imports() {
        let allowed = import.module() == HOST_MODULE
            && import.name() == import::LOG
            && matches!(import.ty(), ExternType::Func(ref f)
                if f.params().len() == 3
                    && f.params().all(|p| matches!(p, ValType::I32))
                    && f.results().len() == 0);
        if !allowed {
            let hint = if import.module().starts_with("wasi") {
                " (WASI is not available to policy modules; build for wasm32-unknown-unknown)"
            } else {
                ""
            };
            return Err(format!(
                "imports `{}::{}`, which the host does not provide; only `{HOST_MODULE}::{}` (i32, i32, i32) is allowed{hint}",
                import.module(),
                import.name(),
                import::LOG
            ));
        }
    }
    Ok(())
}

/// Checks that every required export exists with the right type.
pub(crate) fn check_exports(module: &Module) -> Result<(), String> {
    use ValType::{I32, I64};
    let funcs: [(&str, &[ValType], &[ValType]); 6] = [
        (export::ABI_VERSION, &[], &[I32]),
        (export::INPUT, &[I32], &[I32]),
        (export::MANIFEST, &[], &[I64]),
        (export::SYNC, &[I32], &[I64]),
        (export::CALL, &[I32], &[I64]),
        (export::BATCH, &[I32], &[I64]),
    ];
    match module.get_export(export::MEMORY) {
        Some(ExternType::Memory(m)) if !m.is_64() && !m.is_shared() => {}
        Some(_) => {
            return Err(format!(
                "export `{}` must be a 32-bit memory",
                export::MEMORY
            ))
        }
        None => return Err(format!("missing export `{}`", export::MEMORY)),
    }
    let same = |a: &[ValType], b: &mut dyn ExactSizeIterator<Item = ValType>| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                matches!(
                    (x, &y),
                    (ValType::I32, ValType::I32) | (ValType::I64, ValType::I64)
                )
            })
    };
    for (name, params, results) in funcs {
        match module.get_export(name) {
            Some(ExternType::Func(f))
                if same(params, &mut f.params()) && same(results, &mut f.results()) => {}
            Some(_) => {
                return Err(format!(
                    "export `{name}` has the wrong type; expected ({}) -> ({})",
                    show(params),
                    show(results)
                ))
            }
            None => return Err(format!("missing export `{name}`")),
        }
    }
    Ok(())
}

fn show(types: &[ValType]) -> String {
    types
        .iter()
        .map(|t| {
            if matches!(t, ValType::I32) {
                "i32"
            } else {
                "i64"
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The guest entry point a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// `wasmsched_sync`: a sync message.
    Sync,
    /// `wasmsched_call`: one unit call.
    Call,
    /// `wasmsched_batch`: several units of the module in one crossing.
    Batch,
}

/// The typed exports of one instance.
#[derive(Clone)]
pub(crate) struct GuestFns {
    memory: Memory,
    abi_version: TypedFunc<(), u32>,
    input: TypedFunc<u32, u32>,
    manifest: TypedFunc<(), u64>,
    sync: TypedFunc<u32, u64>,
    call: TypedFunc<u32, u64>,
    batch: TypedFunc<u32, u64>,
}

impl GuestFns {
    pub fn new(store: &mut Store<StoreData>, instance: &Instance) -> wasmtime::Result<Self> {
        Ok(Self {
            memory: instance
                .get_memory(&mut *store, export::MEMORY)
                .ok_or_else(|| wasmtime::Error::msg("missing memory export"))?,
            abi_version: instance.get_typed_func(&mut *store, export::ABI_VERSION)?,
            input: instance.get_typed_func(&mut *store, export::INPUT)?,
            manifest: instance.get_typed_func(&mut *store, export::MANIFEST)?,
            sync: instance.get_typed_func(&mut *store, export::SYNC)?,
            call: instance.get_typed_func(&mut *store, export::CALL)?,
            batch: instance.get_typed_func(&mut *store, export::BATCH)?,
        })
    }

    pub fn abi_version(&self, store: &mut Store<StoreData>) -> Result<u32, UnitFault> {
        self.abi_version
            .call(&mut *store, ())
            .map_err(|e| classify(store, e))
    }

    pub fn manifest<T: DeserializeOwned>(
        &self,
        store: &mut Store<StoreData>,
    ) -> Result<T, UnitFault> {
        let packed = self
            .manifest
            .call(&mut *store, ())
            .map_err(|e| classify(store, e))?;
        self.decode_output(store, packed, codec::decode)
    }

    /// Sends one message to `entry` and decodes its reply.
    pub fn exchange<T: DeserializeOwned>(
        &self,
        store: &mut Store<StoreData>,
        message: &[u8],
        entry: Entry,
    ) -> Result<T, UnitFault> {
        self.exchange_with(store, message, entry, codec::decode)
    }

    /// [`GuestFns::exchange`] with the reply's own decoder (a batch's answer has one that
    /// reads it by hand).
    pub fn exchange_with<T>(
        &self,
        store: &mut Store<StoreData>,
        message: &[u8],
        entry: Entry,
        decode: fn(&[u8]) -> Result<T, codec::CodecError>,
    ) -> Result<T, UnitFault> {
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(UnitFault::BadOutput(format!(
                "message of {} bytes exceeds the {} byte limit",
                message.len(),
                MAX_MESSAGE_BYTES
            )));
        }
        let len = message.len() as u32;
        store.data_mut().last_error = None;
        store.data_mut().log_lines = 0;
        let ptr = self
            .input
            .call(&mut *store, len)
            .map_err(|e| classify(store, e))?;
        self.memory
            .write(store.as_context_mut(), ptr as usize, message)
            .map_err(|_| {
                UnitFault::BadOutput(format!(
                    "input buffer at {ptr:#x} (+{len}) is outside guest memory"
                ))
            })?;
        let func = match entry {
            Entry::Sync => &self.sync,
            Entry::Call => &self.call,
            Entry::Batch => &self.batch,
        };
        let packed = func
            .call(&mut *store, len)
            .map_err(|e| classify(store, e))?;
        self.decode_output(store, packed, decode)
    }

    fn decode_output<T>(
        &self,
        store: &mut Store<StoreData>,
        packed: u64,
        decode: fn(&[u8]) -> Result<T, codec::CodecError>,
    ) -> Result<T, UnitFault> {
        let (ptr, len) = guest_abi::unpack(packed);
        let (ptr, len) = (ptr as usize, len as usize);
        let cap = store.data().max_output_bytes.min(MAX_MESSAGE_BYTES);
        if len > cap {
            return Err(UnitFault::OutputCap { bytes: len, cap });
        }
        let data = self.memory.data(&*store);
        let bytes = ptr
            .checked_add(len)
            .and_then(|end| data.get(ptr..end))
            .ok_or_else(|| {
                UnitFault::BadOutput(format!(
                    "result at {ptr:#x} (+{len}) is outside guest memory of {} bytes",
                    data.len()
                ))
            })?;
        decode(bytes).map_err(|e| UnitFault::BadOutput(format!("result does not decode: {e}")))
    }
}

/// Turns a wasmtime error from a guest call into a fault.
/// An engine error as one line: its causes joined, without the wasm backtrace wasmtime
/// appends (a deep recursion's backtrace is dozens of lines, and a fault ends up in a status
/// line).
pub(crate) fn one_line(error: &wasmtime::Error) -> String {
    let text = format!("{error:#}");
    let cut = text.find("\nwasm backtrace:").unwrap_or(text.len());
    text[..cut]
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

fn classify(store: &mut Store<StoreData>, error: wasmtime::Error) -> UnitFault {
    let data = store.data_mut();
    if data.limiter.hit {
        data.limiter.hit = false;
        return UnitFault::MemoryCap {
            mb: (data.limiter.max_bytes >> 20) as u64,
        };
    }
    if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
        return UnitFault::Deadline {
            ms: data.deadline_ms,
        };
    }
    let trap = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => one_line(&error),
    };
    match data.last_error.take() {
        Some(message) => UnitFault::Trap(format!("{trap} ({message})")),
        None => UnitFault::Trap(trap),
    }
}

/// The encoded delta that brings an instance holding epoch `from` of this cluster to
/// `view`'s epoch, while the cluster's change log holds the changes in between. Encoded
/// once per epoch range for every instance (the full snapshot: see
/// [`FullSnapshot`](crate::engine::full_sync::FullSnapshot)).
pub(crate) fn delta_message(view: &ClusterView, from: u64) -> Option<Arc<Vec<u8>>> {
    let to = view.epoch();
    if from >= to {
        return None;
    }
    view.delta_encoding(from, |changes| {
        // Sized for a reservation's delta (a host's added pending resources), so that the
        // encoding does not grow it step by step: one is encoded per decision.
        let mut bytes = Vec::with_capacity(256 * changes.len());
        codec::encode_into(
            &SyncMessageRef::Delta {
                from_epoch: from,
                to_epoch: to,
                changes,
            },
            &mut bytes,
        )
        .ok()
        .map(|()| Arc::new(bytes))
    })
}
