//! A loaded policy module: compiled code, its manifest, and a pool of instances.

use crate::engine::abi::{self, Entry, GuestFns, StoreData};
use crate::engine::full_sync::FullSnapshot;
use crate::engine::runtime::EngineShared;
use crate::error::UnitFault;
use crate::state::ClusterView;
use policy_sdk::wire::abi::{Batch, BatchResponse, Call, CallResponse};
use policy_sdk::wire::codec;
use policy_sdk::wire::sync::SyncResponse;
use policy_sdk::{BalanceAction, Manifest, Penalty, UnitDescriptor, UnitSet, Verdicts};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use wasmtime::{InstancePre, Store};

/// Idle instances kept per module.
const MAX_IDLE_INSTANCES: usize = 16;

/// Run-time limits for one unit call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Wall-clock deadline in milliseconds (epoch ticks of 1 ms).
    pub deadline_ms: u64,
    /// Linear-memory cap of the instance in MiB.
    pub memory_limit_mb: u64,
    /// Largest result a call may return, in KiB (capped by the codec's message limit).
    pub max_output_kb: u64,
}

impl CallLimits {
    /// The limits of one crossing that runs several units: their deadlines and output caps
    /// added up, the largest memory cap. `None` for no units.
    pub fn combined(limits: impl IntoIterator<Item = CallLimits>) -> Option<CallLimits> {
        limits.into_iter().reduce(|a, b| CallLimits {
            deadline_ms: a.deadline_ms.saturating_add(b.deadline_ms),
            memory_limit_mb: a.memory_limit_mb.max(b.memory_limit_mb),
            max_output_kb: a.max_output_kb.saturating_add(b.max_output_kb),
        })
    }

    /// The output cap in bytes.
    pub fn max_output_bytes(&self) -> usize {
        usize::try_from(self.max_output_kb.saturating_mul(1024))
            .unwrap_or(usize::MAX)
            .min(policy_sdk::wire::codec::MAX_MESSAGE_BYTES)
    }
}

/// When a module's circuit breaker trips and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive sandbox faults (trap, deadline, memory or output cap, bad output) that
    /// open the breaker; 0 disables it.
    pub threshold: u32,
    /// How long the breaker stays open the first time; doubled at each trip in a row.
    pub base_backoff: Duration,
    /// Upper bound of the back-off.
    pub max_backoff: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            threshold: 5,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// A module's circuit breaker as [`LoadedModule::breaker`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BreakerStatus {
    /// True while calls are refused.
    pub open: bool,
    /// Milliseconds until the next trial call (0 when closed or due).
    pub retry_in_ms: u64,
    /// Sandbox faults in a row (reset by a successful call).
    pub consecutive_failures: u32,
    /// Times the breaker opened since the module was loaded.
    pub trips: u64,
    /// The most recent fault, if any.
    pub last_fault: Option<String>,
}

/// Per-module breaker state.
#[derive(Debug, Default)]
struct Breaker {
    consecutive: u32,
    open_until: Option<Instant>,
    /// Back-off of the next trip.
    next_backoff: Option<Duration>,
    trips: u64,
    last_fault: Option<String>,
}

impl Breaker {
    /// `Err` when the breaker is open: the call must not be made.
    fn admit(&self, now: Instant) -> Result<(), UnitFault> {
        match self.open_until {
            Some(until) if until > now => Err(UnitFault::CircuitOpen {
                failures: self.consecutive,
                retry_in_ms: (until - now).as_millis() as u64 + 1,
            }),
            _ => Ok(()),
        }
    }

    fn record(&mut self, config: &BreakerConfig, fault: Option<&UnitFault>, now: Instant) {
        match fault {
            None => {
                self.consecutive = 0;
                self.open_until = None;
                self.next_backoff = None;
            }
            Some(fault) if fault.is_sandbox_fault() => {
                self.consecutive = self.consecutive.saturating_add(1);
                self.last_fault = Some(fault.to_string());
                if config.threshold > 0 && self.consecutive >= config.threshold {
                    // Trips at the threshold, then again at every failed trial call.
                    let backoff = self
                        .next_backoff
                        .unwrap_or(config.base_backoff)
                        .min(config.max_backoff);
                    self.open_until = Some(now + backoff);
                    self.next_backoff = Some((backoff * 2).min(config.max_backoff));
                    self.trips += 1;
                }
            }
            Some(_) => {}
        }
    }

    fn status(&self, now: Instant) -> BreakerStatus {
        let open = self.open_until.is_some_and(|u| u > now);
        BreakerStatus {
            open,
            retry_in_ms: self
                .open_until
                .filter(|_| open)
                .map(|u| (u - now).as_millis() as u64)
                .unwrap_or(0),
            consecutive_failures: self.consecutive,
            trips: self.trips,
            last_fault: self.last_fault.clone(),
        }
    }
}

/// A policy module after validation: its manifest and how to run it. Shared as
/// `Arc<LoadedModule>`; a policy keeps the modules it resolved alive, so a decision in
/// flight finishes on the module version it started with.
pub struct LoadedModule {
    file: String,
    hash: String,
    manifest: Manifest,
    loaded_at: SystemTime,
    breaker: Mutex<Breaker>,
    backend: Backend,
}

enum Backend {
    Wasm(WasmBackend),
    Native(UnitSet),
}

struct WasmBackend {
    engine: Arc<EngineShared>,
    pre: InstancePre<StoreData>,
    pool: Mutex<Vec<Instance>>,
    stats: Arc<SyncCounters>,
}

/// Counters of snapshot syncs and instance churn of one module.
#[derive(Debug, Default)]
pub(crate) struct SyncCounters {
    full: AtomicU64,
    delta: AtomicU64,
    instances_created: AtomicU64,
    instances_discarded: AtomicU64,
    unit_calls: AtomicU64,
    batches: AtomicU64,
}

/// How a module's instances have been kept in sync, how many were replaced, and how often the
/// engine crossed into the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ModuleStats {
    /// Full snapshots sent.
    pub full_syncs: u64,
    /// Deltas sent.
    pub delta_syncs: u64,
    /// Instances created (including the one made at load).
    pub instances_created: u64,
    /// Instances thrown away after a fault.
    pub instances_discarded: u64,
    /// Calls of one unit (`wasmsched_call`).
    pub unit_calls: u64,
    /// Calls of several units in one crossing (`wasmsched_batch`).
    pub batches: u64,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("file", &self.file)
            .field("hash", &self.hash)
            .field("module", &self.manifest.module)
            .field("version", &self.manifest.version)
            .field("native", &matches!(self.backend, Backend::Native(_)))
            .finish()
    }
}

/// One live wasm instance with its sync state.
pub(crate) struct Instance {
    store: Store<StoreData>,
    fns: GuestFns,
    /// (cluster uid, epoch) the guest holds.
    synced: Option<(u64, u64)>,
    scratch: Vec<u8>,
    /// The thread that last checked it out: its memory is in that core's caches.
    last_thread: Option<std::thread::ThreadId>,
}

impl Instance {
    pub(crate) fn new(
        engine: &EngineShared,
        pre: &InstancePre<StoreData>,
        file: &str,
        limits: CallLimits,
    ) -> Result<Self, UnitFault> {
        let mut store = Store::new(&engine.engine, StoreData::new(Arc::from(file), limits));
        store.limiter(|data| &mut data.limiter);
        store.set_epoch_deadline(limits.deadline_ms.max(1));
        let instance = pre.instantiate(&mut store).map_err(|e| {
            if store.data().limiter.hit {
                UnitFault::MemoryCap {
                    mb: limits.memory_limit_mb,
                }
            } else if matches!(
                e.downcast_ref::<wasmtime::Trap>(),
                Some(wasmtime::Trap::Interrupt)
            ) {
                // A start function that loops: the deadline, like any call that does.
                UnitFault::Deadline {
                    ms: limits.deadline_ms,
                }
            } else {
                UnitFault::Trap(format!("instantiation failed: {}", abi::one_line(&e)))
            }
        })?;
        let fns = GuestFns::new(&mut store, &instance)
            .map_err(|e| UnitFault::BadOutput(format!("{e:#}")))?;
        Ok(Self {
            store,
            fns,
            synced: None,
            scratch: Vec::new(),
            last_thread: None,
        })
    }

    fn set_limits(&mut self, limits: CallLimits) {
        let data = self.store.data_mut();
        data.limiter.max_bytes = (limits.memory_limit_mb as usize) << 20;
        data.limiter.hit = false;
        data.deadline_ms = limits.deadline_ms;
        data.max_output_bytes = limits.max_output_bytes();
        self.store.set_epoch_deadline(limits.deadline_ms.max(1));
    }

    pub(crate) fn abi_version(&mut self) -> Result<u32, UnitFault> {
        self.fns.abi_version(&mut self.store)
    }

    pub(crate) fn manifest(&mut self) -> Result<Option<Manifest>, UnitFault> {
        self.fns.manifest(&mut self.store)
    }

    /// Whether this instance holds an epoch of `view`'s cluster at or before the view's
    /// (so a delta, or nothing, brings it there).
    fn can_catch_up(&self, view: &ClusterView) -> bool {
        self.synced
            .is_some_and(|(uid, epoch)| uid == view.uid() && epoch <= view.epoch())
    }

    /// Sends raw sync bytes; used at load for the smoke test.
    pub(crate) fn sync_raw(&mut self, bytes: &[u8]) -> Result<SyncResponse, UnitFault> {
        self.fns.exchange(&mut self.store, bytes, Entry::Sync)
    }

    /// Sends one unit call without syncing first; used at load for the smoke test.
    pub(crate) fn call_raw(&mut self, call: &Call<'_>) -> Result<CallResponse, UnitFault> {
        let bytes = codec::encode(call)
            .map_err(|e| UnitFault::BadOutput(format!("cannot encode the request: {e}")))?;
        self.fns.exchange(&mut self.store, &bytes, Entry::Call)
    }

    /// Brings the guest to the view's epoch: a delta when it holds an earlier epoch of the
    /// same cluster and the cluster still has the changes, a full snapshot otherwise.
    fn ensure_synced(&mut self, view: &ClusterView, stats: &SyncCounters) -> Result<(), UnitFault> {
        let target = (view.uid(), view.epoch());
        if self.synced == Some(target) {
            return Ok(());
        }
        let from = self
            .synced
            .filter(|(uid, _)| *uid == view.uid())
            .map(|(_, epoch)| epoch);
        // Whatever happens from here on, the guest holds the target or nothing known.
        self.synced = None;
        let mut response = None;
        if let Some(bytes) = from.and_then(|from| abi::delta_message(view, from)) {
            stats.delta.fetch_add(1, Ordering::Relaxed);
            let answer = self
                .fns
                .exchange::<SyncResponse>(&mut self.store, &bytes, Entry::Sync)?;
            // A guest that could not take the delta gets the full snapshot.
            response = Some(answer).filter(|r| matches!(r, SyncResponse::Synced { .. }));
        }
        let response = match response {
            Some(response) => response,
            None => {
                stats.full.fetch_add(1, Ordering::Relaxed);
                self.send_full(view)?
            }
        };
        match response {
            SyncResponse::Synced { epoch } if epoch == view.epoch() => {
                self.synced = Some(target);
                Ok(())
            }
            SyncResponse::Synced { epoch } => Err(UnitFault::BadOutput(format!(
                "guest synced to epoch {epoch}, expected {}",
                view.epoch()
            ))),
            SyncResponse::Receiving { hosts } => Err(UnitFault::BadOutput(format!(
                "guest still waits for hosts after the end of the full snapshot (it holds {hosts})"
            ))),
            SyncResponse::Failed(message) => Err(UnitFault::GuestError(format!(
                "snapshot sync failed: {message}"
            ))),
        }
    }

    /// Sends the view's full snapshot, encoded once per epoch for every instance: a large
    /// one in parts, encoded on a thread of its own while the guest decodes the parts
    /// already made. Returns the guest's answer to the last part sent.
    fn send_full(&mut self, view: &ClusterView) -> Result<SyncResponse, UnitFault> {
        let (full, made_here) = view.full_encoding(FullSnapshot::default);
        let snapshot = view.snapshot();
        std::thread::scope(|scope| {
            if made_here && FullSnapshot::in_parts(snapshot) {
                scope.spawn(|| full.encode(snapshot));
            } else if made_here {
                full.encode(snapshot);
            }
            let mut next = full.part(0);
            let mut sent = 0;
            while let Some(part) = next {
                let response =
                    self.fns
                        .exchange::<SyncResponse>(&mut self.store, &part, Entry::Sync)?;
                sent += 1;
                next = full.part(sent);
                match response {
                    SyncResponse::Receiving { .. } if next.is_some() => {}
                    SyncResponse::Failed(_) => return Ok(response),
                    response if next.is_none() => return Ok(response),
                    other => {
                        return Err(UnitFault::BadOutput(format!(
                            "guest answered {other:?} to part {sent} of a full snapshot"
                        )))
                    }
                }
            }
            Err(UnitFault::BadOutput(
                "no full snapshot to send: its encoding failed".into(),
            ))
        })
    }

    /// Syncs the guest to `view`, then sends `request` (a unit call or a batch) to `entry`
    /// and decodes the reply with `decode`.
    fn send<T: serde::Serialize, R>(
        &mut self,
        view: &ClusterView,
        request: &T,
        entry: Entry,
        stats: &SyncCounters,
        decode: fn(&[u8]) -> Result<R, codec::CodecError>,
    ) -> Result<R, UnitFault> {
        self.ensure_synced(view, stats)?;
        let mut scratch = std::mem::take(&mut self.scratch);
        codec::encode_into(request, &mut scratch)
            .map_err(|e| UnitFault::BadOutput(format!("cannot encode the request: {e}")))?;
        let result = self
            .fns
            .exchange_with(&mut self.store, &scratch, entry, decode);
        self.scratch = scratch;
        result
    }
}

impl LoadedModule {
    pub(crate) fn new_wasm(
        file: String,
        hash: String,
        manifest: Manifest,
        engine: Arc<EngineShared>,
        pre: InstancePre<StoreData>,
        first: Instance,
    ) -> Self {
        Self {
            file,
            hash,
            loaded_at: SystemTime::now(),
            breaker: Mutex::default(),
            backend: Backend::Wasm(WasmBackend {
                engine,
                pre,
                pool: Mutex::new(vec![first]),
                stats: Arc::new(SyncCounters {
                    instances_created: AtomicU64::new(1),
                    ..Default::default()
                }),
            }),
            manifest,
        }
    }

    pub(crate) fn new_native(file: String, units: UnitSet) -> Self {
        Self {
            file,
            hash: String::from("native"),
            manifest: units.manifest(),
            loaded_at: SystemTime::now(),
            breaker: Mutex::default(),
            backend: Backend::Native(units),
        }
    }

    /// The module's imports as `(import module, name)` pairs, in declaration order (a
    /// loaded module imports only from the host's own import module); empty for native
    /// units.
    pub fn imports(&self) -> Vec<(String, String)> {
        match &self.backend {
            Backend::Wasm(wasm) => wasm
                .pre
                .module()
                .imports()
                .map(|i| (i.module().to_string(), i.name().to_string()))
                .collect(),
            Backend::Native(_) => Vec::new(),
        }
    }

    /// File name (or label) the module was loaded from.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The hash [`LoadedModule::hash`] reports for a module made of `bytes`.
    pub fn hash_of(bytes: &[u8]) -> String {
        crate::engine::cache::sha256_hex(bytes)
    }

    /// SHA-256 of the module bytes (hex), or `native`.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// When the module was loaded (validated and ready).
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// The state of the module's circuit breaker.
    pub fn breaker(&self) -> BreakerStatus {
        self.breaker.lock().unwrap().status(Instant::now())
    }

    /// The module's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The descriptor of unit `index`.
    pub fn unit(&self, index: u32) -> Option<&UnitDescriptor> {
        self.manifest.units.get(index as usize)
    }

    /// True for units compiled into the host (no sandbox).
    pub fn is_native(&self) -> bool {
        matches!(self.backend, Backend::Native(_))
    }

    /// Idle instances in the pool (wasm only).
    pub fn idle_instances(&self) -> usize {
        match &self.backend {
            Backend::Wasm(w) => w.pool.lock().unwrap().len(),
            Backend::Native(_) => 0,
        }
    }

    /// Sync and instance counters (all zero for native modules).
    pub fn stats(&self) -> ModuleStats {
        match &self.backend {
            Backend::Wasm(w) => ModuleStats {
                full_syncs: w.stats.full.load(Ordering::Relaxed),
                delta_syncs: w.stats.delta.load(Ordering::Relaxed),
                instances_created: w.stats.instances_created.load(Ordering::Relaxed),
                instances_discarded: w.stats.instances_discarded.load(Ordering::Relaxed),
                unit_calls: w.stats.unit_calls.load(Ordering::Relaxed),
                batches: w.stats.batches.load(Ordering::Relaxed),
            },
            Backend::Native(_) => ModuleStats::default(),
        }
    }

    /// Whether `count` calls of this module on `view` at once would start by sending a whole
    /// snapshot: fewer than `count` idle instances hold an epoch of the view's cluster they
    /// can catch up from (see [`take_instance`]). With `count` 1 an empty pool says nothing
    /// (its instances are busy with other decisions).
    pub(crate) fn needs_full_sync(&self, view: &ClusterView, count: usize) -> bool {
        match &self.backend {
            Backend::Wasm(wasm) => {
                let pool = wasm.pool.lock().unwrap();
                let ready = pool.iter().filter(|i| i.can_catch_up(view)).count();
                ready < count && (count > 1 || !pool.is_empty())
            }
            Backend::Native(_) => false,
        }
    }

    /// Brings `count` instances of this module (idle ones, else new ones) to `view`'s epoch
    /// and puts them back in the pool, so that the calls of a decision find them synced. Lets
    /// the engine sync several modules (or instances) at once on several threads. A fault is
    /// not reported here: the instance is dropped and the decision's own call meets it.
    pub(crate) fn prepare(&self, view: &ClusterView, limits: CallLimits, count: usize) {
        let Backend::Wasm(wasm) = &self.backend else {
            return;
        };
        let mut taken = Vec::with_capacity(count);
        for _ in 0..count {
            match self.check_out(wasm, view, limits) {
                Ok(instance) => taken.push(instance),
                Err(_) => break,
            }
        }
        let sync = |mut instance: Instance| {
            let synced = instance.ensure_synced(view, &wasm.stats);
            self.check_in(wasm, instance, synced.as_ref().err());
        };
        let last = taken.pop();
        std::thread::scope(|scope| {
            for instance in taken {
                scope.spawn(move || sync(instance));
            }
            if let Some(instance) = last {
                sync(instance);
            }
        });
    }

    /// Runs a filter over the call's candidates: its verdicts (compact).
    pub(crate) fn filter(
        &self,
        view: &ClusterView,
        call: Call<'_>,
        limits: CallLimits,
    ) -> Result<Verdicts, UnitFault> {
        self.call(view, call, limits, "verdicts", |r| match r {
            CallResponse::Verdicts(v) => match v.check() {
                Ok(()) => Taken::Answer {
                    count: Some(v.len()),
                    value: v,
                },
                Err(why) => Taken::Broken(why),
            },
            other => Taken::Other(other),
        })
    }

    /// Runs a weight over the call's candidates: one penalty per candidate.
    pub(crate) fn weigh(
        &self,
        view: &ClusterView,
        call: Call<'_>,
        limits: CallLimits,
    ) -> Result<Vec<Penalty>, UnitFault> {
        let candidates = call.candidates.len();
        self.call(view, call, limits, "penalties", |r| match r {
            CallResponse::Penalties(p) => Taken::Answer {
                count: Some(p.len()),
                value: p,
            },
            CallResponse::SamePenalty(p) => Taken::Answer {
                count: None,
                value: vec![p; candidates],
            },
            other => Taken::Other(other),
        })
    }

    /// Runs a balance unit.
    pub(crate) fn balance(
        &self,
        view: &ClusterView,
        call: Call<'_>,
        limits: CallLimits,
    ) -> Result<Vec<BalanceAction>, UnitFault> {
        self.call(view, call, limits, "balance actions", |r| match r {
            CallResponse::Actions(a) => Taken::Answer {
                count: None,
                value: a,
            },
            other => Taken::Other(other),
        })
    }

    /// Runs several filters and weights of this module over one VM in one crossing (see
    /// [`Batch`]) and checks every answer's shape: each filter's verdicts over the candidates
    /// the batch's earlier filters passed, each weight's penalties over those all of them
    /// passed. A unit's own `Failed` answer is kept as that unit's error. Anything else
    /// wrong (a trap, the deadline, a malformed answer, an open breaker) is the batch's
    /// fault, attributed to no unit: the caller runs the units one by one instead, which
    /// reports each unit's fault as its own.
    pub(crate) fn batch(
        &self,
        view: &ClusterView,
        batch: Batch<'_>,
        limits: CallLimits,
    ) -> Result<BatchAnswers, UnitFault> {
        let response = match &self.backend {
            Backend::Native(units) => {
                units.evaluate_batch(view.snapshot(), Some(view.derived()), batch)
            }
            Backend::Wasm(wasm) => {
                self.breaker.lock().unwrap().admit(Instant::now())?;
                let mut instance = self.check_out(wasm, view, limits)?;
                wasm.stats.batches.fetch_add(1, Ordering::Relaxed);
                let result = instance
                    .send(
                        view,
                        &batch,
                        Entry::Batch,
                        &wasm.stats,
                        BatchResponse::decode,
                    )
                    .and_then(|response| BatchAnswers::of(response, &BatchShape::of(&batch)));
                let fault = match &result {
                    // A unit's own failure: the guest may hold a state we did not expect.
                    Ok(answers) if answers.any_failed() => {
                        Some(UnitFault::GuestError("a unit of the batch failed".into()))
                    }
                    Ok(_) => None,
                    Err(fault) => Some(fault.clone()),
                };
                self.check_in(wasm, instance, fault.as_ref());
                if result.is_ok() {
                    self.breaker
                        .lock()
                        .unwrap()
                        .record(&wasm.engine.breaker, None, Instant::now());
                }
                return result;
            }
        };
        BatchAnswers::of(response, &BatchShape::of(&batch))
    }

    /// Runs one unit call and checks the answer's shape (the expected variant and, for
    /// filters and weights, one result per candidate). A broken guest (trap, deadline,
    /// memory cap, bad output) loses its instance; the next call gets a fresh one.
    fn call<R>(
        &self,
        view: &ClusterView,
        call: Call<'_>,
        limits: CallLimits,
        expected: &str,
        take: impl FnOnce(CallResponse) -> Taken<R>,
    ) -> Result<R, UnitFault> {
        let candidates = call.candidates.len();
        let shape = |response: CallResponse| match response {
            CallResponse::Failed(message) => Err(UnitFault::GuestError(message)),
            response => match take(response) {
                Taken::Answer { value, count } if count.is_none_or(|n| n == candidates) => {
                    Ok(value)
                }
                Taken::Answer { count, .. } => Err(UnitFault::BadOutput(format!(
                    "{} {expected} for {candidates} candidate hosts",
                    count.unwrap_or_default()
                ))),
                Taken::Broken(why) => Err(UnitFault::BadOutput(why)),
                Taken::Other(other) => Err(UnitFault::BadOutput(format!(
                    "expected {expected}, got {}",
                    variant(&other)
                ))),
            },
        };
        let wasm = match &self.backend {
            Backend::Native(units) => {
                return shape(units.evaluate_indexed(view.snapshot(), Some(view.derived()), call))
            }
            Backend::Wasm(wasm) => wasm,
        };
        self.breaker.lock().unwrap().admit(Instant::now())?;
        let result = self.call_wasm(wasm, view, call, limits, shape);
        self.breaker.lock().unwrap().record(
            &wasm.engine.breaker,
            result.as_ref().err(),
            Instant::now(),
        );
        result
    }

    /// [`LoadedModule::call`] on a pooled (or fresh) instance.
    fn call_wasm<R>(
        &self,
        wasm: &WasmBackend,
        view: &ClusterView,
        call: Call<'_>,
        limits: CallLimits,
        shape: impl FnOnce(CallResponse) -> Result<R, UnitFault>,
    ) -> Result<R, UnitFault> {
        let mut instance = self.check_out(wasm, view, limits)?;
        wasm.stats.unit_calls.fetch_add(1, Ordering::Relaxed);
        let result = instance
            .send(view, &call, Entry::Call, &wasm.stats, codec::decode)
            .and_then(shape);
        self.check_in(wasm, instance, result.as_ref().err());
        result
    }

    /// An idle instance for a call on `view` (see [`take_instance`]), else a new one, with
    /// `limits` set.
    fn check_out(
        &self,
        wasm: &WasmBackend,
        view: &ClusterView,
        limits: CallLimits,
    ) -> Result<Instance, UnitFault> {
        let pooled = take_instance(&mut wasm.pool.lock().unwrap(), view);
        let mut instance = match pooled {
            Some(instance) => instance,
            None => {
                wasm.stats.instances_created.fetch_add(1, Ordering::Relaxed);
                Instance::new(&wasm.engine, &wasm.pre, &self.file, limits)?
            }
        };
        instance.set_limits(limits);
        instance.last_thread = Some(std::thread::current().id());
        Ok(instance)
    }

    /// Puts an instance back after its work ended with `fault` (or none): back in the pool,
    /// unsynced after a guest error (the guest is healthy but may hold a state we did not
    /// expect), discarded after any other fault.
    fn check_in(&self, wasm: &WasmBackend, mut instance: Instance, fault: Option<&UnitFault>) {
        match fault {
            None => self.release(wasm, instance),
            Some(UnitFault::GuestError(_)) => {
                instance.synced = None;
                self.release(wasm, instance);
            }
            Some(_) => {
                wasm.stats
                    .instances_discarded
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn release(&self, wasm: &WasmBackend, instance: Instance) {
        let mut pool = wasm.pool.lock().unwrap();
        if pool.len() < MAX_IDLE_INSTANCES {
            pool.push(instance);
        }
    }
}

/// The idle instance a call on `view` should use: of those holding an epoch of the view's
/// cluster they can catch up from with a delta (at or before the view's epoch), the one this
/// thread used last, else the most recent; else the most recently used one (which needs the
/// whole snapshot anyway). With several threads deciding on one cluster, views of different
/// epochs come and go, and an instance ahead of a view could only be brought back with a
/// full snapshot. Keeping each thread on its own instance keeps the guest's memory in that
/// thread's core caches: handed from thread to thread, every decision started cache-cold
/// (two threads' mass start ran its per-host loops 50-80% slower than one thread's).
fn take_instance(pool: &mut Vec<Instance>, view: &ClusterView) -> Option<Instance> {
    let me = std::thread::current().id();
    let best = pool
        .iter()
        .enumerate()
        .filter(|(_, i)| i.can_catch_up(view))
        .max_by_key(|(_, i)| {
            (
                i.last_thread == Some(me),
                i.synced.map_or(0, |(_, epoch)| epoch),
            )
        })
        .map(|(position, _)| position);
    match best {
        Some(position) => Some(pool.remove(position)),
        None => pool.pop(),
    }
}

/// The checked answers of a [`LoadedModule::batch`]: per filter its verdicts (over the
/// candidates it was given) or its own failure message; per weight its penalties (over the
/// candidates every filter of the batch passed) or its failure message.
#[derive(Debug)]
pub(crate) struct BatchAnswers {
    pub filters: Vec<Result<Verdicts, String>>,
    pub weights: Vec<Result<Vec<Penalty>, String>>,
}

/// What a batch asked for: its numbers of filters, weights and candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchShape {
    pub filters: usize,
    pub weights: usize,
    pub candidates: usize,
}

impl BatchShape {
    /// The shape of `batch`.
    fn of(batch: &Batch<'_>) -> Self {
        Self {
            filters: batch.filters.len(),
            weights: batch.weights.len(),
            candidates: batch.candidates.len(),
        }
    }
}

impl BatchAnswers {
    /// Checks a batch response against the batch it answers; `Err` when it is malformed.
    pub(crate) fn of(response: BatchResponse, batch: &BatchShape) -> Result<Self, UnitFault> {
        let (filters, weights) = match response {
            BatchResponse::Answers { filters, weights } => (filters, weights),
            BatchResponse::Failed(message) => return Err(UnitFault::GuestError(message)),
        };
        if filters.len() != batch.filters || weights.len() != batch.weights {
            return Err(UnitFault::BadOutput(format!(
                "batch of {} filters and {} weights answered with {} and {}",
                batch.filters,
                batch.weights,
                filters.len(),
                weights.len()
            )));
        }
        let mut left = batch.candidates;
        let mut checked = Self {
            filters: Vec::with_capacity(filters.len()),
            weights: Vec::with_capacity(weights.len()),
        };
        for answer in filters {
            checked.filters.push(match answer {
                CallResponse::Verdicts(v) if v.len as usize == left => {
                    v.check().map_err(UnitFault::BadOutput)?;
                    left -= v.rejected.len();
                    Ok(v)
                }
                CallResponse::Verdicts(v) => {
                    return Err(UnitFault::BadOutput(format!(
                        "{} verdicts for {left} candidate hosts",
                        v.len
                    )))
                }
                CallResponse::Failed(message) => Err(message),
                other => {
                    return Err(UnitFault::BadOutput(format!(
                        "expected verdicts, got {}",
                        variant(&other)
                    )))
                }
            });
        }
        for answer in weights {
            checked.weights.push(match answer {
                CallResponse::Penalties(p) if p.len() == left => Ok(p),
                CallResponse::Penalties(p) => {
                    return Err(UnitFault::BadOutput(format!(
                        "{} penalties for {left} candidate hosts",
                        p.len()
                    )))
                }
                CallResponse::SamePenalty(p) => Ok(vec![p; left]),
                CallResponse::Failed(message) => Err(message),
                other => {
                    return Err(UnitFault::BadOutput(format!(
                        "expected penalties, got {}",
                        variant(&other)
                    )))
                }
            });
        }
        Ok(checked)
    }

    fn any_failed(&self) -> bool {
        self.filters.iter().any(Result::is_err) || self.weights.iter().any(Result::is_err)
    }
}

/// What a unit call's answer turned out to be.
enum Taken<R> {
    /// The expected variant; `count` results, to match the candidates when it is `Some`.
    Answer { value: R, count: Option<usize> },
    /// The expected variant, malformed (why).
    Broken(String),
    /// Another variant.
    Other(CallResponse),
}

/// Name of a response variant, for error messages.
fn variant(response: &CallResponse) -> &'static str {
    match response {
        CallResponse::Verdicts(_) => "verdicts",
        CallResponse::Penalties(_) => "penalties",
        CallResponse::Actions(_) => "balance actions",
        CallResponse::SamePenalty(_) => "one penalty for all",
        CallResponse::Failed(_) => "a failure",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::runtime::Runtime;
    use crate::state::Cluster;
    use policy_sdk::testing::{host, snapshot};

    /// Of two idle instances a thread can catch up from, it gets back the one it used last
    /// (its memory is in that core's caches), even when another thread's is more recent; a
    /// thread that used none gets the most recent.
    #[test]
    fn a_thread_gets_back_the_instance_it_used_last() {
        let runtime = Runtime::builder()
            .cache_dir(None)
            .build()
            .expect("builtins load");
        let module = runtime
            .modules()
            .into_iter()
            .find(|m| m.manifest().module == "scheduling")
            .expect("the scheduling module");
        let Backend::Wasm(wasm) = &module.backend else {
            panic!("a wasm module");
        };
        let cluster = Cluster::new(snapshot().host(host("a")).build(), "<test>").unwrap();
        let older = cluster.view();
        cluster.set_time(1).unwrap();
        let view = cluster.view();
        let limits = CallLimits {
            deadline_ms: 1_000,
            memory_limit_mb: 256,
            max_output_kb: 1_024,
        };
        // Each instance checked out on its own thread: `mine` on this one.
        let mut mine = module.check_out(wasm, &view, limits).unwrap();
        let (mut other, other_thread) = std::thread::scope(|s| {
            s.spawn(|| {
                let instance = module.check_out(wasm, &view, limits).unwrap();
                (instance, std::thread::current().id())
            })
            .join()
            .unwrap()
        });
        mine.synced = Some((view.uid(), older.epoch()));
        other.synced = Some((view.uid(), view.epoch()));
        let mut pool = vec![mine, other];
        let taken = take_instance(&mut pool, &view).unwrap();
        assert_eq!(taken.last_thread, Some(std::thread::current().id()));
        assert_eq!(taken.synced, Some((view.uid(), older.epoch())));
        pool.push(taken);
        let taken = std::thread::scope(|s| s.spawn(|| take_instance(&mut pool, &view)).join())
            .unwrap()
            .unwrap();
        assert_eq!(
            taken.last_thread,
            Some(other_thread),
            "a new thread: the most recent"
        );
    }
}
