//! Builtin module `basic`: the memory and CPU filters and the CPU-load and free-memory
//! weights of the reference scheduler, counting pending resources.
//!
//! Compiled to wasm by the host's build and embedded in the `wasmsched` binary; compiled
//! natively for these tests and for the benchmarks' native baseline.

use policy_sdk::{Context, Filter, Host, ParamSpec, Penalty, Verdict, Vm, Weight};

/// Memory the host can still give, counting pending memory: the physical check (free +
/// swap - pending) and the overcommit-aware check (max scheduling - committed - pending
/// overcommit).
#[derive(Debug, Default)]
pub struct MemoryFilter;

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
        let need = vm
            .memory_mb
            .saturating_add(ctx.int("overhead_mb").max(0) as u64);
        let physical = host
            .memory
            .free_mb
            .saturating_add(host.memory.swap_free_mb)
            .saturating_sub(host.pending.memory_mb);
        if physical < need {
            return Verdict::reject(
                "not_enough_memory",
                format!(
                    "{physical} MiB free after {} MiB pending, {need} MiB needed",
                    host.pending.memory_mb
                ),
            );
        }
        let schedulable = schedulable_memory(host);
        if schedulable < need {
            return Verdict::reject(
                "not_enough_schedulable_memory",
                format!(
                    "{schedulable} MiB schedulable after {} MiB committed and {} MiB pending, {need} MiB needed",
                    host.memory.committed_mb, host.pending.overcommit_memory_mb
                ),
            );
        }
        Verdict::Pass
    }
}

/// Overcommit-aware memory left for scheduling, counting pending overcommit memory.
fn schedulable_memory(host: &Host) -> u64 {
    host.memory
        .max_scheduling_mb
        .saturating_sub(host.memory.committed_mb)
        .saturating_sub(host.pending.overcommit_memory_mb)
}

/// The host must have at least as many usable CPUs as the VM has vCPUs (cores, or threads
/// when the cluster counts threads as cores; minus dedicated and pending pinned pCPUs).
#[derive(Debug, Default)]
pub struct CpuFilter;

impl Filter for CpuFilter {
    const NAME: &'static str = "cpu";
    const DESCRIPTION: &'static str =
        "Usable host CPUs (minus dedicated and pending pinned pCPUs) must cover the VM's vCPUs";

    fn check(&self, ctx: &Context<'_>, vm: &Vm, host: &Host) -> Verdict {
        let threads_as_cores = ctx.snapshot().cluster.count_threads_as_cores;
        let total = host.schedulable_cpus(threads_as_cores);
        let pending_extra = host
            .pending
            .pinned_cpus
            .iter()
            .enumerate()
            .filter(|(i, cpu)| {
                !host.dedicated_cpus.contains(cpu) && !host.pending.pinned_cpus[..*i].contains(cpu)
            })
            .count() as u32;
        let taken = (host.dedicated_cpus.len() as u32).saturating_add(pending_extra);
        let usable = total.saturating_sub(taken);
        let need = vm.vcpus();
        if usable >= need {
            Verdict::Pass
        } else {
            let unit = if threads_as_cores { "threads" } else { "cores" };
            Verdict::reject(
                "not_enough_cores",
                format!(
                    "{usable} {unit} available ({taken} dedicated or pending), {need} vCPUs needed"
                ),
            )
        }
    }
}

/// Even distribution: prefers hosts with the lowest CPU load, pending load included.
#[derive(Debug, Default)]
pub struct CpuLoadWeight;

impl Weight for CpuLoadWeight {
    const NAME: &'static str = "cpu-load";
    const DESCRIPTION: &'static str =
        "Even distribution: CPU usage plus pending CPU load (lower is better)";

    fn params() -> Vec<ParamSpec> {
        vec![ParamSpec::bool(
            "count_pending",
            true,
            "Add pending CPU load to the current usage",
        )]
    }

    fn penalty(&self, ctx: &Context<'_>, _vm: &Vm, host: &Host) -> Penalty {
        let pending = if ctx.bool("count_pending") {
            host.pending.cpu_load_percent
        } else {
            0
        };
        host.cpu_usage_percent as Penalty + pending as Penalty
    }
}

/// Prefers hosts with the most schedulable memory left (pending included).
#[derive(Debug, Default)]
pub struct FreeMemoryWeight;

impl Weight for FreeMemoryWeight {
    const NAME: &'static str = "free-memory";
    const DESCRIPTION: &'static str =
        "Prefers hosts with more schedulable memory left after committed and pending memory";

    fn penalty(&self, _ctx: &Context<'_>, _vm: &Vm, host: &Host) -> Penalty {
        -(schedulable_memory(host).min(i64::MAX as u64) as Penalty)
    }
}

policy_sdk::export_units! {
    module: "basic",
    version: env!("CARGO_PKG_VERSION"),
    units: [filter MemoryFilter, filter CpuFilter, weight CpuLoadWeight, weight FreeMemoryWeight],
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::abi::{CallRequest, CallResponse};
    use policy_sdk::testing::{host, params_of, snapshot, vm, with_param, HostBuilder};
    use policy_sdk::{ParamValue, Snapshot};

    type Params = Vec<(String, ParamValue)>;

    fn check<F: Filter>(
        snapshot: &Snapshot,
        params: &[(String, ParamValue)],
        v: &Vm,
        h: &Host,
    ) -> Verdict {
        let ctx = Context::new(snapshot, params, F::NAME);
        F::default().check(&ctx, v, h)
    }

    fn code(verdict: &Verdict) -> &str {
        match verdict {
            Verdict::Pass => "pass",
            Verdict::Reject { code, .. } => code,
        }
    }

    #[test]
    fn memory_filter_subtracts_pending_and_counts_overhead() {
        let s = snapshot().build();
        let defaults = params_of(&MemoryFilter::params());
        let no_overhead = with_param(defaults.clone(), "overhead_mb", ParamValue::Int(0));
        // (case, host, vm memory, params, expected code)
        let cases: Vec<(&str, HostBuilder, u64, &Params, &str)> = vec![
            (
                "fits with overhead",
                host("h").memory_mb(8_192),
                8_000,
                &defaults,
                "pass",
            ),
            (
                "exact fit passes",
                host("h").memory_mb(8_192),
                8_128,
                &defaults,
                "pass",
            ),
            (
                "overhead tips it over",
                host("h").memory_mb(8_192),
                8_129,
                &defaults,
                "not_enough_memory",
            ),
            (
                "without overhead it fits",
                host("h").memory_mb(8_192),
                8_192,
                &no_overhead,
                "pass",
            ),
            (
                "swap counts as free",
                host("h")
                    .memory_mb(8_192)
                    .free_mb(4_000)
                    .swap_mb(5_000)
                    .max_scheduling_mb(20_000),
                8_000,
                &defaults,
                "pass",
            ),
            (
                "pending memory is subtracted",
                host("h").memory_mb(8_192).pending_memory_mb(1_000),
                8_000,
                &defaults,
                "not_enough_memory",
            ),
            (
                "committed memory limits scheduling",
                host("h").memory_mb(8_192).committed_mb(4_096),
                4_096,
                &defaults,
                "not_enough_schedulable_memory",
            ),
            (
                "pending overcommit is subtracted",
                host("h").memory_mb(8_192).pending_overcommit_mb(4_096),
                4_096,
                &defaults,
                "not_enough_schedulable_memory",
            ),
            (
                "overcommit ceiling above physical",
                host("h")
                    .memory_mb(8_192)
                    .max_scheduling_mb(16_384)
                    .committed_mb(8_000),
                4_000,
                &defaults,
                "pass",
            ),
        ];
        for (case, h, mem, params, expected) in cases {
            let verdict =
                check::<MemoryFilter>(&s, params, &vm("v").memory_mb(mem).build(), &h.build());
            assert_eq!(code(&verdict), expected, "{case}: {verdict:?}");
        }
    }

    #[test]
    fn cpu_filter_counts_cores_or_threads_and_excludes_dedicated_and_pending_pins() {
        let by_cores = snapshot().build();
        let by_threads = snapshot().count_threads_as_cores(true).build();
        // 2 sockets x 4 cores x 2 threads: 8 cores, 16 threads.
        let base = || host("h").cpu(2, 4, 2);
        let cases: Vec<(&str, &Snapshot, HostBuilder, u32, &str)> = vec![
            ("8 vCPUs on 8 cores", &by_cores, base(), 8, "pass"),
            (
                "9 vCPUs on 8 cores",
                &by_cores,
                base(),
                9,
                "not_enough_cores",
            ),
            (
                "16 vCPUs when threads count",
                &by_threads,
                base(),
                16,
                "pass",
            ),
            (
                "dedicated CPUs are taken",
                &by_cores,
                base().dedicated_cpus([0, 1]),
                7,
                "not_enough_cores",
            ),
            (
                "dedicated leave the rest",
                &by_cores,
                base().dedicated_cpus([0, 1]),
                6,
                "pass",
            ),
            (
                "pending pins are taken",
                &by_cores,
                base().pending_pinned_cpus([4, 5, 6]),
                6,
                "not_enough_cores",
            ),
            (
                "a pCPU both dedicated and pending counts once",
                &by_cores,
                base().dedicated_cpus([0, 1]).pending_pinned_cpus([1, 2, 2]),
                5,
                "pass",
            ),
        ];
        for (case, s, h, vcpus, expected) in cases {
            let verdict = check::<CpuFilter>(s, &[], &vm("v").vcpus(vcpus).build(), &h.build());
            assert_eq!(code(&verdict), expected, "{case}: {verdict:?}");
        }
    }

    #[test]
    fn weights_prefer_idle_hosts_and_free_memory_counting_pending() {
        let s = snapshot().build();
        let v = vm("v").build();
        let params = params_of(&CpuLoadWeight::params());
        let ctx = Context::new(&s, &params, "cpu-load");
        let busy = host("busy").cpu_usage(70).build();
        let idle_but_pending = host("pend").cpu_usage(10).pending_cpu_load(30).build();
        let idle = host("idle").cpu_usage(20).build();
        let penalties: Vec<Penalty> = [&busy, &idle_but_pending, &idle]
            .iter()
            .map(|h| CpuLoadWeight.penalty(&ctx, &v, h))
            .collect();
        assert_eq!(penalties, vec![70, 40, 20]);
        let ignore_pending = with_param(params.clone(), "count_pending", ParamValue::Bool(false));
        let ctx = Context::new(&s, &ignore_pending, "cpu-load");
        assert_eq!(CpuLoadWeight.penalty(&ctx, &v, &idle_but_pending), 10);

        let ctx = Context::new(&s, &[], "free-memory");
        let roomy = host("a").memory_mb(64_000).build();
        let pending = host("b")
            .memory_mb(64_000)
            .pending_overcommit_mb(40_000)
            .build();
        assert!(
            FreeMemoryWeight.penalty(&ctx, &v, &roomy)
                < FreeMemoryWeight.penalty(&ctx, &v, &pending)
        );
    }

    #[test]
    fn evaluate_returns_one_verdict_per_candidate_in_candidate_order() {
        let s = snapshot()
            .host(host("small").memory_mb(2_048))
            .host(host("big").memory_mb(65_536))
            .host(host("mid").memory_mb(8_192))
            .build();
        let set = units();
        let manifest = set.manifest();
        assert_eq!(
            manifest
                .units
                .iter()
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>(),
            ["memory", "cpu", "cpu-load", "free-memory"]
        );
        let request = CallRequest {
            unit: 0,
            epoch: s.epoch,
            params: params_of(&manifest.units[0].params),
            vm: Some(vm("v").memory_mb(4_096).build()),
            candidates: vec![2, 0, 1],
        };
        match set.evaluate(&s, &request) {
            CallResponse::Verdicts(v) => {
                assert_eq!(
                    v.iter().map(code).collect::<Vec<_>>(),
                    ["pass", "not_enough_memory", "pass"]
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
