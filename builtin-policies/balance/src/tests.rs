use super::*;
use crate::power::{decide, PowerDecision, Rule};
use policy_sdk::testing::{host, params_of, snapshot, vm, with_param, HostBuilder};
use policy_sdk::{HostStatus, MigrationMode, ParamValue, PowerAction, Snapshot, VmStatus};

fn pm(reserve: u32) -> PowerParams {
    PowerParams {
        enabled: true,
        reserve,
        empty_minutes: 10,
        backoff_minutes: 30,
        shutdown_timeout_minutes: 20,
    }
}

/// A policy-controlled host that has been empty (Up) for an hour.
fn empty(id: &str) -> HostBuilder {
    host(id).policy_controlled().empty_minutes(60)
}

/// A policy-controlled host running one VM (`busy-<id>`).
fn busy(id: &str) -> (HostBuilder, policy_sdk::Vm) {
    (
        host(id).policy_controlled().running_vms(1).cpu_usage(50),
        vm(&format!("busy-{id}"))
            .current_host(id)
            .status(VmStatus::Up)
            .build(),
    )
}

fn in_status(id: &str, status: HostStatus) -> HostBuilder {
    host(id).policy_controlled().status(status)
}

fn run(s: &Snapshot, p: &PowerParams) -> PowerDecision {
    let all: Vec<HostIndex> = (0..s.hosts.len() as HostIndex).collect();
    decide(s, p, &all)
}

fn action_of(s: &Snapshot, d: &PowerDecision) -> Option<(String, PowerAction)> {
    d.action.map(|(i, a)| (s.hosts[i as usize].id.clone(), a))
}

fn cluster(hosts: Vec<HostBuilder>, busy_hosts: &[&str]) -> Snapshot {
    let mut b = snapshot().time_unix(1_000_000);
    for h in hosts {
        b = b.host(h);
    }
    for id in busy_hosts {
        let (h, v) = busy(id);
        b = b.host(h).vm(v);
    }
    b.build()
}

// --- The seven rules, one test each ---------------------------------------------------

#[test]
fn rule1_automatic_power_management_disabled_does_nothing() {
    let s = cluster(vec![empty("e1"), empty("e2"), empty("e3")], &["b1"]);
    let d = run(
        &s,
        &PowerParams {
            enabled: false,
            ..pm(0)
        },
    );
    assert_eq!(d.rule, Some(Rule::Disabled));
    assert_eq!(d.action, None, "{}", d.reason);
}

#[test]
fn rule2_below_reserve_with_nothing_to_wake_does_nothing() {
    // Two free hosts, reserve 3; the only down host is not under policy control.
    let s = cluster(
        vec![
            empty("e1"),
            empty("e2"),
            host("user-down").status(HostStatus::Down),
        ],
        &["b1"],
    );
    let d = run(&s, &pm(3));
    assert_eq!(d.rule, Some(Rule::NothingToWake), "{}", d.reason);
    assert_eq!(d.action, None);
}

#[test]
fn rule3_surplus_with_two_maintenance_hosts_powers_one_down_keeping_a_warm_spare() {
    let s = cluster(
        vec![
            empty("e1"),
            empty("e2"),
            in_status("m1", HostStatus::Maintenance).status_minutes(5),
            in_status("m2", HostStatus::Maintenance).status_minutes(30),
        ],
        &["b1"],
    );
    let d = run(&s, &pm(1));
    assert_eq!(
        d.rule,
        Some(Rule::PowerDownSurplusMaintenance),
        "{}",
        d.reason
    );
    // The one longest in maintenance goes down; m1 stays as the warm spare.
    assert_eq!(
        action_of(&s, &d),
        Some(("m2".into(), PowerAction::PowerDown))
    );
}

#[test]
fn rule4_surplus_moves_the_longest_empty_qualifying_host_to_maintenance() {
    let s = cluster(
        vec![
            empty("spm").spm().empty_minutes(500),
            empty("short").empty_minutes(3),
            empty("e1").empty_minutes(40),
            empty("e2").empty_minutes(90),
        ],
        &["b1"],
    );
    let d = run(&s, &pm(1));
    assert_eq!(d.rule, Some(Rule::EmptyHostToMaintenance), "{}", d.reason);
    // Not the SPM host, not the host empty for less than 10 minutes.
    assert_eq!(
        action_of(&s, &d),
        Some(("e2".into(), PowerAction::ToMaintenance))
    );
}

#[test]
fn rule5_reserve_met_powers_down_the_maintenance_host() {
    let s = cluster(
        vec![empty("e1"), in_status("m1", HostStatus::Maintenance)],
        &["b1"],
    );
    let d = run(&s, &pm(1));
    assert_eq!(d.rule, Some(Rule::PowerDownAtReserve), "{}", d.reason);
    assert_eq!(
        action_of(&s, &d),
        Some(("m1".into(), PowerAction::PowerDown))
    );
}

#[test]
fn rule6_below_reserve_activates_a_maintenance_host_before_powering_up() {
    let s = cluster(
        vec![
            in_status("d1", HostStatus::Down),
            in_status("m1", HostStatus::Maintenance),
        ],
        &["b1"],
    );
    let d = run(&s, &pm(1));
    assert_eq!(d.rule, Some(Rule::ActivateMaintenance), "{}", d.reason);
    assert_eq!(
        action_of(&s, &d),
        Some(("m1".into(), PowerAction::Activate))
    );
}

#[test]
fn rule7_below_reserve_powers_up_a_down_host() {
    let s = cluster(
        vec![
            in_status("d1", HostStatus::Down),
            in_status("d2", HostStatus::Down),
        ],
        &["b1"],
    );
    let d = run(&s, &pm(1));
    assert_eq!(d.rule, Some(Rule::PowerUpDownHost), "{}", d.reason);
    assert_eq!(action_of(&s, &d), Some(("d1".into(), PowerAction::PowerUp)));
}

// --- Known issues of the seed ---------------------------------------------------------

#[test]
fn a_host_mid_shutdown_is_not_woken_until_its_shutdown_times_out() {
    // (status minutes, expected action)
    let cases = [(5, None), (19, None), (20, Some(PowerAction::PowerUp))];
    for (minutes, expected) in cases {
        let s = cluster(
            vec![in_status("pd", HostStatus::PoweringDown).status_minutes(minutes)],
            &["b1"],
        );
        let d = run(&s, &pm(1));
        assert_eq!(
            d.action.map(|(_, a)| a),
            expected,
            "{minutes} min: {}",
            d.reason
        );
    }
}

#[test]
fn a_host_that_failed_to_power_up_is_skipped_for_the_backoff_period() {
    let failed_at = |secs_ago: u64| {
        let mut h = in_status("failed", HostStatus::Down);
        h = h.power(policy_sdk::PowerManagement {
            enabled: true,
            controlled_by_policy: true,
            excluded_from_automatic: false,
            last_failed_power_up: Some(1_000_000 - secs_ago),
        });
        h
    };
    // Recently failed host first in order: the other one is chosen.
    let s = cluster(
        vec![failed_at(60), in_status("other", HostStatus::Down)],
        &["b1"],
    );
    let d = run(&s, &pm(1));
    assert_eq!(
        action_of(&s, &d),
        Some(("other".into(), PowerAction::PowerUp))
    );
    // Only the failed host: nothing within the back-off, the host after it.
    let s = cluster(vec![failed_at(60)], &["b1"]);
    let d = run(&s, &pm(1));
    assert_eq!(d.action, None, "{}", d.reason);
    assert!(d.reason.contains("failed to power up"), "{}", d.reason);
    let s = cluster(vec![failed_at(31 * 60)], &["b1"]);
    assert_eq!(
        action_of(&s, &run(&s, &pm(1))),
        Some(("failed".into(), PowerAction::PowerUp))
    );
}

#[test]
fn a_host_powering_up_counts_as_free_so_no_second_host_is_woken() {
    let s = cluster(
        vec![
            in_status("booting", HostStatus::PoweringUp),
            in_status("d1", HostStatus::Down),
        ],
        &["b1"],
    );
    let d = run(&s, &pm(1));
    assert_eq!(d.action, None, "{}", d.reason);
}

#[test]
fn hosts_not_under_policy_control_are_never_chosen() {
    // Surplus of free hosts but none qualifies: user-controlled, excluded, PM not OK.
    let mut excluded = empty("excluded");
    excluded = excluded.power(policy_sdk::PowerManagement {
        enabled: true,
        controlled_by_policy: true,
        excluded_from_automatic: true,
        last_failed_power_up: None,
    });
    let s = cluster(
        vec![
            host("user").empty_minutes(60),
            excluded,
            host("no-pm")
                .empty_minutes(60)
                .power(policy_sdk::PowerManagement {
                    enabled: false,
                    controlled_by_policy: true,
                    ..Default::default()
                }),
        ],
        &["b1"],
    );
    let d = run(&s, &pm(0));
    assert_eq!(d.rule, Some(Rule::EmptyHostToMaintenance));
    assert_eq!(d.action, None, "{}", d.reason);
}

#[test]
fn a_host_with_a_pending_vm_is_not_empty() {
    let s = cluster(
        vec![empty("e1").pending_vms(["starting"]), empty("e2")],
        &["b1"],
    );
    // Only e2 is free: reserve 1 is met, nothing to shut down.
    let d = run(&s, &pm(1));
    assert_eq!(d.action, None, "{}", d.reason);
    let d = run(&s, &pm(0));
    assert_eq!(
        action_of(&s, &d),
        Some(("e2".into(), PowerAction::ToMaintenance))
    );
}

// --- Migrations -----------------------------------------------------------------------

fn t() -> Thresholds {
    Thresholds::default()
}

fn propose(s: &Snapshot, mode: Mode) -> Option<(String, Vec<String>)> {
    let all: Vec<HostIndex> = (0..s.hosts.len() as HostIndex).collect();
    load::propose(s, &t(), mode, &all).map(|p| {
        (
            s.vms[p.vm as usize].id.clone(),
            p.candidates
                .iter()
                .map(|&i| s.hosts[i as usize].id.clone())
                .collect(),
        )
    })
}

fn running(id: &str, on: &str, usage: u32) -> policy_sdk::testing::VmBuilder {
    vm(id)
        .current_host(on)
        .status(VmStatus::Up)
        .cpu_usage(usage)
        .memory_mb(1_024)
}

#[test]
fn over_utilized_host_sheds_its_least_cpu_consuming_migratable_vm() {
    let s = snapshot()
        .host(
            host("hot")
                .cpu_usage(95)
                .cpu_usage_minutes(5)
                .running_vms(3),
        )
        .host(
            host("cool")
                .cpu_usage(10)
                .cpu_usage_minutes(5)
                .running_vms(1),
        )
        .vm(running("pinned", "hot", 1).migration(MigrationMode::PinnedToHost))
        .vm(running("manual", "hot", 2).migration(MigrationMode::ManualOnly))
        .vm(running("small", "hot", 20))
        .vm(running("big", "hot", 70))
        .vm(running("other", "cool", 10))
        .build();
    for mode in [Mode::EvenlyDistributed, Mode::PowerSaving] {
        assert_eq!(
            propose(&s, mode),
            Some(("small".into(), vec!["cool".into()])),
            "{mode:?}"
        );
    }
}

#[test]
fn over_utilization_needs_the_duration() {
    // (minutes over the threshold, migration expected)
    for (minutes, expected) in [(1, false), (2, true)] {
        let s = snapshot()
            .host(host("hot").cpu_usage(95).cpu_usage_minutes(minutes))
            .host(host("cool").cpu_usage(10).cpu_usage_minutes(5))
            .vm(running("v", "hot", 20))
            .build();
        assert_eq!(
            propose(&s, Mode::EvenlyDistributed).is_some(),
            expected,
            "{minutes} min"
        );
    }
}

#[test]
fn evenly_distributed_destinations_are_under_the_lower_bound() {
    // High 80 -> destinations under min(64, 70) = 64.
    assert_eq!(t().even_destination_bound(), 64);
    let s = snapshot()
        .host(host("hot").cpu_usage(95).cpu_usage_minutes(5))
        .host(
            host("at-64")
                .cpu_usage(64)
                .cpu_usage_minutes(5)
                .running_vms(1),
        )
        .host(
            host("at-63")
                .cpu_usage(63)
                .cpu_usage_minutes(5)
                .running_vms(1),
        )
        .vm(running("v", "hot", 1))
        .build();
    assert_eq!(
        propose(&s, Mode::EvenlyDistributed),
        Some(("v".into(), vec!["at-63".into()]))
    );
    // Power saving accepts any host not over-utilized that stays <= 80 with the VM.
    assert_eq!(
        propose(&s, Mode::PowerSaving),
        Some(("v".into(), vec!["at-64".into(), "at-63".into()]))
    );
}

#[test]
fn power_saving_empties_the_least_loaded_under_utilized_host_onto_a_busier_one() {
    let s = snapshot()
        .host(host("quiet").cpu_usage(5).cpu_usage_minutes(10))
        .host(host("quieter").cpu_usage(2).cpu_usage_minutes(10))
        .host(host("busy").cpu_usage(50).cpu_usage_minutes(10))
        .host(host("empty").cpu_usage(0).cpu_usage_minutes(10))
        .vm(running("q1", "quiet", 5))
        .vm(running("q2", "quieter", 2))
        .vm(running("b", "busy", 50))
        .build();
    // Evenly distributed leaves under-utilized hosts alone.
    assert_eq!(propose(&s, Mode::EvenlyDistributed), None);
    // Power saving moves quieter's VM to hosts busier than it that run VMs (not to the
    // empty host).
    assert_eq!(
        propose(&s, Mode::PowerSaving),
        Some(("q2".into(), vec!["quiet".into(), "busy".into()]))
    );
}

#[test]
fn two_equally_quiet_hosts_consolidate_one_way_only() {
    let s = snapshot()
        .host(host("a").cpu_usage(5).cpu_usage_minutes(10))
        .host(host("b").cpu_usage(5).cpu_usage_minutes(10))
        .vm(running("va", "a", 5))
        .vm(running("vb", "b", 5))
        .build();
    assert_eq!(
        propose(&s, Mode::PowerSaving),
        Some(("vb".into(), vec!["a".into()]))
    );
}

#[test]
fn no_migration_from_a_host_with_one_in_flight() {
    let s = snapshot()
        .host(host("hot").cpu_usage(95).cpu_usage_minutes(5))
        .host(host("cool").cpu_usage(10).cpu_usage_minutes(5))
        .vm(running("moving", "hot", 30).status(VmStatus::MigratingFrom))
        .vm(running("v", "hot", 20))
        .build();
    assert_eq!(propose(&s, Mode::EvenlyDistributed), None);
}

#[test]
fn destinations_need_the_memory_and_keep_the_memory_threshold() {
    let s = snapshot()
        .host(host("hot").cpu_usage(95).cpu_usage_minutes(5))
        .host(
            host("tight")
                .memory_mb(1_000)
                .cpu_usage(10)
                .cpu_usage_minutes(5),
        )
        .host(
            host("roomy")
                .memory_mb(4_096)
                .cpu_usage(10)
                .cpu_usage_minutes(5),
        )
        .vm(running("v", "hot", 20))
        .build();
    assert_eq!(
        propose(&s, Mode::PowerSaving),
        Some(("v".into(), vec!["roomy".into()]))
    );
    let keep_4g = Thresholds {
        max_free_memory_for_over_mb: 4_096,
        ..t()
    };
    let all: Vec<HostIndex> = vec![0, 1, 2];
    assert_eq!(load::propose(&s, &keep_4g, Mode::PowerSaving, &all), None);
}

// --- Weights and parameters -----------------------------------------------------------

#[test]
fn power_saving_cpu_weight_prefers_the_busiest_host_staying_under_high() {
    let s = snapshot().build();
    let params = params_of(&PowerSavingCpuWeight::params());
    let ctx = Context::new(&s, &params, PowerSavingCpuWeight::NAME);
    // 8 threads -> cores 4; a 4-vCPU VM at 50% adds 50%.
    let v = vm("v").vcpus(4).cpu_usage(50).build();
    let hosts = [
        host("idle").cpu_usage(0).build(),
        host("busy").cpu_usage(30).build(),
        host("too-busy").cpu_usage(40).build(),
    ];
    let mut ranked: Vec<(Penalty, &str)> = hosts
        .iter()
        .map(|h| (PowerSavingCpuWeight.penalty(&ctx, &v, h), h.id.as_str()))
        .collect();
    ranked.sort();
    let order: Vec<&str> = ranked.iter().map(|&(_, id)| id).collect();
    assert_eq!(order, ["busy", "idle", "too-busy"], "{ranked:?}");
}

#[test]
fn power_saving_memory_weight_prefers_the_tightest_fit() {
    let s = snapshot().build();
    let params = with_param(
        params_of(&PowerSavingMemoryWeight::params()),
        MAX_FREE_OVER,
        ParamValue::Int(1_000),
    );
    let ctx = Context::new(&s, &params, PowerSavingMemoryWeight::NAME);
    let v = vm("v").memory_mb(2_000).build();
    let hosts = [
        host("roomy").memory_mb(16_000).build(),
        host("tight").memory_mb(3_500).build(),
        host("under-threshold").memory_mb(2_500).build(),
    ];
    let mut ranked: Vec<(Penalty, &str)> = hosts
        .iter()
        .map(|h| (PowerSavingMemoryWeight.penalty(&ctx, &v, h), h.id.as_str()))
        .collect();
    ranked.sort();
    let order: Vec<&str> = ranked.iter().map(|&(_, id)| id).collect();
    assert_eq!(order, ["tight", "roomy", "under-threshold"]);
}

#[test]
fn parameters_are_validated_with_the_reference_ranges() {
    let specs = PowerSaving::params();
    let spec = |name: &str| specs.iter().find(|s| s.name == name).unwrap();
    // (parameter, value, accepted)
    let cases = [
        (HIGH, ParamValue::Int(50), true),
        (HIGH, ParamValue::Int(100), false),
        (HIGH, ParamValue::Int(49), false),
        (LOW, ParamValue::Int(49), true),
        (LOW, ParamValue::Int(50), false),
        (DURATION, ParamValue::Int(0), false),
        (RESERVE, ParamValue::Int(-1), false),
        (ENABLE_PM, ParamValue::Str("yes".into()), false),
        (ENABLE_PM, ParamValue::Bool(true), true),
    ];
    for (name, value, ok) in cases {
        assert_eq!(spec(name).ty.check(&value).is_ok(), ok, "{name} = {value}");
    }
    units().manifest().validate().unwrap();
}

#[test]
fn power_saving_unit_returns_a_migration_and_one_power_action() {
    let s = snapshot()
        .host(
            host("quiet")
                .cpu_usage(5)
                .cpu_usage_minutes(10)
                .policy_controlled(),
        )
        .host(
            host("busy")
                .cpu_usage(50)
                .cpu_usage_minutes(10)
                .policy_controlled(),
        )
        .host(empty("e1"))
        .host(empty("e2"))
        .vm(running("q", "quiet", 5))
        .vm(running("b", "busy", 50))
        .build();
    let params = with_param(
        params_of(&PowerSaving::params()),
        ENABLE_PM,
        ParamValue::Bool(true),
    );
    let actions = PowerSaving.balance(&Context::new(&s, &params, PowerSaving::NAME), &[0, 1, 2, 3]);
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert!(matches!(&actions[0], BalanceAction::Migrate { vm: 0, .. }));
    assert!(matches!(
        &actions[1],
        BalanceAction::Power {
            host: 2,
            action: PowerAction::ToMaintenance,
            ..
        }
    ));
}
