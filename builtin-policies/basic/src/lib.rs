//! Builtin module `basic`: the memory and CPU filters and the CPU-load and free-memory
//! weights of the reference scheduler, counting pending resources.
//!
//! Compiled to wasm by the host's build and embedded in the `wasmsched` binary; compiled
//! natively for these tests and for the benchmarks' native baseline.
//!
//! Reject codes: `not_enough_memory`, `not_enough_schedulable_memory` (filter `memory`),
//! `not_enough_cores` (filter `cpu`).

use policy_sdk::model::topology::CpuCounts;
use policy_sdk::{
    push_penalties, Context, Filter, Host, HostIndex, ParamSpec, Penalty, Verdict, Verdicts, Vm,
    Weight,
};

/// Memory the host can still give, pending memory included: the physical check (free +
/// swap - pending memory) and the overcommit-aware check (max scheduling - committed -
/// pending overcommit memory) must both hold the VM's memory plus `overhead_mb`.
#[derive(Debug, Default)]
pub struct MemoryFilter;

impl MemoryFilter {
    /// The verdict on `host`: a host with room passes inline (a few loads); a rejection's
    /// detail is written out of line.
    #[inline(always)]
    fn check_with(ctx: &Context<'_>, overhead_mb: u64, vm: &Vm, host: &Host) -> Verdict {
        let need = vm.memory_mb.saturating_add(overhead_mb);
        if host.memory_room_mb() >= need {
            return Verdict::Pass;
        }
        Self::reject(ctx, overhead_mb, vm, host, need)
    }

    /// Which of the two rooms does not hold `need`, and why.
    #[cold]
    #[inline(never)]
    fn reject(ctx: &Context<'_>, overhead_mb: u64, vm: &Vm, host: &Host, need: u64) -> Verdict {
        let (physical, schedulable) = (host.physical_memory_mb(), host.schedulable_memory_mb());
        let m = &host.memory;
        let pending = &host.pending;
        if physical < need {
            return ctx.reject("not_enough_memory", || {
                format!(
                    "{physical} MiB available ({} free + {} swap - {} pending), \
                     {need} MiB needed ({} + {overhead_mb} overhead)",
                    m.free_mb, m.swap_free_mb, pending.memory_mb, vm.memory_mb
                )
            });
        }
        ctx.reject("not_enough_schedulable_memory", || {
            format!(
                "{schedulable} MiB schedulable ({} max - {} committed - {} pending), \
                 {need} MiB needed ({} + {overhead_mb} overhead)",
                m.max_scheduling_mb, m.committed_mb, pending.overcommit_memory_mb, vm.memory_mb
            )
        })
    }
}

fn overhead_mb(ctx: &Context<'_>) -> u64 {
    ctx.int("overhead_mb").max(0) as u64
}

impl Filter for MemoryFilter {
    const NAME: &'static str = "memory";
    const DESCRIPTION: &'static str =
        "Free and schedulable memory, minus pending memory, must hold the VM plus overhead";

    fn params() -> Vec<ParamSpec> {
        vec![ParamSpec::int(
            "overhead_mb",
            64,
            0,
            65_536,
            "Per-VM memory overhead added to the guest memory (MiB)",
        )]
    }

    fn check(&self, ctx: &Context<'_>, vm: &Vm, host: &Host) -> Verdict {
        Self::check_with(ctx, overhead_mb(ctx), vm, host)
    }

    fn check_all(&self, ctx: &Context<'_>, vm: &Vm, candidates: &[HostIndex], out: &mut Verdicts) {
        let overhead = overhead_mb(ctx);
        let need = vm.memory_mb.saturating_add(overhead);
        // Each host's room is one word the index keeps (worked out here the first time),
        // not six figures on two cache lines of the host.
        let rooms = ctx.memory_rooms();
        out.judge(
            candidates,
            #[inline(always)]
            |i| rooms.get(i) >= need,
            |i| Self::check_with(ctx, overhead, vm, ctx.host(i)),
        );
    }
}

/// The host must have at least as many usable CPUs as the VM has vCPUs: cores (threads
/// when the cluster counts threads as cores) minus dedicated and pending pinned pCPUs.
/// Applies to VMs sharing their pCPUs; a VM with an exclusive pinning policy (dedicated,
/// isolate-threads) passes here, and the `cpu-pinning` filter checks that the host has the
/// free pCPUs (or whole cores) it takes.
#[derive(Debug, Default)]
pub struct CpuFilter;

impl Filter for CpuFilter {
    const NAME: &'static str = "cpu";
    const DESCRIPTION: &'static str =
        "Usable host CPUs (minus dedicated and pending pinned pCPUs) must cover the VM's vCPUs";

    fn applies(&self, _ctx: &Context<'_>, vm: &Vm) -> bool {
        !policy_sdk::model::topology::is_exclusive(vm.cpu_pinning_policy)
    }

    fn check(&self, ctx: &Context<'_>, vm: &Vm, host: &Host) -> Verdict {
        if policy_sdk::model::topology::is_exclusive(vm.cpu_pinning_policy) {
            return Verdict::Pass;
        }
        Self::verdict(
            ctx,
            ctx.snapshot().cluster.count_threads_as_cores,
            vm.vcpus(),
            host,
            || CpuCounts::of(host),
        )
    }

    fn check_all(&self, ctx: &Context<'_>, vm: &Vm, candidates: &[HostIndex], out: &mut Verdicts) {
        if policy_sdk::model::topology::is_exclusive(vm.cpu_pinning_policy) {
            out.extend(candidates.iter().map(|_| Verdict::Pass));
            return;
        }
        let threads_as_cores = ctx.snapshot().cluster.count_threads_as_cores;
        let need = vm.vcpus();
        let kept = ctx.kept_cpu_counts();
        out.judge(
            candidates,
            #[inline(always)]
            |i| {
                let host = ctx.host(i);
                let total = host.schedulable_cpus(threads_as_cores);
                if host.dedicated_cpus.is_empty() && host.pending.pinned_cpus.is_empty() {
                    return total >= need;
                }
                kept.get(i)
                    .is_some_and(|counts| Self::usable(total, &counts) >= need)
            },
            |i| {
                Self::verdict(ctx, threads_as_cores, need, ctx.host(i), || {
                    ctx.cpu_counts(i)
                })
            },
        );
    }
}

impl CpuFilter {
    /// The verdict on `host`, whose pCPU counts `counts` gives (read only when something
    /// may be pinned on it). A pass is inline; a rejection's detail is written out of line.
    #[inline(always)]
    fn verdict(
        ctx: &Context<'_>,
        threads_as_cores: bool,
        need: u32,
        host: &Host,
        counts: impl FnOnce() -> CpuCounts,
    ) -> Verdict {
        let total = host.schedulable_cpus(threads_as_cores);
        // Fast path: nothing pinned on the host.
        if host.dedicated_cpus.is_empty() && host.pending.pinned_cpus.is_empty() && total >= need {
            return Verdict::Pass;
        }
        let counts = counts();
        let usable = Self::usable(total, &counts);
        if usable >= need {
            return Verdict::Pass;
        }
        Self::reject(ctx, threads_as_cores, need, total, usable, &counts)
    }

    /// Schedulable CPUs left of `total` after the dedicated and pending pinned pCPUs.
    #[inline(always)]
    fn usable(total: u32, counts: &CpuCounts) -> u32 {
        total
            .saturating_sub(counts.dedicated)
            .saturating_sub(counts.pending_pinned)
    }

    #[cold]
    #[inline(never)]
    fn reject(
        ctx: &Context<'_>,
        threads_as_cores: bool,
        need: u32,
        total: u32,
        usable: u32,
        counts: &CpuCounts,
    ) -> Verdict {
        let CpuCounts {
            dedicated,
            pending_pinned: pending,
            ..
        } = *counts;
        let unit = if threads_as_cores { "threads" } else { "cores" };
        ctx.reject("not_enough_cores", || {
            format!(
                "{usable} {unit} available, {need} vCPUs needed \
                 ({total} {unit}, {dedicated} dedicated, {pending} pending pinned)"
            )
        })
    }
}

/// Even distribution: prefers hosts with the lowest CPU load, pending load included.
#[derive(Debug, Default)]
pub struct CpuLoadWeight;

impl Weight for CpuLoadWeight {
    const NAME: &'static str = "cpu-load";
    const DESCRIPTION: &'static str =
        "Even distribution: CPU usage plus pending CPU load, in percent (lower is better)";

    fn params() -> Vec<ParamSpec> {
        vec![ParamSpec::bool(
            "count_pending",
            true,
            "Add the pending CPU load of VMs placed but not yet running",
        )]
    }

    fn penalty(&self, ctx: &Context<'_>, _vm: &Vm, host: &Host) -> Penalty {
        let pending = if ctx.bool("count_pending") {
            host.pending.cpu_load_percent
        } else {
            0
        };
        Penalty::from(host.cpu_usage_percent) + Penalty::from(pending)
    }

    fn penalty_all(
        &self,
        ctx: &Context<'_>,
        _vm: &Vm,
        candidates: &[HostIndex],
        out: &mut Vec<Penalty>,
    ) {
        // The parameter is read once per call, not once per host.
        let count_pending = ctx.bool("count_pending");
        push_penalties(out, candidates, |i| {
            let host = ctx.host(i);
            let pending = if count_pending {
                host.pending.cpu_load_percent
            } else {
                0
            };
            Penalty::from(host.cpu_usage_percent) + Penalty::from(pending)
        });
    }
}

/// Prefers hosts with the most schedulable memory left, pending memory included.
#[derive(Debug, Default)]
pub struct FreeMemoryWeight;

impl Weight for FreeMemoryWeight {
    const NAME: &'static str = "free-memory";
    const DESCRIPTION: &'static str =
        "Prefers hosts with more schedulable memory left after committed and pending memory";

    fn penalty(&self, _ctx: &Context<'_>, _vm: &Vm, host: &Host) -> Penalty {
        -Penalty::try_from(host.schedulable_memory_mb()).unwrap_or(Penalty::MAX)
    }
}

// The shipped wasm module, `builtin-scheduling`, exports these units with the other
// builtin scheduling units; `units()` is their native form.
policy_sdk::unit_set! {
    module: "basic",
    version: env!("CARGO_PKG_VERSION"),
    units: [filter MemoryFilter, filter CpuFilter, weight CpuLoadWeight, weight FreeMemoryWeight],
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::testing::{
        check_all_agrees, check_in_both_forms, host, params_of, snapshot, vm, with_param,
        HostBuilder, XorShift,
    };
    use policy_sdk::wire::abi::{CallRequest, CallResponse};
    use policy_sdk::{ParamType, ParamValue, Snapshot};

    type Params = Vec<(String, ParamValue)>;

    /// `F`'s verdict on `h`. Every call also checks the summary form: without details, the
    /// same verdict with an empty detail (and a rejection with details names one).
    fn check<F: Filter>(
        s: &Snapshot,
        params: &[(String, ParamValue)],
        v: &Vm,
        h: &Host,
    ) -> Verdict {
        check_in_both_forms::<F>(F::NAME, s, params, v, h)
    }

    fn code(verdict: &Verdict) -> &str {
        match verdict {
            Verdict::Pass => "pass",
            Verdict::Reject { code, .. } => code,
        }
    }

    /// Runs the memory filter with default parameters over a table of
    /// `(case, host, vm memory, expected code)`.
    fn memory_cases(cases: Vec<(&str, HostBuilder, u64, &str)>) {
        let s = snapshot().build();
        let params = params_of(&MemoryFilter::params());
        for (case, h, mem, expected) in cases {
            let v = vm("v").memory_mb(mem).build();
            let verdict = check::<MemoryFilter>(&s, &params, &v, &h.build());
            assert_eq!(code(&verdict), expected, "{case}: {verdict:?}");
        }
    }

    /// Host ids ordered by penalty, best (lowest) first; ties keep table order.
    fn order<W: Weight>(params: &[(String, ParamValue)], hosts: &[Host]) -> Vec<String> {
        let s = snapshot().build();
        let ctx = Context::new(&s, params, W::NAME);
        let v = vm("v").build();
        let mut ranked: Vec<(Penalty, &str)> = hosts
            .iter()
            .map(|h| (W::default().penalty(&ctx, &v, h), h.id.as_str()))
            .collect();
        ranked.sort_by_key(|&(p, _)| p);
        ranked.into_iter().map(|(_, id)| id.to_string()).collect()
    }

    /// `check_all` (a fast pass loop, the full check for the rest) gives the verdicts of
    /// `check` host by host, over random hosts near the VM's needs: pending memory and
    /// overcommit, dedicated and pending pinned pCPUs, threads counted as cores or not.
    #[test]
    fn check_all_matches_per_host_check() {
        let mut rng = XorShift::new(7);
        for round in 0..200 {
            let hosts: Vec<Host> = (0..9)
                .map(|i| {
                    let mut h = host(&format!("h{i}"))
                        .cpu(1, 2 + rng.below(4) as u32, 2)
                        .memory_mb(16_384)
                        .free_mb(2_000 + rng.below(6_000))
                        .committed_mb(rng.below(14_000))
                        .swap_mb(rng.below(1_000))
                        .pending_memory_mb(rng.below(3_000))
                        .pending_overcommit_mb(rng.below(3_000));
                    if rng.below(2) == 0 {
                        h = h.dedicated_cpus((0..rng.below(4) as u32).map(|c| c * 2));
                    }
                    if rng.below(3) == 0 {
                        h = h.pending_pinned_cpus([rng.below(8) as u32]);
                    }
                    h.build()
                })
                .collect();
            let s = snapshot()
                .count_threads_as_cores(rng.below(2) == 0)
                .hosts(hosts)
                .build();
            let mut v = vm("v")
                .memory_mb(1_000 + rng.below(5_000))
                .vcpus(1 + rng.below(8) as u32);
            if rng.below(4) == 0 {
                v = v.pinning_policy(policy_sdk::PinningPolicy::Dedicated);
            }
            let v = v.build();
            let case = format!("round {round}");
            let params = params_of(&MemoryFilter::params());
            check_all_agrees::<MemoryFilter>(&case, &s, &params, &v);
            check_all_agrees::<CpuFilter>(&case, &s, &[], &v);
        }
    }

    #[test]
    fn memory_filter_subtracts_pending_memory_and_pending_overcommit() {
        // 8 GiB host, default 64 MiB overhead: a 4 GiB VM needs 4160 MiB.
        let h = || host("h").memory_mb(8_192);
        memory_cases(vec![
            ("no pending", h(), 4_096, "pass"),
            (
                "pending memory eats free memory",
                h().pending_memory_mb(4_033),
                4_096,
                "not_enough_memory",
            ),
            (
                "pending memory leaves just enough",
                h().pending_memory_mb(4_032),
                4_096,
                "pass",
            ),
            (
                "pending memory is subtracted after swap is added",
                h().free_mb(3_000).swap_mb(3_000).pending_memory_mb(1_841),
                4_096,
                "not_enough_memory",
            ),
            (
                "pending overcommit eats schedulable memory",
                h().pending_overcommit_mb(4_033),
                4_096,
                "not_enough_schedulable_memory",
            ),
            (
                "pending overcommit and committed add up",
                h().committed_mb(2_000).pending_overcommit_mb(2_033),
                4_096,
                "not_enough_schedulable_memory",
            ),
            (
                "pending larger than the host saturates to zero",
                h().pending_memory_mb(1 << 40),
                0,
                "not_enough_memory",
            ),
            (
                "pending overcommit larger than the host saturates to zero",
                h().pending_overcommit_mb(1 << 40),
                0,
                "not_enough_schedulable_memory",
            ),
        ]);
    }

    #[test]
    fn memory_filter_passes_an_exact_fit_and_rejects_one_mib_more() {
        // Physical limit: 8192 free; schedulable limit: 6000 max scheduling on a bigger host.
        let physical = || host("h").memory_mb(8_192);
        let schedulable = || host("h").memory_mb(16_384).max_scheduling_mb(6_000);
        memory_cases(vec![
            ("free memory exact fit", physical(), 8_128, "pass"),
            (
                "free memory one over",
                physical(),
                8_129,
                "not_enough_memory",
            ),
            (
                "swap exact fit",
                physical().free_mb(4_000).swap_mb(4_128),
                8_064,
                "pass",
            ),
            ("schedulable exact fit", schedulable(), 5_936, "pass"),
            (
                "schedulable one over",
                schedulable(),
                5_937,
                "not_enough_schedulable_memory",
            ),
            (
                "overcommit ceiling above physical memory",
                physical().max_scheduling_mb(16_384).committed_mb(8_192),
                8_128,
                "pass",
            ),
        ]);
    }

    #[test]
    fn memory_filter_respects_the_overhead_parameter() {
        let spec = &MemoryFilter::params()[0];
        assert_eq!(spec.name, "overhead_mb");
        assert_eq!(spec.default, ParamValue::Int(64));
        assert_eq!(
            spec.ty,
            ParamType::Int {
                min: 0,
                max: 65_536
            }
        );

        let s = snapshot().build();
        let h = host("h").memory_mb(8_192).build();
        let defaults = params_of(&MemoryFilter::params());
        let overhead = |mb| with_param(defaults.clone(), "overhead_mb", ParamValue::Int(mb));
        // (overhead, vm memory, expected)
        let cases: Vec<(Params, u64, &str)> = vec![
            (overhead(0), 8_192, "pass"),
            (overhead(0), 8_193, "not_enough_memory"),
            (defaults.clone(), 8_128, "pass"),
            (defaults.clone(), 8_129, "not_enough_memory"),
            (overhead(1_024), 7_168, "pass"),
            (overhead(1_024), 7_169, "not_enough_memory"),
        ];
        for (params, mem, expected) in cases {
            let verdict = check::<MemoryFilter>(&s, &params, &vm("v").memory_mb(mem).build(), &h);
            assert_eq!(
                code(&verdict),
                expected,
                "{params:?}, {mem} MiB: {verdict:?}"
            );
        }
    }

    #[test]
    fn memory_filter_reject_details_name_the_numbers() {
        let s = snapshot().build();
        let params = params_of(&MemoryFilter::params());
        let v = vm("v").memory_mb(4_096).build();
        let physical = host("h")
            .memory_mb(4_000)
            .swap_mb(100)
            .pending_memory_mb(50);
        let schedulable = host("h")
            .memory_mb(16_384)
            .max_scheduling_mb(6_000)
            .committed_mb(1_000)
            .pending_overcommit_mb(1_000);
        let cases = [
            (
                physical,
                "4050 MiB available (4000 free + 100 swap - 50 pending), \
                 4160 MiB needed (4096 + 64 overhead)",
            ),
            (
                schedulable,
                "4000 MiB schedulable (6000 max - 1000 committed - 1000 pending), \
                 4160 MiB needed (4096 + 64 overhead)",
            ),
        ];
        for (h, expected) in cases {
            match check::<MemoryFilter>(&s, &params, &v, &h.build()) {
                Verdict::Reject { detail, .. } => assert_eq!(detail, expected),
                Verdict::Pass => panic!("expected a rejection: {expected}"),
            }
        }
    }

    #[test]
    fn cpu_filter_counts_threads_only_when_the_cluster_says_so() {
        // 2 sockets x 4 cores x 2 threads: 8 cores, 16 threads.
        let h = host("h").cpu(2, 4, 2).build();
        // (threads as cores, vCPUs, expected)
        let cases = [
            (false, 8, "pass"),
            (false, 9, "not_enough_cores"),
            (false, 16, "not_enough_cores"),
            (true, 16, "pass"),
            (true, 17, "not_enough_cores"),
        ];
        for (threads, vcpus, expected) in cases {
            let s = snapshot().count_threads_as_cores(threads).build();
            let verdict = check::<CpuFilter>(&s, &[], &vm("v").vcpus(vcpus).build(), &h);
            assert_eq!(code(&verdict), expected, "threads={threads}, {vcpus} vCPUs");
        }
        let s = snapshot().build();
        let verdict = check::<CpuFilter>(&s, &[], &vm("v").cpu(2, 4, 2).build(), &h);
        assert_eq!(
            verdict,
            Verdict::reject(
                "not_enough_cores",
                "8 cores available, 16 vCPUs needed (8 cores, 0 dedicated, 0 pending pinned)"
            )
        );
    }

    /// Exclusive VMs are the `cpu-pinning` filter's business: counting their vCPUs against
    /// cores here would refuse a dedicated VM that fits the free threads.
    #[test]
    fn cpu_filter_leaves_exclusively_pinned_vms_to_the_pinning_filter() {
        let s = snapshot().build();
        let h = host("h").cpu(1, 4, 2).dedicated_cpus([0, 1]).build();
        for (policy, expected) in [
            (policy_sdk::PinningPolicy::None, "not_enough_cores"),
            (policy_sdk::PinningPolicy::Manual, "not_enough_cores"),
            (policy_sdk::PinningPolicy::Dedicated, "pass"),
            (policy_sdk::PinningPolicy::IsolateThreads, "pass"),
        ] {
            let v = vm("v").vcpus(6).pinning_policy(policy).build();
            assert_eq!(
                code(&check::<CpuFilter>(&s, &[], &v, &h)),
                expected,
                "{policy:?}"
            );
        }
    }

    #[test]
    fn cpu_filter_does_not_double_count_dedicated_and_pending_pinned_cpus() {
        let s = snapshot().build();
        // 8 cores. (dedicated, pending pinned, usable cores)
        let cases: [(&[u32], &[u32], u32); 6] = [
            (&[], &[], 8),
            (&[0, 1], &[], 6),
            (&[], &[4, 5, 6], 5),
            (&[0, 1], &[1, 2], 5),
            (&[0, 1], &[2, 2, 2], 5),
            (&[0, 1], &[0, 1], 6),
        ];
        for (dedicated, pending, usable) in cases {
            let h = host("h")
                .cpu(2, 4, 2)
                .dedicated_cpus(dedicated.iter().copied())
                .pending_pinned_cpus(pending.iter().copied())
                .build();
            let fits = check::<CpuFilter>(&s, &[], &vm("v").vcpus(usable).build(), &h);
            let over = check::<CpuFilter>(&s, &[], &vm("v").vcpus(usable + 1).build(), &h);
            let case = format!("dedicated {dedicated:?}, pending {pending:?}");
            assert_eq!(code(&fits), "pass", "{case}: {fits:?}");
            assert_eq!(code(&over), "not_enough_cores", "{case}: {over:?}");
        }
    }

    /// Dedicated ids are counted once each, and only among the pCPUs the topology has
    /// (the wasm deadline side of this bug is `regression_cpu_filter_decides_a_host_with_
    /// 40k_dedicated_ids_within_the_deadline` in the integration tests).
    #[test]
    fn cpu_filter_counts_dedicated_ids_once_and_only_within_the_topology() {
        let s = snapshot().build();
        // 2 x 32 cores x 2 threads = 128 pCPUs; ids cycle over 0..1000 (872 beyond it).
        let ids: Vec<u32> = (0..40_000).map(|i| i % 1_000).collect();
        let h = host("h")
            .cpu(2, 32, 2)
            .dedicated_cpus(ids.iter().copied())
            .pending_pinned_cpus([0, 1, 200])
            .build();
        let counts = CpuCounts::of(&h);
        assert_eq!((counts.dedicated, counts.pending_pinned), (128, 0));
        let need_one = check::<CpuFilter>(&s, &[], &vm("v").vcpus(1).build(), &h);
        assert_eq!(code(&need_one), "not_enough_cores", "{need_one:?}");
        let partly = host("h")
            .cpu(1, 4, 2)
            .dedicated_cpus([1, 1, 7, 9, 100])
            .pending_pinned_cpus([7, 2, 2, 8])
            .build();
        let counts = CpuCounts::of(&partly);
        assert_eq!(
            (counts.dedicated, counts.pending_pinned),
            (2, 1),
            "ids 1, 7 dedicated; 2 pending"
        );
    }

    #[test]
    fn cpu_filter_needs_the_vms_vcpus_not_a_sum_over_running_vms() {
        let s = snapshot()
            .host(host("h").cpu(1, 4, 1).running_vms(3))
            .vm(vm("a").vcpus(4).current_host("h"))
            .vm(vm("b").vcpus(4).current_host("h"))
            .vm(vm("c").vcpus(4).current_host("h"))
            .build();
        let verdict = check::<CpuFilter>(&s, &[], &vm("v").vcpus(4).build(), &s.hosts[0]);
        assert_eq!(verdict, Verdict::Pass);
    }

    #[test]
    fn cpu_load_weight_orders_hosts_by_usage_plus_pending_load() {
        let hosts = [
            host("busy").cpu_usage(70).build(),
            host("pending").cpu_usage(10).pending_cpu_load(30).build(),
            host("idle").cpu_usage(20).build(),
            host("quiet").cpu_usage(5).build(),
        ];
        let defaults = params_of(&CpuLoadWeight::params());
        let ignore_pending = with_param(defaults.clone(), "count_pending", ParamValue::Bool(false));
        // (params, expected order, best first)
        let cases = [
            (&defaults, ["quiet", "idle", "pending", "busy"]),
            (&ignore_pending, ["quiet", "pending", "idle", "busy"]),
        ];
        for (params, expected) in cases {
            assert_eq!(
                order::<CpuLoadWeight>(params, &hosts),
                expected,
                "{params:?}"
            );
        }
        let s = snapshot().build();
        let ctx = Context::new(&s, &defaults, CpuLoadWeight::NAME);
        assert_eq!(CpuLoadWeight.penalty(&ctx, &vm("v").build(), &hosts[1]), 40);
    }

    #[test]
    fn free_memory_weight_orders_hosts_by_schedulable_memory_left() {
        let hosts = [
            host("full").memory_mb(8_192).committed_mb(9_000).build(),
            host("roomy").memory_mb(64_000).build(),
            host("pending")
                .memory_mb(64_000)
                .pending_overcommit_mb(40_000)
                .build(),
            host("committed")
                .memory_mb(64_000)
                .committed_mb(30_000)
                .build(),
            host("overcommit")
                .memory_mb(32_000)
                .max_scheduling_mb(48_000)
                .build(),
        ];
        assert_eq!(
            order::<FreeMemoryWeight>(&[], &hosts),
            ["roomy", "overcommit", "committed", "pending", "full"]
        );
        let s = snapshot().build();
        let ctx = Context::new(&s, &[], FreeMemoryWeight::NAME);
        let v = vm("v").build();
        let penalties: Vec<Penalty> = hosts
            .iter()
            .map(|h| FreeMemoryWeight.penalty(&ctx, &v, h))
            .collect();
        assert_eq!(penalties, [0, -64_000, -24_000, -34_000, -48_000]);
    }

    #[test]
    fn manifest_declares_the_four_units_in_export_order() {
        let manifest = units().manifest();
        manifest.validate().unwrap();
        assert_eq!(manifest.module, "basic");
        let names: Vec<&str> = manifest.units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["memory", "cpu", "cpu-load", "free-memory"]);
        assert!(manifest.units.iter().all(|u| !u.description.is_empty()));
    }

    #[test]
    fn evaluate_returns_one_result_per_candidate_in_candidate_order() {
        let s = snapshot()
            .host(host("small").memory_mb(2_048).cpu_usage(10))
            .host(host("big").memory_mb(65_536).cpu_usage(50))
            .host(host("mid").memory_mb(8_192).cpu(1, 2, 1).cpu_usage(30))
            .build();
        let set = units();
        let manifest = set.manifest();
        let v = vm("v").memory_mb(4_096).vcpus(4).build();
        let call_with = |unit: u32, details: bool| {
            let request = CallRequest {
                unit,
                epoch: s.epoch,
                params: params_of(&manifest.units[unit as usize].params),
                vm: Some(v.clone()),
                candidates: vec![2, 0, 1],
                details,
            };
            set.evaluate(&s, request.as_call())
        };
        let call = |unit: u32| call_with(unit, true);
        let codes = |response: CallResponse| -> Vec<String> {
            match response {
                CallResponse::Verdicts(v) => v
                    .into_verdicts()
                    .iter()
                    .map(|v| code(v).to_string())
                    .collect(),
                other => panic!("expected verdicts, got {other:?}"),
            }
        };
        let penalties = |response: CallResponse| match response {
            CallResponse::Penalties(p) => p,
            other => panic!("expected penalties, got {other:?}"),
        };
        let memory: Vec<String> = codes(call(0));
        assert_eq!(memory, ["pass", "not_enough_memory", "pass"]);
        let cpu: Vec<String> = codes(call(1));
        assert_eq!(cpu, ["not_enough_cores", "pass", "pass"]);
        assert_eq!(penalties(call(2)), [30, 10, 50]);
        assert_eq!(penalties(call(3)), [-8_192, -2_048, -65_536]);
        // A call without details (a summary decision's): the same rejections, no detail.
        let details = |response: CallResponse| match response {
            CallResponse::Verdicts(v) => v
                .rejected
                .iter()
                .map(|r| (r.position, v.code_of(r).to_string(), r.detail.is_empty()))
                .collect::<Vec<_>>(),
            other => panic!("expected verdicts, got {other:?}"),
        };
        for unit in [0, 1] {
            let with = details(call_with(unit, true));
            let without = details(call_with(unit, false));
            assert_eq!(with.len(), 1, "unit {unit}");
            assert!(with.iter().all(|(_, _, empty)| !empty), "unit {unit}");
            let expected: Vec<_> = with.into_iter().map(|(p, c, _)| (p, c, true)).collect();
            assert_eq!(without, expected, "unit {unit}");
        }
    }
}
