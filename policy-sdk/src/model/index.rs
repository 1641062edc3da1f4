//! Data derived from a snapshot once and kept up to date by whoever holds the snapshot (the
//! guest after each sync, the host's cluster after each change), so that units do not redo
//! per-host string work on every call.
//!
//! Today:
//! * every host's CPU flags as a bit set over a dictionary of flag names
//!   ([`CpuFlagIndex`]), so "does this host have all of these flags" is a few word
//!   operations instead of string comparisons. A unit reads it through
//!   [`Context::cpu_flags`](crate::Context::cpu_flags); it is `None` when the caller has no
//!   index (unit tests with [`Context::new`](crate::Context::new)), and units fall back to
//!   comparing names;
//! * every host's pCPU counts ([`CpuCounts`]: dedicated, pending pinned, free online, whole
//!   free cores), counted on first use and again only after the host or its pending
//!   aggregate changed, instead of on every decision; read through
//!   [`Context::cpu_counts`](crate::Context::cpu_counts), which counts on the spot when there
//!   is no index;
//! * every host's available hugepages of a page size (free minus pending, see
//!   [`available_hugepages`]), for up to [`PAGE_SIZES_KEPT`] page sizes, kept the same way;
//!   read through [`Context::available_hugepages`](crate::Context::available_hugepages);
//! * every host's unavailable pCPUs folded into one word ([`unavailable_pcpus`]: dedicated,
//!   pending pinned and offline ones), worked out and kept the same way; read through
//!   [`Context::unavailable_pcpus`](crate::Context::unavailable_pcpus);
//! * every host's memory room ([`Host::memory_room_mb`]), one word per host worked out by
//!   the first loop that reads it and kept until the host, its pending aggregate or its
//!   usage figures change; read through
//!   [`Context::memory_rooms`](crate::Context::memory_rooms);
//! * every host's status in one dense list ([`SnapshotIndex::host_statuses`]), what the
//!   engine's candidate pass reads instead of one `Host` (and, at 50,000 hosts, one cache
//!   miss) per host.

use crate::model::flags::RecentFlagLists;
use crate::model::topology::{unavailable_pcpus, CpuCounts};
use crate::model::{Host, HostIndex, HostStatus, HugePages, Snapshot};
use crate::wire::sync::Change;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// Indexes derived from one snapshot. Each part is made the first time a unit reads it, so
/// a module whose units never ask for one (the `basic` module reads pCPU counts, never flag
/// bit sets) does not build it after a full snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotIndex {
    /// Host CPU flags as bit sets, built on first read (shared between copies of the
    /// index: the copy made when a view still holds the index and a reservation changes a
    /// host's counts does not copy the flags).
    cpu_flags: OnceLock<Arc<CpuFlagIndex>>,
    /// The cluster's CPU flags (what a VM of the cluster's CPU model needs) resolved
    /// against `cpu_flags`, on first read: most VMs need exactly these, and resolving the
    /// names (sorting them, hashing each) on every decision cost more than checking the
    /// hosts. Forgotten with `cpu_flags` and when the cluster's settings change.
    cluster_flags: OnceLock<FlagMask>,
    /// Every host's pCPU counts, by host index.
    cpu_counts: CountsCache,
    /// Every host's available hugepages, by page size and host index.
    hugepages: PagesCache,
    /// Every host's [`unavailable_pcpus`] mask, by host index.
    unavailable: WordCache,
    /// Every host's [`Host::memory_room_mb`], by host index.
    memory_room: WordCache,
    /// Every host's status, by host index, listed on first read (shared between copies of
    /// the index until a status changes: a reservation's copy does not copy it).
    statuses: OnceLock<Arc<[HostStatus]>>,
}

impl SnapshotIndex {
    /// The index of a snapshot; its parts are filled in as they are read.
    pub fn build(snapshot: &Snapshot) -> Self {
        Self {
            cpu_flags: OnceLock::new(),
            cluster_flags: OnceLock::new(),
            cpu_counts: CountsCache::new(snapshot.hosts.len()),
            hugepages: PagesCache::new(snapshot.hosts.len()),
            unavailable: WordCache::new(snapshot.hosts.len()),
            memory_room: WordCache::new(snapshot.hosts.len()),
            statuses: OnceLock::new(),
        }
    }

    /// Every host's status, by host index, of `snapshot` (the snapshot this index is kept
    /// for): listed the first time they are asked for, then kept in step with the changes.
    pub fn host_statuses(&self, snapshot: &Snapshot) -> &[HostStatus] {
        let statuses = self
            .statuses
            .get_or_init(|| snapshot.hosts.iter().map(|h| h.status).collect());
        debug_assert!(
            statuses.len() == snapshot.hosts.len()
                && statuses
                    .iter()
                    .zip(&snapshot.hosts)
                    .all(|(s, h)| *s == h.status),
            "host statuses out of step with the snapshot"
        );
        statuses
    }

    /// Every host's CPU flags as bit sets, built from `snapshot` (the snapshot this index
    /// is kept for) the first time they are asked for.
    pub fn cpu_flags(&self, snapshot: &Snapshot) -> &CpuFlagIndex {
        self.cpu_flags
            .get_or_init(|| Arc::new(CpuFlagIndex::build(&snapshot.hosts)))
    }

    /// The cluster's CPU flags (`snapshot.cluster.cpu_flags`) as a mask over
    /// [`SnapshotIndex::cpu_flags`], worked out the first time it is asked for and kept
    /// until the flag index or the cluster's settings change.
    pub fn cluster_flag_mask(&self, snapshot: &Snapshot) -> &FlagMask {
        self.cluster_flags.get_or_init(|| {
            self.cpu_flags(snapshot)
                .mask(snapshot.cluster.cpu_flags.iter().map(String::as_str))
        })
    }

    /// The pCPU counts of `host`, at `index` in the indexed snapshot: counted the first
    /// time, then kept until the host or its pending aggregate changes. A host the index
    /// does not cover is counted every time.
    #[inline]
    pub fn cpu_counts(&self, index: HostIndex, host: &Host) -> CpuCounts {
        self.cpu_counts.get(index as usize, host)
    }

    /// The hugepages of `size_kb` KiB available on `host` (at `index` in the indexed
    /// snapshot; see [`available_hugepages`]): counted the first time, then kept until the
    /// host or its pending aggregate changes. A host the index does not cover, or a page
    /// size beyond the first [`PAGE_SIZES_KEPT`] asked for, is counted every time.
    #[inline]
    pub fn available_hugepages(&self, index: HostIndex, host: &Host, size_kb: u64) -> u64 {
        self.hugepages.get(index as usize, host, size_kb)
    }

    /// The available hugepages of `size_kb` KiB kept so far, for a loop over hosts (never
    /// counts).
    #[inline]
    pub(crate) fn kept_hugepages(&self, size_kb: u64) -> KeptWords<'_> {
        self.hugepages.kept(size_kb)
    }

    /// The pCPUs of `host` (at `index` in the indexed snapshot) that a pinning cannot take,
    /// folded into a word (see [`unavailable_pcpus`]): worked out the first time, then kept
    /// until the host or its pending aggregate changes. A host the index does not cover, or
    /// whose every bit is set, is worked out every time.
    #[inline]
    pub fn unavailable_pcpus(&self, index: HostIndex, host: &Host) -> u64 {
        self.unavailable
            .get_or(index as usize, || unavailable_pcpus(host))
    }

    /// Every kept [`SnapshotIndex::unavailable_pcpus`] mask, for a loop over hosts (never
    /// works one out).
    #[inline(always)]
    pub(crate) fn kept_unavailable_pcpus(&self) -> KeptWords<'_> {
        KeptWords(self.unavailable.kept())
    }

    /// Every host's memory room word, allocated by the first call, for a loop over hosts
    /// that works out and keeps a missing one inline ([`KeptWords::get_or_keep`], read by
    /// [`MemoryRooms`](crate::guest::MemoryRooms)).
    #[inline]
    pub(crate) fn memory_room_words(&self) -> KeptWords<'_> {
        KeptWords(self.memory_room.words())
    }

    /// Host `index`'s pCPU counts if they are kept already; `None` when they were not
    /// counted yet (never counts: an inline read for a unit's fast pass loop).
    #[inline(always)]
    pub fn kept_cpu_counts(&self, index: HostIndex) -> Option<CpuCounts> {
        self.cpu_counts.kept().counts(index)
    }

    /// Every kept count, for a loop over hosts ([`SnapshotIndex::kept_cpu_counts`] of each).
    #[inline(always)]
    pub(crate) fn kept_words(&self) -> KeptWords<'_> {
        self.cpu_counts.kept()
    }

    /// Whether the index covers `hosts` hosts (it was built or refreshed for a snapshot of
    /// that many).
    #[inline]
    pub fn covers(&self, hosts: usize) -> bool {
        self.cpu_counts.len() == hosts
    }

    /// Brings the index up to date after `changes` were applied to `snapshot` (the
    /// snapshot after the changes): hosts replaced are re-read, hosts whose pending
    /// aggregate was set are counted again when next asked, hosts added or removed rebuild
    /// the index; other changes (status, usage, VMs) leave it as it is.
    pub fn update(&mut self, snapshot: &Snapshot, changes: &[Change]) {
        self.refresh(snapshot, &Touched::of(changes));
    }

    /// [`SnapshotIndex::update`] with what the changes touched, worked out before they
    /// were applied (applying consumes them).
    pub fn refresh(&mut self, snapshot: &Snapshot, touched: &Touched) {
        if touched.rebuild || !self.covers(snapshot.hosts.len()) {
            *self = Self::build(snapshot);
            return;
        }
        if touched.cluster {
            self.cluster_flags = OnceLock::new();
        }
        if let Some(statuses) = self.statuses.get_mut() {
            let changed = touched.replaced.iter().chain(&touched.status);
            for &host in changed {
                if let Some(h) = snapshot.hosts.get(host as usize) {
                    if statuses.get(host as usize) != Some(&h.status) {
                        // Copied only when a status moved (views may share the list).
                        let list: &mut [HostStatus] = Arc::make_mut(statuses);
                        list[host as usize] = h.status;
                    }
                }
            }
        }
        for &host in &touched.replaced {
            if let Some(h) = snapshot.hosts.get(host as usize) {
                if let Some(flags) = self.cpu_flags.get_mut() {
                    if !Arc::make_mut(flags).set_host(host as usize, h) {
                        // A flag the dictionary lacks: built again when next read (and
                        // the cluster's mask with it: its bits name the old dictionary).
                        self.cpu_flags = OnceLock::new();
                        self.cluster_flags = OnceLock::new();
                    }
                }
                self.forget_host(host as usize);
            }
        }
        for &host in &touched.pending {
            self.forget_host(host as usize);
        }
        for &host in &touched.usage {
            self.memory_room.forget(host as usize);
        }
    }

    /// Forgets what the index kept of one host (its counts, pages, pCPU mask and memory
    /// room), whose host or pending aggregate changed.
    fn forget_host(&mut self, host: usize) {
        self.cpu_counts.forget(host);
        self.hugepages.forget(host);
        self.unavailable.forget(host);
        self.memory_room.forget(host);
    }
}

/// One word per host, kept from the first read of each host until [forgotten](Self::forget):
/// what the index keeps of each host ([`CpuCounts`] packed, available hugepages). The words
/// are allocated on the first read: an index no unit reads (a host's cluster whose units all
/// run in wasm modules, which keep their own) holds none, and its copies copy none. Threads
/// deciding at once on one index may fill it: two threads working out one host write the
/// same word.
#[derive(Default)]
struct WordCache {
    /// Hosts covered.
    hosts: usize,
    /// One word per host, once read.
    words: OnceLock<Box<[AtomicU64]>>,
}

/// A word that keeps nothing (no value is stored as it: see [`KeptWords::get_or_keep`]).
const NOT_KEPT: u64 = u64::MAX;

impl WordCache {
    fn new(hosts: usize) -> Self {
        Self {
            hosts,
            words: OnceLock::new(),
        }
    }

    fn len(&self) -> usize {
        self.hosts
    }

    /// The words, allocated (every host not kept) on the first call.
    fn words(&self) -> &[AtomicU64] {
        self.words
            .get_or_init(|| (0..self.hosts).map(|_| AtomicU64::new(NOT_KEPT)).collect())
    }

    /// Host `index`'s word, else `work()` (kept unless it is [`NOT_KEPT`]); a host beyond
    /// the cache is worked out every time. A kept word is read inline (what nearly every
    /// read is); working one out is a call.
    #[inline(always)]
    fn get_or(&self, index: usize, work: impl FnOnce() -> u64) -> u64 {
        KeptWords(self.words()).get_or_keep(index, || Self::work_out(work))
    }

    #[inline(never)]
    fn work_out(work: impl FnOnce() -> u64) -> u64 {
        work()
    }

    /// The words kept so far (none before the first read), for reads that never work one
    /// out.
    #[inline(always)]
    fn kept(&self) -> &[AtomicU64] {
        self.words.get().map_or(&[], |w| &w[..])
    }

    fn forget(&mut self, index: usize) {
        if let Some(word) = self.words.get_mut().and_then(|w| w.get_mut(index)) {
            *word.get_mut() = NOT_KEPT;
        }
    }

    /// Every host's word, [`NOT_KEPT`] for all before the first read.
    fn each_word(&self) -> impl Iterator<Item = u64> + '_ {
        let kept = self.kept();
        (0..self.hosts).map(move |i| kept.get(i).map_or(NOT_KEPT, |w| w.load(Ordering::Relaxed)))
    }

    /// Hosts whose word is kept.
    fn kept_count(&self) -> usize {
        self.each_word().filter(|&w| w != NOT_KEPT).count()
    }
}

impl Clone for WordCache {
    fn clone(&self) -> Self {
        // Atomics are not `Clone`: each word is read and stored anew, if there are any.
        let words = self.words.get().map_or_else(OnceLock::new, |kept| {
            OnceLock::from(
                kept.iter()
                    .map(|w| AtomicU64::new(w.load(Ordering::Relaxed)))
                    .collect::<Box<[AtomicU64]>>(),
            )
        });
        Self {
            hosts: self.hosts,
            words,
        }
    }
}

impl core::fmt::Debug for WordCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "WordCache({} of {} hosts kept)",
            self.kept_count(),
            self.len()
        )
    }
}

impl PartialEq for WordCache {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.each_word().eq(other.each_word())
    }
}

impl Eq for WordCache {}

/// Hosts' [`CpuCounts`], counted on first use: a decision reads them only for the hosts it
/// needs to, so a full snapshot costs nothing here. Each host's counts sit in one word
/// (16 bits each; a host whose counts do not fit is counted every time), so a copy of the
/// cache (made when a view still holds the index while a reservation changes it) is a copy
/// of one word per host.
#[derive(Default, Clone, PartialEq, Eq)]
struct CountsCache(WordCache);

impl CountsCache {
    fn new(hosts: usize) -> Self {
        Self(WordCache::new(hosts))
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    #[inline(always)]
    fn get(&self, index: usize, host: &Host) -> CpuCounts {
        let mut counted = None;
        let word = self.0.get_or(index, || {
            let counts = CpuCounts::of(host);
            counted = Some(counts);
            pack(&counts).unwrap_or(NOT_KEPT)
        });
        // Counted now (kept or, too large for a word, not), else read from the kept word.
        counted
            .or_else(|| unpack(word))
            .expect("a word read without counting was kept")
    }

    /// The words kept so far (none before the first read), for reads that never count.
    #[inline(always)]
    fn kept(&self) -> KeptWords<'_> {
        KeptWords(self.0.kept())
    }

    fn forget(&mut self, index: usize) {
        self.0.forget(index);
    }
}

/// The words one of an index's caches keeps (pCPU counts, available pages of one size,
/// unavailable-pCPU masks, memory rooms), resolved once for a loop over hosts (a unit's
/// fast pass): reading one is a load.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KeptWords<'a>(&'a [AtomicU64]);

impl KeptWords<'_> {
    /// Host `index`'s word if it is kept (never works one out).
    #[inline(always)]
    pub(crate) fn get(&self, index: HostIndex) -> Option<u64> {
        match self.0.get(index as usize)?.load(Ordering::Relaxed) {
            NOT_KEPT => None,
            word => Some(word),
        }
    }

    /// Host `index`'s counts if they are kept (words of the pCPU counts' cache).
    #[inline(always)]
    pub(crate) fn counts(&self, index: HostIndex) -> Option<CpuCounts> {
        self.get(index).and_then(unpack)
    }

    /// Host `index`'s word, else `work()` done here and kept (unless it is [`NOT_KEPT`]);
    /// a host beyond the words is worked out every time. Threads deciding at once on one
    /// index may both work a host out: they write the same word.
    #[inline(always)]
    pub(crate) fn get_or_keep(&self, index: usize, work: impl FnOnce() -> u64) -> u64 {
        match self.0.get(index) {
            Some(word) => match word.load(Ordering::Relaxed) {
                NOT_KEPT => {
                    let value = work();
                    if value != NOT_KEPT {
                        word.store(value, Ordering::Relaxed);
                    }
                    value
                }
                kept => kept,
            },
            None => work(),
        }
    }
}

impl core::fmt::Debug for CountsCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "CountsCache({} of {} hosts counted)",
            self.0.kept_count(),
            self.len()
        )
    }
}

/// Page sizes whose available hugepages an index keeps (the first ones asked for; a
/// cluster has one or two: 2 MiB and 1 GiB on x86-64). Others are counted every time.
pub const PAGE_SIZES_KEPT: usize = 4;

/// The hugepages of `size_kb` KiB a VM can still take on `host`: its free pages of that
/// size minus the pages pending there (what the `hugepages` filter compares with a VM's
/// need).
#[inline]
pub fn available_hugepages(host: &Host, size_kb: u64) -> u64 {
    HugePages::count_of(&host.free_hugepages, size_kb)
        .saturating_sub(host.pending.hugepages_of(size_kb))
}

/// Hosts' [`available_hugepages`] for up to [`PAGE_SIZES_KEPT`] page sizes, each size's
/// words made on its first read. At 1,000 hosts, walking every candidate's lists of free and
/// pending pages (one more cache line per host, and loops the guests' compiler turned into
/// many copies of vector code) cost hugepage VMs' decisions a tenth of their time.
#[derive(Default, Clone, PartialEq, Eq)]
struct PagesCache {
    /// The page size each slot keeps (claimed by the first read of that size) and its words.
    slots: [(OnceLock<u64>, WordCache); PAGE_SIZES_KEPT],
}

impl PagesCache {
    fn new(hosts: usize) -> Self {
        Self {
            slots: core::array::from_fn(|_| (OnceLock::new(), WordCache::new(hosts))),
        }
    }

    /// The slot of `size_kb`, claiming a free one for it; `None` when every slot keeps
    /// another size.
    fn slot(&self, size_kb: u64) -> Option<&WordCache> {
        self.slots
            .iter()
            .find(|(size, _)| *size.get_or_init(|| size_kb) == size_kb)
            .map(|(_, words)| words)
    }

    #[inline]
    fn get(&self, index: usize, host: &Host, size_kb: u64) -> u64 {
        match self.slot(size_kb) {
            // A count of `NOT_KEPT` pages (never on a real host) is worked out every time.
            Some(words) => words.get_or(index, || available_hugepages(host, size_kb)),
            None => available_hugepages(host, size_kb),
        }
    }

    /// The words of `size_kb` kept so far (none if no read asked for that size).
    #[inline]
    fn kept(&self, size_kb: u64) -> KeptWords<'_> {
        KeptWords(
            self.slots
                .iter()
                .find(|(size, _)| size.get() == Some(&size_kb))
                .map_or(&[], |(_, words)| words.kept()),
        )
    }

    fn forget(&mut self, index: usize) {
        for (_, words) in &mut self.slots {
            words.forget(index);
        }
    }
}

impl core::fmt::Debug for PagesCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut list = f.debug_list();
        for (size, words) in &self.slots {
            if let Some(size) = size.get() {
                list.entry(&format_args!(
                    "{size} KiB: {} of {} hosts counted",
                    words.kept_count(),
                    words.len()
                ));
            }
        }
        list.finish()
    }
}

/// Counts in one word, if each is below `u16::MAX`.
fn pack(c: &CpuCounts) -> Option<u64> {
    let field = |v: u32| {
        u16::try_from(v)
            .ok()
            .filter(|&v| v != u16::MAX)
            .map(u64::from)
    };
    Some(
        field(c.dedicated)?
            | field(c.pending_pinned)? << 16
            | field(c.free_online)? << 32
            | field(c.whole_free_cores)? << 48,
    )
}

fn unpack(word: u64) -> Option<CpuCounts> {
    (word != NOT_KEPT).then_some(CpuCounts {
        dedicated: (word & 0xffff) as u32,
        pending_pinned: (word >> 16 & 0xffff) as u32,
        free_online: (word >> 32 & 0xffff) as u32,
        whole_free_cores: (word >> 48) as u32,
    })
}

/// The hosts a batch of changes touched, as far as the indexes care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Hosts were added or removed: rebuild.
    pub rebuild: bool,
    /// Hosts replaced in place.
    pub replaced: Vec<HostIndex>,
    /// Hosts whose pending aggregate was set (their pending pinned pCPUs may differ).
    pub pending: Vec<HostIndex>,
    /// Hosts whose status was set.
    pub status: Vec<HostIndex>,
    /// Hosts whose usage figures were set (free memory and swap among them).
    pub usage: Vec<HostIndex>,
    /// The cluster's settings were replaced (its CPU flags may differ).
    pub cluster: bool,
}

impl Touched {
    /// What `changes` touch.
    pub fn of(changes: &[Change]) -> Self {
        let mut touched = Touched::default();
        touched.add(changes);
        touched
    }

    /// Adds what `changes` touch: after the changes of several epochs, an index refreshed
    /// once with the sum against the last epoch's snapshot answers as one refreshed after
    /// each epoch does (a refresh forgets the hosts it is told of and reads the rest of
    /// what it updates from the snapshot it is given).
    pub fn add(&mut self, changes: &[Change]) {
        for change in changes {
            match change {
                Change::AddHost(_) | Change::RemoveHost { .. } => self.rebuild = true,
                Change::ReplaceHost { host, .. } => self.replaced.push(*host),
                Change::SetPending { host, .. } | Change::AddPending { host, .. } => {
                    self.pending.push(*host)
                }
                Change::SetCluster(_) => self.cluster = true,
                Change::SetHostStatus { host, .. } => self.status.push(*host),
                Change::SetUsage(usage) => self.usage.extend(usage.iter().map(|(h, _)| *h)),
                _ => {}
            }
        }
    }

    /// Whether the changes touched anything an index keeps.
    pub fn any(&self) -> bool {
        self.rebuild
            || self.cluster
            || !self.replaced.is_empty()
            || !self.pending.is_empty()
            || !self.status.is_empty()
            || !self.usage.is_empty()
    }
}

/// Every host's CPU flags as a bit set over the flag names seen on any host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuFlagIndex {
    /// Flag name -> bit. The std hasher (keyed at random) on purpose: the names come in
    /// with the engine's snapshots, and an unkeyed hash would let crafted names collide.
    bit_of: HashMap<String, u32>,
    /// 64-bit words per host.
    words: usize,
    /// Number of hosts indexed.
    hosts: usize,
    /// `hosts x words` bits.
    bits: Vec<u64>,
}

/// A set of required flags, resolved against a [`CpuFlagIndex`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagMask {
    words: Vec<u64>,
    /// Some required flag is on no host at all: no host has them all.
    unknown: bool,
}

impl CpuFlagIndex {
    /// Indexes the flags of `hosts`.
    pub fn build(hosts: &[Host]) -> Self {
        let mut bit_of: HashMap<String, u32> = HashMap::new();
        // Hosts of a cluster mostly share a CPU model: a host whose flags equal an earlier
        // host's adds nothing to the dictionary and copies that host's row.
        let mut recent = RecentFlagLists::default();
        for (i, h) in hosts.iter().enumerate() {
            if recent.value_of(&h.cpu_flags).is_some() {
                continue;
            }
            recent.remember(&h.cpu_flags, i);
            for f in &h.cpu_flags {
                if !bit_of.contains_key(f) {
                    let next = bit_of.len() as u32;
                    bit_of.insert(f.clone(), next);
                }
            }
        }
        let words = bit_of.len().div_ceil(64).max(1);
        let mut index = Self {
            bit_of,
            words,
            hosts: hosts.len(),
            bits: alloc::vec![0; hosts.len() * words],
        };
        let words = index.words;
        let mut recent = RecentFlagLists::default();
        for (i, h) in hosts.iter().enumerate() {
            match recent.value_of(&h.cpu_flags) {
                Some(row) => index
                    .bits
                    .copy_within(row * words..(row + 1) * words, i * words),
                None => {
                    index.set_host(i, h);
                    recent.remember(&h.cpu_flags, i);
                }
            }
        }
        index
    }

    /// Re-reads one host's flags. `false` when it has a flag the dictionary lacks (the
    /// caller rebuilds).
    fn set_host(&mut self, i: usize, host: &Host) -> bool {
        let row = &mut self.bits[i * self.words..(i + 1) * self.words];
        row.fill(0);
        for f in &host.cpu_flags {
            match self.bit_of.get(f) {
                Some(&bit) => row[bit as usize / 64] |= 1 << (bit % 64),
                None => return false,
            }
        }
        true
    }

    /// Number of hosts indexed.
    pub fn host_count(&self) -> usize {
        self.hosts
    }

    /// Resolves required flag names.
    pub fn mask<'a>(&self, flags: impl IntoIterator<Item = &'a str>) -> FlagMask {
        let bits: Vec<Option<u32>> = flags.into_iter().map(|f| self.bit(f)).collect();
        self.mask_of_bits(&bits)
    }

    /// The bit of flag `name`, or `None` when no host has it.
    pub fn bit(&self, name: &str) -> Option<u32> {
        self.bit_of.get(name).copied()
    }

    /// Whether host `host` has the flag whose bit is `bit` (see [`CpuFlagIndex::bit`];
    /// false for a host not indexed).
    #[inline]
    pub fn has_bit(&self, host: HostIndex, bit: u32) -> bool {
        let word = host as usize * self.words + bit as usize / 64;
        (bit as usize) < self.words * 64
            && host < self.hosts as HostIndex
            && self
                .bits
                .get(word)
                .is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }

    /// [`CpuFlagIndex::mask`] of flags already resolved with [`CpuFlagIndex::bit`]
    /// (`None`: a flag no host has).
    pub fn mask_of_bits(&self, bits: &[Option<u32>]) -> FlagMask {
        let mut words = alloc::vec![0u64; self.words];
        let mut unknown = false;
        for bit in bits {
            match bit {
                Some(bit) if (*bit as usize) < self.words * 64 => {
                    words[*bit as usize / 64] |= 1 << (bit % 64)
                }
                _ => unknown = true,
            }
        }
        FlagMask { words, unknown }
    }

    /// The one-word form of [`CpuFlagIndex::has_all`] for a loop over hosts, when the
    /// dictionary holds at most 64 flags (the common case) and every flag of `mask` is on
    /// some host: every host's flag word, by host index, and the mask's word. Host `i` has
    /// every flag of `mask` exactly when `words[i] & wanted == wanted`. A loop that tests
    /// that holds two values where one calling `has_all` re-checks the dictionary's size and
    /// the mask's on every host (the guests' compiler keeps neither out of the loop).
    /// `None` otherwise: call `has_all`.
    #[inline]
    pub fn one_word<'a>(&'a self, mask: &FlagMask) -> Option<(&'a [u64], u64)> {
        match (mask.unknown, self.words, mask.words.as_slice()) {
            (false, 1, &[wanted]) => Some((&self.bits, wanted)),
            _ => None,
        }
    }

    /// Whether host `host` has every flag of `mask` (false for a host not indexed).
    #[inline]
    pub fn has_all(&self, host: HostIndex, mask: &FlagMask) -> bool {
        if mask.unknown {
            return false;
        }
        if let (1, [wanted]) = (self.words, mask.words.as_slice()) {
            // Up to 64 flags in the dictionary (the common case): one word, no inner loop.
            return self
                .bits
                .get(host as usize)
                .is_some_and(|h| h & wanted == *wanted);
        }
        let start = host as usize * self.words;
        match self.bits.get(start..start + self.words) {
            Some(row) => row.iter().zip(&mask.words).all(|(h, m)| h & m == *m),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HostUsage;
    use crate::testing::{host, snapshot};

    fn flags_of(index: &CpuFlagIndex, host: HostIndex, names: &[&str]) -> bool {
        index.has_all(host, &index.mask(names.iter().copied()))
    }

    #[test]
    fn hosts_have_all_flags_of_a_mask_or_not() {
        let s = snapshot()
            .host(host("a").cpu_flags(&["sse4_2", "avx2", "aes"]))
            .host(host("b").cpu_flags(&["sse4_2"]))
            .host(host("c"))
            .build();
        let index = SnapshotIndex::build(&s).cpu_flags(&s).clone();
        let cases: [(&[&str], [bool; 3]); 5] = [
            (&[], [true, true, true]),
            (&["sse4_2"], [true, true, false]),
            (&["aes", "avx2"], [true, false, false]),
            (&["avx512f"], [false, false, false]),
            (&["aes", "avx512f"], [false, false, false]),
        ];
        for (names, want) in cases {
            let bits: Vec<Option<u32>> = names.iter().map(|n| index.bit(n)).collect();
            let by_bits = index.mask_of_bits(&bits);
            for (i, w) in want.iter().enumerate() {
                let host = i as HostIndex;
                assert_eq!(flags_of(&index, host, names), *w, "{names:?} host {i}");
                // Resolved once, then asked flag by flag or as a mask: the same answer.
                assert_eq!(
                    index.has_all(host, &by_bits),
                    *w,
                    "{names:?} host {i}, bits"
                );
                let each = bits
                    .iter()
                    .all(|b| b.is_some_and(|b| index.has_bit(host, b)));
                assert_eq!(each, *w, "{names:?} host {i}, bit by bit");
                // The one-word form where it is offered: the same answer.
                let mask = index.mask(names.iter().copied());
                if let Some((words, wanted)) = index.one_word(&mask) {
                    assert_eq!(words[i] & wanted == wanted, *w, "{names:?} host {i}, word");
                }
            }
            // Offered for every mask of this small dictionary but a flag no host has.
            let unknown = names.contains(&"avx512f");
            let mask = index.mask(names.iter().copied());
            assert_eq!(index.one_word(&mask).is_some(), !unknown, "{names:?}");
        }
        // Over 64 flags in the dictionary: no one-word form.
        let many: Vec<String> = (0..70).map(|f| alloc::format!("f{f}")).collect();
        let names: Vec<&str> = many.iter().map(String::as_str).collect();
        let wide = snapshot().host(host("a").cpu_flags(&names)).build();
        let wide = SnapshotIndex::build(&wide).cpu_flags(&wide).clone();
        let mask = wide.mask(["f1"]);
        assert!(wide.has_all(0, &mask));
        assert_eq!(wide.one_word(&mask), None, "70 flags");
        assert!(!flags_of(&index, 7, &[]), "a host not indexed has nothing");
        let aes = index.bit("aes").unwrap();
        assert!(!index.has_bit(7, aes), "a host not indexed has no flag");
        assert!(
            !index.has_bit(0, 64 * 9),
            "a bit past the dictionary is no flag"
        );
        assert_eq!(index.bit("avx512f"), None, "a flag no host has has no bit");
    }

    #[test]
    fn every_host_has_exactly_its_own_flags_when_many_models_interleave() {
        // More distinct lists than the index remembers, each in its own storage on every
        // host (equal by names, not shared), in an order that keeps evicting them.
        let models: Vec<Vec<String>> = (0..RecentFlagLists::<usize>::KEPT + 3)
            .map(|m| (0..=m).map(|f| format!("flag{}", f * 7 % 12)).collect())
            .collect();
        let mut b = snapshot();
        for i in 0..120 {
            let names: Vec<&str> = models[(i * i + i / 5) % models.len()]
                .iter()
                .map(String::as_str)
                .collect();
            b = b.host(host(&format!("h{i}")).cpu_flags(&names));
        }
        let s = b.build();
        let index = CpuFlagIndex::build(&s.hosts);
        for (i, h) in s.hosts.iter().enumerate() {
            for name in (0..12).map(|f| format!("flag{f}")) {
                let has = index
                    .bit(&name)
                    .is_some_and(|b| index.has_bit(i as HostIndex, b));
                assert_eq!(has, h.cpu_flags.contains(&name), "host {i}, {name}");
            }
        }
    }

    #[test]
    fn index_follows_host_changes_and_ignores_the_rest() {
        let mut s = snapshot()
            .host(host("a").cpu_flags(&["sse4_2"]))
            .host(host("b").cpu_flags(&["sse4_2"]))
            .build();
        let mut index = SnapshotIndex::build(&s);
        // Read once, so that the changes below update flags already built.
        assert!(flags_of(index.cpu_flags(&s), 0, &["sse4_2"]));
        // A replaced host with a flag new to the dictionary (rebuild path) and one with a
        // known flag (row update path).
        let cases: [(Change, &[&str], [bool; 2]); 3] = [
            (
                Change::ReplaceHost {
                    host: 1,
                    value: host("b").cpu_flags(&["sse4_2", "avx2"]).build(),
                },
                &["avx2"],
                [false, true],
            ),
            (
                Change::ReplaceHost {
                    host: 0,
                    value: host("a").cpu_flags(&["avx2"]).build(),
                },
                &["avx2"],
                [true, true],
            ),
            (Change::SetTime { time_unix: 5 }, &["sse4_2"], [false, true]),
        ];
        for (change, names, want) in cases {
            change.clone().apply(&mut s).unwrap();
            index.update(&s, core::slice::from_ref(&change));
            assert_same_answers(&index, &SnapshotIndex::build(&s), &s);
            for (i, w) in want.iter().enumerate() {
                assert_eq!(
                    flags_of(index.cpu_flags(&s), i as HostIndex, names),
                    *w,
                    "{change:?}"
                );
            }
        }
        let add = Change::AddHost(host("c").cpu_flags(&["aes"]).build());
        add.clone().apply(&mut s).unwrap();
        index.update(&s, core::slice::from_ref(&add));
        assert!(flags_of(index.cpu_flags(&s), 2, &["aes"]));
        assert_eq!(index.cpu_flags(&s).host_count(), 3);
    }

    /// The cluster's flag mask the index keeps is always the mask of the cluster's flags
    /// over the current dictionary: after a change of the cluster's flags, a host with a
    /// flag new to the dictionary (which renumbers the bits), a host with known flags, and
    /// changes it ignores. Each row is the host that has every cluster flag.
    #[test]
    fn the_kept_cluster_mask_follows_the_cluster_and_the_dictionary() {
        let mut s = snapshot()
            .cluster_cpu("m", &["sse4_2"])
            .host(host("a").cpu_flags(&["sse4_2"]))
            .host(host("b").cpu_flags(&["aes"]))
            .build();
        let mut index = SnapshotIndex::build(&s);
        let passing = |index: &SnapshotIndex, s: &Snapshot| -> Vec<bool> {
            let mask = index.cluster_flag_mask(s);
            assert_eq!(
                *mask,
                index
                    .cpu_flags(s)
                    .mask(s.cluster.cpu_flags.iter().map(String::as_str)),
                "the kept mask is the mask of the cluster's flags now"
            );
            (0..s.hosts.len())
                .map(|h| index.cpu_flags(s).has_all(h as HostIndex, mask))
                .collect()
        };
        assert_eq!(passing(&index, &s), [true, false]);
        let mut cluster = s.cluster.clone();
        cluster.cpu_flags = alloc::vec!["aes".into()];
        let cases: [(Change, [bool; 2]); 4] = [
            (Change::SetCluster(cluster), [false, true]),
            // "avx2" is new to the dictionary: the flags are indexed again, bits renumbered.
            (
                Change::ReplaceHost {
                    host: 0,
                    value: host("a").cpu_flags(&["aes", "avx2"]).build(),
                },
                [true, true],
            ),
            (
                Change::ReplaceHost {
                    host: 1,
                    value: host("b").cpu_flags(&["avx2"]).build(),
                },
                [true, false],
            ),
            (Change::SetTime { time_unix: 9 }, [true, false]),
        ];
        for (change, want) in cases {
            change.clone().apply(&mut s).unwrap();
            index.update(&s, core::slice::from_ref(&change));
            assert_eq!(passing(&index, &s), want, "after {change:?}");
        }
    }

    /// The index answers `kept_cpu_counts` (a read that never counts) only for hosts whose
    /// counts a read counted, with those counts, and forgets them when the host's pending
    /// aggregate changes.
    #[test]
    fn kept_counts_are_only_counts_read_before_and_not_changed_since() {
        let hp = |id: &str| host(id).cpu(1, 4, 2).dedicated_cpus([7]);
        let mut s = snapshot().host(hp("a")).host(hp("b")).build();
        let mut index = SnapshotIndex::build(&s);
        assert_eq!(index.kept_cpu_counts(0), None, "nothing counted yet");
        let counted = index.cpu_counts(1, &s.hosts[1]);
        assert_eq!(counted, CpuCounts::of(&s.hosts[1]));
        assert_eq!(index.kept_cpu_counts(0), None, "host 0 not read");
        assert_eq!(index.kept_cpu_counts(1), Some(counted));
        assert_eq!(index.kept_cpu_counts(2), None, "no such host");
        let mut pending = s.hosts[1].pending.clone();
        pending.pinned_cpus = alloc::vec![0];
        let change = Change::SetPending { host: 1, pending };
        change.clone().apply(&mut s).unwrap();
        index.update(&s, core::slice::from_ref(&change));
        assert_eq!(
            index.kept_cpu_counts(1),
            None,
            "forgotten with the pending change"
        );
    }

    /// The counts' words are allocated by the first read: an index no unit reads (a host's
    /// cluster whose units all run in wasm modules) holds none, and copying or refreshing
    /// it (what a reservation does while another thread's view holds it) copies and
    /// touches none. A copy made after a read keeps what was counted; an unread index
    /// equals a read one that counted nothing.
    #[test]
    fn counts_are_allocated_by_the_first_read_and_an_unread_index_copies_none() {
        let hp = |id: &str| host(id).cpu(1, 4, 2).dedicated_cpus([7]);
        let s = snapshot().host(hp("a")).host(hp("b")).host(hp("c")).build();
        let mut index = SnapshotIndex::build(&s);
        assert!(index.covers(3));
        assert!(index.kept_words().0.is_empty(), "built without words");
        let copy = index.clone();
        assert!(copy.kept_words().0.is_empty(), "copied without words");
        index.refresh(
            &s,
            &Touched {
                pending: alloc::vec![1],
                ..Touched::default()
            },
        );
        assert!(index.kept_words().0.is_empty(), "refreshed without words");
        assert_eq!(index.kept_cpu_counts(1), None);
        let read = SnapshotIndex::build(&s);
        assert_eq!(read.kept_words().0.len(), 0);
        let _ = read.cpu_counts(3, &s.hosts[0]); // beyond the index: counted, not kept
        assert_eq!(
            read.kept_words().0.len(),
            3,
            "a read allocates every host's word"
        );
        assert_eq!(read, index, "nothing counted: equal to the unread index");
        let counted = index.cpu_counts(1, &s.hosts[1]);
        let copy = index.clone();
        assert_eq!(copy.kept_words().0.len(), 3);
        assert_eq!(copy.kept_cpu_counts(1), Some(counted));
        assert_eq!(copy.kept_cpu_counts(0), None);
        assert_ne!(copy, read);
    }

    /// The pCPU counts and unavailable-pCPU masks read through the index follow every
    /// change that can move them (a pending aggregate set or grown, a host replaced, a host
    /// added or removed) and stay put for the rest: after each change every host's counts
    /// and mask equal a fresh count, and equal what a freshly built index answers.
    #[test]
    fn cpu_counts_and_unavailable_pcpus_follow_pending_and_host_changes_like_a_fresh_count() {
        let hp = |id: &str| host(id).cpu(1, 4, 2).online_cpus(0..8);
        let mut s = snapshot().host(hp("a")).host(hp("b")).build();
        let mut index = SnapshotIndex::build(&s);
        let pending = |cpus: &[u32]| {
            let mut p = s.hosts[0].pending.clone();
            p.pinned_cpus = cpus.to_vec();
            p
        };
        // (dedicated, pending pinned, free online, whole free cores)
        let counts = |dedicated, pending_pinned, free_online, whole_free_cores| CpuCounts {
            dedicated,
            pending_pinned,
            free_online,
            whole_free_cores,
        };
        // (change, host, its counts and unavailable-pCPU mask after it)
        let cases: [(Change, usize, CpuCounts, u64); 7] = [
            (
                Change::SetPending {
                    host: 0,
                    pending: pending(&[0, 1, 2]),
                },
                0,
                counts(0, 3, 5, 2),
                0b111,
            ),
            (
                Change::ReplaceHost {
                    host: 1,
                    value: hp("b").dedicated_cpus([6, 7, 7, 40]).build(),
                },
                1,
                counts(2, 0, 6, 3),
                1 << 40 | 0b1100_0000,
            ),
            (
                Change::SetPending {
                    host: 1,
                    pending: pending(&[5, 6]),
                },
                1,
                counts(2, 1, 5, 2),
                1 << 40 | 0b1110_0000,
            ),
            (
                Change::SetUsage(alloc::vec![(0, HostUsage::default())]),
                0,
                counts(0, 3, 5, 2),
                0b111,
            ),
            (
                Change::SetPending {
                    host: 0,
                    pending: pending(&[]),
                },
                0,
                counts(0, 0, 8, 4),
                0,
            ),
            (
                // pCPUs 4-7 offline.
                Change::AddHost(hp("c").online_cpus(0..4).build()),
                2,
                counts(0, 0, 4, 2),
                0b1111_0000,
            ),
            (
                // A reservation's change.
                Change::AddPending {
                    host: 0,
                    added: crate::model::PendingAggregate {
                        pinned_cpus: alloc::vec![3],
                        ..Default::default()
                    },
                },
                0,
                counts(0, 1, 7, 3),
                0b1000,
            ),
        ];
        for (change, at, want, want_mask) in cases {
            let touched = Touched::of(core::slice::from_ref(&change));
            change.clone().apply(&mut s).unwrap();
            index.refresh(&s, &touched);
            let fresh = SnapshotIndex::build(&s);
            assert!(index.covers(s.hosts.len()), "{change:?}");
            assert_eq!(
                index.cpu_counts(at as HostIndex, &s.hosts[at]),
                want,
                "{change:?}"
            );
            assert_eq!(
                index.unavailable_pcpus(at as HostIndex, &s.hosts[at]),
                want_mask,
                "{change:?}"
            );
            for (i, h) in s.hosts.iter().enumerate() {
                let i = i as HostIndex;
                assert_eq!(index.cpu_counts(i, h), CpuCounts::of(h), "{change:?}");
                assert_eq!(index.cpu_counts(i, h), fresh.cpu_counts(i, h), "{change:?}");
                let mask = index.unavailable_pcpus(i, h);
                assert_eq!(mask, unavailable_pcpus(h), "{change:?}");
                assert_eq!(mask, fresh.unavailable_pcpus(i, h), "{change:?}");
                assert_eq!(index.kept_unavailable_pcpus().get(i), Some(mask), "kept");
            }
        }
        // Reading counts never builds the flag bit sets (a module that only counts pCPUs,
        // as `basic`, does not pay for them).
        assert!(index.cpu_flags.get().is_none());
    }

    /// The available hugepages read through the index follow every change that can move
    /// them (a pending aggregate set or grown, a host replaced, a host added or removed) and
    /// stay put for the rest: after each change, every host's pages of each size equal a
    /// fresh count and what a freshly built index answers. A size listed twice counts twice.
    #[test]
    fn available_hugepages_follow_pending_and_host_changes_like_a_fresh_count() {
        const SMALL: u64 = 2_048;
        const LARGE: u64 = 1_048_576;
        let paged = |id: &str| host(id).hugepages(SMALL, 100).hugepages(LARGE, 4);
        let mut s = snapshot().host(paged("a")).host(paged("b")).build();
        let mut index = SnapshotIndex::build(&s);
        let pending = |small: u64, large: u64| {
            let mut p = crate::model::PendingAggregate::default();
            p.add_hugepages(SMALL, small, "pages").unwrap();
            p.add_hugepages(LARGE, large, "pages").unwrap();
            p
        };
        // Every host's pages, read once before any change: all kept.
        for (i, h) in s.hosts.iter().enumerate() {
            assert_eq!(index.available_hugepages(i as HostIndex, h, SMALL), 100);
            assert_eq!(index.available_hugepages(i as HostIndex, h, LARGE), 4);
        }
        // (change, host, its (small, large) pages after it)
        let cases: [(Change, usize, (u64, u64)); 7] = [
            (
                Change::SetPending {
                    host: 0,
                    pending: pending(30, 1),
                },
                0,
                (70, 3),
            ),
            (
                // A reservation's change.
                Change::AddPending {
                    host: 0,
                    added: pending(10, 0),
                },
                0,
                (60, 3),
            ),
            (
                Change::ReplaceHost {
                    host: 1,
                    value: paged("b").hugepages(SMALL, 5).build(),
                },
                1,
                (105, 4),
            ),
            (
                Change::SetUsage(alloc::vec![(1, HostUsage::default())]),
                1,
                (105, 4),
            ),
            (
                Change::SetPending {
                    host: 1,
                    pending: pending(200, 9),
                },
                1,
                (0, 0),
            ),
            (
                Change::AddHost(host("c").hugepages(LARGE, 2).build()),
                2,
                (0, 2),
            ),
            (Change::RemoveHost { host: 0 }, 0, (0, 0)),
        ];
        for (change, at, (small, large)) in cases {
            let touched = Touched::of(core::slice::from_ref(&change));
            change.clone().apply(&mut s).unwrap();
            index.refresh(&s, &touched);
            let fresh = SnapshotIndex::build(&s);
            let h = &s.hosts[at];
            let at = at as HostIndex;
            assert_eq!(
                (
                    index.available_hugepages(at, h, SMALL),
                    index.available_hugepages(at, h, LARGE)
                ),
                (small, large),
                "{change:?}"
            );
            for (i, h) in s.hosts.iter().enumerate() {
                let i = i as HostIndex;
                for size in [SMALL, LARGE, 4] {
                    let counted = available_hugepages(h, size);
                    assert_eq!(index.available_hugepages(i, h, size), counted, "{change:?}");
                    assert_eq!(fresh.available_hugepages(i, h, size), counted, "{change:?}");
                    assert_eq!(
                        index.kept_hugepages(size).get(i),
                        Some(counted),
                        "{change:?}"
                    );
                }
            }
        }
    }

    /// Hosts' memory room read through the index follows every change that can move it (a
    /// pending aggregate set or grown, usage figures, a host replaced, added or removed) and
    /// stays put for the rest: after each change, each host's room read through the index
    /// is the host's own figure, and every host's word is kept.
    #[test]
    fn memory_room_follows_pending_usage_and_host_changes_like_a_fresh_count() {
        // 16 GiB, 8 GiB free, 4 GiB committed: physical room 8,000, schedulable 12,384.
        let mem = |id: &str| {
            host(id)
                .memory_mb(16_384)
                .free_mb(8_000)
                .committed_mb(4_000)
        };
        let mut s = snapshot().host(mem("a")).host(mem("b")).build();
        let mut index = SnapshotIndex::build(&s);
        let rooms = |index: &SnapshotIndex, s: &Snapshot| -> Vec<u64> {
            let ctx = crate::Context::new(s, &[], "t").with_index(index);
            let rooms = ctx.memory_rooms();
            (0..s.hosts.len() as HostIndex)
                .map(|i| rooms.get(i))
                .collect()
        };
        assert_eq!(rooms(&index, &s), [8_000, 8_000], "worked out and kept");
        let usage = |free_mb, swap_free_mb| HostUsage {
            free_mb,
            swap_free_mb,
            ..HostUsage::default()
        };
        let overcommit = crate::model::PendingAggregate {
            overcommit_memory_mb: 12_000,
            ..Default::default()
        };
        // (change, every host's room after it)
        let cases: [(Change, &[u64]); 7] = [
            (
                Change::SetPending {
                    host: 0,
                    pending: crate::model::PendingAggregate {
                        memory_mb: 1_000,
                        ..Default::default()
                    },
                },
                &[7_000, 8_000],
            ),
            (
                // A reservation's change: the schedulable room is now the smaller.
                Change::AddPending {
                    host: 1,
                    added: overcommit.clone(),
                },
                &[7_000, 384],
            ),
            (
                Change::SetUsage(alloc::vec![(0, usage(2_000, 500)), (1, usage(100, 0))]),
                &[1_500, 100],
            ),
            (Change::SetTime { time_unix: 9 }, &[1_500, 100]),
            (
                Change::ReplaceHost {
                    host: 1,
                    value: mem("b").free_mb(3_000).build(),
                },
                &[1_500, 3_000],
            ),
            (Change::AddHost(mem("c").build()), &[1_500, 3_000, 8_000]),
            (Change::RemoveHost { host: 0 }, &[3_000, 8_000]),
        ];
        for (change, want) in cases {
            let touched = Touched::of(core::slice::from_ref(&change));
            change.clone().apply(&mut s).unwrap();
            index.refresh(&s, &touched);
            assert_eq!(rooms(&index, &s), want, "{change:?}");
            let own: Vec<u64> = s.hosts.iter().map(Host::memory_room_mb).collect();
            assert_eq!(own, want, "{change:?}: the hosts' own figures");
            assert!(
                index.memory_room.each_word().all(|w| w != NOT_KEPT),
                "{change:?}: every word kept"
            );
        }
    }

    /// The host status list follows every change that sets a status (a status change, a
    /// host replaced, added or removed) and ignores the rest; a copy of the index taken
    /// before a change (what a view holds) keeps the statuses of its epoch.
    #[test]
    fn host_statuses_follow_the_snapshot_and_a_copy_keeps_its_epoch() {
        use HostStatus::{Down, Maintenance, NonOperational, Up};
        let mut s = snapshot().host(host("a")).host(host("b")).build();
        let mut index = SnapshotIndex::build(&s);
        assert_eq!(index.host_statuses(&s), [Up, Up]);
        // (change, the statuses after it)
        let cases: [(Change, Vec<HostStatus>); 6] = [
            (
                Change::SetHostStatus {
                    host: 1,
                    status: Maintenance,
                },
                alloc::vec![Up, Maintenance],
            ),
            (
                Change::ReplaceHost {
                    host: 0,
                    value: host("a").status(Down).build(),
                },
                alloc::vec![Down, Maintenance],
            ),
            (
                Change::SetPending {
                    host: 0,
                    pending: Default::default(),
                },
                alloc::vec![Down, Maintenance],
            ),
            (
                Change::AddHost(host("c").status(NonOperational).build()),
                alloc::vec![Down, Maintenance, NonOperational],
            ),
            (
                Change::RemoveHost { host: 0 },
                alloc::vec![Maintenance, NonOperational],
            ),
            (
                Change::SetHostStatus {
                    host: 0,
                    status: Up,
                },
                alloc::vec![Up, NonOperational],
            ),
        ];
        for (change, want) in cases {
            let before = index.clone();
            let statuses_before: Vec<HostStatus> = index.host_statuses(&s).to_vec();
            let snapshot_before = s.clone();
            let touched = Touched::of(core::slice::from_ref(&change));
            change.clone().apply(&mut s).unwrap();
            index.refresh(&s, &touched);
            assert_eq!(index.host_statuses(&s), want.as_slice(), "{change:?}");
            assert_eq!(
                before.host_statuses(&snapshot_before),
                statuses_before.as_slice(),
                "{change:?}: the copy taken before"
            );
        }
    }

    /// The first [`PAGE_SIZES_KEPT`] page sizes asked for are kept; another is counted every
    /// time, never mixed up with a kept one. Nothing is kept before it is read, and a read
    /// never keeps a host the index does not cover.
    #[test]
    fn page_sizes_beyond_the_kept_ones_are_counted_every_time() {
        let sizes: Vec<u64> = (1..=PAGE_SIZES_KEPT as u64 + 2)
            .map(|k| k * 2_048)
            .collect();
        let mut paged = host("a");
        for (k, &size) in sizes.iter().enumerate() {
            paged = paged.hugepages(size, 10 * (k as u64 + 1));
        }
        let s = snapshot().host(paged).build();
        let h = &s.hosts[0];
        let index = SnapshotIndex::build(&s);
        assert_eq!(
            index.kept_hugepages(sizes[0]).get(0),
            None,
            "nothing read yet"
        );
        for (k, &size) in sizes.iter().enumerate() {
            assert_eq!(index.available_hugepages(0, h, size), 10 * (k as u64 + 1));
        }
        for (k, &size) in sizes.iter().enumerate() {
            let kept = index.kept_hugepages(size).get(0);
            if k < PAGE_SIZES_KEPT {
                assert_eq!(kept, Some(10 * (k as u64 + 1)), "size {size} is kept");
            } else {
                assert_eq!(kept, None, "size {size}: every slot keeps another size");
            }
            // Read again: the same answer, kept or not.
            assert_eq!(index.available_hugepages(0, h, size), 10 * (k as u64 + 1));
        }
        assert_eq!(
            index.available_hugepages(7, h, sizes[0]),
            10,
            "a host beyond the index is counted"
        );
        assert_eq!(
            format!("{:?}", index.hugepages),
            "[2048 KiB: 1 of 1 hosts counted, 4096 KiB: 1 of 1 hosts counted, \
             6144 KiB: 1 of 1 hosts counted, 8192 KiB: 1 of 1 hosts counted]"
        );
    }

    /// Counts are kept in 16-bit fields: a host with more pCPUs than that is counted every
    /// time, never truncated; a host that fits is kept.
    #[test]
    fn counts_too_large_for_the_kept_word_are_counted_every_time_not_truncated() {
        let s = snapshot()
            .host(host("huge").cpu(1, 70_000, 1).online_cpus([]))
            .host(host("edge").cpu(1, 65_534, 1).online_cpus([]))
            .build();
        let index = SnapshotIndex::build(&s);
        for (i, h) in s.hosts.iter().enumerate() {
            let counts = index.cpu_counts(i as HostIndex, h);
            assert_eq!(counts, CpuCounts::of(h), "{}", h.id);
            assert_eq!(counts.free_online, h.cpu.threads(), "{}", h.id);
        }
        assert_eq!(
            format!("{:?}", index.cpu_counts),
            "CountsCache(1 of 2 hosts counted)"
        );
    }

    /// An updated index answers like one built from scratch, for every host and flag.
    fn assert_same_answers(updated: &SnapshotIndex, fresh: &SnapshotIndex, s: &Snapshot) {
        let names: Vec<&str> = s
            .hosts
            .iter()
            .flat_map(|h| h.cpu_flags.iter().map(String::as_str))
            .collect();
        for h in 0..s.hosts.len() as HostIndex {
            for name in &names {
                let ask = |i: &SnapshotIndex| {
                    let flags = i.cpu_flags(s);
                    flags.has_all(h, &flags.mask([*name]))
                };
                assert_eq!(ask(updated), ask(fresh), "host {h} flag {name}");
            }
        }
    }
}
