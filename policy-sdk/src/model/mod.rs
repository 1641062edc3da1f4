//! The cluster snapshot model shared by the host and the guests.
//!
//! Every type here derives serde so it crosses the ABI through the codec ([`crate::wire::codec`])
//! and can be read from operator-written JSON/TOML files. Struct fields default when absent
//! so that files stay short; unknown fields are rejected so that typos are reported.
//!
//! Units of measure: memory in MiB (`_mb`), hugepage sizes in KiB (`_kb`), CPU load in
//! percent.

pub mod flags;
pub mod index;
pub mod manifest;
pub mod topology;
pub mod verdict;

/// Serde form of CPU id lists (host NUMA node CPUs, online, dedicated and pending pinned
/// pCPUs): a plain list in human-readable formats (JSON, TOML), and on the wire (bincode)
/// the list's runs of consecutive ids as `[start, length, start, length, ...]`. A host's
/// CPU lists are nearly always a few ranges, so a node of 48 CPUs crosses as 2 numbers
/// instead of 48, which is most of what decoding a full snapshot used to cost. Lossless for
/// any list (order and repeats kept).
pub mod cpu_list {
    use alloc::vec::Vec;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Most ids one list may expand to on the wire (a hostile run length is refused).
    pub const MAX_IDS: u64 = 1 << 20;

    /// Serializes a CPU list: `(start, len)` runs of consecutive ids, counted first and
    /// then written as they are found (no list of the runs in between).
    pub fn serialize<S: Serializer>(ids: &[u32], s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        if s.is_human_readable() {
            return ids.serialize(s);
        }
        let mut seq = s.serialize_seq(Some(2 * runs(ids).count()))?;
        for (start, len) in runs(ids) {
            seq.serialize_element(&start)?;
            seq.serialize_element(&len)?;
        }
        seq.end()
    }

    /// The `(start, len)` runs of consecutive ids of a list, in order.
    fn runs(ids: &[u32]) -> impl Iterator<Item = (u32, u32)> + '_ {
        let mut i = 0;
        core::iter::from_fn(move || {
            let start = *ids.get(i)?;
            let mut len = 1;
            while i + len < ids.len() && Some(ids[i + len]) == start.checked_add(len as u32) {
                len += 1;
            }
            i += len;
            Some((start, len as u32))
        })
    }

    /// Deserializes a CPU list. From a binary format the runs are expanded as they are
    /// read, with no list of the runs in between.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        if d.is_human_readable() {
            return Vec::<u32>::deserialize(d);
        }
        d.deserialize_seq(Runs)
    }

    /// Expands `(start, len)` runs into ids.
    struct Runs;

    impl<'de> serde::de::Visitor<'de> for Runs {
        type Value = Vec<u32>;

        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("CPU list runs")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u32>, A::Error> {
            let mut ids = Vec::new();
            while let Some(start) = seq.next_element::<u32>()? {
                let len = seq
                    .next_element::<u32>()?
                    .ok_or_else(|| A::Error::custom("CPU list runs: odd number of values"))?;
                if (ids.len() as u64) + u64::from(len) > MAX_IDS {
                    return Err(A::Error::custom("CPU list runs: too many ids"));
                }
                if len == 0 {
                    continue;
                }
                let Some(last) = start.checked_add(len - 1) else {
                    return Err(A::Error::custom("CPU list runs: id overflow"));
                };
                ids.extend(start..=last);
            }
            Ok(ids)
        }
    }
}

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Index of a host in [`Snapshot::hosts`]. Candidate lists and balance actions use indices,
/// not ids, so that they are compact on the wire; the host maps them back to ids.
pub type HostIndex = u32;

/// Index of a VM in [`Snapshot::vms`].
pub type VmIndex = u32;

/// A point-in-time view of one cluster: what every unit sees.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Snapshot {
    /// Monotonic version of this snapshot; bumped by the host on every change.
    pub epoch: u64,
    /// Wall-clock time of the snapshot in Unix seconds; 0 when unknown. Power units
    /// compare it with [`PowerManagement::last_failed_power_up`].
    pub time_unix: u64,
    /// Cluster-wide settings.
    pub cluster: ClusterInfo,
    /// Every host of the cluster, whatever its status.
    pub hosts: Vec<Host>,
    /// VMs known to the cluster (running, migrating, or starting).
    pub vms: Vec<Vm>,
}

impl Snapshot {
    /// The host at `index`, if it exists.
    pub fn host(&self, index: HostIndex) -> Option<&Host> {
        self.hosts.get(index as usize)
    }

    /// The index of the host with this id (a linear scan).
    pub fn host_index(&self, id: &str) -> Option<HostIndex> {
        self.hosts
            .iter()
            .position(|h| h.id == id)
            .map(|i| i as HostIndex)
    }

    /// The VMs whose current host is `host_id`.
    pub fn vms_on<'a>(&'a self, host_id: &'a str) -> impl Iterator<Item = &'a Vm> + 'a {
        self.vms
            .iter()
            .filter(move |vm| vm.current_host.as_deref() == Some(host_id))
    }
}

/// Cluster-wide scheduling settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterInfo {
    /// Stable cluster id.
    pub id: String,
    /// Human name.
    pub name: String,
    /// The cluster CPU model (VMs without their own model use it).
    pub cpu_model: String,
    /// CPU flags of the cluster CPU model.
    pub cpu_flags: Vec<String>,
    /// Memory overcommit in percent (100 = none, 150 = 1.5x).
    pub memory_overcommit_percent: u32,
    /// Count host threads as cores when checking CPU capacity.
    pub count_threads_as_cores: bool,
    /// Affinity groups between VMs.
    pub affinity_groups: Vec<AffinityGroup>,
    /// CPU architecture of the cluster's hosts; decides the memory hot plug size factor.
    pub architecture: Architecture,
    /// Memory slots a VM has for DIMM devices (libvirt `maxMemory slots`); every memory
    /// device of a VM, hot-plugged or not, takes one. Default 16.
    pub max_memory_slots: u32,
}

/// Default number of memory slots of a VM ([`ClusterInfo::max_memory_slots`]).
pub const DEFAULT_MAX_MEMORY_SLOTS: u32 = 16;

/// CPU architecture of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// x86-64: memory is hot plugged in multiples of 128 MiB.
    #[default]
    X86_64,
    /// 64-bit POWER: memory is hot plugged in multiples of 256 MiB.
    Ppc64,
}

impl Architecture {
    /// The size every hot-plugged DIMM (and every hot set change) must be a multiple of,
    /// in MiB: 128 on x86-64, 256 on POWER.
    pub fn memory_hotplug_factor_mb(self) -> u64 {
        match self {
            Architecture::X86_64 => 128,
            Architecture::Ppc64 => 256,
        }
    }

    /// Lower-case name, as in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Ppc64 => "ppc64",
        }
    }
}

/// Whether an affinity group wants its VMs together or apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AffinityPolarity {
    /// The group's VMs should run on the same host.
    #[default]
    Positive,
    /// The group's VMs should run on different hosts.
    Negative,
}

/// A VM affinity group: VMs that should run together (positive) or apart (negative).
/// Enforcing groups are hard rules (a filter); soft ones only steer the choice (a weight).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AffinityGroup {
    /// Group name (shown in reject details).
    pub name: String,
    /// Together or apart.
    pub polarity: AffinityPolarity,
    /// Hard rule (true) or preference (false).
    pub enforcing: bool,
    /// Ids of the member VMs.
    pub vms: Vec<String>,
}

impl AffinityGroup {
    /// Whether the VM with this id is a member.
    pub fn contains(&self, vm_id: &str) -> bool {
        self.vms.iter().any(|v| v == vm_id)
    }
}

impl Default for ClusterInfo {
    fn default() -> Self {
        Self {
            id: String::new(),
            name: String::new(),
            cpu_model: String::new(),
            cpu_flags: Vec::new(),
            memory_overcommit_percent: 100,
            count_threads_as_cores: false,
            affinity_groups: Vec::new(),
            architecture: Architecture::X86_64,
            max_memory_slots: DEFAULT_MAX_MEMORY_SLOTS,
        }
    }
}

/// Lifecycle status of a host. Only `Up` hosts are scheduling candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    /// Running and accepting VMs.
    #[default]
    Up,
    /// In maintenance.
    Maintenance,
    /// Powered off (or unreachable and fenced).
    Down,
    /// Being powered up.
    PoweringUp,
    /// Being shut down (told apart from `Down`).
    PoweringDown,
    /// Up but failing a cluster requirement.
    NonOperational,
}

impl HostStatus {
    /// Lower-case name, as in files.
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Up => "up",
            HostStatus::Maintenance => "maintenance",
            HostStatus::Down => "down",
            HostStatus::PoweringUp => "powering_up",
            HostStatus::PoweringDown => "powering_down",
            HostStatus::NonOperational => "non_operational",
        }
    }
}

/// CPU topology: of a host (physical) or of a VM (virtual).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CpuTopology {
    /// Sockets.
    pub sockets: u32,
    /// Cores in each socket.
    pub cores_per_socket: u32,
    /// Threads in each core.
    pub threads_per_core: u32,
}

impl Default for CpuTopology {
    fn default() -> Self {
        Self {
            sockets: 1,
            cores_per_socket: 1,
            threads_per_core: 1,
        }
    }
}

impl CpuTopology {
    /// Sockets x cores per socket.
    pub fn cores(&self) -> u32 {
        self.sockets.saturating_mul(self.cores_per_socket)
    }

    /// Sockets x cores x threads.
    pub fn threads(&self) -> u32 {
        self.cores().saturating_mul(self.threads_per_core)
    }
}

/// Free hugepages of one page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HugePages {
    /// Page size in KiB (2048, 1048576).
    pub size_kb: u64,
    /// Number of pages.
    pub count: u64,
}

impl HugePages {
    /// Pages of `size_kb` KiB that hold `memory_mb` MiB (rounded up; a zero size counts as
    /// 1 KiB so the result is never a division by zero).
    pub fn needed(memory_mb: u64, size_kb: u64) -> u64 {
        memory_mb.saturating_mul(1024).div_ceil(size_kb.max(1))
    }

    /// The pages of `size_kb` KiB among `pages` (a host's or a NUMA node's free pages; a
    /// size listed twice counts twice).
    #[inline(always)]
    pub fn count_of(pages: &[HugePages], size_kb: u64) -> u64 {
        pages
            .iter()
            .filter(|p| p.size_kb == size_kb)
            .map(|p| p.count)
            .sum()
    }
}

/// One host NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NumaNode {
    /// Node index as the host reports it.
    pub index: u32,
    /// CPUs of this node.
    #[serde(with = "cpu_list")]
    pub cpus: Vec<u32>,
    /// Total memory of the node in MiB.
    pub total_memory_mb: u64,
    /// Free memory of the node in MiB.
    pub free_memory_mb: u64,
    /// Free hugepages on this node, by page size.
    pub free_hugepages: Vec<HugePages>,
}

/// Host memory figures, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostMemory {
    /// Physical memory.
    pub physical_mb: u64,
    /// Free memory reported by the host.
    pub free_mb: u64,
    /// Memory committed to VMs already on the host (guest memory + overheads).
    pub committed_mb: u64,
    /// Overcommit-aware ceiling for committed memory.
    pub max_scheduling_mb: u64,
    /// Free swap.
    pub swap_free_mb: u64,
}

/// Power management state of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PowerManagement {
    /// A fence/power agent is configured and works.
    pub enabled: bool,
    /// Set when the host comes up; cleared by any user-triggered power action.
    pub controlled_by_policy: bool,
    /// The operator excluded this host from automatic power management for good.
    pub excluded_from_automatic: bool,
    /// Unix seconds of the last failed power-up, if any.
    pub last_failed_power_up: Option<u64>,
}

/// Pending resources on a host, summed over the pending records of VMs that were placed
/// there but are not running yet. Filled by the host's pending resource manager.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PendingAggregate {
    /// Pending memory (per-VM static overheads, the reference's `PendingMemory`) in MiB.
    pub memory_mb: u64,
    /// Pending overcommit memory (guest memory + overheads) in MiB.
    pub overcommit_memory_mb: u64,
    /// Pending vCPU count.
    pub cpu_cores: u32,
    /// Pending CPU load, in percent of the host's total capacity.
    pub cpu_load_percent: u32,
    /// pCPUs claimed by pending exclusively-pinned VMs.
    #[serde(with = "cpu_list")]
    pub pinned_cpus: Vec<u32>,
    /// Pending hugepages, by page size.
    pub hugepages: Vec<HugePages>,
    /// Pending memory per host NUMA node.
    pub numa_memory: Vec<NodeMemory>,
    /// Ids of the VMs pending on this host (placed, not running yet), sorted.
    pub vms: Vec<String>,
    /// Open-ended pending amounts (devices, SR-IOV VFs...).
    pub custom: Vec<CustomAmount>,
}

impl PendingAggregate {
    /// Pending pages of the given size.
    #[inline]
    pub fn hugepages_of(&self, size_kb: u64) -> u64 {
        self.hugepages
            .iter()
            .filter(|h| h.size_kb == size_kb)
            .map(|h| h.count)
            .sum()
    }

    /// Pending memory on a host NUMA node.
    #[inline]
    pub fn numa_memory_of(&self, node: u32) -> u64 {
        self.numa_memory
            .iter()
            .filter(|n| n.node == node)
            .map(|n| n.memory_mb)
            .sum()
    }

    /// Pending amount of a custom kind.
    pub fn custom_of(&self, kind: &str) -> u64 {
        amount_of(&self.custom, kind)
    }

    /// Whether the VM with this id is pending here.
    pub fn has_vm(&self, vm_id: &str) -> bool {
        self.vms.iter().any(|v| v == vm_id)
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Adds `added` to this aggregate in the canonical form the pending resource manager
    /// keeps: amounts summed; pinned pCPUs and VM ids each sorted and listed once; page
    /// sizes, NUMA nodes and custom kinds each sorted and listed once with their amounts
    /// summed. Merging the sum of some records into the sum of the others gives the sum of
    /// them all. When a total would overflow, fails naming the field and changes nothing.
    pub fn merge(&mut self, added: &PendingAggregate) -> Result<(), String> {
        // Checked first, then added in place: no copy of the amounts, and no list is
        // replaced (a list another thread allocated is freed by this one only when it
        // grows). The check worked out the scalar totals; the lists' adds cannot fail.
        let totals = self.merged_totals(added)?;
        (
            self.memory_mb,
            self.overcommit_memory_mb,
            self.cpu_cores,
            self.cpu_load_percent,
        ) = totals;
        for pages in &added.hugepages {
            self.add_hugepages(pages.size_kb, pages.count, "hugepages.count")?;
        }
        for node in &added.numa_memory {
            self.add_numa_memory(node.node, node.memory_mb, "numa_memory.memory_mb")?;
        }
        for custom in &added.custom {
            self.add_custom(&custom.kind, custom.amount, "custom.amount")?;
        }
        self.add_pinned_cpus(&added.pinned_cpus);
        for vm in &added.vms {
            self.add_vm(vm);
        }
        Ok(())
    }

    /// Whether [`PendingAggregate::merge`] of `added` would succeed: fails, naming the
    /// field, when a total would overflow. Changes nothing and allocates nothing.
    pub fn check_merge(&self, added: &PendingAggregate) -> Result<(), String> {
        self.merged_totals(added).map(drop)
    }

    /// [`PendingAggregate::check_merge`]'s work: every total of the merge checked, the
    /// scalar ones returned (memory, overcommit memory, cpu cores, cpu load).
    fn merged_totals(&self, added: &PendingAggregate) -> Result<(u64, u64, u32, u32), String> {
        let totals = (
            checked_total(self.memory_mb, added.memory_mb, "memory_mb")?,
            checked_total(
                self.overcommit_memory_mb,
                added.overcommit_memory_mb,
                "overcommit_memory_mb",
            )?,
            checked_total(self.cpu_cores, added.cpu_cores, "cpu_cores")?,
            checked_total(
                self.cpu_load_percent,
                added.cpu_load_percent,
                "cpu_load_percent",
            )?,
        );
        check_keyed(
            &self.hugepages,
            &added.hugepages,
            |a, b| a.size_kb == b.size_kb,
            |p| p.count,
            "hugepages.count",
        )?;
        check_keyed(
            &self.numa_memory,
            &added.numa_memory,
            |a, b| a.node == b.node,
            |n| n.memory_mb,
            "numa_memory.memory_mb",
        )?;
        check_keyed(
            &self.custom,
            &added.custom,
            |a, b| a.kind == b.kind,
            |c| c.amount,
            "custom.amount",
        )?;
        Ok(totals)
    }

    /// This aggregate's amounts without its pinned pCPUs and VM ids: a copy to check
    /// totals on without copying the list of pending VMs.
    pub fn amounts(&self) -> PendingAggregate {
        PendingAggregate {
            memory_mb: self.memory_mb,
            overcommit_memory_mb: self.overcommit_memory_mb,
            cpu_cores: self.cpu_cores,
            cpu_load_percent: self.cpu_load_percent,
            pinned_cpus: Vec::new(),
            hugepages: self.hugepages.clone(),
            numa_memory: self.numa_memory.clone(),
            vms: Vec::new(),
            custom: self.custom.clone(),
        }
    }

    /// Adds `count` pages of `size_kb` KiB (the list stays sorted by size, each size
    /// once). On an overflow, fails naming `field` and changes nothing.
    pub fn add_hugepages(&mut self, size_kb: u64, count: u64, field: &str) -> Result<(), String> {
        add_keyed(
            &mut self.hugepages,
            |p| p.size_kb.cmp(&size_kb),
            |p| &mut p.count,
            || HugePages { size_kb, count: 0 },
            count,
            field,
        )
    }

    /// Adds `memory_mb` on host NUMA node `node` (the list stays sorted by node, each
    /// node once). On an overflow, fails naming `field` and changes nothing.
    pub fn add_numa_memory(
        &mut self,
        node: u32,
        memory_mb: u64,
        field: &str,
    ) -> Result<(), String> {
        add_keyed(
            &mut self.numa_memory,
            |n| n.node.cmp(&node),
            |n| &mut n.memory_mb,
            || NodeMemory { node, memory_mb: 0 },
            memory_mb,
            field,
        )
    }

    /// Adds `amount` of the custom `kind` (the list stays sorted by kind, each kind once).
    /// On an overflow, fails naming `field` and changes nothing.
    pub fn add_custom(&mut self, kind: &str, amount: u64, field: &str) -> Result<(), String> {
        add_keyed(
            &mut self.custom,
            |c| c.kind.as_str().cmp(kind),
            |c| &mut c.amount,
            || CustomAmount {
                kind: kind.into(),
                amount: 0,
            },
            amount,
            field,
        )
    }

    /// Adds pinned pCPUs (the list stays sorted, each pCPU once).
    pub fn add_pinned_cpus(&mut self, cpus: &[u32]) {
        for &cpu in cpus {
            if let Err(at) = self.pinned_cpus.binary_search(&cpu) {
                self.pinned_cpus.insert(at, cpu);
            }
        }
    }

    /// Adds a pending VM's id (the list stays sorted, each id once).
    pub fn add_vm(&mut self, id: &str) {
        if let Err(at) = self.vms.binary_search_by(|v| v.as_str().cmp(id)) {
            self.vms.insert(at, id.into());
        }
    }

    /// Whether the aggregate is in the canonical form [`PendingAggregate::merge`] keeps:
    /// `pinned_cpus` and `vms` sorted, each once; `hugepages` by `size_kb`, `numa_memory`
    /// by `node` and `custom` by `kind`, sorted, each key once.
    pub fn is_canonical(&self) -> bool {
        fn increasing<T, K: PartialOrd>(list: &[T], key: impl Fn(&T) -> &K) -> bool {
            list.windows(2).all(|w| key(&w[0]) < key(&w[1]))
        }
        increasing(&self.pinned_cpus, |c| c)
            && increasing(&self.vms, |v| v)
            && increasing(&self.hugepages, |h| &h.size_kb)
            && increasing(&self.numa_memory, |n| &n.node)
            && increasing(&self.custom, |c| &c.kind)
    }
}

/// `sum + added` (a `u32` or `u64` total); on an overflow, fails naming `field`.
fn checked_total<T: Into<u64> + TryFrom<u64>>(sum: T, added: T, field: &str) -> Result<T, String> {
    sum.into()
        .checked_add(added.into())
        .and_then(|total| T::try_from(total).ok())
        .ok_or_else(|| format!("{field}: the host's total overflows"))
}

/// Adds `amount` to the entry of a list sorted by key that `find` compares with the key,
/// inserting `empty()` (an entry of the key with nothing) in order when the list lacks it.
/// On an overflow, fails naming `field` and changes nothing.
fn add_keyed<T>(
    list: &mut Vec<T>,
    find: impl Fn(&T) -> core::cmp::Ordering,
    amount_of: impl Fn(&mut T) -> &mut u64,
    empty: impl FnOnce() -> T,
    amount: u64,
    field: &str,
) -> Result<(), String> {
    let at = match list.binary_search_by(find) {
        Ok(at) => at,
        Err(at) => {
            let mut entry = empty();
            *amount_of(&mut entry) = amount;
            list.insert(at, entry);
            return Ok(());
        }
    };
    let total = amount_of(&mut list[at]);
    *total = checked_total(*total, amount, field)?;
    Ok(())
}

/// Whether adding each entry of `added`, in order, to a list of entries unique by key
/// (what [`add_keyed`] keeps) keeps every total within `u64`: fails naming `field` at the
/// first total that overflows, as those adds would.
fn check_keyed<T>(
    have: &[T],
    added: &[T],
    same_key: impl Fn(&T, &T) -> bool,
    amount: impl Fn(&T) -> u64,
    field: &str,
) -> Result<(), String> {
    for (i, entry) in added.iter().enumerate() {
        let before: u64 = have
            .iter()
            .chain(&added[..i])
            .filter(|e| same_key(e, entry))
            .try_fold(0u64, |sum, e| sum.checked_add(amount(e)))
            .ok_or_else(|| format!("{field}: the host's total overflows"))?;
        checked_total(before, amount(entry), field)?;
    }
    Ok(())
}

/// The amount of `kind` in a list of custom amounts (summed if repeated).
pub fn amount_of(amounts: &[CustomAmount], kind: &str) -> u64 {
    amounts
        .iter()
        .filter(|c| c.kind == kind)
        .fold(0u64, |sum, c| sum.saturating_add(c.amount))
}

/// Memory on one host NUMA node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeMemory {
    /// Host node index.
    pub node: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
}

/// A named amount of an open-ended resource kind.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CustomAmount {
    /// Kind name, e.g. `sriov_vf` or `gpu`.
    pub kind: String,
    /// Amount.
    pub amount: u64,
}

/// One hypervisor host.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Host {
    /// Stable unique id.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Lifecycle status.
    pub status: HostStatus,
    /// Holds the storage pool manager role (never powered down automatically).
    pub spm: bool,
    /// Physical CPU topology.
    pub cpu: CpuTopology,
    /// Online CPU ids; empty means "all of the topology's threads".
    #[serde(with = "cpu_list")]
    pub online_cpus: Vec<u32>,
    /// CPU model name.
    pub cpu_model: String,
    /// CPU flags (shared with other hosts that have the same list; see [`flags`]).
    pub cpu_flags: flags::CpuFlags,
    /// NUMA nodes; empty when the host has no NUMA support.
    pub numa_nodes: Vec<NumaNode>,
    /// Memory figures.
    pub memory: HostMemory,
    /// Free hugepages, by size, over the whole host.
    pub free_hugepages: Vec<HugePages>,
    /// Current CPU usage in percent.
    pub cpu_usage_percent: u32,
    /// Minutes the CPU usage has stayed on its side of the utilization thresholds.
    pub cpu_usage_duration_minutes: u32,
    /// Minutes the host has been in its current `status` (a shutdown that has run longer
    /// than the policy's timeout is taken as failed).
    pub status_minutes: u32,
    /// Minutes the host has had no running, migrating or pending VM (0 when it has one).
    pub empty_minutes: u32,
    /// Number of VMs running on the host.
    pub running_vms: u32,
    /// pCPUs exclusively pinned to running VMs.
    #[serde(with = "cpu_list")]
    pub dedicated_cpus: Vec<u32>,
    /// Power management state.
    pub power: PowerManagement,
    /// Free amounts of custom resource kinds (GPUs, SR-IOV VFs...), before pending ones.
    pub custom_resources: Vec<CustomAmount>,
    /// Pending resources on this host (filled by the engine).
    pub pending: PendingAggregate,
}

/// The figures of a host that its engine refreshes every few seconds (host statistics),
/// sent to guests as [`Change::SetUsage`](crate::wire::sync::Change::SetUsage) rather than
/// as a whole new host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostUsage {
    /// [`Host::cpu_usage_percent`].
    pub cpu_usage_percent: u32,
    /// [`HostMemory::free_mb`].
    pub free_mb: u64,
    /// [`HostMemory::swap_free_mb`].
    pub swap_free_mb: u64,
    /// [`Host::running_vms`].
    pub running_vms: u32,
}

impl HostUsage {
    /// The usage figures of a host.
    pub fn of(host: &Host) -> Self {
        Self {
            cpu_usage_percent: host.cpu_usage_percent,
            free_mb: host.memory.free_mb,
            swap_free_mb: host.memory.swap_free_mb,
            running_vms: host.running_vms,
        }
    }

    /// Writes these figures into a host.
    pub fn apply_to(&self, host: &mut Host) {
        host.cpu_usage_percent = self.cpu_usage_percent;
        host.memory.free_mb = self.free_mb;
        host.memory.swap_free_mb = self.swap_free_mb;
        host.running_vms = self.running_vms;
    }
}

impl Host {
    /// CPUs available for scheduling: cores, or threads when the cluster counts threads.
    pub fn schedulable_cpus(&self, count_threads_as_cores: bool) -> u32 {
        if count_threads_as_cores {
            self.cpu.threads()
        } else {
            self.cpu.cores()
        }
    }

    /// Free memory plus free swap, minus pending memory (MiB).
    #[inline(always)]
    pub fn physical_memory_mb(&self) -> u64 {
        self.memory
            .free_mb
            .saturating_add(self.memory.swap_free_mb)
            .saturating_sub(self.pending.memory_mb)
    }

    /// Overcommit-aware memory left for scheduling: the ceiling minus committed and pending
    /// overcommit memory (MiB).
    #[inline(always)]
    pub fn schedulable_memory_mb(&self) -> u64 {
        self.memory
            .max_scheduling_mb
            .saturating_sub(self.memory.committed_mb)
            .saturating_sub(self.pending.overcommit_memory_mb)
    }

    /// The memory a VM may still take here, overhead included (MiB): the smaller of
    /// [`Host::physical_memory_mb`] and [`Host::schedulable_memory_mb`], what the `memory`
    /// filter compares a VM's need with.
    #[inline(always)]
    pub fn memory_room_mb(&self) -> u64 {
        self.physical_memory_mb().min(self.schedulable_memory_mb())
    }

    /// Free amount of a custom resource kind, before pending amounts.
    pub fn custom_free(&self, kind: &str) -> u64 {
        amount_of(&self.custom_resources, kind)
    }
}

/// Kind of VM workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmType {
    /// Desktop VM.
    Desktop,
    /// Server VM.
    #[default]
    Server,
    /// High-performance VM.
    HighPerformance,
}

/// CPU pinning policy of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinningPolicy {
    /// No pinning.
    #[default]
    None,
    /// The pinning string is applied as written.
    Manual,
    /// Resize the VM to the host and pin NUMA.
    ResizeAndPinNuma,
    /// Exclusively dedicated pCPUs.
    Dedicated,
    /// Dedicated whole cores, one vCPU per core.
    IsolateThreads,
}

/// Which migrations are allowed for a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationMode {
    /// The engine may migrate it on its own.
    #[default]
    Migratable,
    /// Only a user-forced migration (or host maintenance) moves it.
    ManualOnly,
    /// Never migrates; runs only on its dedicated hosts.
    PinnedToHost,
}

/// NUMA tune mode of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumaTuneMode {
    /// Memory only from the pinned nodes.
    #[default]
    Strict,
    /// Interleave over the pinned nodes.
    Interleave,
    /// Prefer the pinned nodes.
    Preferred,
}

/// One virtual NUMA node of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VNumaNode {
    /// vNUMA node index.
    pub index: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// vCPUs in this node.
    pub cpus: Vec<u32>,
    /// Host nodes this node may be placed on; empty = not pinned.
    pub pinned_host_nodes: Vec<u32>,
}

/// Runtime status of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmStatus {
    /// Not running.
    #[default]
    Down,
    /// Placed, waiting for launch.
    WaitForLaunch,
    /// Powering up.
    PoweringUp,
    /// Running.
    Up,
    /// Migrating away from its current host.
    MigratingFrom,
}

/// A key/value custom property of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Property {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// A VM: either one in the cluster, or the one being scheduled (the request).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Vm {
    /// Stable unique id.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Workload type.
    pub vm_type: VmType,
    /// Runtime status.
    pub status: VmStatus,
    /// Guest memory in MiB.
    pub memory_mb: u64,
    /// Guaranteed (minimum) memory in MiB.
    pub min_guaranteed_memory_mb: u64,
    /// Hugepage size in KiB backing the guest memory, if any.
    pub hugepage_size_kb: Option<u64>,
    /// Virtual CPU topology.
    pub cpu: CpuTopology,
    /// CPU pinning string, e.g. `0#1-3_1#4`.
    pub cpu_pinning: Option<String>,
    /// Pinning policy.
    pub cpu_pinning_policy: PinningPolicy,
    /// Host CPU passthrough.
    pub cpu_passthrough: bool,
    /// Required CPU model (the cluster's when absent).
    pub cpu_model: Option<String>,
    /// Required CPU flags (for a running passthrough VM: the flags of its current CPU).
    pub cpu_flags: Vec<String>,
    /// vNUMA nodes.
    pub numa_nodes: Vec<VNumaNode>,
    /// NUMA tune mode.
    pub numa_tune: NumaTuneMode,
    /// Migration mode as configured; absent means the default, see [`Vm::migration_mode`].
    pub migration: Option<MigrationMode>,
    /// Hosts this VM may run on (pinned VMs); empty = any.
    pub dedicated_hosts: Vec<String>,
    /// Id of the host it runs on, if any.
    pub current_host: Option<String>,
    /// CPU usage in percent of its vCPUs.
    pub cpu_usage_percent: u32,
    /// Custom properties.
    pub custom_properties: Vec<Property>,
    /// Amounts of custom resource kinds the VM needs on its host (e.g. `gpu`: 1). They
    /// become pending custom records on the chosen host.
    pub custom_resources: Vec<CustomAmount>,
    /// Memory devices (DIMMs) of the VM, each taking one memory slot. Their sizes are
    /// part of [`Vm::memory_mb`]; only hot-plugged ones can be hot unplugged.
    pub memory_devices: Vec<MemoryDevice>,
}

/// One memory device (a DIMM) of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryDevice {
    /// Device id (unique within the VM), e.g. the libvirt alias `dimm0`.
    pub id: String,
    /// Size in MiB.
    pub size_mb: u64,
    /// Guest (vNUMA) node the DIMM is attached to.
    pub node: u32,
    /// Added to the running VM by a hot plug (only those can be hot unplugged).
    pub hotplugged: bool,
    /// A hot unplug of this device was requested and has not finished.
    pub unplugging: bool,
}

impl Vm {
    /// Number of vCPUs.
    pub fn vcpus(&self) -> u32 {
        self.cpu.threads()
    }

    /// The migration mode in force: the configured one, else manual-only for
    /// high-performance and pinned VMs (see [`topology::is_hp_or_pinned`]) and migratable
    /// for the rest.
    ///
    /// [`topology::is_hp_or_pinned`]: crate::model::topology::is_hp_or_pinned
    pub fn migration_mode(&self) -> MigrationMode {
        self.migration
            .unwrap_or(if crate::model::topology::is_hp_or_pinned(self) {
                MigrationMode::ManualOnly
            } else {
                MigrationMode::Migratable
            })
    }

    /// The VM's hugepage size and the pages of that size its guest memory needs, when it
    /// is backed by hugepages.
    pub fn hugepages_needed(&self) -> Option<(u64, u64)> {
        let size = self.hugepage_size_kb.filter(|&s| s > 0)?;
        Some((size, HugePages::needed(self.memory_mb, size)))
    }

    /// A custom property's value.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.custom_properties
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.as_str())
    }

    /// The amount of a custom resource kind this VM needs.
    pub fn custom_need(&self, kind: &str) -> u64 {
        amount_of(&self.custom_resources, kind)
    }

    /// Whether the VM occupies its current host (running, starting or migrating away).
    pub fn is_running(&self) -> bool {
        self.current_host.is_some()
            && matches!(
                self.status,
                VmStatus::WaitForLaunch
                    | VmStatus::PoweringUp
                    | VmStatus::Up
                    | VmStatus::MigratingFrom
            )
    }
}

#[cfg(test)]
mod cpu_list_tests {
    use super::*;
    use crate::wire::codec;

    #[test]
    fn cpu_lists_round_trip_on_the_wire_and_stay_plain_in_json() {
        let lists: [&[u32]; 6] = [
            &[],
            &[7],
            &[0, 1, 2, 3, 4, 5, 6, 7],
            &[5, 3, 4, 9, 9, 8, 20, 21],
            &[u32::MAX - 2, u32::MAX - 1, u32::MAX, 0],
            &[1, 3, 5, 7],
        ];
        for list in lists {
            let node = NumaNode {
                cpus: list.to_vec(),
                ..NumaNode::default()
            };
            let bytes = codec::encode(&node).unwrap();
            assert_eq!(codec::decode::<NumaNode>(&bytes).unwrap(), node, "{list:?}");
            let json = serde_json::to_value(&node).unwrap();
            assert_eq!(json["cpus"], serde_json::json!(list));
        }
        // 48 consecutive CPUs cross as one run.
        let wide = NumaNode {
            cpus: (0..48).collect(),
            ..NumaNode::default()
        };
        assert!(codec::encode(&wide).unwrap().len() < 12);
    }

    #[test]
    fn hostile_cpu_runs_are_refused() {
        #[derive(serde::Serialize)]
        struct Raw {
            cpus: Vec<u32>,
        }
        for runs in [
            vec![1u32],
            vec![0, u32::MAX, 0, u32::MAX],
            vec![u32::MAX, 2],
        ] {
            let bytes = codec::encode(&Raw { cpus: runs.clone() }).unwrap();
            #[derive(serde::Deserialize, Debug)]
            #[allow(dead_code)]
            struct Back {
                #[serde(with = "cpu_list")]
                cpus: Vec<u32>,
            }
            assert!(codec::decode::<Back>(&bytes).is_err(), "{runs:?}");
        }
    }
}

#[cfg(test)]
mod pending_merge_tests {
    use super::*;
    use crate::testing::XorShift;
    use alloc::string::ToString;

    /// A random part of an aggregate, not in canonical form: repeated pCPUs, VM ids, page
    /// sizes, nodes and kinds, zero amounts.
    fn raw_part(rng: &mut XorShift) -> PendingAggregate {
        let mut pick = |n: u64| rng.below(n);
        let sizes = [2_048, 1_048_576];
        let kinds = ["gpu", "sriov_vf", "fpga"];
        PendingAggregate {
            memory_mb: pick(4_096),
            overcommit_memory_mb: pick(8_192),
            cpu_cores: pick(16) as u32,
            cpu_load_percent: pick(30) as u32,
            pinned_cpus: (0..pick(5)).map(|_| pick(64) as u32).collect(),
            hugepages: (0..pick(3))
                .map(|_| HugePages {
                    size_kb: sizes[pick(2) as usize],
                    count: pick(3),
                })
                .collect(),
            numa_memory: (0..pick(3))
                .map(|_| NodeMemory {
                    node: pick(4) as u32,
                    memory_mb: pick(2),
                })
                .collect(),
            vms: (0..pick(4)).map(|_| format!("vm-{}", pick(40))).collect(),
            custom: (0..pick(3))
                .map(|_| CustomAmount {
                    kind: kinds[pick(3) as usize].to_string(),
                    amount: pick(3),
                })
                .collect(),
        }
    }

    fn merged(parts: &[&PendingAggregate]) -> PendingAggregate {
        let mut sum = PendingAggregate::default();
        for part in parts {
            sum.merge(part).unwrap();
        }
        sum
    }

    #[test]
    fn merging_parts_in_any_order_gives_one_canonical_aggregate() {
        let mut rng = XorShift::new(11);
        for round in 0..500 {
            let (a, b, c) = (raw_part(&mut rng), raw_part(&mut rng), raw_part(&mut rng));
            let sum = merged(&[&a, &b, &c]);
            for order in [[&c, &a, &b], [&b, &c, &a], [&c, &b, &a]] {
                assert_eq!(merged(&order), sum, "round {round}");
            }
            // Merging sums is merging their parts.
            let mut of_sums = merged(&[&a]);
            of_sums.merge(&merged(&[&b, &c])).unwrap();
            assert_eq!(of_sums, sum, "round {round}");
            assert!(sum.is_canonical(), "round {round}: {sum:?}");
            assert!(!a.is_canonical() || a == merged(&[&a]), "round {round}");
            let count = |p: &PendingAggregate| p.hugepages.iter().map(|h| h.count).sum::<u64>();
            assert_eq!(count(&sum), count(&a) + count(&b) + count(&c));
        }
    }

    #[test]
    fn an_overflowing_merge_names_the_field_and_changes_nothing() {
        let sum = PendingAggregate {
            memory_mb: 1,
            cpu_cores: 1,
            hugepages: vec![HugePages {
                size_kb: 2_048,
                count: u64::MAX - 1,
            }],
            vms: vec!["a".into()],
            ..Default::default()
        };
        let pages = |count| HugePages {
            size_kb: 2_048,
            count,
        };
        let cases: [(&str, PendingAggregate); 4] = [
            (
                "memory_mb",
                PendingAggregate {
                    memory_mb: u64::MAX,
                    vms: vec!["b".into()],
                    ..Default::default()
                },
            ),
            (
                "cpu_cores",
                PendingAggregate {
                    cpu_cores: u32::MAX,
                    ..Default::default()
                },
            ),
            (
                "hugepages.count",
                PendingAggregate {
                    hugepages: vec![pages(1), pages(1)],
                    vms: vec!["b".into()],
                    ..Default::default()
                },
            ),
            (
                "custom.amount",
                PendingAggregate {
                    custom: vec![
                        CustomAmount {
                            kind: "gpu".into(),
                            amount: u64::MAX,
                        },
                        CustomAmount {
                            kind: "gpu".into(),
                            amount: 1,
                        },
                    ],
                    ..Default::default()
                },
            ),
        ];
        for (field, added) in cases {
            let mut target = sum.clone();
            let err = target.merge(&added).unwrap_err();
            assert!(err.starts_with(field), "{field}: {err}");
            assert_eq!(target, sum, "{field}: nothing changed");
        }
    }

    /// Merging amounts of page sizes, NUMA nodes and custom kinds the aggregate already
    /// lists adds them where they are: the lists are not copied or replaced (a list
    /// another thread allocated stays where it is), and a failed check leaves them alone.
    #[test]
    fn merging_amounts_already_listed_adds_them_in_place() {
        // Memory, and one entry in each keyed list: 2 MiB pages, NUMA node 1, "gpu".
        let listing = |memory_mb, pages, node_mb, gpus, vm: &str| PendingAggregate {
            memory_mb,
            hugepages: vec![HugePages {
                size_kb: 2_048,
                count: pages,
            }],
            numa_memory: vec![NodeMemory {
                node: 1,
                memory_mb: node_mb,
            }],
            custom: vec![CustomAmount {
                kind: "gpu".into(),
                amount: gpus,
            }],
            vms: vec![vm.into()],
            ..Default::default()
        };
        let mut kept = listing(10, 4, 100, 1, "a");
        let lists = |a: &PendingAggregate| {
            (
                a.hugepages.as_ptr() as usize,
                a.numa_memory.as_ptr() as usize,
                a.custom.as_ptr() as usize,
            )
        };
        let before = lists(&kept);
        let added = listing(5, 2, 50, 2, "b");
        kept.merge(&added).unwrap();
        assert_eq!(lists(&kept), before, "the same lists, added to");
        assert_eq!(
            (
                kept.memory_mb,
                kept.hugepages_of(2_048),
                kept.numa_memory_of(1),
                amount_of(&kept.custom, "gpu")
            ),
            (15, 6, 150, 3)
        );
        assert_eq!(kept.vms, ["a", "b"]);
        let overflowing = PendingAggregate {
            numa_memory: vec![NodeMemory {
                node: 1,
                memory_mb: u64::MAX,
            }],
            ..Default::default()
        };
        let unchanged = kept.clone();
        assert!(kept.check_merge(&overflowing).is_err());
        assert!(kept.merge(&overflowing).is_err());
        assert_eq!(kept, unchanged);
        assert_eq!(lists(&kept), before);
    }
}
