//! Placement logic for high-performance VMs, shared by the builtin units (compiled to wasm)
//! and by the engine (which turns a decision's vNUMA assignment and dedicated pCPUs into
//! pending resources): CPU pinning strings, host CPU numbering, dedicated pCPU allocation and
//! the vNUMA-to-host-node assignment search.
//!
//! ## Host CPU numbering
//!
//! A host's CPU ids follow its [`CpuTopology`] linearly: CPU `c` is thread
//! `c % threads_per_core` of core `(c / threads_per_core) % cores_per_socket` of socket
//! `c / (threads_per_core * cores_per_socket)`. [`Host::online_cpus`] lists the CPUs that
//! are online (empty: all of them); [`Host::dedicated_cpus`] and the pending
//! [`PendingAggregate::pinned_cpus`](crate::PendingAggregate::pinned_cpus) are taken by
//! exclusively pinned VMs.

use crate::model::{CpuTopology, Host, HugePages, NumaNode, NumaTuneMode, PinningPolicy, Vm};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

/// The highest pCPU id a pinning string may name.
pub const MAX_CPU_ID: u32 = 16_383;

/// The most vNUMA nodes a VM may have.
pub const MAX_VNUMA_NODES: usize = 128;

/// How many partial assignments the vNUMA search may try before giving up (a pathological
/// VM fails the host with [`NumaFit::SearchLimit`] instead of hanging the scheduler).
pub const NUMA_SEARCH_STEP_LIMIT: u32 = 10_000;

/// One vCPU's entry in a pinning string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedVcpu {
    /// The vCPU.
    pub vcpu: u32,
    /// The pCPUs it may run on, sorted, without duplicates, never empty.
    pub pcpus: Vec<u32>,
}

/// A parsed CPU pinning string such as `0#1-3_1#4,^2` (vCPU 0 on pCPUs 1, 2 and 3; vCPU 1
/// on pCPU 4).
///
/// Grammar: entries separated by `_`; an entry is `vcpu#spec`; a spec is a comma list of
/// `N` (one pCPU), `a-b` with `a < b` (a range, both ends included) and `^N` (exclude one
/// pCPU from what the other items name). Spaces around numbers are allowed. The empty string
/// means no pinning. Anything else is an error naming the entry at fault, never an empty
/// pinning.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuPinning {
    entries: Vec<PinnedVcpu>,
}

/// Why a pinning string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinningError {
    /// The string as given.
    pub text: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for PinningError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pinning `{}`: {}", self.text, self.message)
    }
}

impl std::error::Error for PinningError {}

/// Most entries a pinning string may have: one per vCPU, and a VM has at most 4096.
pub const MAX_PINNING_ENTRIES: usize = 4096;

/// Most pCPU ids a pinning string may name in all (ranges expanded): a range of 16,384
/// pCPUs for each of 64 vCPUs, or 256 for each of 4096. Bounds the memory a hostile string
/// can make the parser take.
pub const MAX_PINNED_PCPUS: usize = 1 << 20;

/// The string as an error shows it: the first 64 characters of a long one.
fn shown(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], text.len()),
        None => text.to_string(),
    }
}

impl CpuPinning {
    /// Parses a pinning string (see the type's documentation for the grammar). Bounded: at
    /// most [`MAX_PINNING_ENTRIES`] entries and [`MAX_PINNED_PCPUS`] pCPU ids in all.
    pub fn parse(text: &str) -> Result<Self, PinningError> {
        let fail = |message: String| PinningError {
            text: shown(text),
            message,
        };
        let mut entries: Vec<PinnedVcpu> = Vec::new();
        if text.trim().is_empty() {
            return Ok(Self { entries });
        }
        let mut vcpus = BTreeSet::new();
        let mut named = 0usize;
        for (position, entry) in text.split('_').enumerate() {
            let n = position + 1;
            if n > MAX_PINNING_ENTRIES {
                return Err(fail(format!(
                    "more than {MAX_PINNING_ENTRIES} entries (one per vCPU)"
                )));
            }
            let Some((vcpu, spec)) = entry.split_once('#') else {
                return Err(fail(format!(
                    "entry {n} `{}` has no `#` (expected `vcpu#pcpus`)",
                    shown(entry)
                )));
            };
            let vcpu = number(vcpu).map_err(|m| fail(format!("entry {n}: vCPU {m}")))?;
            if !vcpus.insert(vcpu) {
                return Err(fail(format!("entry {n}: vCPU {vcpu} is pinned twice")));
            }
            let mut included = BTreeSet::new();
            let mut excluded = BTreeSet::new();
            for item in spec.split(',') {
                let item = item.trim();
                if let Some(rest) = item.strip_prefix('^') {
                    let cpu = pcpu(rest).map_err(|m| {
                        fail(format!(
                            "entry {n}: exclusion `{item}`: {m} (one pCPU per `^`)"
                        ))
                    })?;
                    excluded.insert(cpu);
                } else if let Some((a, b)) = item.split_once('-') {
                    let a = pcpu(a).map_err(|m| fail(format!("entry {n}: range `{item}`: {m}")))?;
                    let b = pcpu(b).map_err(|m| fail(format!("entry {n}: range `{item}`: {m}")))?;
                    if a >= b {
                        return Err(fail(format!(
                            "entry {n}: range `{item}` must go upwards (a-b with a < b)"
                        )));
                    }
                    named = named.saturating_add((b - a + 1) as usize);
                    if named > MAX_PINNED_PCPUS {
                        return Err(fail(format!(
                            "entry {n}: the pinning names more than {MAX_PINNED_PCPUS} pCPUs \
                             in all"
                        )));
                    }
                    included.extend(a..=b);
                } else {
                    let cpu = pcpu(item).map_err(|m| fail(format!("entry {n}: pCPU {m}")))?;
                    included.insert(cpu);
                }
            }
            let pcpus: Vec<u32> = included.difference(&excluded).copied().collect();
            if pcpus.is_empty() {
                return Err(fail(format!(
                    "entry {n}: vCPU {vcpu} is left with no pCPU to run on"
                )));
            }
            entries.push(PinnedVcpu { vcpu, pcpus });
        }
        entries.sort_by_key(|e| e.vcpu);
        Ok(Self { entries })
    }

    /// The pinning of a VM: its pinning string parsed, when it has one.
    pub fn of_vm(vm: &Vm) -> Result<Option<Self>, PinningError> {
        match vm.cpu_pinning.as_deref() {
            Some(text) if !text.trim().is_empty() => Self::parse(text).map(Some),
            _ => Ok(None),
        }
    }

    /// Checks that every pinned vCPU exists in a VM with `vcpus` vCPUs.
    pub fn check_vcpus(&self, text: &str, vcpus: u32) -> Result<(), PinningError> {
        match self.entries.iter().find(|e| e.vcpu >= vcpus) {
            Some(e) => Err(PinningError {
                text: text.to_string(),
                message: format!(
                    "vCPU {} is pinned but the VM has {vcpus} vCPU(s) (0..{vcpus})",
                    e.vcpu
                ),
            }),
            None => Ok(()),
        }
    }

    /// The entries, by vCPU.
    pub fn entries(&self) -> &[PinnedVcpu] {
        &self.entries
    }

    /// Whether nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pCPUs a vCPU is pinned to, if it is pinned.
    pub fn pcpus_of(&self, vcpu: u32) -> Option<&[u32]> {
        self.entries
            .binary_search_by_key(&vcpu, |e| e.vcpu)
            .ok()
            .map(|i| self.entries[i].pcpus.as_slice())
    }

    /// Every pCPU named, sorted, without duplicates.
    pub fn all_pcpus(&self) -> Vec<u32> {
        let set: BTreeSet<u32> = self
            .entries
            .iter()
            .flat_map(|e| e.pcpus.iter().copied())
            .collect();
        set.into_iter().collect()
    }
}

fn number(text: &str) -> Result<u32, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("is missing".to_string());
    }
    if !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{t}` is not a number"));
    }
    t.parse::<u32>().map_err(|_| format!("`{t}` is too large"))
}

fn pcpu(text: &str) -> Result<u32, String> {
    let n = number(text)?;
    if n > MAX_CPU_ID {
        return Err(format!("{n} is above the highest pCPU id {MAX_CPU_ID}"));
    }
    Ok(n)
}

/// Where a CPU id sits in a topology (see the module documentation for the numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuLocation {
    /// Socket.
    pub socket: u32,
    /// Core within the socket.
    pub core: u32,
    /// Thread within the core.
    pub thread: u32,
}

/// The location of CPU `cpu` in `topology`, if the topology has it.
pub fn cpu_location(topology: &CpuTopology, cpu: u32) -> Option<CpuLocation> {
    if cpu >= topology.threads() || topology.threads_per_core == 0 {
        return None;
    }
    let tpc = topology.threads_per_core;
    let cores = topology.cores_per_socket.max(1);
    Some(CpuLocation {
        socket: cpu / (tpc * cores),
        core: (cpu / tpc) % cores,
        thread: cpu % tpc,
    })
}

/// Whether a host topology holds a VM's: at least its sockets, cores per socket and threads
/// per core (the `high-performance-cpu` rule).
pub fn topology_holds(vm: &CpuTopology, host: &CpuTopology) -> bool {
    vm.sockets <= host.sockets
        && vm.cores_per_socket <= host.cores_per_socket
        && vm.threads_per_core <= host.threads_per_core
}

/// The host's online CPUs, sorted: [`Host::online_cpus`], or every CPU of its topology when
/// that list is empty.
pub fn online_cpus(host: &Host) -> Vec<u32> {
    if host.online_cpus.is_empty() {
        (0..host.cpu.threads()).collect()
    } else {
        let set: BTreeSet<u32> = host.online_cpus.iter().copied().collect();
        set.into_iter().collect()
    }
}

/// The host's pCPUs taken by exclusively pinned VMs, running or pending, sorted.
pub fn taken_cpus(host: &Host) -> BTreeSet<u32> {
    host.dedicated_cpus
        .iter()
        .chain(&host.pending.pinned_cpus)
        .copied()
        .collect()
}

/// Whether a VM's pinning policy takes pCPUs for itself alone.
pub fn is_exclusive(policy: PinningPolicy) -> bool {
    matches!(
        policy,
        PinningPolicy::Dedicated | PinningPolicy::IsolateThreads
    )
}

/// Why no dedicated pCPUs could be allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationShortfall {
    /// What the VM needs, e.g. `4 whole free cores`.
    pub needed: String,
    /// What the host has free, e.g. `3 whole free cores`.
    pub free: String,
}

impl fmt::Display for AllocationShortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "needs {}, host has {}", self.needed, self.free)
    }
}

/// The pCPUs an exclusively pinned VM would take on `host`, after every pCPU taken by
/// running and pending exclusive VMs and every offline one:
///
/// * [`PinningPolicy::Dedicated`]: one free online pCPU per vCPU;
/// * [`PinningPolicy::IsolateThreads`]: one whole core per vCPU (every thread of the core
///   online and free); all of the core's threads are taken.
///
/// Sockets with the most free pCPUs are filled first (socket index breaks ties), cores in
/// ascending order, so a VM spans as few sockets as it can and the choice is deterministic.
/// Returns `Ok(empty)` for other policies.
pub fn allocate_dedicated(host: &Host, vm: &Vm) -> Result<Vec<u32>, AllocationShortfall> {
    if !is_exclusive(vm.cpu_pinning_policy) {
        return Ok(Vec::new());
    }
    allocate(
        host,
        vm.cpu_pinning_policy,
        vm.vcpus(),
        &taken_cpus(host),
        |_| true,
    )
}

/// Words of a [`CpuBits`] kept inline: 1,024 pCPUs, more than any host's topology today.
const INLINE_CPU_WORDS: usize = 16;

/// A set of pCPU ids below a topology's thread count, for the per-host checks a filter runs
/// for every candidate: inline (no allocation) up to 1,024 pCPUs, on the heap beyond.
/// Ids at or beyond the bound are ignored (a pCPU the topology does not have takes no CPU).
#[derive(Debug, Clone)]
pub struct CpuBits {
    bound: u32,
    inline: [u64; INLINE_CPU_WORDS],
    heap: Vec<u64>,
}

impl CpuBits {
    /// An empty set of ids below `bound`.
    pub fn new(bound: u32) -> Self {
        let words = (bound as usize).div_ceil(64);
        Self {
            bound,
            inline: [0; INLINE_CPU_WORDS],
            heap: if words > INLINE_CPU_WORDS {
                alloc::vec![0; words]
            } else {
                Vec::new()
            },
        }
    }

    #[inline]
    fn words(&self) -> &[u64] {
        let words = (self.bound as usize).div_ceil(64);
        if words > INLINE_CPU_WORDS {
            &self.heap
        } else {
            &self.inline[..words]
        }
    }

    fn words_mut(&mut self) -> &mut [u64] {
        let words = (self.bound as usize).div_ceil(64);
        if words > INLINE_CPU_WORDS {
            &mut self.heap
        } else {
            &mut self.inline[..words]
        }
    }

    /// Adds `id`; `true` when it was not in the set (and is below the bound).
    pub fn insert(&mut self, id: u32) -> bool {
        if id >= self.bound {
            return false;
        }
        let (word, bit) = ((id / 64) as usize, 1u64 << (id % 64));
        let words = self.words_mut();
        let new = words[word] & bit == 0;
        words[word] |= bit;
        new
    }

    /// Removes every id of `other` (a set of the same bound), a word at a time.
    pub fn remove_all(&mut self, other: &CpuBits) {
        debug_assert_eq!(self.bound, other.bound, "sets of one topology");
        for (word, taken) in self.words_mut().iter_mut().zip(other.words()) {
            *word &= !taken;
        }
    }

    /// Adds every id below the bound.
    pub fn insert_all(&mut self) {
        let bound = self.bound as usize;
        for (i, word) in self.words_mut().iter_mut().enumerate() {
            let left = bound - i * 64;
            *word = if left >= 64 {
                u64::MAX
            } else {
                (1u64 << left) - 1
            };
        }
    }

    /// Removes `id`.
    pub fn remove(&mut self, id: u32) {
        if id < self.bound {
            self.words_mut()[(id / 64) as usize] &= !(1u64 << (id % 64));
        }
    }

    /// Whether `id` is in the set.
    #[inline]
    pub fn contains(&self, id: u32) -> bool {
        id < self.bound && self.words()[(id / 64) as usize] & (1u64 << (id % 64)) != 0
    }

    /// Number of ids in the set.
    pub fn len(&self) -> u32 {
        self.words().iter().map(|w| w.count_ones()).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words().iter().all(|&w| w == 0)
    }

    /// Number of cores of `threads_per_core` threads (core `c` is ids `c * tpc ..
    /// (c + 1) * tpc`, below the bound) all of whose ids are in the set. One and two
    /// threads per core, the usual topologies, are counted a word at a time.
    pub fn whole_cores(&self, threads_per_core: u32) -> u32 {
        let tpc = threads_per_core.max(1);
        let cores = self.bound / tpc;
        match tpc {
            // Ids beyond the bound are never in the set.
            1 => self.len(),
            // A core is an aligned pair of bits (never split between words); both ids of a
            // counted pair are in the set, so below the bound: the pair is a core.
            2 => {
                const EVEN: u64 = 0x5555_5555_5555_5555;
                self.words()
                    .iter()
                    .map(|&w| (w & (w >> 1) & EVEN).count_ones())
                    .sum()
            }
            _ => (0..cores)
                .filter(|core| (core * tpc..core * tpc + tpc).all(|c| self.contains(c)))
                .count() as u32,
        }
    }
}

/// A host's pCPU counts that the CPU checks need, counted from its CPU lists. The snapshot
/// index keeps them per host ([`SnapshotIndex`](crate::model::index::SnapshotIndex), read
/// through [`Context::cpu_counts`](crate::Context::cpu_counts)), counted again only after
/// the host or its pending aggregate changed, so that the `cpu` and `cpu-pinning` filters
/// do not walk every candidate's CPU lists on every decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuCounts {
    /// Dedicated pCPUs (of running exclusive VMs) within the topology, each counted once.
    pub dedicated: u32,
    /// Pending pinned pCPUs within the topology that are not also dedicated, each once.
    pub pending_pinned: u32,
    /// Online pCPUs (every pCPU of the topology when the host lists none) that are neither
    /// dedicated nor pending pinned.
    pub free_online: u32,
    /// Cores every thread of which is a free online pCPU.
    pub whole_free_cores: u32,
}

/// The pCPUs of `host` that a pinning cannot take, folded into one word: bit `c % 64` is
/// set for every pCPU `c` dedicated to a running VM or pinned by a pending one, and for
/// every pCPU below the host's thread count that is not online (none when
/// [`Host::online_cpus`] is empty). Pinned pCPUs below the thread count whose bits (folded
/// the same way, [`fold_pcpus`]) all miss this word are online and free; a bit that meets
/// it may stand for another pCPU of the same residue, so the host's lists decide. What the
/// `cpu-pinning` filter's fast pass reads, kept per host in the snapshot's index.
pub fn unavailable_pcpus(host: &Host) -> u64 {
    let mut mask = fold_pcpus(
        host.dedicated_cpus
            .iter()
            .chain(&host.pending.pinned_cpus)
            .copied(),
    );
    if !host.online_cpus.is_empty() {
        let threads = host.cpu.threads();
        let mut online = CpuBits::new(threads);
        for &c in &host.online_cpus {
            online.insert(c);
        }
        // At most 64 offline pCPUs set every bit, so this ends after the online ones and 64
        // more, whatever the thread count.
        let mut c = 0;
        while c < threads && mask != u64::MAX {
            if !online.contains(c) {
                mask |= 1 << (c % 64);
            }
            c += 1;
        }
    }
    mask
}

/// pCPU ids folded into one word, bit `c % 64` for each id `c` (see [`unavailable_pcpus`]).
pub fn fold_pcpus(ids: impl IntoIterator<Item = u32>) -> u64 {
    ids.into_iter().fold(0, |mask, c| mask | 1 << (c % 64))
}

impl CpuCounts {
    /// Counts `host`'s pCPUs: one pass over each CPU list with a bit set (no allocation up
    /// to 1,024 pCPUs).
    pub fn of(host: &Host) -> Self {
        let threads = host.cpu.threads();
        let mut taken = CpuBits::new(threads);
        let dedicated = host
            .dedicated_cpus
            .iter()
            .filter(|&&id| taken.insert(id))
            .count() as u32;
        let pending_pinned = host
            .pending
            .pinned_cpus
            .iter()
            .filter(|&&id| taken.insert(id))
            .count() as u32;
        let mut usable = CpuBits::new(threads);
        if host.online_cpus.is_empty() {
            usable.insert_all();
        } else {
            host.online_cpus.iter().for_each(|&c| {
                usable.insert(c);
            });
        }
        usable.remove_all(&taken);
        let whole_free_cores = usable.whole_cores(host.cpu.threads_per_core.max(1));
        Self {
            dedicated,
            pending_pinned,
            free_online: usable.len(),
            whole_free_cores,
        }
    }

    /// [`check_dedicated`] from these counts.
    pub fn check_dedicated(&self, vm: &Vm) -> Result<(), AllocationShortfall> {
        if self.fits_dedicated(vm) {
            return Ok(());
        }
        let (free, unit) = self.free_for(vm.cpu_pinning_policy);
        Err(AllocationShortfall {
            needed: format!("{} {unit}", vm.vcpus()),
            free: format!("{free}"),
        })
    }

    /// Whether [`CpuCounts::check_dedicated`] passes, without building its shortfall.
    #[inline]
    pub fn fits_dedicated(&self, vm: &Vm) -> bool {
        !is_exclusive(vm.cpu_pinning_policy) || self.free_for(vm.cpu_pinning_policy).0 >= vm.vcpus()
    }

    /// What an exclusive pinning policy takes from: whole free cores for isolate-threads,
    /// free online pCPUs otherwise (with the unit's name for reports).
    #[inline]
    fn free_for(&self, policy: PinningPolicy) -> (u32, &'static str) {
        if policy == PinningPolicy::IsolateThreads {
            (self.whole_free_cores, "whole free core(s)")
        } else {
            (self.free_online, "free online pCPU(s)")
        }
    }
}

/// Whether [`allocate_dedicated`] would succeed on `host`, with the same shortfall, without
/// building the allocation: counts free online pCPUs (or whole free cores) with a bitmap of
/// the taken ones (see [`CpuCounts`]). What the `cpu-pinning` filter runs on every candidate.
pub fn check_dedicated(host: &Host, vm: &Vm) -> Result<(), AllocationShortfall> {
    if !is_exclusive(vm.cpu_pinning_policy) {
        return Ok(());
    }
    CpuCounts::of(host).check_dedicated(vm)
}

/// Like [`allocate_dedicated`], with the vCPUs of each placed vNUMA node taken from the CPUs
/// of the host node it was assigned to (the VM's other vCPUs anywhere), so a dedicated VM's
/// pCPUs sit with its memory. Falls back to [`allocate_dedicated`] when the nodes lack the
/// free pCPUs.
pub fn allocate_dedicated_on_nodes(
    host: &Host,
    vm: &Vm,
    placements: &[NodePlacement],
) -> Result<Vec<u32>, AllocationShortfall> {
    if !is_exclusive(vm.cpu_pinning_policy) || placements.is_empty() {
        return allocate_dedicated(host, vm);
    }
    let mut taken = taken_cpus(host);
    let mut chosen = Vec::new();
    let mut placed_vcpus = 0u32;
    for p in placements {
        let Some(vnode) = vm.numa_nodes.iter().find(|n| n.index == p.vnode) else {
            continue;
        };
        let Some(node) = host.numa_nodes.iter().find(|n| n.index == p.host_node) else {
            continue;
        };
        let want = vnode.cpus.len() as u32;
        let Ok(cpus) = allocate(host, vm.cpu_pinning_policy, want, &taken, |c| {
            node.cpus.contains(&c)
        }) else {
            return allocate_dedicated(host, vm);
        };
        taken.extend(cpus.iter().copied());
        chosen.extend(cpus);
        placed_vcpus += want;
    }
    let rest = vm.vcpus().saturating_sub(placed_vcpus);
    match allocate(host, vm.cpu_pinning_policy, rest, &taken, |_| true) {
        Ok(cpus) => chosen.extend(cpus),
        Err(_) => return allocate_dedicated(host, vm),
    }
    chosen.sort_unstable();
    Ok(chosen)
}

/// `want` vCPUs' worth of free online pCPUs (or whole cores, for isolate-threads) among
/// those `allowed`, none of them in `taken`.
fn allocate(
    host: &Host,
    policy: PinningPolicy,
    want: u32,
    taken: &BTreeSet<u32>,
    allowed: impl Fn(u32) -> bool,
) -> Result<Vec<u32>, AllocationShortfall> {
    let topo = &host.cpu;
    let isolate = policy == PinningPolicy::IsolateThreads;
    // Free pCPUs grouped by (socket, core), in core order. For isolate-threads a core counts
    // only when all its threads are online, allowed and free.
    let mut cores: std::collections::BTreeMap<(u32, u32), Vec<u32>> = Default::default();
    for cpu in online_cpus(host) {
        if let Some(loc) = cpu_location(topo, cpu) {
            if !taken.contains(&cpu) && allowed(cpu) {
                cores.entry((loc.socket, loc.core)).or_default().push(cpu);
            }
        }
    }
    let want = want as usize;
    let tpc = topo.threads_per_core.max(1) as usize;
    if isolate {
        cores.retain(|_, cpus| cpus.len() == tpc);
    }
    let mut free_per_socket: HashMap<u32, usize> = HashMap::new();
    for (&(socket, _), cpus) in &cores {
        *free_per_socket.entry(socket).or_default() += if isolate { 1 } else { cpus.len() };
    }
    let total: usize = free_per_socket.values().sum();
    if total < want {
        let unit = if isolate {
            "whole free core(s)"
        } else {
            "free online pCPU(s)"
        };
        return Err(AllocationShortfall {
            needed: format!("{want} {unit}"),
            free: format!("{total}"),
        });
    }
    let mut sockets: Vec<(u32, usize)> = free_per_socket.into_iter().collect();
    sockets.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut chosen = Vec::new();
    let mut units = 0;
    if want > 0 {
        'outer: for (socket, _) in sockets {
            for (_, cpus) in cores.range((socket, 0)..=(socket, u32::MAX)) {
                if isolate {
                    chosen.extend_from_slice(cpus);
                    units += 1;
                    if units == want {
                        break 'outer;
                    }
                } else {
                    for &cpu in cpus {
                        chosen.push(cpu);
                        units += 1;
                        if units == want {
                            break 'outer;
                        }
                    }
                }
            }
        }
    }
    chosen.sort_unstable();
    Ok(chosen)
}

/// One vNUMA node placed on one host node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePlacement {
    /// The VM's vNUMA node index.
    pub vnode: u32,
    /// The host node index.
    pub host_node: u32,
    /// The vNUMA node's memory in MiB.
    pub memory_mb: u64,
}

/// The outcome of matching a VM's pinned vNUMA nodes to a host's NUMA nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumaFit {
    /// The VM has no vNUMA node pinned to host nodes: nothing to check.
    NotPinned,
    /// Every pinned vNUMA node has a host node with room (strict mode, or a loose mode that
    /// also found room): the assignment, in vNUMA node order.
    Fits(Vec<NodePlacement>),
    /// Interleave/preferred tune mode: the pinned nodes exist, but their free memory does
    /// not hold the VM (the kernel may take memory elsewhere). No assignment is recorded.
    FitsLoosely,
    /// The host has no NUMA support.
    NoNumaSupport,
    /// A vNUMA node is pinned to a host node index the host does not have.
    MissingHostNode {
        /// The vNUMA node.
        vnode: u32,
        /// The missing host node index.
        host_node: u32,
    },
    /// A vNUMA node's CPU pinning has no pCPU on any of its allowed host nodes.
    PinningMismatch {
        /// The vNUMA node.
        vnode: u32,
    },
    /// No assignment gives every vNUMA node enough memory. `largest_free_mb` is the most
    /// free memory (or free pages, for hugepage-backed VMs) on one allowed node.
    NoRoom {
        /// What was compared, e.g. `memory` or `2048 KiB hugepages`.
        resource: String,
        /// Total demand of the pinned vNUMA nodes (MiB or pages).
        needed: u64,
        /// Free amount on the allowed host nodes, summed (MiB or pages).
        free: u64,
        /// The host node that lacks room, when one can be named: a node whose pinned vNUMA
        /// nodes need more than it has, or the roomiest node allowed for a vNUMA node that
        /// fits on none of its nodes.
        short: Option<NodeShortfall>,
    },
    /// The search tried [`NUMA_SEARCH_STEP_LIMIT`] partial assignments without an answer.
    SearchLimit,
}

/// A host NUMA node that cannot hold what is pinned to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeShortfall {
    /// The host node.
    pub node: u32,
    /// What the vNUMA nodes placed there need (MiB or pages).
    pub needed: u64,
    /// What it has free, after pending (MiB or pages).
    pub free: u64,
}

impl NumaFit {
    /// Whether the host passes (fits, loosely fits, or nothing to check).
    pub fn passes(&self) -> bool {
        matches!(
            self,
            NumaFit::NotPinned | NumaFit::Fits(_) | NumaFit::FitsLoosely
        )
    }
}

/// Matches the VM's pinned vNUMA nodes to host nodes: every vNUMA node with
/// [`pinned_host_nodes`](crate::VNumaNode::pinned_host_nodes) is assigned one of those host
/// nodes, such that each host node holds the memory of the vNUMA nodes assigned to it. A
/// host node's room is its free memory minus the pending NUMA memory recorded on it; for a
/// hugepage-backed VM, its free pages of the VM's page size.
///
/// When `pinning` is given, a vNUMA node may only go to a host node holding, for each of its
/// pinned vCPUs, at least one of that vCPU's pCPUs (the CPU-and-NUMA-pinning rule).
///
/// In [`NumaTuneMode::Strict`] the memory must fit; in the other modes a host whose pinned
/// nodes exist passes, with the assignment when one fits and [`NumaFit::FitsLoosely`]
/// otherwise.
///
/// The search is exact (backtracking), with three bounds that keep it fast: vNUMA nodes go
/// largest first; host nodes that are interchangeable (same remaining room, allowed for the
/// same vNUMA nodes) are tried once per level; states already known to fail are remembered.
/// After [`NUMA_SEARCH_STEP_LIMIT`] steps it answers [`NumaFit::SearchLimit`].
pub fn find_numa_assignment(vm: &Vm, host: &Host, pinning: Option<&CpuPinning>) -> NumaFit {
    NumaRequest::new(vm, pinning).fit(host)
}

/// One pinned vNUMA node, as the search sees it.
#[derive(Debug, Clone)]
struct PinnedNode {
    vnode: u32,
    memory_mb: u64,
    /// Memory in MiB, or pages of the VM's hugepage size.
    demand: u64,
    /// Allowed host node ids, sorted, without duplicates.
    allowed: Vec<u32>,
    /// The pinned pCPU sets of the node's vCPUs (for the CPU-pinning rule).
    pinned_pcpus: Vec<Vec<u32>>,
}

/// [`find_numa_assignment`] prepared once per VM, for checking many hosts: what depends
/// only on the VM (which vNUMA nodes are pinned, their demand, their allowed host nodes and
/// CPU pinning) is worked out here, so [`NumaRequest::fit`] does per-host work only. When
/// every pinned vNUMA node may go to exactly one host node there is nothing to search: the
/// demand per host node is summed and compared with its room.
#[derive(Debug, Clone)]
pub struct NumaRequest {
    /// Largest demand first.
    items: Vec<PinnedNode>,
    page_kb: Option<u64>,
    strict: bool,
    /// Apply the CPU-pinning rule.
    pinned_cpus: bool,
    /// `items` positions in vNUMA node order (for reports that name the first node).
    by_vnode: Vec<usize>,
    /// Without the CPU-pinning rule and with every pinned vNUMA node allowed on exactly
    /// one host node: the demand per host node, summed once (nothing to search).
    single: Option<Vec<(u32, u64)>>,
    /// `single` when it is memory (not hugepages) on one or two host nodes, the second
    /// repeating the first for one: what [`NumaRequest::fits_quickly`] checks inline.
    memory_on_two: Option<[(u32, u64); 2]>,
}

/// The memory room of `node` of `host`: its free memory minus the pending NUMA memory on
/// it (most hosts have none pending, checked first).
#[inline(always)]
fn memory_room(host: &Host, node: &NumaNode) -> u64 {
    let pending = &host.pending.numa_memory;
    if pending.is_empty() {
        node.free_memory_mb
    } else {
        node.free_memory_mb
            .saturating_sub(host.pending.numa_memory_of(node.index))
    }
}

/// Host node `id` when the host lists it at position `id`, as hosts mostly do (node
/// indexes are unique: the engine refuses a snapshot that lists one twice).
#[inline(always)]
fn node_at_its_index(host: &Host, id: u32) -> Option<&NumaNode> {
    host.numa_nodes.get(id as usize).filter(|n| n.index == id)
}

/// [`NumaRequest::fits_quickly`] for a loop over hosts (see [`NumaRequest::quick`]). Copy
/// it into the loop's closure: the closure reaches the loop by reference, and what it holds
/// by value the compiler may keep in registers across the loop's calls (the slow path),
/// while what it reads through a pointer it loads again after each of them.
#[derive(Debug, Clone, Copy)]
pub struct QuickNumaFit<'a> {
    memory_on_two: Option<[(u32, u64); 2]>,
    request: &'a NumaRequest,
}

impl QuickNumaFit<'_> {
    /// [`NumaRequest::fits_quickly`].
    #[inline(always)]
    pub fn fits(&self, host: &Host) -> bool {
        match self.memory_on_two {
            Some([first, second]) => {
                let fits = |(id, sum): (u32, u64)| {
                    node_at_its_index(host, id).is_some_and(|node| sum <= memory_room(host, node))
                };
                fits(first) && fits(second)
            }
            None => self.request.fits_quickly_by_sums(host),
        }
    }

    /// The request this check was taken from.
    pub fn request(&self) -> &NumaRequest {
        self.request
    }
}

impl NumaRequest {
    /// Prepares the check of `vm`'s pinned vNUMA nodes, with the CPU-pinning rule when
    /// `pinning` is given.
    pub fn new(vm: &Vm, pinning: Option<&CpuPinning>) -> Self {
        let page_kb = vm.hugepage_size_kb.filter(|&s| s > 0);
        let mut items: Vec<PinnedNode> = vm
            .numa_nodes
            .iter()
            .filter(|n| !n.pinned_host_nodes.is_empty())
            .map(|n| {
                let mut allowed = n.pinned_host_nodes.clone();
                allowed.sort_unstable();
                allowed.dedup();
                let pinned_pcpus = match pinning {
                    Some(p) => n
                        .cpus
                        .iter()
                        .filter_map(|&c| p.pcpus_of(c).map(<[u32]>::to_vec))
                        .collect(),
                    None => Vec::new(),
                };
                PinnedNode {
                    vnode: n.index,
                    memory_mb: n.memory_mb,
                    demand: match page_kb {
                        Some(size) => HugePages::needed(n.memory_mb, size),
                        None => n.memory_mb,
                    },
                    allowed,
                    pinned_pcpus,
                }
            })
            .collect();
        // Missing-node and mismatch reports name the first vNUMA node in VM order, so keep
        // that order for the checks and sort a copy for the search.
        items.sort_by(|a, b| b.demand.cmp(&a.demand).then(a.vnode.cmp(&b.vnode)));
        let mut by_vnode: Vec<usize> = (0..items.len()).collect();
        by_vnode.sort_by_key(|&i| items[i].vnode);
        let single = (pinning.is_none() && items.iter().all(|i| i.allowed.len() == 1)).then(|| {
            let mut sums: Vec<(u32, u64)> = Vec::new();
            for item in &items {
                let node = item.allowed[0];
                match sums.iter_mut().find(|(n, _)| *n == node) {
                    Some((_, sum)) => *sum = sum.saturating_add(item.demand),
                    None => sums.push((node, item.demand)),
                }
            }
            sums
        });
        let memory_on_two = match single.as_deref() {
            Some(&[first]) if page_kb.is_none() => Some([first, first]),
            Some(&[first, second]) if page_kb.is_none() => Some([first, second]),
            _ => None,
        };
        Self {
            items,
            page_kb,
            strict: vm.numa_tune == NumaTuneMode::Strict,
            pinned_cpus: pinning.is_some(),
            by_vnode,
            single,
            memory_on_two,
        }
    }

    /// Whether the VM has any vNUMA node pinned to host nodes.
    pub fn applies(&self) -> bool {
        !self.items.is_empty()
    }

    /// The room of host node `id`: free memory minus pending NUMA memory, or free pages of
    /// the VM's size. `None` when the host lacks the node.
    #[inline]
    fn room(&self, host: &Host, id: u32) -> Option<u64> {
        let node = match node_at_its_index(host, id) {
            Some(node) => node,
            None => host.numa_nodes.iter().find(|n| n.index == id)?,
        };
        Some(self.room_on(host, node))
    }

    /// The room on `node` of `host` (see [`NumaRequest::room`]).
    #[inline(always)]
    fn room_on(&self, host: &Host, node: &NumaNode) -> u64 {
        match self.page_kb {
            Some(size) => HugePages::count_of(&node.free_hugepages, size),
            None => memory_room(host, node),
        }
    }

    /// What the room is counted in, for reports.
    fn resource_name(&self) -> String {
        match self.page_kb {
            Some(size) => format!("{size} KiB hugepages"),
            None => "memory".to_string(),
        }
    }

    /// Matches the pinned vNUMA nodes to `host`'s nodes (see [`find_numa_assignment`]).
    pub fn fit(&self, host: &Host) -> NumaFit {
        self.fit_with(host, true)
    }

    /// Whether `host` surely fits, found with a few loads per node and no answer built: in
    /// the common case (each pinned vNUMA node allowed on one host node, no CPU-pinning
    /// rule), the summed demand on each host node against its room. `false` decides
    /// nothing: [`NumaRequest::check`] then gives the answer. For a filter's fast pass loop
    /// (see [`Verdicts::judge`](crate::Verdicts::judge)); `check` starts with it too.
    ///
    /// A host whose node is not listed at its index position is left to `check`.
    ///
    /// Memory on one or two host nodes, the most common request, is checked inline: in a
    /// wasm guest, a call per host costs more than the check (the callee saves and restores
    /// registers, and checks the stack and the call's deadline, on every call).
    #[inline(always)]
    pub fn fits_quickly(&self, host: &Host) -> bool {
        self.quick().fits(host)
    }

    /// [`NumaRequest::fits_quickly`] with the part it checks inline copied out of the
    /// request: a loop over hosts that captures it by value keeps the nodes and sums in
    /// locals (read through the request, a guest loads them from memory for every host).
    #[inline(always)]
    pub fn quick(&self) -> QuickNumaFit<'_> {
        QuickNumaFit {
            memory_on_two: self.memory_on_two,
            request: self,
        }
    }

    /// [`NumaRequest::fits_quickly`] for any summed request: each host node's sum against
    /// its room.
    #[inline(never)]
    fn fits_quickly_by_sums(&self, host: &Host) -> bool {
        match &self.single {
            Some(sums) if !self.items.is_empty() => sums.iter().all(|&(id, sum)| {
                node_at_its_index(host, id).is_some_and(|node| sum <= self.room_on(host, node))
            }),
            _ => false,
        }
    }

    /// [`NumaRequest::fit`] for callers that only ask whether the VM fits (filters,
    /// weights): the same answer, but [`NumaFit::Fits`] carries no placements, so a host
    /// that fits costs no allocation.
    #[inline]
    pub fn check(&self, host: &Host) -> NumaFit {
        if self.fits_quickly(host) {
            return NumaFit::Fits(Vec::new());
        }
        self.fit_with(host, false)
    }

    /// The answer for `host`. The common case (each pinned vNUMA node allowed on one host
    /// node, no CPU-pinning rule) is a few loads per node, kept small so that it compiles to
    /// tight code (in a guest, Cranelift spills a large function's registers on every path);
    /// reports, placements and the search are out of line.
    fn fit_with(&self, host: &Host, placements: bool) -> NumaFit {
        if self.items.is_empty() {
            return NumaFit::NotPinned;
        }
        if host.numa_nodes.is_empty() {
            return NumaFit::NoNumaSupport;
        }
        let Some(sums) = &self.single else {
            return self.fit_by_search(host, placements);
        };
        // Nothing to choose: each host node's summed demand against its room. The sums'
        // nodes are every item's one allowed node, so each is looked up once here.
        for &(node, sum) in sums {
            match self.room(host, node) {
                Some(room) if sum <= room => {}
                _ => return self.single_shortfall(host, sums),
            }
        }
        if placements {
            NumaFit::Fits(self.single_placements())
        } else {
            NumaFit::Fits(Vec::new())
        }
    }

    /// The pinned vNUMA nodes in vNUMA node order.
    fn items_by_vnode(&self) -> impl Iterator<Item = &PinnedNode> {
        self.by_vnode.iter().map(|&i| &self.items[i])
    }

    /// The pinned vNUMA node (first in vNUMA order) whose allowed host node `host` lacks.
    #[cold]
    #[inline(never)]
    fn missing_node(&self, host: &Host) -> Option<NumaFit> {
        self.items_by_vnode().find_map(|item| {
            item.allowed
                .iter()
                .find(|&&h| !host.numa_nodes.iter().any(|n| n.index == h))
                .map(|&missing| NumaFit::MissingHostNode {
                    vnode: item.vnode,
                    host_node: missing,
                })
        })
    }

    /// Where each pinned vNUMA node goes when each has one allowed host node.
    #[inline(never)]
    fn single_placements(&self) -> Vec<NodePlacement> {
        self.items_by_vnode()
            .map(|item| NodePlacement {
                vnode: item.vnode,
                host_node: item.allowed[0],
                memory_mb: item.memory_mb,
            })
            .collect()
    }

    /// The answer when a host node of `sums` is missing or short of room: the missing node
    /// (first in vNUMA order), else loose or strict, with the first node short of room.
    #[cold]
    #[inline(never)]
    fn single_shortfall(&self, host: &Host, sums: &[(u32, u64)]) -> NumaFit {
        if let Some(missing) = self.missing_node(host) {
            return missing;
        }
        if !self.strict {
            return NumaFit::FitsLoosely;
        }
        let (mut needed, mut free, mut short) = (0u64, 0u64, None);
        for &(node, sum) in sums {
            let room = self.room(host, node).expect("no node is missing");
            if sum > room && short.is_none() {
                short = Some(NodeShortfall {
                    node,
                    needed: sum,
                    free: room,
                });
            }
            needed = needed.saturating_add(sum);
            free = free.saturating_add(room);
        }
        NumaFit::NoRoom {
            resource: self.resource_name(),
            needed,
            free,
            short,
        }
    }

    /// [`NumaRequest::fit_with`] when a vNUMA node may go to several host nodes or the
    /// CPU-pinning rule applies: a search over the assignments.
    #[inline(never)]
    fn fit_by_search(&self, host: &Host, placements: bool) -> NumaFit {
        if let Some(missing) = self.missing_node(host) {
            return missing;
        }
        // Allowed nodes per item on this host (the CPU-pinning rule depends on the host's
        // node CPUs); a vNUMA node left with none is reported, first in vNUMA order.
        let pins_agree = |item: &PinnedNode, id: u32| {
            let node = host
                .numa_nodes
                .iter()
                .find(|n| n.index == id)
                .expect("checked above");
            item.pinned_pcpus
                .iter()
                .all(|pcpus| pcpus.iter().any(|p| node.cpus.contains(p)))
        };
        if self.pinned_cpus {
            if let Some(item) = self
                .items_by_vnode()
                .find(|i| !i.allowed.iter().any(|&id| pins_agree(i, id)))
            {
                return NumaFit::PinningMismatch { vnode: item.vnode };
            }
        }
        let allowed: Vec<Vec<u32>> = self
            .items
            .iter()
            .map(|item| {
                if self.pinned_cpus {
                    item.allowed
                        .iter()
                        .copied()
                        .filter(|&id| pins_agree(item, id))
                        .collect()
                } else {
                    item.allowed.clone()
                }
            })
            .collect();

        // Host nodes in play and their room.
        let mut node_ids: Vec<u32> = allowed.iter().flatten().copied().collect();
        node_ids.sort_unstable();
        node_ids.dedup();
        let room: Vec<u64> = node_ids
            .iter()
            .map(|&id| self.room(host, id).expect("checked above"))
            .collect();
        let positions: Vec<Vec<usize>> = allowed
            .iter()
            .map(|a| {
                a.iter()
                    .map(|h| node_ids.binary_search(h).expect("collected above"))
                    .collect()
            })
            .collect();
        let demands: Vec<u64> = self.items.iter().map(|i| i.demand).collect();

        let found = if positions.iter().all(|p| p.len() == 1) {
            // Nothing to choose: each node's demand is summed and compared with its room.
            let mut used = vec![0u64; node_ids.len()];
            for (p, d) in positions.iter().zip(&demands) {
                used[p[0]] = used[p[0]].saturating_add(*d);
            }
            let fits = used.iter().zip(&room).all(|(u, r)| u <= r);
            Some(fits.then(|| positions.iter().map(|p| p[0]).collect::<Vec<usize>>()))
        } else {
            // Host nodes allowed for the same set of vNUMA nodes are interchangeable.
            let mut class_of: Vec<Vec<usize>> = vec![Vec::new(); node_ids.len()];
            for (i, p) in positions.iter().enumerate() {
                for &pos in p {
                    class_of[pos].push(i);
                }
            }
            let class: Vec<usize> = (0..node_ids.len())
                .map(|pos| {
                    (0..=pos)
                        .find(|&other| class_of[other] == class_of[pos])
                        .expect("pos itself matches")
                })
                .collect();
            let allowed_refs: Vec<&[usize]> = positions.iter().map(Vec::as_slice).collect();
            let mut search = Search::new(&demands, &allowed_refs, &class);
            let mut remaining = room.clone();
            match search.run(0, &mut remaining) {
                Some(true) => Some(Some(search.chosen)),
                Some(false) => Some(None),
                None => None,
            }
        };
        match found {
            Some(Some(_)) if !placements => NumaFit::Fits(Vec::new()),
            Some(Some(chosen)) => {
                let mut out: Vec<NodePlacement> = self
                    .items
                    .iter()
                    .zip(chosen)
                    .map(|(item, pos)| NodePlacement {
                        vnode: item.vnode,
                        host_node: node_ids[pos],
                        memory_mb: item.memory_mb,
                    })
                    .collect();
                out.sort_by_key(|p| p.vnode);
                NumaFit::Fits(out)
            }
            _ if !self.strict => NumaFit::FitsLoosely,
            Some(None) => NumaFit::NoRoom {
                resource: self.resource_name(),
                needed: demands.iter().sum(),
                free: room.iter().sum(),
                // A vNUMA node too large for every node it may go to is the one to name;
                // otherwise the nodes only fail together and no single node is short.
                short: positions
                    .iter()
                    .zip(&demands)
                    .find_map(|(allowed, &demand)| {
                        let (&best, &free) = allowed
                            .iter()
                            .map(|&p| (&node_ids[p], &room[p]))
                            .max_by_key(|&(_, free)| *free)?;
                        (demand > free).then_some(NodeShortfall {
                            node: best,
                            needed: demand,
                            free,
                        })
                    }),
            },
            None => NumaFit::SearchLimit,
        }
    }
}

struct Search<'a> {
    demands: &'a [u64],
    allowed: &'a [&'a [usize]],
    class: &'a [usize],
    /// For each level, the host nodes that level's and the later items may use.
    usable_from: Vec<Vec<usize>>,
    /// For each level, the remaining-room states known to have no answer.
    failed: Vec<HashSet<Vec<u64>>>,
    steps: u32,
    chosen: Vec<usize>,
}

impl<'a> Search<'a> {
    fn new(demands: &'a [u64], allowed: &'a [&'a [usize]], class: &'a [usize]) -> Self {
        let mut usable_from = vec![Vec::new(); demands.len()];
        let mut seen = BTreeSet::new();
        for i in (0..demands.len()).rev() {
            seen.extend(allowed[i].iter().copied());
            usable_from[i] = seen.iter().copied().collect();
        }
        Self {
            demands,
            allowed,
            class,
            usable_from,
            failed: (0..demands.len()).map(|_| HashSet::new()).collect(),
            steps: 0,
            chosen: vec![0; demands.len()],
        }
    }

    /// `Some(true)`: found (in `chosen`); `Some(false)`: none exists; `None`: step limit.
    fn run(&mut self, i: usize, remaining: &mut Vec<u64>) -> Option<bool> {
        if i == self.demands.len() {
            return Some(true);
        }
        self.steps += 1;
        if self.steps > NUMA_SEARCH_STEP_LIMIT {
            return None;
        }
        // Room left on the nodes the remaining items may use must cover their demand.
        let rest: u64 = self.demands[i..].iter().sum();
        let room: u64 = self.usable_from[i].iter().map(|&pos| remaining[pos]).sum();
        if room < rest || self.failed[i].contains(remaining.as_slice()) {
            return Some(false);
        }
        let demand = self.demands[i];
        let mut tried: Vec<(usize, u64)> = Vec::new();
        for &pos in self.allowed[i] {
            if remaining[pos] < demand {
                continue;
            }
            let signature = (self.class[pos], remaining[pos]);
            if tried.contains(&signature) {
                continue;
            }
            tried.push(signature);
            remaining[pos] -= demand;
            self.chosen[i] = pos;
            let found = self.run(i + 1, remaining);
            remaining[pos] += demand;
            match found {
                Some(true) => return Some(true),
                Some(false) => {}
                None => return None,
            }
        }
        self.failed[i].insert(remaining.clone());
        Some(false)
    }
}

/// Whether the VM counts as high-performance or pinned for the HP units and for its default
/// migration mode: a high-performance VM, or one with host CPU passthrough, a CPU pinning
/// string, an exclusive pinning policy, or vNUMA nodes pinned to host nodes.
pub fn is_hp_or_pinned(vm: &Vm) -> bool {
    vm.vm_type == crate::VmType::HighPerformance
        || vm.cpu_passthrough
        || vm
            .cpu_pinning
            .as_deref()
            .is_some_and(|p| !p.trim().is_empty())
        || vm.cpu_pinning_policy != PinningPolicy::None
        || vm
            .numa_nodes
            .iter()
            .any(|n| !n.pinned_host_nodes.is_empty())
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // the case tables spell out their rows
mod tests {
    use super::*;
    use crate::testing::{host, vm, XorShift};

    /// A host's unavailable pCPUs fold dedicated, pending pinned and offline pCPUs (below
    /// the thread count) onto bit `id % 64`; a host with more offline pCPUs than residues
    /// ends with every bit set.
    #[test]
    fn unavailable_pcpus_fold_dedicated_pending_and_offline_pcpus() {
        let small = || host("h").cpu(1, 4, 2); // pCPUs 0-7
        let big = || host("h").cpu(2, 24, 2); // pCPUs 0-95
        let cases: [(&str, Host, u64); 7] = [
            ("nothing taken, all online", small().build(), 0),
            (
                "dedicated and pending pinned",
                small()
                    .dedicated_cpus([1])
                    .pending_pinned_cpus([3, 3])
                    .build(),
                0b1010,
            ),
            (
                "ids past 63 fold onto their residue",
                big().dedicated_cpus([69]).pending_pinned_cpus([64]).build(),
                0b10_0001,
            ),
            (
                "offline below the thread count",
                small().online_cpus(0..6).build(),
                0b1100_0000,
            ),
            (
                "online ids past the topology change nothing",
                small().online_cpus((0..8).chain([100])).build(),
                0,
            ),
            (
                "offline past 63 folds too",
                big().online_cpus((0..96).filter(|&c| c != 70)).build(),
                1 << 6,
            ),
            (
                "more offline pCPUs than bits: every bit",
                host("h").cpu(1, 1_000, 2).online_cpus([0]).build(),
                u64::MAX,
            ),
        ];
        for (case, h, want) in cases {
            assert_eq!(unavailable_pcpus(&h), want, "{case}");
        }
        assert_eq!(fold_pcpus([0, 64, 65, 127]), 0b11 | 1 << 63);
        assert_eq!(fold_pcpus([]), 0);
    }

    #[test]
    fn whole_cores_are_counted_a_word_at_a_time_like_core_by_core() {
        let mut rng = crate::testing::XorShift::new(7);
        // (bound, threads per core): inline and heap sets, odd bounds, 1-4 threads.
        let cases = [
            (16, 2),
            (17, 2),
            (128, 2),
            (2_050, 2),
            (64, 1),
            (99, 3),
            (2_048, 4),
        ];
        for (bound, tpc) in cases {
            for density in [0u64, 50, 90, 100] {
                let mut set = CpuBits::new(bound);
                for id in 0..bound + 3 {
                    if rng.below(100) < density {
                        set.insert(id);
                    }
                }
                let naive = (0..bound / tpc)
                    .filter(|c| (c * tpc..c * tpc + tpc).all(|id| set.contains(id)))
                    .count() as u32;
                assert_eq!(
                    set.whole_cores(tpc),
                    naive,
                    "bound {bound}, tpc {tpc}, {density}%"
                );
            }
        }
    }

    #[test]
    fn cpu_bits_count_each_id_once_below_the_bound_inline_or_on_the_heap() {
        // (bound, ids inserted, ids removed, expected members)
        let cases: [(u32, &[u32], &[u32], &[u32]); 4] = [
            (8, &[1, 1, 7, 9, 100], &[], &[1, 7]),
            (128, &[0, 63, 64, 127, 128], &[63], &[0, 64, 127]),
            (1_024, &[1_023, 1_024, 5], &[6], &[5, 1_023]),
            (3_000, &[2_999, 1_500, 1_500, 3_000], &[2_999], &[1_500]),
        ];
        for (bound, insert, remove, members) in cases {
            let mut bits = CpuBits::new(bound);
            assert!(bits.is_empty());
            let new = insert.iter().filter(|&&id| bits.insert(id)).count();
            let distinct: BTreeSet<u32> = insert.iter().copied().filter(|&i| i < bound).collect();
            assert_eq!(new, distinct.len(), "bound {bound}: each id new once");
            remove.iter().for_each(|&id| bits.remove(id));
            let found: Vec<u32> = (0..bound + 8).filter(|&id| bits.contains(id)).collect();
            assert_eq!(found, members, "bound {bound}");
            assert_eq!(bits.len() as usize, members.len());
            let mut all = CpuBits::new(bound);
            all.insert_all();
            assert_eq!(all.len(), bound, "bound {bound}: all ids");
            assert!(!all.contains(bound));
            // Removing the set of `bits` from all ids leaves exactly the others.
            all.remove_all(&bits);
            let rest: Vec<u32> = (0..bound).filter(|&id| all.contains(id)).collect();
            let others: Vec<u32> = (0..bound).filter(|id| !members.contains(id)).collect();
            assert_eq!(rest, others, "bound {bound}: all ids but the members");
        }
    }

    #[test]
    fn pinning_strings_parse_to_vcpu_sets() {
        let cases: &[(&str, &[(u32, &[u32])])] = &[
            ("0#1-3_1#4", &[(0, &[1, 2, 3]), (1, &[4])]),
            ("0#0,2,4", &[(0, &[0, 2, 4])]),
            ("0#0-7,^3,^5", &[(0, &[0, 1, 2, 4, 6, 7])]),
            ("1#5_0#6", &[(0, &[6]), (1, &[5])]),
            (" 0 # 1 - 2 ", &[(0, &[1, 2])]),
            ("0#3,3,2-3", &[(0, &[2, 3])]),
            ("", &[]),
        ];
        for (text, want) in cases {
            let p = CpuPinning::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let got: Vec<(u32, Vec<u32>)> = p
                .entries()
                .iter()
                .map(|e| (e.vcpu, e.pcpus.clone()))
                .collect();
            let want: Vec<(u32, Vec<u32>)> = want.iter().map(|(v, c)| (*v, c.to_vec())).collect();
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn malformed_pinning_strings_are_errors_naming_the_entry() {
        let cases = [
            ("0#1_1", "entry 2 `1` has no `#`"),
            ("0#", "entry 1: pCPU is missing"),
            ("#3", "entry 1: vCPU is missing"),
            ("0#a", "entry 1: pCPU `a` is not a number"),
            ("0#3-1", "entry 1: range `3-1` must go upwards"),
            ("0#2-2", "entry 1: range `2-2` must go upwards"),
            ("0#1_0#2", "entry 2: vCPU 0 is pinned twice"),
            ("0#1,^1", "entry 1: vCPU 0 is left with no pCPU"),
            ("0#^1", "entry 1: vCPU 0 is left with no pCPU"),
            ("0#^1-3", "exclusion `^1-3`"),
            ("0#0-99999", "99999 is above the highest pCPU id"),
            ("0#1,,2", "entry 1: pCPU is missing"),
            ("0#-1", "entry 1: range `-1`: is missing"),
            ("x#1", "entry 1: vCPU `x` is not a number"),
            ("0#1__1#2", "entry 2 `` has no `#`"),
        ];
        for (text, want) in cases {
            let err = CpuPinning::parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(err.starts_with(&format!("pinning `{text}`")), "{err}");
        }
    }

    #[test]
    fn pinning_of_a_vcpu_the_vm_lacks_is_an_error() {
        let p = CpuPinning::parse("0#1_3#2").unwrap();
        assert!(p.check_vcpus("0#1_3#2", 4).is_ok());
        let err = p.check_vcpus("0#1_3#2", 2).unwrap_err().to_string();
        assert!(
            err.contains("vCPU 3 is pinned but the VM has 2 vCPU(s)"),
            "{err}"
        );
    }

    #[test]
    fn cpu_locations_follow_the_linear_numbering() {
        let h = host("h").cpu(2, 4, 2).build();
        let cases = [
            (0, (0, 0, 0)),
            (1, (0, 0, 1)),
            (2, (0, 1, 0)),
            (7, (0, 3, 1)),
            (8, (1, 0, 0)),
            (15, (1, 3, 1)),
        ];
        for (cpu, (socket, core, thread)) in cases {
            assert_eq!(
                cpu_location(&h.cpu, cpu),
                Some(CpuLocation {
                    socket,
                    core,
                    thread
                }),
                "cpu {cpu}"
            );
        }
        assert_eq!(cpu_location(&h.cpu, 16), None);
    }

    #[test]
    fn dedicated_allocation_skips_offline_dedicated_and_pending_pcpus() {
        // 2 sockets x 2 cores x 2 threads = 8 CPUs.
        let cases: &[(&str, Host, PinningPolicy, u32, Result<Vec<u32>, &str>)] = &[
            (
                "dedicated fills the freest socket first",
                host("h").cpu(2, 2, 2).dedicated_cpus([0]).build(),
                PinningPolicy::Dedicated,
                3,
                Ok(vec![4, 5, 6]),
            ),
            (
                "pending pins count as taken",
                host("h")
                    .cpu(2, 2, 2)
                    .pending_pinned_cpus([4, 5, 6])
                    .build(),
                PinningPolicy::Dedicated,
                4,
                Ok(vec![0, 1, 2, 3]),
            ),
            (
                "offline pCPUs are never allocated",
                host("h").cpu(1, 2, 2).online_cpus([0, 1, 3]).build(),
                PinningPolicy::Dedicated,
                4,
                Err("needs 4 free online pCPU(s), host has 3"),
            ),
            (
                "isolate-threads takes whole cores",
                host("h").cpu(2, 2, 2).dedicated_cpus([1]).build(),
                PinningPolicy::IsolateThreads,
                2,
                Ok(vec![4, 5, 6, 7]),
            ),
            (
                "isolate-threads skips a core with an offline sibling",
                host("h").cpu(1, 3, 2).online_cpus([0, 1, 2, 4, 5]).build(),
                PinningPolicy::IsolateThreads,
                2,
                Ok(vec![0, 1, 4, 5]),
            ),
            (
                "isolate-threads counts whole cores only",
                host("h").cpu(1, 2, 2).pending_pinned_cpus([0]).build(),
                PinningPolicy::IsolateThreads,
                2,
                Err("needs 2 whole free core(s), host has 1"),
            ),
            (
                "shared policies take nothing",
                host("h").cpu(1, 2, 2).build(),
                PinningPolicy::Manual,
                2,
                Ok(vec![]),
            ),
        ];
        for (name, h, policy, vcpus, want) in cases {
            let v = vm("v").vcpus(*vcpus).pinning_policy(*policy).build();
            let got = allocate_dedicated(h, &v).map_err(|e| e.to_string());
            match want {
                Ok(cpus) => assert_eq!(got.as_ref(), Ok(cpus), "{name}"),
                Err(msg) => assert_eq!(got.unwrap_err(), *msg, "{name}"),
            }
        }
    }

    #[test]
    fn dedicated_pcpus_follow_the_vnuma_assignment() {
        // Node 0 = pCPUs 0-3 (socket 0), node 1 = 4-7 (socket 1); socket 1 is freer, so
        // without the assignment the VM would go there whole.
        let h = host("h")
            .cpu(2, 4, 1)
            .numa_node(0, [0, 1, 2, 3], 8_192)
            .numa_node(1, [4, 5, 6, 7], 8_192)
            .dedicated_cpus([0])
            .build();
        let v = vm("v")
            .vcpus(3)
            .pinning_policy(PinningPolicy::Dedicated)
            .vnuma(0, 1_024, [0, 1], &[0])
            .vnuma(1, 1_024, [2], &[1])
            .build();
        assert_eq!(allocate_dedicated(&h, &v), Ok(vec![4, 5, 6]));
        let NumaFit::Fits(placements) = find_numa_assignment(&v, &h, None) else {
            panic!("fits")
        };
        assert_eq!(
            allocate_dedicated_on_nodes(&h, &v, &placements),
            Ok(vec![1, 2, 4])
        );
        // Node 0 has too few free pCPUs for vNUMA 0: fall back to anywhere.
        let crowded = host("h")
            .cpu(2, 4, 1)
            .numa_node(0, [0, 1, 2, 3], 8_192)
            .numa_node(1, [4, 5, 6, 7], 8_192)
            .dedicated_cpus([0, 1, 2])
            .build();
        assert_eq!(
            allocate_dedicated_on_nodes(&crowded, &v, &placements),
            allocate_dedicated(&crowded, &v)
        );
    }

    /// The filter's counting check agrees with the allocation on random hosts.
    #[test]
    fn check_dedicated_agrees_with_allocation() {
        let mut rng = XorShift::new(5);
        for case in 0..2_000 {
            let (sockets, cores, tpc) = (
                1 + rng.below(2) as u32,
                1 + rng.below(4) as u32,
                1 + rng.below(2) as u32,
            );
            let threads = sockets * cores * tpc;
            let mut h = host("h").cpu(sockets, cores, tpc);
            if rng.below(2) == 0 {
                h = h.online_cpus((0..threads).filter(|_| rng.below(5) > 0));
            }
            let h = h
                .dedicated_cpus((0..threads).filter(|_| rng.below(4) == 0))
                .pending_pinned_cpus((0..threads + 2).filter(|_| rng.below(5) == 0))
                .build();
            let policy =
                [PinningPolicy::Dedicated, PinningPolicy::IsolateThreads][rng.below(2) as usize];
            let v = vm("v")
                .vcpus(1 + rng.below(threads as u64 + 1) as u32)
                .pinning_policy(policy)
                .build();
            assert_eq!(
                check_dedicated(&h, &v),
                allocate_dedicated(&h, &v).map(|_| ()),
                "case {case}"
            );
        }
    }

    fn numa_host() -> crate::testing::HostBuilder {
        host("h")
            .cpu(2, 4, 1)
            .numa_node(0, [0, 1, 2, 3], 8_192)
            .numa_node(1, [4, 5, 6, 7], 8_192)
    }

    fn assignment(fit: &NumaFit) -> Vec<(u32, u32)> {
        match fit {
            NumaFit::Fits(p) => p.iter().map(|p| (p.vnode, p.host_node)).collect(),
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    #[test]
    fn numa_assignment_cases() {
        let cases: Vec<(&str, Host, Vm, Result<Vec<(u32, u32)>, &str>)> = vec![
            (
                "one node each",
                numa_host().build(),
                vm("v")
                    .vnuma(0, 6_000, [0], &[0, 1])
                    .vnuma(1, 6_000, [1], &[0, 1])
                    .build(),
                Ok(vec![(0, 0), (1, 1)]),
            ),
            (
                "backtracking: the big node needs node 1, so the small one moves",
                numa_host().pending_numa_mb(0, 4_000).build(),
                vm("v")
                    .vnuma(0, 2_000, [0], &[0, 1])
                    .vnuma(1, 7_000, [1], &[0, 1])
                    .build(),
                Ok(vec![(0, 0), (1, 1)]),
            ),
            (
                "one allowed node per vnode: nothing to choose",
                numa_host().build(),
                vm("v")
                    .vnuma(0, 1_000, [0], &[1])
                    .vnuma(1, 1_000, [1], &[1])
                    .build(),
                Ok(vec![(0, 1), (1, 1)]),
            ),
            (
                "pending NUMA memory makes a node too small",
                numa_host().pending_numa_mb(1, 3_000).build(),
                vm("v").vnuma(0, 6_000, [0], &[1]).build(),
                Err("NoRoom"),
            ),
            (
                "two vnodes on one host node add up",
                numa_host().build(),
                vm("v")
                    .vnuma(0, 5_000, [0], &[0])
                    .vnuma(1, 5_000, [1], &[0])
                    .build(),
                Err("NoRoom"),
            ),
            (
                "host without NUMA",
                host("h").build(),
                vm("v").vnuma(0, 1_000, [0], &[0]).build(),
                Err("NoNumaSupport"),
            ),
            (
                "pinned index missing on the host",
                numa_host().build(),
                vm("v").vnuma(0, 1_000, [0], &[0, 2]).build(),
                Err("MissingHostNode { vnode: 0, host_node: 2 }"),
            ),
            (
                "one allowed node per vnode, one missing: named with its vnode",
                numa_host().build(),
                vm("v")
                    .vnuma(0, 1_000, [0], &[1])
                    .vnuma(1, 1_000, [1], &[5])
                    .build(),
                Err("MissingHostNode { vnode: 1, host_node: 5 }"),
            ),
            (
                "one allowed node per vnode, two missing: the first in vNUMA order",
                numa_host().build(),
                vm("v")
                    .vnuma(0, 1_000, [0], &[7])
                    .vnuma(1, 1_000, [1], &[6])
                    .build(),
                Err("MissingHostNode { vnode: 0, host_node: 7 }"),
            ),
            (
                "unpinned vnodes are not checked",
                host("h").build(),
                vm("v").vnuma(0, 100_000, [0], &[]).build(),
                Err("NotPinned"),
            ),
            (
                "hugepages: free pages of the VM's size on the node",
                numa_host()
                    .node_hugepages(0, 1_048_576, 2)
                    .node_hugepages(1, 2_048, 100_000)
                    .node_hugepages(1, 1_048_576, 4)
                    .build(),
                vm("v")
                    .hugepages(1_048_576)
                    .vnuma(0, 3_072, [0], &[0, 1])
                    .build(),
                Ok(vec![(0, 1)]),
            ),
            (
                "hugepages of another size do not count",
                numa_host().node_hugepages(0, 2_048, 1_000_000).build(),
                vm("v")
                    .hugepages(1_048_576)
                    .vnuma(0, 1_024, [0], &[0])
                    .build(),
                Err("NoRoom"),
            ),
        ];
        for (name, h, v, want) in cases {
            let fit = find_numa_assignment(&v, &h, None);
            // `check` answers the same without building the placements.
            let request = NumaRequest::new(&v, None);
            let checked = request.check(&h);
            // The fast check (where `check` starts) passes a host only when the assignment
            // search fits it (and, in the common case of one allowed node per pinned vNUMA
            // node, every host the search fits).
            if request.fits_quickly(&h) {
                assert!(matches!(fit, NumaFit::Fits(_)), "{name}: fits quickly");
            } else if request.single.is_some() && !h.numa_nodes.is_empty() {
                assert!(!matches!(fit, NumaFit::Fits(_)), "{name}: one node each");
            }
            match &fit {
                NumaFit::Fits(_) => assert_eq!(checked, NumaFit::Fits(Vec::new()), "{name}"),
                other => assert_eq!(&checked, other, "{name}"),
            }
            match want {
                Ok(a) => assert_eq!(assignment(&fit), a, "{name}"),
                Err(variant) => assert!(format!("{fit:?}").starts_with(variant), "{name}: {fit:?}"),
            }
        }
    }

    #[test]
    fn loose_tune_modes_pass_without_room() {
        let h = numa_host().pending_numa_mb(0, 8_000).build();
        let v = vm("v").vnuma(0, 4_000, [0], &[0]);
        assert!(matches!(
            find_numa_assignment(&v.clone().build(), &h, None),
            NumaFit::NoRoom { .. }
        ));
        for mode in [NumaTuneMode::Interleave, NumaTuneMode::Preferred] {
            let fit = find_numa_assignment(&v.clone().numa_tune(mode).build(), &h, None);
            assert_eq!(fit, NumaFit::FitsLoosely, "{mode:?}");
            assert!(fit.passes());
        }
    }

    #[test]
    fn cpu_pinning_restricts_the_host_nodes_a_vnode_may_take() {
        let h = numa_host().build();
        // vCPU 0 pinned to pCPU 5 (node 1): vnode 0 must go to node 1.
        let v = vm("v")
            .vcpus(2)
            .pinning("0#5_1#0")
            .vnuma(0, 1_000, [0], &[0, 1])
            .vnuma(1, 1_000, [1], &[0, 1])
            .build();
        let pinning = CpuPinning::of_vm(&v).unwrap().unwrap();
        let fit = find_numa_assignment(&v, &h, Some(&pinning));
        assert_eq!(assignment(&fit), vec![(0, 1), (1, 0)]);
        // Without the pinning rule the first fit is node 0.
        assert_eq!(
            assignment(&find_numa_assignment(&v, &h, None)),
            vec![(0, 0), (1, 0)]
        );
        let v = vm("v")
            .vcpus(1)
            .pinning("0#5")
            .vnuma(0, 1_000, [0], &[0])
            .build();
        let pinning = CpuPinning::of_vm(&v).unwrap().unwrap();
        assert_eq!(
            find_numa_assignment(&v, &h, Some(&pinning)),
            NumaFit::PinningMismatch { vnode: 0 }
        );
    }

    /// A search that must prove there is no answer over many nodes (every node is short by a
    /// little, but the sums fit) finishes instead of trying every permutation.
    #[test]
    fn numa_search_is_bounded_with_many_nodes() {
        let mut h = host("h").cpu(2, 16, 2);
        for n in 0..16 {
            h = h.numa_node(n, [n * 4, n * 4 + 1, n * 4 + 2, n * 4 + 3], 10_000);
        }
        let h = h.build();
        // 32 vnodes of 6,000 MiB: the sum (192,000) fits in 160,000? No, so use 24 vnodes of
        // 6,000 = 144,000 < 160,000: only one fits per node, so 16 fit and 8 do not.
        let all: Vec<u32> = (0..16).collect();
        let mut v = vm("v").vcpus(24);
        for i in 0..24 {
            v = v.vnuma(i, 6_000, [i], &all);
        }
        let fit = find_numa_assignment(&v.build(), &h, None);
        assert!(matches!(fit, NumaFit::NoRoom { .. }), "{fit:?}");

        // Distinct node sizes and distinct demands defeat the symmetry rule; the failure
        // memo and the step limit still bound it.
        let mut h = host("h").cpu(2, 16, 2);
        for n in 0..16u32 {
            h = h.numa_node(n, [n], 10_000 + u64::from(n) * 7);
        }
        let h = h.build();
        let mut v = vm("v").vcpus(24);
        for i in 0..24u32 {
            v = v.vnuma(i, 5_001 + u64::from(i) * 11, [i], &all);
        }
        let fit = find_numa_assignment(&v.build(), &h, None);
        assert!(
            matches!(fit, NumaFit::NoRoom { .. } | NumaFit::SearchLimit),
            "{fit:?}"
        );
    }

    /// Brute force over every assignment agrees with the search on small random cases.
    #[test]
    fn numa_search_agrees_with_brute_force() {
        let mut rng = XorShift::new(7);
        for case in 0..500 {
            let nodes = 1 + rng.below(4) as u32;
            let mut h = host("h").cpu(1, 8, 1);
            for n in 0..nodes {
                h = h.numa_node(n, [n], 1_000 + rng.below(4) * 1_000);
            }
            for n in 0..nodes {
                if rng.below(2) == 0 {
                    h = h.pending_numa_mb(n, rng.below(3) * 500);
                }
            }
            let h = h.build();
            let vnodes = 1 + rng.below(5) as u32;
            let mut v = vm("v").vcpus(vnodes);
            let mut allowed_sets = Vec::new();
            let mut sizes = Vec::new();
            for i in 0..vnodes {
                let allowed: Vec<u32> = (0..nodes).filter(|_| rng.below(3) > 0).collect();
                let allowed = if allowed.is_empty() { vec![0] } else { allowed };
                let size = 500 + rng.below(6) * 500;
                v = v.vnuma(i, size, [i], &allowed);
                allowed_sets.push(allowed);
                sizes.push(size);
            }
            let v = v.build();
            let room: Vec<u64> = h
                .numa_nodes
                .iter()
                .map(|n| n.free_memory_mb - h.pending.numa_memory_of(n.index).min(n.free_memory_mb))
                .collect();
            let brute = brute_force(&sizes, &allowed_sets, &mut room.clone(), 0);
            let fit = find_numa_assignment(&v, &h, None);
            assert_eq!(fit.passes(), brute, "case {case}: {fit:?}");
            // The fast check passes only hosts that fit, and when every vNUMA node is allowed
            // on one host node it decides every host (inline for one or two host nodes).
            let request = NumaRequest::new(&v, None);
            if request.fits_quickly(&h) {
                assert!(brute, "case {case}: fits quickly but not by brute force");
            } else if request.single.is_some() {
                assert!(!brute, "case {case}: one node each, not quickly, yet fits");
            }
            if let NumaFit::Fits(placements) = fit {
                let mut used = vec![0u64; nodes as usize];
                for p in &placements {
                    assert!(allowed_sets[p.vnode as usize].contains(&p.host_node));
                    used[p.host_node as usize] += p.memory_mb;
                }
                for n in 0..nodes as usize {
                    assert!(used[n] <= room[n], "case {case}: node {n} overfilled");
                }
            }
        }
    }

    fn brute_force(sizes: &[u64], allowed: &[Vec<u32>], room: &mut [u64], i: usize) -> bool {
        if i == sizes.len() {
            return true;
        }
        for &n in &allowed[i] {
            let n = n as usize;
            if room[n] >= sizes[i] {
                room[n] -= sizes[i];
                let ok = brute_force(sizes, allowed, room, i + 1);
                room[n] += sizes[i];
                if ok {
                    return true;
                }
            }
        }
        false
    }

    #[test]
    fn hp_or_pinned_vms_default_to_manual_migration() {
        let cases = [
            ("plain", vm("v").build(), MigrationMode::Migratable),
            (
                "high performance",
                vm("v").vm_type(crate::VmType::HighPerformance).build(),
                MigrationMode::ManualOnly,
            ),
            (
                "passthrough",
                vm("v").passthrough().build(),
                MigrationMode::ManualOnly,
            ),
            (
                "pinning string",
                vm("v").pinning("0#1").build(),
                MigrationMode::ManualOnly,
            ),
            (
                "dedicated",
                vm("v").pinning_policy(PinningPolicy::Dedicated).build(),
                MigrationMode::ManualOnly,
            ),
            (
                "numa pinned",
                vm("v").vnuma(0, 1, [0], &[0]).build(),
                MigrationMode::ManualOnly,
            ),
            (
                "explicit mode wins",
                vm("v")
                    .passthrough()
                    .migration(MigrationMode::Migratable)
                    .build(),
                MigrationMode::Migratable,
            ),
        ];
        for (name, v, want) in cases {
            assert_eq!(v.migration_mode(), want, "{name}");
        }
    }

    use crate::MigrationMode;

    /// Regression (found by the fuzz targets: `N#0-16383` entries expand to 16,384 pCPUs
    /// each, a 10 KB string took gigabytes, and duplicate vCPUs were searched for
    /// quadratically): the parser stops at its bounds with an error naming the bound, and an
    /// error shows a long string cut.
    #[test]
    fn regression_hostile_pinning_strings_are_refused_within_bounds() {
        let wide: Vec<String> = (0..1_000).map(|v| format!("{v}#0-16383")).collect();
        let err = CpuPinning::parse(&wide.join("_")).unwrap_err();
        assert!(
            err.message.contains("more than 1048576 pCPUs in all"),
            "{err}"
        );
        assert!(
            err.text.ends_with("bytes)") && err.text.len() < 120,
            "{}",
            err.text
        );
        let many: Vec<String> = (0..5_000).map(|v| format!("{v}#1")).collect();
        let err = CpuPinning::parse(&many.join("_")).unwrap_err();
        assert!(err.message.contains("more than 4096 entries"), "{err}");
        // Right at the bounds it parses.
        let most: Vec<String> = (0..4_096).map(|v| format!("{v}#0-255")).collect();
        let pinning = CpuPinning::parse(&most.join("_")).unwrap();
        assert_eq!(pinning.pcpus_of(4_095).map(<[u32]>::len), Some(256));
    }
}
