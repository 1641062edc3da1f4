//! Writing policy units: one trait per unit kind, a [`Context`] with typed parameters and
//! logging, and [`UnitSet`], the table that [`export_units!`](crate::export_units) builds.
//!
//! The same unit code runs natively (tests, benchmarks) and in wasm: [`UnitSet::evaluate`]
//! is the single dispatch both use.

#[doc(hidden)]
pub mod exports;
pub mod heap;

use crate::model::index::{available_hugepages, CpuFlagIndex, FlagMask, KeptWords, SnapshotIndex};
use crate::model::manifest::{Manifest, ParamSpec, ParamValue, UnitDescriptor, UnitKind};
use crate::model::topology::CpuCounts;
use crate::model::verdict::{BalanceAction, Penalty, Verdict, Verdicts};
use crate::model::{Host, HostIndex, Snapshot, Vm};
use crate::wire::abi::{Batch, BatchResponse, Call, CallResponse, LogLevel};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// What a unit can see and use during one call: the snapshot, its parameters, logging.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    snapshot: &'a Snapshot,
    params: &'a [(String, ParamValue)],
    unit: &'a str,
    index: IndexRef<'a>,
    details: bool,
}

/// Where a [`Context`] gets the snapshot's derived indexes from.
#[derive(Clone, Copy)]
enum IndexRef<'a> {
    /// No index (unit tests): units compare names.
    None,
    /// Kept by the caller (the host's cluster).
    Ready(&'a SnapshotIndex),
    /// Built on first use and kept by the caller (a guest: only modules whose units read it
    /// pay for building it after a full snapshot).
    Lazy(&'a core::cell::OnceCell<SnapshotIndex>),
}

impl<'a> IndexRef<'a> {
    /// An index the caller keeps, or none.
    fn of(index: Option<&'a SnapshotIndex>) -> Self {
        match index {
            Some(index) => IndexRef::Ready(index),
            None => IndexRef::None,
        }
    }
}

/// The pCPU counts kept in a snapshot's index ([`Context::kept_cpu_counts`]).
#[derive(Debug, Clone, Copy)]
pub struct KeptCounts<'a>(KeptWords<'a>);

impl KeptCounts<'_> {
    /// Host `index`'s counts if the index keeps them already; `None` when there is no index
    /// or they were not counted yet ([`Context::cpu_counts`] counts them).
    #[inline(always)]
    pub fn get(&self, index: HostIndex) -> Option<CpuCounts> {
        self.0.counts(index)
    }
}

/// The available hugepages of one page size kept in a snapshot's index
/// ([`Context::kept_hugepages`]).
#[derive(Debug, Clone, Copy)]
pub struct KeptPages<'a>(KeptWords<'a>);

impl KeptPages<'_> {
    /// Host `index`'s available pages if the index keeps them already; `None` when there is
    /// no index or they were not counted yet ([`Context::available_hugepages`] counts them).
    #[inline(always)]
    pub fn get(&self, index: HostIndex) -> Option<u64> {
        self.0.get(index)
    }
}

/// The unavailable-pCPU masks kept in a snapshot's index
/// ([`Context::kept_unavailable_pcpus`]).
#[derive(Debug, Clone, Copy)]
pub struct KeptMasks<'a>(KeptWords<'a>);

impl KeptMasks<'_> {
    /// Host `index`'s mask if the index keeps it already; `None` when there is no index or
    /// it was not worked out yet ([`Context::unavailable_pcpus`] works it out).
    #[inline(always)]
    pub fn get(&self, index: HostIndex) -> Option<u64> {
        self.0.get(index)
    }
}

/// Hosts' memory room ([`Host::memory_room_mb`]) through the snapshot's index
/// ([`Context::memory_rooms`]).
#[derive(Debug, Clone, Copy)]
pub struct MemoryRooms<'a> {
    /// One word per host of the index; none without one.
    kept: KeptWords<'a>,
    hosts: &'a [Host],
}

impl MemoryRooms<'_> {
    /// Host `index`'s memory room: its kept word, else worked out from the host now (and
    /// kept, when there is an index). Inline, with no call: for a unit's fast pass loop.
    #[inline(always)]
    pub fn get(&self, index: HostIndex) -> u64 {
        let i = index as usize;
        self.kept.get_or_keep(i, || self.hosts[i].memory_room_mb())
    }
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("unit", &self.unit)
            .field("epoch", &self.snapshot.epoch)
            .field("params", &self.params)
            .finish()
    }
}

impl<'a> Context<'a> {
    /// A context over a snapshot with the given parameters (for native tests and hosts).
    pub fn new(snapshot: &'a Snapshot, params: &'a [(String, ParamValue)], unit: &'a str) -> Self {
        Self {
            snapshot,
            params,
            unit,
            index: IndexRef::None,
            details: true,
        }
    }

    /// The same context for a caller that does not read reject details (a summary
    /// decision): [`Context::reject`] then leaves them empty.
    pub fn without_details(mut self) -> Self {
        self.details = false;
        self
    }

    /// Whether the caller reads reject details. A unit that writes its details with
    /// [`Context::reject`] need not ask.
    #[inline]
    pub fn wants_details(&self) -> bool {
        self.details
    }

    /// A rejection with a stable `code` and the detail `detail` writes, called only when
    /// the caller reads details: a summary decision (which counts rejections by unit and
    /// code) costs no formatting. The same verdict as [`Verdict::reject`] otherwise.
    ///
    /// ```
    /// # use policy_sdk::{Context, Verdict};
    /// # let snapshot = policy_sdk::Snapshot::default();
    /// let ctx = Context::new(&snapshot, &[], "memory");
    /// let (free, need) = (1024, 4096);
    /// let verdict = ctx.reject("not_enough_memory", || format!("{free} MiB free, {need} needed"));
    /// assert_eq!(verdict, Verdict::reject("not_enough_memory", "1024 MiB free, 4096 needed"));
    /// let summary = Context::new(&snapshot, &[], "memory").without_details();
    /// assert_eq!(
    ///     summary.reject("not_enough_memory", || unreachable!("not written")),
    ///     Verdict::reject("not_enough_memory", ""),
    /// );
    /// ```
    #[inline]
    pub fn reject(
        &self,
        code: impl Into<alloc::borrow::Cow<'static, str>>,
        detail: impl FnOnce() -> String,
    ) -> Verdict {
        Verdict::reject(
            code,
            if self.details {
                detail()
            } else {
                String::new()
            },
        )
    }

    /// The same context with the snapshot's derived indexes (what the runtime and the
    /// guest glue pass; see [`crate::model::index`]).
    pub fn with_index(mut self, index: &'a SnapshotIndex) -> Self {
        self.index = IndexRef::Ready(index);
        self
    }

    /// Every host's CPU flags as bit sets, when the caller keeps the index for this
    /// snapshot; `None` otherwise (compare flag names then).
    #[inline]
    pub fn cpu_flags(&self) -> Option<&'a CpuFlagIndex> {
        Some(self.index()?.cpu_flags(self.snapshot))
    }

    /// The cluster's CPU flags (`snapshot().cluster.cpu_flags`, what a VM of the cluster's
    /// CPU model needs) resolved against [`Context::cpu_flags`], kept in the index from the
    /// first read until the flags or the cluster's settings change; `None` without an
    /// index.
    pub fn cluster_flag_mask(&self) -> Option<&'a FlagMask> {
        Some(self.index()?.cluster_flag_mask(self.snapshot))
    }

    /// Host `index`'s pCPU counts (see [`CpuCounts`]): kept in the snapshot's index when the
    /// caller keeps one, else counted now from the host's CPU lists (the same numbers).
    #[inline]
    pub fn cpu_counts(&self, index: HostIndex) -> CpuCounts {
        let host = self.host(index);
        match self.index() {
            Some(i) => i.cpu_counts(index, host),
            None => CpuCounts::of(host),
        }
    }

    /// A reader of the pCPU counts the snapshot's index keeps, resolved once for a unit's
    /// loop: [`KeptCounts::get`] is an inline read that never counts (see
    /// [`Verdicts::judge`](crate::Verdicts::judge)).
    #[inline]
    pub fn kept_cpu_counts(&self) -> KeptCounts<'a> {
        KeptCounts(
            self.index()
                .map(SnapshotIndex::kept_words)
                .unwrap_or_default(),
        )
    }

    /// The pCPUs of host `index` that a pinning cannot take, folded into one word (see
    /// [`unavailable_pcpus`](crate::model::topology::unavailable_pcpus)): kept in the
    /// snapshot's index when the caller keeps one, else worked out now (the same word).
    #[inline]
    pub fn unavailable_pcpus(&self, index: HostIndex) -> u64 {
        let host = self.host(index);
        match self.index() {
            Some(i) => i.unavailable_pcpus(index, host),
            None => crate::model::topology::unavailable_pcpus(host),
        }
    }

    /// A reader of the unavailable-pCPU masks the snapshot's index keeps, resolved once for
    /// a unit's loop: [`KeptMasks::get`] is an inline read that never works one out.
    #[inline]
    pub fn kept_unavailable_pcpus(&self) -> KeptMasks<'a> {
        KeptMasks(
            self.index()
                .map(SnapshotIndex::kept_unavailable_pcpus)
                .unwrap_or_default(),
        )
    }

    /// A reader of the hosts' memory room ([`Host::memory_room_mb`]), resolved once for a
    /// unit's loop: kept in the snapshot's index when the caller keeps one (each host's
    /// worked out by the first read, until the host, its pending aggregate or its usage
    /// changes), else worked out on every read.
    #[inline]
    pub fn memory_rooms(&self) -> MemoryRooms<'a> {
        MemoryRooms {
            kept: self
                .index()
                .map(SnapshotIndex::memory_room_words)
                .unwrap_or_default(),
            hosts: &self.snapshot.hosts,
        }
    }

    /// The hugepages of `size_kb` KiB host `index` can still give a VM (its free pages of
    /// that size minus its pending ones, see [`available_hugepages`]): kept in the
    /// snapshot's index when the caller keeps one, else counted now (the same number).
    #[inline]
    pub fn available_hugepages(&self, index: HostIndex, size_kb: u64) -> u64 {
        let host = self.host(index);
        match self.index() {
            Some(i) => i.available_hugepages(index, host, size_kb),
            None => available_hugepages(host, size_kb),
        }
    }

    /// A reader of the available hugepages of `size_kb` KiB the snapshot's index keeps,
    /// resolved once for a unit's loop: [`KeptPages::get`] is an inline read that never
    /// counts (see [`Verdicts::judge`](crate::Verdicts::judge)).
    #[inline]
    pub fn kept_hugepages(&self, size_kb: u64) -> KeptPages<'a> {
        KeptPages(
            self.index()
                .map(|i| i.kept_hugepages(size_kb))
                .unwrap_or_default(),
        )
    }

    /// The snapshot's derived indexes, built now if the caller builds them on first use;
    /// `None` without one, or when it is not this snapshot's (it covers another number of
    /// hosts): every reader then works its answer out from the hosts.
    #[inline]
    fn index(&self) -> Option<&'a SnapshotIndex> {
        let index = match self.index {
            IndexRef::None => return None,
            IndexRef::Ready(index) => index,
            IndexRef::Lazy(cell) => cell.get_or_init(|| SnapshotIndex::build(self.snapshot)),
        };
        index.covers(self.snapshot.hosts.len()).then_some(index)
    }

    /// The cluster snapshot.
    #[inline]
    pub fn snapshot(&self) -> &'a Snapshot {
        self.snapshot
    }

    /// The host at a candidate index. Candidate indices come from the host and are in range.
    #[inline]
    pub fn host(&self, index: HostIndex) -> &'a Host {
        &self.snapshot.hosts[index as usize]
    }

    /// The name of the unit being called.
    pub fn unit_name(&self) -> &'a str {
        self.unit
    }

    fn param(&self, name: &str) -> &'a ParamValue {
        match self.params.iter().find(|(n, _)| n == name) {
            Some((_, v)) => v,
            None => panic!(
                "unit {:?} read parameter {name:?}, which it does not declare",
                self.unit
            ),
        }
    }

    /// An integer parameter. Panics (a trap, reported with this message) if the unit did not
    /// declare `name` as an integer: the host always sends every declared parameter.
    pub fn int(&self, name: &str) -> i64 {
        match self.param(name) {
            ParamValue::Int(v) => *v,
            other => panic!("parameter {name:?} is {other:?}, not an integer"),
        }
    }

    /// A float parameter (see [`Context::int`]).
    pub fn float(&self, name: &str) -> f64 {
        match self.param(name) {
            ParamValue::Float(v) => *v,
            ParamValue::Int(v) => *v as f64,
            other => panic!("parameter {name:?} is {other:?}, not a number"),
        }
    }

    /// A boolean parameter (see [`Context::int`]).
    pub fn bool(&self, name: &str) -> bool {
        match self.param(name) {
            ParamValue::Bool(v) => *v,
            other => panic!("parameter {name:?} is {other:?}, not a boolean"),
        }
    }

    /// A string or choice parameter (see [`Context::int`]).
    pub fn str(&self, name: &str) -> &'a str {
        match self.param(name) {
            ParamValue::Str(v) => v,
            other => panic!("parameter {name:?} is {other:?}, not a string"),
        }
    }

    /// Logs a message through the host (tagged with the module and unit by the host).
    pub fn log(&self, level: LogLevel, message: &str) {
        log(level, message);
    }

    /// Logs at debug level.
    pub fn debug(&self, message: &str) {
        log(LogLevel::Debug, message);
    }

    /// Logs at info level.
    pub fn info(&self, message: &str) {
        log(LogLevel::Info, message);
    }

    /// Logs at warn level.
    pub fn warn(&self, message: &str) {
        log(LogLevel::Warn, message);
    }
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "wasmsched")]
unsafe extern "C" {
    #[link_name = "log"]
    fn host_log(level: u32, ptr: *const u8, len: u32);
}

/// Sends a log line to the host. Natively (tests, benchmarks) logging is a no-op.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: the pointer and length describe a live UTF-8 buffer for the whole call;
        // the host only reads it.
        unsafe { host_log(level as u32, message.as_ptr(), message.len() as u32) }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (level, message);
    }
}

/// A filter unit: for each candidate host, pass or reject with a reason.
///
/// Implement [`Filter::check`]; override [`Filter::check_all`] when the unit wants to work
/// out something once per decision rather than once per host.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is exported as a filter but does not implement `policy_sdk::Filter`",
    note = "add `impl policy_sdk::Filter for {Self}` with `const NAME` and `fn check`"
)]
pub trait Filter: Default + Send + Sync + 'static {
    /// Unit name used in policy files; unique in the engine.
    const NAME: &'static str;
    /// One-line description.
    const DESCRIPTION: &'static str = "";
    /// Declared parameters.
    fn params() -> Vec<ParamSpec> {
        Vec::new()
    }
    /// The verdict for one host.
    fn check(&self, ctx: &Context<'_>, vm: &Vm, host: &Host) -> Verdict;
    /// Whether the unit has anything to check for this VM. When `false`, every candidate
    /// passes without a call to [`Filter::check_all`] and the answer is a few bytes (e.g. a
    /// NUMA filter and a VM without pinned vNUMA nodes). Defaults to `true`.
    fn applies(&self, _ctx: &Context<'_>, _vm: &Vm) -> bool {
        true
    }
    /// Verdicts for all candidates, in order (one per candidate): push them to `out`
    /// ([`Verdicts::push`] or `extend`), which keeps only the rejections.
    fn check_all(&self, ctx: &Context<'_>, vm: &Vm, candidates: &[HostIndex], out: &mut Verdicts) {
        out.extend(candidates.iter().map(|&i| self.check(ctx, vm, ctx.host(i))));
    }
}

/// A weight unit: a raw penalty per candidate host, lower is better. The engine ranks or
/// normalizes penalties and applies the policy's factor.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is exported as a weight but does not implement `policy_sdk::Weight`",
    note = "add `impl policy_sdk::Weight for {Self}` with `const NAME` and `fn penalty`"
)]
pub trait Weight: Default + Send + Sync + 'static {
    /// Unit name used in policy files; unique in the engine.
    const NAME: &'static str;
    /// One-line description.
    const DESCRIPTION: &'static str = "";
    /// Declared parameters.
    fn params() -> Vec<ParamSpec> {
        Vec::new()
    }
    /// The penalty for one host.
    fn penalty(&self, ctx: &Context<'_>, vm: &Vm, host: &Host) -> Penalty;
    /// The penalty every host gets when the unit does not tell hosts apart for this VM
    /// (e.g. a topology weight and a VM that is not high-performance): the answer is then
    /// that one number instead of one per candidate, and [`Weight::penalty_all`] is not
    /// called. Defaults to `None`.
    fn uniform(&self, _ctx: &Context<'_>, _vm: &Vm) -> Option<Penalty> {
        None
    }
    /// Penalties for all candidates, in order (one per candidate).
    fn penalty_all(
        &self,
        ctx: &Context<'_>,
        vm: &Vm,
        candidates: &[HostIndex],
        out: &mut Vec<Penalty>,
    ) {
        push_penalties(out, candidates, |i| self.penalty(ctx, vm, ctx.host(i)));
    }
}

/// Appends `penalty` of each of `candidates` to `out`, in order: what a
/// [`Weight::penalty_all`] does with its per-host formula.
///
/// The penalties are written into room reserved up front, four hosts a step, in a loop of
/// its own: no capacity check (a call when it grows) in the loop, and in a wasm guest a
/// quarter of the loop-header checks.
#[inline(always)]
pub fn push_penalties(
    out: &mut Vec<Penalty>,
    candidates: &[HostIndex],
    penalty: impl Fn(HostIndex) -> Penalty,
) {
    let start = out.len();
    out.reserve(candidates.len());
    fill_penalties(
        &mut out.spare_capacity_mut()[..candidates.len()],
        candidates,
        &penalty,
    );
    // SAFETY: the capacity was reserved above and `fill_penalties` wrote every one of the
    // `candidates.len()` slots after `start` (it returns only once all are written).
    unsafe { out.set_len(start + candidates.len()) };
}

/// Writes `penalty` of `candidates[k]` into `slots[k]`, every slot (the lengths are equal).
#[inline(never)]
fn fill_penalties(
    slots: &mut [core::mem::MaybeUninit<Penalty>],
    candidates: &[HostIndex],
    penalty: &impl Fn(HostIndex) -> Penalty,
) {
    assert_eq!(slots.len(), candidates.len(), "one slot per candidate");
    let mut slot_fours = slots.chunks_exact_mut(4);
    let mut candidate_fours = candidates.chunks_exact(4);
    for (slot, host) in (&mut slot_fours).zip(&mut candidate_fours) {
        slot[0].write(penalty(host[0]));
        slot[1].write(penalty(host[1]));
        slot[2].write(penalty(host[2]));
        slot[3].write(penalty(host[3]));
    }
    for (slot, &host) in slot_fours
        .into_remainder()
        .iter_mut()
        .zip(candidate_fours.remainder())
    {
        slot.write(penalty(host));
    }
}

/// A balance unit: proposes migrations and power actions for the cluster.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is exported as a balance unit but does not implement `policy_sdk::Balance`",
    note = "add `impl policy_sdk::Balance for {Self}` with `const NAME` and `fn balance`"
)]
pub trait Balance: Default + Send + Sync + 'static {
    /// Unit name used in policy files; unique in the engine.
    const NAME: &'static str;
    /// One-line description.
    const DESCRIPTION: &'static str = "";
    /// Declared parameters.
    fn params() -> Vec<ParamSpec> {
        Vec::new()
    }
    /// Actions for the cluster; `candidates` are the hosts the engine lets the unit consider.
    fn balance(&self, ctx: &Context<'_>, candidates: &[HostIndex]) -> Vec<BalanceAction>;
}

trait DynFilter: Send + Sync {
    fn applies(&self, ctx: &Context<'_>, vm: &Vm) -> bool;
    fn check_all(&self, ctx: &Context<'_>, vm: &Vm, candidates: &[HostIndex], out: &mut Verdicts);
}
impl<T: Filter> DynFilter for T {
    fn applies(&self, ctx: &Context<'_>, vm: &Vm) -> bool {
        Filter::applies(self, ctx, vm)
    }
    fn check_all(&self, ctx: &Context<'_>, vm: &Vm, candidates: &[HostIndex], out: &mut Verdicts) {
        Filter::check_all(self, ctx, vm, candidates, out)
    }
}

trait DynWeight: Send + Sync {
    fn uniform(&self, ctx: &Context<'_>, vm: &Vm) -> Option<Penalty>;
    fn penalty_all(
        &self,
        ctx: &Context<'_>,
        vm: &Vm,
        candidates: &[HostIndex],
        out: &mut Vec<Penalty>,
    );
}
impl<T: Weight> DynWeight for T {
    fn uniform(&self, ctx: &Context<'_>, vm: &Vm) -> Option<Penalty> {
        Weight::uniform(self, ctx, vm)
    }
    fn penalty_all(
        &self,
        ctx: &Context<'_>,
        vm: &Vm,
        candidates: &[HostIndex],
        out: &mut Vec<Penalty>,
    ) {
        Weight::penalty_all(self, ctx, vm, candidates, out)
    }
}

trait DynBalance: Send + Sync {
    fn balance(&self, ctx: &Context<'_>, candidates: &[HostIndex]) -> Vec<BalanceAction>;
}
impl<T: Balance> DynBalance for T {
    fn balance(&self, ctx: &Context<'_>, candidates: &[HostIndex]) -> Vec<BalanceAction> {
        Balance::balance(self, ctx, candidates)
    }
}

enum AnyUnit {
    Filter(Box<dyn DynFilter>),
    Weight(Box<dyn DynWeight>),
    Balance(Box<dyn DynBalance>),
}

/// The units of one module, in manifest order. Built by
/// [`export_units!`](crate::export_units) (as the module's `units()` function) and used both
/// by the wasm exports and by native callers.
pub struct UnitSet {
    module: &'static str,
    version: &'static str,
    units: Vec<(UnitDescriptor, AnyUnit)>,
}

impl fmt::Debug for UnitSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnitSet")
            .field("module", &self.module)
            .field("version", &self.version)
            .field(
                "units",
                &self.units.iter().map(|(d, _)| &d.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl UnitSet {
    /// An empty set for a module.
    pub fn new(module: &'static str, version: &'static str) -> Self {
        Self {
            module,
            version,
            units: Vec::new(),
        }
    }

    fn descriptor(
        name: &str,
        kind: UnitKind,
        description: &str,
        params: Vec<ParamSpec>,
    ) -> UnitDescriptor {
        UnitDescriptor {
            name: name.to_string(),
            kind,
            description: description.to_string(),
            params,
        }
    }

    /// Adds a filter unit.
    pub fn filter<T: Filter>(mut self) -> Self {
        let d = Self::descriptor(T::NAME, UnitKind::Filter, T::DESCRIPTION, T::params());
        self.units
            .push((d, AnyUnit::Filter(Box::new(T::default()))));
        self
    }

    /// Adds a weight unit.
    pub fn weight<T: Weight>(mut self) -> Self {
        let d = Self::descriptor(T::NAME, UnitKind::Weight, T::DESCRIPTION, T::params());
        self.units
            .push((d, AnyUnit::Weight(Box::new(T::default()))));
        self
    }

    /// Adds a balance unit.
    pub fn balance<T: Balance>(mut self) -> Self {
        let d = Self::descriptor(T::NAME, UnitKind::Balance, T::DESCRIPTION, T::params());
        self.units
            .push((d, AnyUnit::Balance(Box::new(T::default()))));
        self
    }

    /// The manifest describing these units.
    pub fn manifest(&self) -> Manifest {
        Manifest {
            abi_version: crate::wire::abi::ABI_VERSION,
            module: self.module.to_string(),
            version: self.version.to_string(),
            units: self.units.iter().map(|(d, _)| d.clone()).collect(),
        }
    }

    /// Number of units.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// True when the set holds no unit.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// Runs one unit over all candidates: the dispatch behind `wasmsched_call`, also used
    /// natively by hosts and tests.
    pub fn evaluate(&self, snapshot: &Snapshot, call: Call<'_>) -> CallResponse {
        self.evaluate_indexed(snapshot, None, call)
    }

    /// [`UnitSet::evaluate`] with the snapshot's derived indexes (see [`crate::model::index`]),
    /// as the runtime and the guest glue call it.
    pub fn evaluate_indexed(
        &self,
        snapshot: &Snapshot,
        index: Option<&SnapshotIndex>,
        call: Call<'_>,
    ) -> CallResponse {
        self.evaluate_with(snapshot, IndexRef::of(index), call)
    }

    /// [`UnitSet::evaluate_indexed`] with an index built on first use (the guest glue).
    pub(crate) fn evaluate_lazy(
        &self,
        snapshot: &Snapshot,
        index: &core::cell::OnceCell<SnapshotIndex>,
        call: Call<'_>,
    ) -> CallResponse {
        self.evaluate_with(snapshot, IndexRef::Lazy(index), call)
    }

    /// Runs several filter and weight units over one VM, as one `wasmsched_batch` crossing
    /// does: the filters in order, each over the candidates the earlier ones passed, then the
    /// weights over the candidates every filter passed (see
    /// [`BatchRequest`](crate::wire::abi::BatchRequest)). Also used natively by hosts.
    pub fn evaluate_batch(
        &self,
        snapshot: &Snapshot,
        index: Option<&SnapshotIndex>,
        batch: Batch<'_>,
    ) -> BatchResponse {
        self.batch_with(snapshot, IndexRef::of(index), batch)
    }

    /// [`UnitSet::evaluate_batch`] with an index built on first use (the guest glue).
    pub(crate) fn evaluate_batch_lazy(
        &self,
        snapshot: &Snapshot,
        index: &core::cell::OnceCell<SnapshotIndex>,
        batch: Batch<'_>,
    ) -> BatchResponse {
        self.batch_with(snapshot, IndexRef::Lazy(index), batch)
    }

    fn batch_with(
        &self,
        snapshot: &Snapshot,
        index: IndexRef<'_>,
        batch: Batch<'_>,
    ) -> BatchResponse {
        // The candidates left, narrowed after each filter (copied only when one rejects).
        let mut left: Option<Vec<HostIndex>> = None;
        let mut filters = Vec::with_capacity(batch.filters.len());
        for unit in batch.filters {
            let candidates = left.as_deref().unwrap_or(batch.candidates);
            if candidates.is_empty() {
                filters.push(CallResponse::Verdicts(Verdicts::default()));
                continue;
            }
            let answer = self.evaluate_with(snapshot, index, batch.call(unit, candidates));
            if let CallResponse::Verdicts(verdicts) = &answer {
                if !verdicts.rejected.is_empty() {
                    let mut kept = Vec::with_capacity(candidates.len() - verdicts.rejected.len());
                    let mut from = 0;
                    for r in &verdicts.rejected {
                        let position = (r.position as usize).min(candidates.len());
                        kept.extend_from_slice(&candidates[from.min(position)..position]);
                        from = position + 1;
                    }
                    kept.extend_from_slice(&candidates[from.min(candidates.len())..]);
                    left = Some(kept);
                }
            }
            filters.push(answer);
        }
        let candidates = left.as_deref().unwrap_or(batch.candidates);
        let weights = batch
            .weights
            .iter()
            .map(|unit| self.evaluate_with(snapshot, index, batch.call(unit, candidates)))
            .collect();
        BatchResponse::Answers { filters, weights }
    }

    fn evaluate_with(
        &self,
        snapshot: &Snapshot,
        index: IndexRef<'_>,
        call: Call<'_>,
    ) -> CallResponse {
        let Some((descriptor, unit)) = self.units.get(call.unit as usize) else {
            return CallResponse::Failed(format!(
                "unit index {} out of range (module has {})",
                call.unit,
                self.units.len()
            ));
        };
        let mut ctx = Context::new(snapshot, call.params, &descriptor.name);
        ctx.index = index;
        ctx.details = call.details;
        match (unit, call.vm) {
            (AnyUnit::Filter(f), Some(vm)) if !f.applies(&ctx, vm) => {
                CallResponse::Verdicts(Verdicts::passing(call.candidates.len() as u32))
            }
            (AnyUnit::Filter(f), Some(vm)) => {
                let mut out = Verdicts::default();
                f.check_all(&ctx, vm, call.candidates, &mut out);
                CallResponse::Verdicts(out)
            }
            (AnyUnit::Weight(w), Some(vm)) => match w.uniform(&ctx, vm) {
                Some(penalty) => CallResponse::SamePenalty(penalty),
                None => {
                    let mut out = Vec::with_capacity(call.candidates.len());
                    w.penalty_all(&ctx, vm, call.candidates, &mut out);
                    CallResponse::Penalties(out)
                }
            },
            (AnyUnit::Balance(b), _) => CallResponse::Actions(b.balance(&ctx, call.candidates)),
            (_, None) => CallResponse::Failed(format!("{} called without a VM", descriptor.kind)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `push_penalties` appends one penalty per candidate, in candidate order, after what
    /// `out` held: for lists of every length around its steps of four.
    #[test]
    fn push_penalties_appends_each_candidates_penalty_in_order() {
        for n in 0..10u32 {
            let candidates: Vec<HostIndex> = (0..n).map(|i| i * 7 + 1).collect();
            let mut out: Vec<Penalty> = alloc::vec![-1, -2];
            push_penalties(&mut out, &candidates, |i| Penalty::from(i) * 10);
            let mut want: Vec<Penalty> = alloc::vec![-1, -2];
            want.extend(candidates.iter().map(|&i| Penalty::from(i) * 10));
            assert_eq!(out, want, "{n} candidates");
        }
    }
}
