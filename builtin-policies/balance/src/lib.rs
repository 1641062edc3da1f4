//! Builtin module `balance`: the reference scheduler's balancing and host power
//! management.
//!
//! * balance `evenly-distributed`: moves the least CPU-consuming migratable VM off the most
//!   loaded over-utilized host, to hosts under `min(0.8 x High, High - 10)`;
//! * balance `power-saving`: the same for over-utilized hosts, then empties under-utilized
//!   hosts onto busier ones, and manages host power ([`power`]): empty hosts go to
//!   maintenance then power down down to `HostsInReserve` free hosts, and hosts are woken
//!   (maintenance first, then down hosts) when free hosts fall below the reserve;
//! * weights `power-saving-cpu` and `power-saving-memory`: prefer the busiest host that
//!   stays under `HighUtilization`, and the host with the least memory left that still
//!   holds the VM above the memory threshold.
//!
//! Units only propose: the engine confirms each migration's destination with the cluster's
//! filters and weights, applies its own safety vetoes, and returns power actions to the
//! caller to carry out.

pub mod load;
pub mod power;

use load::{free_memory_mb, host_load, vm_load_on, Mode, Thresholds};
use policy_sdk::{
    Balance, BalanceAction, Context, Host, HostIndex, ParamSpec, Penalty, Vm, Weight,
};
use power::PowerParams;

/// Parameter: CPU load (percent) at or above which a host is over-utilized.
pub const HIGH: &str = "HighUtilization";
/// Parameter: CPU load (percent) below which a host is under-utilized.
pub const LOW: &str = "LowUtilization";
/// Parameter: minutes the load must stay on its side of a threshold.
pub const DURATION: &str = "CpuOverCommitDurationMinutes";
/// Parameter: schedulable memory (MiB) under which a host is over-utilized (0 = off).
pub const MAX_FREE_OVER: &str = "MaxFreeMemoryForOverUtilized";
/// Parameter: schedulable memory (MiB) a host needs to count as under-utilized (0 = off).
pub const MIN_FREE_UNDER: &str = "MinFreeMemoryForUnderUtilized";
/// Parameter: free hosts to keep.
pub const RESERVE: &str = "HostsInReserve";
/// Parameter: host shutdown allowed.
pub const ENABLE_PM: &str = "EnableAutomaticHostPowerManagement";
/// Parameter: minutes a host must be empty before it is moved to maintenance.
pub const EMPTY_MINUTES: &str = "HostEmptyMinutesBeforeShutdown";
/// Parameter: minutes a host that failed to power up is not chosen again.
pub const BACKOFF: &str = "PowerUpBackoffMinutes";
/// Parameter: minutes after which a shutdown in progress is taken as failed.
pub const SHUTDOWN_TIMEOUT: &str = "ShutdownTimeoutMinutes";

/// The threshold parameters shared by the balance units (reference ranges: High 50-99,
/// Low 0-49, duration >= 1).
pub fn threshold_params() -> Vec<ParamSpec> {
    vec![
        ParamSpec::int(
            HIGH,
            80,
            50,
            99,
            "CPU load (%) at or above which a host is over-utilized",
        ),
        ParamSpec::int(
            LOW,
            20,
            0,
            49,
            "CPU load (%) below which a host is under-utilized",
        ),
        ParamSpec::int(
            DURATION,
            2,
            1,
            1_440,
            "Minutes the CPU load must stay over (or under) a threshold",
        ),
        ParamSpec::int(
            MAX_FREE_OVER,
            0,
            0,
            16_777_216,
            "A host with less schedulable memory (MiB) is over-utilized; destinations must \
             keep more (0 = off)",
        ),
        ParamSpec::int(
            MIN_FREE_UNDER,
            0,
            0,
            16_777_216,
            "A host counts as under-utilized only with more schedulable memory (MiB) than \
             this (0 = off)",
        ),
    ]
}

/// The power management parameters of `power-saving`.
pub fn power_params() -> Vec<ParamSpec> {
    let defaults = PowerParams::default();
    vec![
        ParamSpec::int(
            RESERVE,
            i64::from(defaults.reserve),
            0,
            10_000,
            "Free (empty, Up) hosts to keep powered",
        ),
        ParamSpec::bool(
            ENABLE_PM,
            defaults.enabled,
            "Allow the policy to move empty hosts to maintenance and power them down",
        ),
        ParamSpec::int(
            EMPTY_MINUTES,
            i64::from(defaults.empty_minutes),
            0,
            10_080,
            "Minutes a host must have been empty before it is shut down",
        ),
        ParamSpec::int(
            BACKOFF,
            i64::from(defaults.backoff_minutes),
            0,
            10_080,
            "Minutes a host whose power-up failed is not chosen again",
        ),
        ParamSpec::int(
            SHUTDOWN_TIMEOUT,
            i64::from(defaults.shutdown_timeout_minutes),
            1,
            10_080,
            "Minutes after which a host still powering down is taken as failed to shut down",
        ),
    ]
}

/// Reads the power parameters from a `power-saving` call.
pub fn power_params_from(ctx: &Context<'_>) -> PowerParams {
    let int = |name: &str| ctx.int(name).clamp(0, i64::from(u32::MAX)) as u32;
    PowerParams {
        enabled: ctx.bool(ENABLE_PM),
        reserve: int(RESERVE),
        empty_minutes: int(EMPTY_MINUTES),
        backoff_minutes: int(BACKOFF),
        shutdown_timeout_minutes: int(SHUTDOWN_TIMEOUT),
    }
}

/// The cycle's migration, or a note saying why there is none.
fn migrate(ctx: &Context<'_>, mode: Mode, candidates: &[HostIndex]) -> BalanceAction {
    let t = Thresholds::from_ctx(ctx);
    match load::propose(ctx.snapshot(), &t, mode, candidates) {
        Some(p) => BalanceAction::Migrate {
            vm: p.vm,
            candidate_hosts: p.candidates,
            reason: p.reason,
        },
        None => BalanceAction::Note {
            reason: load::why_no_migration(ctx.snapshot(), &t, mode, candidates),
        },
    }
}

/// Balance unit `evenly-distributed`.
#[derive(Debug, Default)]
pub struct EvenlyDistributed;

impl Balance for EvenlyDistributed {
    const NAME: &'static str = "evenly-distributed";
    const DESCRIPTION: &'static str =
        "Moves the least CPU-consuming migratable VM off the most loaded over-utilized host";

    fn params() -> Vec<ParamSpec> {
        threshold_params()
    }

    fn balance(&self, ctx: &Context<'_>, candidates: &[HostIndex]) -> Vec<BalanceAction> {
        vec![migrate(ctx, Mode::EvenlyDistributed, candidates)]
    }
}

/// Balance unit `power-saving`: consolidation plus host power management.
#[derive(Debug, Default)]
pub struct PowerSaving;

impl Balance for PowerSaving {
    const NAME: &'static str = "power-saving";
    const DESCRIPTION: &'static str = "Consolidates VMs onto fewer hosts and shuts down empty \
                                       hosts down to a reserve, waking hosts when it runs low";

    fn params() -> Vec<ParamSpec> {
        let mut params = threshold_params();
        params.extend(power_params());
        params
    }

    fn balance(&self, ctx: &Context<'_>, candidates: &[HostIndex]) -> Vec<BalanceAction> {
        let decision = power::decide(ctx.snapshot(), &power_params_from(ctx), candidates);
        let power = match decision.action {
            Some((host, action)) => BalanceAction::Power {
                host,
                action,
                reason: decision.reason,
            },
            None => BalanceAction::Note {
                reason: format!("no power action: {}", decision.reason),
            },
        };
        vec![migrate(ctx, Mode::PowerSaving, candidates), power]
    }
}

/// Weight `power-saving-cpu`: the busiest host that stays at or under `HighUtilization`
/// with the VM wins; hosts that would go over come last.
#[derive(Debug, Default)]
pub struct PowerSavingCpuWeight;

/// Penalty of hosts that cannot take the VM within the threshold (plus their load, so
/// they still order among themselves).
pub const OVER_THRESHOLD: Penalty = 1_000;

impl Weight for PowerSavingCpuWeight {
    const NAME: &'static str = "power-saving-cpu";
    const DESCRIPTION: &'static str =
        "Power saving: prefers the busiest host that stays under HighUtilization with the VM";

    fn params() -> Vec<ParamSpec> {
        vec![ParamSpec::int(
            HIGH,
            80,
            50,
            99,
            "CPU load (%) the destination must stay at or under",
        )]
    }

    fn penalty(&self, ctx: &Context<'_>, vm: &Vm, host: &Host) -> Penalty {
        let high = ctx.int(HIGH);
        let after = i64::from(host_load(host)).saturating_add(i64::from(vm_load_on(
            vm,
            host,
            ctx.snapshot().cluster.count_threads_as_cores,
        )));
        if after > high {
            OVER_THRESHOLD + after
        } else {
            high - after
        }
    }
}

/// Weight `power-saving-memory`: the host with the least schedulable memory left that still
/// holds the VM above `MaxFreeMemoryForOverUtilized` wins; hosts that cannot come last.
#[derive(Debug, Default)]
pub struct PowerSavingMemoryWeight;

impl Weight for PowerSavingMemoryWeight {
    const NAME: &'static str = "power-saving-memory";
    const DESCRIPTION: &'static str =
        "Power saving: prefers the host with the least memory left that still holds the VM";

    fn params() -> Vec<ParamSpec> {
        vec![ParamSpec::int(
            MAX_FREE_OVER,
            0,
            0,
            16_777_216,
            "Schedulable memory (MiB) the destination must keep after the VM",
        )]
    }

    fn penalty(&self, ctx: &Context<'_>, vm: &Vm, host: &Host) -> Penalty {
        let keep = ctx.int(MAX_FREE_OVER).max(0) as u64;
        let free = free_memory_mb(host);
        match free.checked_sub(vm.memory_mb) {
            Some(left) if left >= keep => Penalty::try_from(left).unwrap_or(Penalty::MAX / 2),
            // Does not fit: after every host that does, the less short the better.
            _ => (1 << 40) + Penalty::try_from(vm.memory_mb.saturating_sub(free)).unwrap_or(0),
        }
    }
}

policy_sdk::export_units! {
    module: "balance",
    version: env!("CARGO_PKG_VERSION"),
    units: [
        balance EvenlyDistributed,
        balance PowerSaving,
        weight PowerSavingCpuWeight,
        weight PowerSavingMemoryWeight,
    ],
}

#[cfg(test)]
mod tests;
