//! Builtin module `high-performance`: the units for high-performance and pinned VMs, after
//! the reference scheduler's CpuLevel, CpuPinning, Numa and HugePages filters and its
//! CpuAndNumaPinning and HighPerformanceCpu weights.
//!
//! The placement logic (pinning strings, dedicated pCPU allocation, the vNUMA assignment
//! search) lives in [`policy_sdk::model::topology`], so the engine can turn the same assignment into
//! pending resources after a decision.
//!
//! | unit | kind | reject codes |
//! |---|---|---|
//! | `cpu-level` | filter | `missing_cpu_flags` |
//! | `cpu-pinning` | filter | `invalid_pinning`, `pcpu_offline`, `pcpu_dedicated`, `not_enough_free_pcpus`, `resize_needs_numa` |
//! | `numa` | filter | `no_numa_support`, `numa_node_missing`, `not_enough_numa_memory`, `numa_search_limit` |
//! | `hugepages` | filter | `not_enough_hugepages` |
//! | `cpu-and-numa-pinning` | weight | 1 when a vNUMA assignment that respects CPU pinning exists, else 1000 |
//! | `high-performance-cpu` | weight | 1 when the host's topology holds the VM's, else 1000 |
//!
//! Every unit works out what it needs from the VM once per call (flags, pinning, whether it
//! applies at all) and passes every candidate without per-host work when the VM does not
//! use the feature it checks.

use policy_sdk::model::index::{available_hugepages, CpuFlagIndex};
use policy_sdk::model::topology::{
    self, CpuBits, CpuCounts, CpuPinning, NumaFit, NumaRequest, QuickNumaFit,
};
use policy_sdk::{
    push_penalties, Context, Filter, Host, HostIndex, HugePages, PinningPolicy, Snapshot, Verdict,
    Verdicts, Vm, Weight,
};
use std::cell::OnceCell;
use std::fmt::Write as _;

/// The penalty of a host that fits (the reference's "good").
pub const FITS: i64 = 1;
/// The penalty of a host that does not fit (the reference's "bad").
pub const DOES_NOT_FIT: i64 = 1000;

/// How many items a reject detail lists before summing up the rest.
const DETAIL_LIST_LIMIT: usize = 8;

/// CPU flags the VM needs on its host, or `None` when any host will do:
///
/// * a passthrough VM that is not running (a start) passes everywhere;
/// * a running passthrough VM (a migration) needs the flags of its current CPU: its
///   `cpu_flags`, or when it has none, those of the host it runs on;
/// * other VMs need the flags of their CPU model: their `cpu_flags`, else the cluster's.
///
/// Sorted, each name once.
pub fn required_flags<'a>(s: &'a Snapshot, vm: &'a Vm) -> Option<Vec<&'a str>> {
    required_flag_list(s, vm).map(sorted_names)
}

/// The list [`required_flags`] is made of, as the snapshot or the VM holds it (`None`:
/// nothing required).
fn required_flag_list<'a>(s: &'a Snapshot, vm: &'a Vm) -> Option<&'a [String]> {
    let flags: &'a [String] = if vm.cpu_passthrough {
        if !vm.is_running() {
            return None;
        }
        if vm.cpu_flags.is_empty() {
            let source = vm.current_host.as_deref()?;
            &s.hosts.iter().find(|h| h.id == source)?.cpu_flags
        } else {
            &vm.cpu_flags
        }
    } else if vm.cpu_flags.is_empty() {
        &s.cluster.cpu_flags
    } else {
        &vm.cpu_flags
    };
    (!flags.is_empty()).then_some(flags)
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().take(DETAIL_LIST_LIMIT).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{item}");
    }
    if items.len() > DETAIL_LIST_LIMIT {
        let _ = write!(out, " and {} more", items.len() - DETAIL_LIST_LIMIT);
    }
    out
}

/// The host must have every CPU flag the VM needs (see [`required_flags`]).
#[derive(Debug, Default)]
pub struct CpuLevelFilter;

impl CpuLevelFilter {
    /// The verdict by flag names, for callers without the flag index.
    fn verdict(ctx: &Context<'_>, required: &[&str], vm: &Vm, host: &Host) -> Verdict {
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|r| !host.cpu_flags.iter().any(|f| f == r))
            .collect();
        Self::verdict_missing(ctx, &missing, vm)
    }

    /// The verdict on a host the flag index says lacks some of the VM's flags (`flags`, as
    /// [`required_flag_list`] gives them): a rejection, whose detail names the missing flags
    /// from the host's bits (the required names and their bits are worked out once per call,
    /// in `resolved`, and only when a detail is asked for).
    #[cold]
    #[inline(never)]
    fn reject_by_bits<'a>(
        ctx: &Context<'_>,
        index: &CpuFlagIndex,
        host: HostIndex,
        flags: &'a [String],
        resolved: &OnceCell<RequiredBits<'a>>,
        vm: &Vm,
    ) -> Verdict {
        ctx.reject("missing_cpu_flags", || {
            let (required, bits) = resolved.get_or_init(|| {
                let required = sorted_names(flags);
                let bits = required.iter().map(|r| index.bit(r)).collect();
                (required, bits)
            });
            let missing: Vec<&str> = required
                .iter()
                .zip(bits)
                .filter(|(_, bit)| bit.is_none_or(|b| !index.has_bit(host, b)))
                .map(|(name, _)| *name)
                .collect();
            Self::missing_detail(&missing, vm)
        })
    }

    /// Passes when nothing is missing, else rejects naming what is.
    fn verdict_missing(ctx: &Context<'_>, missing: &[&str], vm: &Vm) -> Verdict {
        if missing.is_empty() {
            return Verdict::Pass;
        }
        ctx.reject("missing_cpu_flags", || Self::missing_detail(missing, vm))
    }

    /// The detail of a rejection for `missing` flags.
    fn missing_detail(missing: &[&str], vm: &Vm) -> String {
        let what = if vm.cpu_passthrough {
            "the VM's current CPU".to_string()
        } else {
            match &vm.cpu_model {
                Some(model) => format!("CPU model {model}"),
                None => "the cluster CPU model".to_string(),
            }
        };
        format!("missing flags of {what}: {}", list(missing))
    }
}

/// The required flags' names, sorted and each once, with their bits in the flag index.
type RequiredBits<'a> = (Vec<&'a str>, Vec<Option<u32>>);

/// `flags`' names sorted, each once.
fn sorted_names(flags: &[String]) -> Vec<&str> {
    let mut names: Vec<&str> = flags.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    names
}

impl Filter for CpuLevelFilter {
    const NAME: &'static str = "cpu-level";
    const DESCRIPTION: &'static str =
        "The host has every CPU flag of the VM's CPU model (a migrating passthrough VM: of its \
         current CPU)";

    fn applies(&self, ctx: &Context<'_>, vm: &Vm) -> bool {
        required_flag_list(ctx.snapshot(), vm).is_some()
    }

    fn check(&self, ctx: &Context<'_>, vm: &Vm, host: &Host) -> Verdict {
        match required_flags(ctx.snapshot(), vm) {
            Some(required) => Self::verdict(ctx, &required, vm, host),
            None => Verdict::Pass,
        }
    }

    fn check_all(&self, ctx: &Context<'_>, vm: &Vm, candidates: &[HostIndex], out: &mut Verdicts) {
        let snapshot = ctx.snapshot();
        let Some(flags) = required_flag_list(snapshot, vm) else {
            return out.extend(candidates.iter().map(|_| Verdict::Pass));
        };
        let Some(index) = ctx.cpu_flags() else {
            let required = sorted_names(flags);
            return out.extend(
                candidates
                    .iter()
                    .map(|&i| Self::verdict(ctx, &required, vm, ctx.host(i))),
            );
        };
        // With the flag index, a host that has every flag is a few word operations. A VM
        // of the cluster's CPU model (most VMs) takes the cluster's mask the index keeps;
        // others resolve their names now.
        let own_mask;
        let mask = match ctx.cluster_flag_mask() {
            Some(mask) if core::ptr::eq(flags, snapshot.cluster.cpu_flags.as_slice()) => mask,
            _ => {
                own_mask = index.mask(flags.iter().map(String::as_str));
                &own_mask
            }
        };
        let resolved = OnceCell::new();
        let mut verdict = |i| Self::reject_by_bits(ctx, index, i, flags, &resolved, vm);
        match index.one_word(mask) {
            // Up to 64 flags in the dictionary: a load and a mask per host.
            Some((words, wanted)) => out.judge(
                candidates,
                #[inline(always)]
                |i| words.get(i as usize).is_some_and(|w| w & wanted == wanted),
                &mut verdict,
            ),
            None => out.judge(
                candidates,
                #[inline(always)]
                |i| index.has_all(i, mask),
                &mut verdict,
            ),
        }
    }
}

/// What the CPU pinning filter checks for one VM, worked out once per call.
enum PinningNeeds {
    /// Nothing to check.
    None,
    /// The pinning string is malformed (a VM that skipped request validation).
    Invalid(String),
    /// Check the pinned pCPUs and/or an exclusive allocation.
    Check {
        pcpus: PinnedPcpus,
        exclusive: bool,
        resize: bool,
    },
}

impl PinningNeeds {
    /// Whether [`PinningNeeds::of`] is anything but [`PinningNeeds::None`], without parsing
    /// the pinning string: a VM with one (well formed or not) has needs, and so has one
    /// with an exclusive or resize-and-pin policy.
    fn any(vm: &Vm) -> bool {
        vm.cpu_pinning
            .as_deref()
            .is_some_and(|text| !text.trim().is_empty())
            || topology::is_exclusive(vm.cpu_pinning_policy)
            || vm.cpu_pinning_policy == PinningPolicy::ResizeAndPinNuma
    }

    fn of(vm: &Vm) -> Self {
        let pinning = match CpuPinning::of_vm(vm) {
            Ok(p) => p,
            Err(e) => return PinningNeeds::Invalid(e.to_string()),
        };
        if let (Some(p), Some(text)) = (&pinning, &vm.cpu_pinning) {
            if let Err(e) = p.check_vcpus(text, vm.vcpus()) {
                return PinningNeeds::Invalid(e.to_string());
            }
        }
        let exclusive = topology::is_exclusive(vm.cpu_pinning_policy);
        let resize = vm.cpu_pinning_policy == PinningPolicy::ResizeAndPinNuma;
        match pinning {
            None if !exclusive && !resize => PinningNeeds::None,
            p => PinningNeeds::Check {
                pcpus: PinnedPcpus::new(p.map(|p| p.all_pcpus()).unwrap_or_default()),
                exclusive,
                resize,
            },
        }
    }
}

/// The pCPUs a VM's pinning string names, worked out once per call so that each host is
/// checked with one comparison for absent pCPUs and one pass over its own (short) lists of
/// taken pCPUs, instead of a search of those lists for every pinned pCPU.
struct PinnedPcpus {
    /// Sorted, each once.
    list: Vec<u32>,
    /// The same ids as a set.
    set: CpuBits,
    /// The same ids folded into one word ([`topology::fold_pcpus`]), compared with a host's
    /// unavailable pCPUs ([`topology::unavailable_pcpus`]).
    folded: u64,
}

impl PinnedPcpus {
    fn new(list: Vec<u32>) -> Self {
        let mut set = CpuBits::new(list.last().map_or(0, |&max| max.saturating_add(1)));
        for &c in &list {
            set.insert(c);
        }
        let folded = topology::fold_pcpus(list.iter().copied());
        Self { list, set, folded }
    }

    /// Whether no pinned pCPU can be offline or taken on `host`, told by the host's
    /// unavailable-pCPU mask (`unavailable`, read only for a pinning that names pCPUs;
    /// `None` when it is not at hand): every pinned pCPU is below the host's thread count
    /// and none shares a bit with an unavailable one. `false` leaves it to the host's lists
    /// ([`PinnedPcpus::any_offline`], [`PinnedPcpus::any_taken`]).
    #[inline(always)]
    fn surely_free(&self, host: &Host, unavailable: impl FnOnce() -> Option<u64>) -> bool {
        let Some(&max) = self.list.last() else {
            return true;
        };
        max < host.cpu.threads() && unavailable().is_some_and(|mask| mask & self.folded == 0)
    }

    /// What the pinned pCPUs lack on `host`, in the order the reject codes are checked:
    /// none when the host's unavailable-pCPU mask clears them ([`PinnedPcpus::surely_free`]),
    /// else what the host's lists say.
    #[inline(always)]
    fn lack_on(
        &self,
        host: &Host,
        unavailable: impl FnOnce() -> Option<u64>,
    ) -> Option<PinningLack> {
        if self.surely_free(host, unavailable) {
            None
        } else if self.any_offline(host) {
            Some(PinningLack::PcpuOffline)
        } else if self.any_taken(host) {
            Some(PinningLack::PcpuDedicated)
        } else {
            None
        }
    }

    /// Some pinned pCPU is beyond the host's threads or not online.
    #[inline(always)]
    fn any_offline(&self, host: &Host) -> bool {
        let Some(&max) = self.list.last() else {
            return false;
        };
        if host.online_cpus.is_empty() {
            max >= host.cpu.threads()
        } else {
            self.list
                .iter()
                .any(|&c| CpuPinningFilter::offline(host, c))
        }
    }

    /// Some pinned pCPU is dedicated to another VM, running or pending.
    #[inline(always)]
    fn any_taken(&self, host: &Host) -> bool {
        // No pinned pCPU (an exclusive VM without a pinning string): the host's lists are
        // not read at all (at 10,000 hosts each is a cache miss).
        if self.list.is_empty() {
            return false;
        }
        host.dedicated_cpus.iter().any(|&c| self.set.contains(c))
            || host
                .pending
                .pinned_cpus
                .iter()
                .any(|&c| self.set.contains(c))
    }
}

/// CPU pinning: every pCPU of the VM's pinning string must exist, be online and not be
/// dedicated to another VM (running or pending); a VM with an exclusive pinning policy
/// (dedicated, isolate-threads) needs a free allocation of pCPUs or whole cores (see
/// [`topology::allocate_dedicated`]); resize-and-pin-NUMA needs a host with NUMA.
#[derive(Debug, Default)]
pub struct CpuPinningFilter;

/// What a host lacks for a VM's CPU pinning (the `cpu-pinning` filter's reject codes).
#[derive(Debug, Clone, Copy)]
enum PinningLack {
    InvalidPinning,
    ResizeNeedsNuma,
    PcpuOffline,
    PcpuDedicated,
    NotEnoughFreePcpus,
}

impl CpuPinningFilter {
    /// The verdict on `host`, whose unavailable-pCPU mask `unavailable` gives (`None` when
    /// it is not at hand: the host's lists are read) and pCPU counts `counts` (read only for
    /// an exclusive pinning whose pinned pCPUs are free). A pass is a few loads inline; a
    /// rejection's report is built out of line.
    #[inline(always)]
    fn verdict(
        ctx: &Context<'_>,
        needs: &PinningNeeds,
        vm: &Vm,
        host: &Host,
        unavailable: impl FnOnce() -> Option<u64>,
        counts: impl Fn() -> CpuCounts,
    ) -> Verdict {
        match Self::lack(needs, vm, host, |p| p.lack_on(host, unavailable), &counts) {
            None => Verdict::Pass,
            Some(lack) => Self::reject(ctx, lack, needs, vm, host, &counts),
        }
    }

    /// What `host` lacks, if anything, in the order the reject codes are checked, with
    /// `pinned` telling what the VM's pinned pCPUs lack there.
    #[inline(always)]
    fn lack(
        needs: &PinningNeeds,
        vm: &Vm,
        host: &Host,
        pinned: impl FnOnce(&PinnedPcpus) -> Option<PinningLack>,
        counts: &impl Fn() -> CpuCounts,
    ) -> Option<PinningLack> {
        let (pcpus, exclusive, resize) = match needs {
            PinningNeeds::None => return None,
            PinningNeeds::Invalid(_) => return Some(PinningLack::InvalidPinning),
            PinningNeeds::Check {
                pcpus,
                exclusive,
                resize,
            } => (pcpus, *exclusive, *resize),
        };
        if resize && host.numa_nodes.is_empty() {
            return Some(PinningLack::ResizeNeedsNuma);
        }
        if let Some(lack) = pinned(pcpus) {
            return Some(lack);
        }
        if exclusive && !counts().fits_dedicated(vm) {
            return Some(PinningLack::NotEnoughFreePcpus);
        }
        None
    }

    /// pCPU `c` is beyond the host's threads or not online.
    #[inline(always)]
    fn offline(host: &Host, c: u32) -> bool {
        c >= host.cpu.threads() || (!host.online_cpus.is_empty() && !host.online_cpus.contains(&c))
    }

    /// The rejection for `lack`, its detail written only when the caller reads it.
    #[cold]
    #[inline(never)]
    fn reject(
        ctx: &Context<'_>,
        lack: PinningLack,
        needs: &PinningNeeds,
        vm: &Vm,
        host: &Host,
        counts: &impl Fn() -> CpuCounts,
    ) -> Verdict {
        let pcpus: &[u32] = match needs {
            PinningNeeds::Check { pcpus, .. } => &pcpus.list,
            _ => &[],
        };
        match lack {
            PinningLack::InvalidPinning => ctx.reject("invalid_pinning", || match needs {
                PinningNeeds::Invalid(message) => message.clone(),
                _ => String::new(),
            }),
            PinningLack::ResizeNeedsNuma => ctx.reject("resize_needs_numa", || {
                "resize-and-pin-NUMA needs a host with NUMA support".into()
            }),
            PinningLack::PcpuOffline => ctx.reject("pcpu_offline", || {
                let offline: Vec<u32> = pcpus
                    .iter()
                    .copied()
                    .filter(|&c| Self::offline(host, c))
                    .collect();
                format!("pinned pCPU(s) {} offline or absent", list(&offline))
            }),
            PinningLack::PcpuDedicated => {
                ctx.reject("pcpu_dedicated", || Self::dedicated_detail(pcpus, host))
            }
            PinningLack::NotEnoughFreePcpus => ctx.reject("not_enough_free_pcpus", || {
                counts()
                    .check_dedicated(vm)
                    .err()
                    .map_or_else(String::new, |short| short.to_string())
            }),
        }
    }

    /// The detail of a pinning to pCPUs dedicated to other VMs: which, running or pending.
    fn dedicated_detail(pcpus: &[u32], host: &Host) -> String {
        let running: Vec<u32> = pcpus
            .iter()
            .copied()
            .filter(|c| host.dedicated_cpus.contains(c))
            .collect();
        let pending: Vec<u32> = pcpus
            .iter()
            .copied()
            .filter(|c| !running.contains(c) && host.pending.pinned_cpus.contains(c))
            .collect();
        let mut detail = String::from("pinned pCPU(s) dedicated to another VM: ");
        if !running.is_empty() {
            let _ = write!(detail, "{} (running)", list(&running));
        }
        if !pending.is_empty() {
            if !running.is_empty() {
                detail.push_str(", ");
            }
            let _ = write!(detail, "{} (pending)", list(&pending));
        }
        detail
    }
}

impl Filter for CpuPinningFilter {
    const NAME: &'static str = "cpu-pinning";
    const DESCRIPTION: &'static str =
        "Pinned pCPUs online and not dedicated to other VMs (running or pending); a free \
         allocation for dedicated and isolate-threads VMs";

    fn applies(&self, _ctx: &Context<'_>, vm: &Vm) -> bool {
        PinningNeeds::any(vm)
    }

    fn check(&self, ctx: &Context<'_>, vm: &Vm, host: &Host) -> Verdict {
        Self::verdict(
            ctx,
            &PinningNeeds::of(vm),
            vm,
            host,
            || None,
            || CpuCounts::of(host),
        )
    }

    fn check_all(&self, ctx: &Context<'_>, vm: &Vm, candidates: &[HostIndex], out: &mut Verdicts) {
        let needs = PinningNeeds::of(vm);
        if matches!(needs, PinningNeeds::None) {
            out.extend(candidates.iter().map(|_| Verdict::Pass));
        } else {
            let (kept, masks) = (ctx.kept_cpu_counts(), ctx.kept_unavailable_pcpus());
            out.judge(
                candidates,
                #[inline(always)]
                |i| {
                    // No list is read here: pinned pCPUs the kept mask cannot clear (or a
                    // mask not kept yet) count as lacking, and counts not kept yet as no
                    // free pCPU, so the host goes to the full check, which works them out
                    // and tells what it lacks.
                    let host = ctx.host(i);
                    let pinned = |p: &PinnedPcpus| {
                        (!p.surely_free(host, || masks.get(i)))
                            .then_some(PinningLack::PcpuDedicated)
                    };
                    let counts = || kept.get(i).unwrap_or_default();
                    Self::lack(&needs, vm, host, pinned, &counts).is_none()
                },
                |i| {
                    let host = ctx.host(i);
                    let unavailable = || Some(ctx.unavailable_pcpus(i));
                    Self::verdict(ctx, &needs, vm, host, unavailable, || ctx.cpu_counts(i))
                },
            );
        }
    }
}

fn has_pinned_vnuma(vm: &Vm) -> bool {
    vm.numa_nodes
        .iter()
        .any(|n| !n.pinned_host_nodes.is_empty())
}

/// NUMA: the VM's vNUMA nodes pinned to host nodes must have an assignment to those host
/// nodes with room for their memory, after pending NUMA memory (free hugepages of the VM's
/// size for a hugepage-backed VM); see [`topology::find_numa_assignment`]. A host without
/// NUMA support, or without one of the pinned node indices, fails.
#[derive(Debug, Default)]
pub struct NumaFilter;

impl NumaFilter {
    #[inline(always)]
    fn verdict(ctx: &Context<'_>, request: &NumaRequest, host: &Host) -> Verdict {
        let fit = request.check(host);
        if fit.passes() {
            Verdict::Pass
        } else {
            Self::reject(ctx, fit, host)
        }
    }

    /// The verdict on a host that does not fit (`fit`; a fit that [passes](NumaFit::passes)
    /// is a pass here too), its detail written only when the caller reads it.
    #[cold]
    #[inline(never)]
    fn reject(ctx: &Context<'_>, fit: NumaFit, host: &Host) -> Verdict {
        match fit {
            NumaFit::NotPinned | NumaFit::Fits(_) | NumaFit::FitsLoosely => Verdict::Pass,
            NumaFit::NoNumaSupport => ctx.reject("no_numa_support", || {
                "the VM has pinned vNUMA nodes; the host has no NUMA support".into()
            }),
            NumaFit::MissingHostNode { vnode, host_node } => {
                ctx.reject("numa_node_missing", || {
                    format!(
                    "vNUMA node {vnode} is pinned to host node {host_node}, which the host lacks"
                )
                })
            }
            NumaFit::PinningMismatch { vnode } => ctx.reject("numa_pinning_mismatch", || {
                format!("vNUMA node {vnode}: its CPU pinning has no pCPU on its allowed nodes")
            }),
            NumaFit::NoRoom {
                resource,
                needed,
                free,
                short,
            } => ctx.reject("not_enough_numa_memory", || {
                let unit = if resource == "memory" {
                    " MiB"
                } else {
                    " pages"
                };
                let pending_on = |node: Option<u32>| match node {
                    _ if resource != "memory" => 0,
                    Some(node) => host.pending.numa_memory_of(node),
                    None => host.pending.numa_memory.iter().map(|n| n.memory_mb).sum(),
                };
                let after = |pending: u64| {
                    if pending > 0 {
                        format!(" after {pending} MiB pending")
                    } else {
                        String::new()
                    }
                };
                match short {
                    // Name the node that lacks room, not a sum over the allowed nodes (one
                    // node's surplus does not help another node's vNUMA nodes).
                    Some(node) => format!(
                        "host node {} has {}{unit} of {resource} free{}, its pinned vNUMA \
                         nodes need {}{unit}",
                        node.node,
                        node.free,
                        after(pending_on(Some(node.node))),
                        node.needed
                    ),
                    None => format!(
                        "no assignment of the pinned vNUMA nodes fits: {resource} needed \
                         {needed}{unit}, the allowed nodes have {free}{unit} free together{}",
                        after(pending_on(None))
                    ),
                }
            }),
            NumaFit::SearchLimit => ctx.reject("numa_search_limit", || {
                format!(
                    "no assignment found within {} steps",
                    topology::NUMA_SEARCH_STEP_LIMIT
                )
            }),
        }
    }
}

impl Filter for NumaFilter {
    const NAME: &'static str = "numa";
    const DESCRIPTION: &'static str =
        "Pinned vNUMA nodes have an assignment to their allowed host nodes with room for \
         their memory (after pending NUMA memory)";

    fn applies(&self, _ctx: &Context<'_>, vm: &Vm) -> bool {
        has_pinned_vnuma(vm)
    }

    fn check(&self, ctx: &Context<'_>, vm: &Vm, host: &Host) -> Verdict {
        Self::verdict(ctx, &NumaRequest::new(vm, None), host)
    }

    fn check_all(&self, ctx: &Context<'_>, vm: &Vm, candidates: &[HostIndex], out: &mut Verdicts) {
        if has_pinned_vnuma(vm) {
            let request = NumaRequest::new(vm, None);
            let quick = request.quick();
            out.judge(
                candidates,
                #[inline(always)]
                move |i| quick.fits(ctx.host(i)),
                |i| Self::verdict(ctx, &request, ctx.host(i)),
            );
        } else {
            out.extend(candidates.iter().map(|_| Verdict::Pass));
        }
    }
}

/// Hugepages: a VM backed by hugepages needs `ceil(memory / page size)` free pages of its
/// page size on the host, minus the pending pages of that size.
#[derive(Debug, Default)]
pub struct HugePagesFilter;

impl HugePagesFilter {
    /// The host's free pages of `size_kb` and its pending ones.
    #[inline(always)]
    fn free_and_pending(size_kb: u64, host: &Host) -> (u64, u64) {
        let free = HugePages::count_of(&host.free_hugepages, size_kb);
        (free, host.pending.hugepages_of(size_kb))
    }

    /// The verdict given the pages of `size_kb` available on `host` (free minus pending).
    #[inline(always)]
    fn verdict(
        ctx: &Context<'_>,
        size_kb: u64,
        needed: u64,
        available: u64,
        host: &Host,
    ) -> Verdict {
        if available >= needed {
            Verdict::Pass
        } else {
            Self::reject(ctx, size_kb, needed, host)
        }
    }

    #[cold]
    #[inline(never)]
    fn reject(ctx: &Context<'_>, size_kb: u64, needed: u64, host: &Host) -> Verdict {
        ctx.reject("not_enough_hugepages", || {
            let (free, pending) = Self::free_and_pending(size_kb, host);
            let available = free.saturating_sub(pending);
            format!(
                "needs {needed} pages of {size_kb} KiB; {available} available ({free} free, \
                 {pending} pending)"
            )
        })
    }
}

impl Filter for HugePagesFilter {
    const NAME: &'static str = "hugepages";
    const DESCRIPTION: &'static str =
        "Free hugepages of the VM's page size, minus pending pages, cover its memory";

    fn applies(&self, _ctx: &Context<'_>, vm: &Vm) -> bool {
        vm.hugepages_needed().is_some()
    }

    fn check(&self, ctx: &Context<'_>, vm: &Vm, host: &Host) -> Verdict {
        match vm.hugepages_needed() {
            Some((size, needed)) => {
                Self::verdict(ctx, size, needed, available_hugepages(host, size), host)
            }
            None => Verdict::Pass,
        }
    }

    fn check_all(&self, ctx: &Context<'_>, vm: &Vm, candidates: &[HostIndex], out: &mut Verdicts) {
        match vm.hugepages_needed() {
            Some((size, needed)) => {
                // The pages the index keeps: a load per host. Pages not counted yet read as
                // none, so the host goes to the full check, which counts (and keeps) them.
                let kept = ctx.kept_hugepages(size);
                out.judge(
                    candidates,
                    #[inline(always)]
                    |i| kept.get(i).is_some_and(|available| available >= needed),
                    |i| {
                        // A host turned away by its kept pages (nearly all of them, once
                        // hosts fill) is not looked up in the index again.
                        let available = kept
                            .get(i)
                            .unwrap_or_else(|| ctx.available_hugepages(i, size));
                        Self::verdict(ctx, size, needed, available, ctx.host(i))
                    },
                )
            }
            None => out.extend(candidates.iter().map(|_| Verdict::Pass)),
        }
    }
}

/// CPU and NUMA pinning agree: [`FITS`] when an assignment of the VM's pinned vNUMA nodes
/// exists in which every pinned vCPU of a vNUMA node has one of its pCPUs on the host node
/// (and the memory fits), else [`DOES_NOT_FIT`]; a host without NUMA scores
/// [`DOES_NOT_FIT`]; VMs without pinned vNUMA nodes score [`FITS`] everywhere. A malformed
/// pinning string is ignored here (the `cpu-pinning` filter rejects it).
#[derive(Debug, Default)]
pub struct CpuAndNumaPinningWeight;

impl CpuAndNumaPinningWeight {
    /// The penalty of `host`; a host that [fits quickly](NumaRequest::fits_quickly) is
    /// decided inline in the caller's loop over hosts, the others by a call.
    #[inline(always)]
    fn penalty_with(request: &NumaRequest, host: &Host) -> i64 {
        Self::penalty_given(request.quick(), host)
    }

    /// [`CpuAndNumaPinningWeight::penalty_with`] with the quick check taken out of the
    /// request once for a loop over hosts.
    #[inline(always)]
    fn penalty_given(quick: QuickNumaFit<'_>, host: &Host) -> i64 {
        if quick.fits(host) {
            FITS
        } else {
            Self::penalty_checked(quick.request(), host)
        }
    }

    #[inline(never)]
    fn penalty_checked(request: &NumaRequest, host: &Host) -> i64 {
        match request.check(host) {
            NumaFit::NotPinned | NumaFit::Fits(_) => FITS,
            _ => DOES_NOT_FIT,
        }
    }
}

impl Weight for CpuAndNumaPinningWeight {
    const NAME: &'static str = "cpu-and-numa-pinning";
    const DESCRIPTION: &'static str =
        "Prefers hosts where the VM's vNUMA pinning has an assignment that also respects its \
         CPU pinning (1 good, 1000 bad)";

    fn uniform(&self, _ctx: &Context<'_>, vm: &Vm) -> Option<i64> {
        (!has_pinned_vnuma(vm)).then_some(FITS)
    }

    fn penalty(&self, _ctx: &Context<'_>, vm: &Vm, host: &Host) -> i64 {
        let pinning = CpuPinning::of_vm(vm).ok().flatten();
        Self::penalty_with(&NumaRequest::new(vm, pinning.as_ref()), host)
    }

    fn penalty_all(
        &self,
        ctx: &Context<'_>,
        vm: &Vm,
        candidates: &[HostIndex],
        out: &mut Vec<i64>,
    ) {
        if !has_pinned_vnuma(vm) {
            out.resize(out.len() + candidates.len(), FITS);
            return;
        }
        let pinning = CpuPinning::of_vm(vm).ok().flatten();
        let request = NumaRequest::new(vm, pinning.as_ref());
        let quick = request.quick();
        push_penalties(
            out,
            candidates,
            #[inline(always)]
            move |i| Self::penalty_given(quick, ctx.host(i)),
        );
    }
}

/// High-performance CPU topology: for high-performance and pinned VMs (see
/// [`topology::is_hp_or_pinned`]), [`FITS`] when the host has at least the VM's sockets,
/// cores per socket and threads per core, else [`DOES_NOT_FIT`]. Other VMs score [`FITS`]
/// everywhere.
#[derive(Debug, Default)]
pub struct HighPerformanceCpuWeight;

impl HighPerformanceCpuWeight {
    fn penalty_for(vm: &Vm, host: &Host) -> i64 {
        if topology::topology_holds(&vm.cpu, &host.cpu) {
            FITS
        } else {
            DOES_NOT_FIT
        }
    }
}

impl Weight for HighPerformanceCpuWeight {
    const NAME: &'static str = "high-performance-cpu";
    const DESCRIPTION: &'static str =
        "Prefers hosts whose CPU topology holds a high-performance or pinned VM's sockets, \
         cores and threads (1 good, 1000 bad)";

    fn uniform(&self, _ctx: &Context<'_>, vm: &Vm) -> Option<i64> {
        (!topology::is_hp_or_pinned(vm)).then_some(FITS)
    }

    fn penalty(&self, _ctx: &Context<'_>, vm: &Vm, host: &Host) -> i64 {
        if topology::is_hp_or_pinned(vm) {
            Self::penalty_for(vm, host)
        } else {
            FITS
        }
    }

    fn penalty_all(
        &self,
        ctx: &Context<'_>,
        vm: &Vm,
        candidates: &[HostIndex],
        out: &mut Vec<i64>,
    ) {
        if topology::is_hp_or_pinned(vm) {
            push_penalties(out, candidates, |i| Self::penalty_for(vm, ctx.host(i)));
        } else {
            out.resize(out.len() + candidates.len(), FITS);
        }
    }
}

// The shipped wasm module, `builtin-scheduling`, exports these units with the other
// builtin scheduling units; `units()` is their native form.
policy_sdk::unit_set! {
    module: "high-performance",
    version: env!("CARGO_PKG_VERSION"),
    units: [
        filter CpuLevelFilter,
        filter CpuPinningFilter,
        filter NumaFilter,
        filter HugePagesFilter,
        weight CpuAndNumaPinningWeight,
        weight HighPerformanceCpuWeight,
    ],
}

#[cfg(test)]
mod tests;
