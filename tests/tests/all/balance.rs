//! Balancing and host power management through the runtime: the builtin `balance` module
//! compiled to wasm, the engine's safety vetoes, destination confirmation, named policies,
//! wake-ups for VMs on powered-down hosts, and a simulated day.

use integration_tests::{policy, runtime};
use policy_sdk::testing::{host, snapshot, vm, HostBuilder};
use policy_sdk::{
    Balance, BalanceAction, Context, HostIndex, MigrationMode, ParamSpec, PowerAction,
    PowerManagement, Snapshot, UnitSet, VmStatus,
};
use wasmsched::plan::{PlannedAction, WakeUp};
use wasmsched::{Cluster, PlacementKind, Policy, Runtime, ScheduleRequest, StartOutcome};

/// A balance unit that proposes what its `script` parameter says, so that the engine's
/// vetoes can be tested one by one: `power:<host>:<action>` and `migrate:<vm>:<host>,<host>`
/// separated by `;` (indices into the snapshot).
#[derive(Debug, Default)]
struct Scripted;

impl Balance for Scripted {
    const NAME: &'static str = "scripted";
    fn params() -> Vec<ParamSpec> {
        vec![ParamSpec::string("script", "", "actions to propose")]
    }
    fn balance(&self, ctx: &Context<'_>, _candidates: &[HostIndex]) -> Vec<BalanceAction> {
        ctx.str("script")
            .split(';')
            .filter(|s| !s.is_empty())
            .map(|item| {
                let parts: Vec<&str> = item.split(':').collect();
                match parts[0] {
                    "power" => BalanceAction::Power {
                        host: parts[1].parse().unwrap(),
                        action: match parts[2] {
                            "to_maintenance" => PowerAction::ToMaintenance,
                            "power_down" => PowerAction::PowerDown,
                            "activate" => PowerAction::Activate,
                            _ => PowerAction::PowerUp,
                        },
                        reason: "scripted".into(),
                    },
                    _ => BalanceAction::Migrate {
                        vm: parts[1].parse().unwrap(),
                        candidate_hosts: parts[2].split(',').map(|h| h.parse().unwrap()).collect(),
                        reason: "scripted".into(),
                    },
                }
            })
            .collect()
    }
}

fn scripted_runtime() -> Runtime {
    let rt = runtime();
    rt.add_native(
        "scripted",
        UnitSet::new("scripted", "0").balance::<Scripted>(),
    )
    .unwrap();
    rt
}

fn scripted_policy(rt: &Runtime, script: &str, max_actions: u32) -> Policy {
    policy(
        rt,
        &format!(
            r#"
name = "scripted"
max_balance_actions = {max_actions}
[[filters]]
unit = "memory"
[[weights]]
unit = "power-saving-cpu"
[balance]
unit = "scripted"
params = {{ script = "{script}" }}
"#
        ),
    )
}

/// A host the power policy may act on: PM OK and under policy control.
fn managed(id: &str) -> HostBuilder {
    host(id).policy_controlled()
}

fn cluster(s: Snapshot) -> Cluster {
    Cluster::new(s, "<test>").unwrap()
}

/// Runs one scripted action on host 0 / VM 0 and returns the veto, if any.
fn veto_of(c: &Cluster, script: &str) -> Option<String> {
    let rt = scripted_runtime();
    let plan = scripted_policy(&rt, script, 5).balance(c).unwrap();
    assert_eq!(plan.actions.len() + plan.refused.len(), 1, "{plan:?}");
    plan.refused.first().map(|r| r.why.clone())
}

#[test]
fn each_power_veto_refuses_with_its_reason() {
    let up_vm = |on: &str| vm("v").current_host(on).status(VmStatus::Up).build();
    // (case, host 0, VM on host 0?, script, expected reason, or None when allowed)
    let cases: Vec<(&str, HostBuilder, bool, &str, Option<&str>)> = vec![
        (
            "allowed",
            managed("h"),
            false,
            "power:0:to_maintenance",
            None,
        ),
        (
            "spm",
            managed("h").spm(),
            false,
            "power:0:to_maintenance",
            Some("SPM host"),
        ),
        (
            "running vms",
            managed("h"),
            true,
            "power:0:to_maintenance",
            Some("1 running VM"),
        ),
        (
            "excluded",
            managed("h").power(PowerManagement {
                enabled: true,
                controlled_by_policy: true,
                excluded_from_automatic: true,
                last_failed_power_up: None,
            }),
            false,
            "power:0:to_maintenance",
            Some("excluded from automatic power management"),
        ),
        (
            "pm not ok",
            host("h").power(PowerManagement {
                enabled: false,
                controlled_by_policy: true,
                ..Default::default()
            }),
            false,
            "power:0:to_maintenance",
            Some("power management is not OK"),
        ),
        (
            "user took over",
            host("h").power(PowerManagement {
                enabled: true,
                ..Default::default()
            }),
            false,
            "power:0:to_maintenance",
            Some("not under power-policy control"),
        ),
        (
            "power down an up host",
            managed("h"),
            false,
            "power:0:power_down",
            Some("needs it in maintenance"),
        ),
        (
            "power up an up host",
            managed("h"),
            false,
            "power:0:power_up",
            Some("needs it down"),
        ),
    ];
    for (case, h, with_vm, script, expected) in cases {
        let mut s = snapshot().host(h).host(managed("other"));
        if with_vm {
            s = s.vm(up_vm("h"));
        }
        let why = veto_of(&cluster(s.build()), script);
        match expected {
            None => assert_eq!(why, None, "{case}"),
            Some(text) => {
                let why = why.unwrap_or_else(|| panic!("{case}: not refused"));
                assert!(why.contains(text), "{case}: {why}");
            }
        }
    }
}

#[test]
fn a_host_with_a_pending_vm_is_not_moved_to_maintenance() {
    let c = cluster(snapshot().host(managed("h")).host(managed("other")).build());
    c.reserve(&vm("starting").build(), "h", PlacementKind::Start)
        .unwrap();
    let why = veto_of(&c, "power:0:to_maintenance").expect("refused");
    assert!(why.contains("pending VM(s): starting"), "{why}");
}

#[test]
fn non_migratable_vms_are_never_migrated_automatically() {
    for (mode, text) in [
        (MigrationMode::ManualOnly, "manual_only"),
        (MigrationMode::PinnedToHost, "pinned_to_host"),
    ] {
        let c = cluster(
            snapshot()
                .host(host("a"))
                .host(host("b"))
                .vm(vm("v")
                    .current_host("a")
                    .status(VmStatus::Up)
                    .migration(mode))
                .build(),
        );
        let why = veto_of(&c, "migrate:0:1").expect("refused");
        assert!(why.contains(text), "{mode:?}: {why}");
    }
}

#[test]
fn actions_over_the_per_cycle_caps_are_refused() {
    let c = cluster(
        snapshot()
            .host(managed("a"))
            .host(managed("b"))
            .host(managed("c"))
            .build(),
    );
    let rt = scripted_runtime();
    // Two power actions: the second is over the one-per-cycle power cap.
    let plan = scripted_policy(&rt, "power:0:to_maintenance;power:1:to_maintenance", 5)
        .balance(&c)
        .unwrap();
    assert_eq!(plan.actions.len(), 1);
    assert!(
        plan.refused[0].why.contains("1 power action per cycle"),
        "{plan:?}"
    );
    // The policy's cap on all actions.
    let plan = scripted_policy(&rt, "power:0:to_maintenance", 0)
        .balance(&c)
        .unwrap();
    assert!(
        plan.refused[0].why.contains("limit of 0 action(s)"),
        "{plan:?}"
    );
}

#[test]
fn the_migration_destination_is_confirmed_by_the_policys_filters_and_weights() {
    let c = cluster(
        snapshot()
            .host(host("src").cpu_usage(95))
            .host(host("tiny").memory_mb(512))
            .host(host("idle").cpu_usage(0))
            .host(host("busy").cpu_usage(40))
            .vm(vm("v")
                .current_host("src")
                .status(VmStatus::Up)
                .memory_mb(1_024)
                .cpu_usage(10))
            .build(),
    );
    let rt = scripted_runtime();
    // Only a host the memory filter rejects: refused, saying why.
    let plan = scripted_policy(&rt, "migrate:0:1", 5).balance(&c).unwrap();
    assert!(
        plan.refused[0]
            .why
            .contains("no proposed destination passes"),
        "{plan:?}"
    );
    // Three candidates: the memory filter drops tiny, the power-saving weight prefers busy.
    let plan = scripted_policy(&rt, "migrate:0:1,2,3", 5)
        .balance(&c)
        .unwrap();
    match &plan.actions[..] {
        [PlannedAction::Migrate {
            destination,
            source,
            ..
        }] => {
            assert_eq!(destination.as_deref(), Some("busy"));
            assert_eq!(source.as_deref(), Some("src"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn named_builtin_policies_load_and_unknown_names_list_the_known_ones() {
    let rt = runtime();
    for name in Policy::builtin_names() {
        let p = Policy::builtin(&rt, name).unwrap();
        assert_eq!(p.name(), name);
    }
    let balance = |name: &str| {
        Policy::builtin(&rt, name)
            .unwrap()
            .balance_unit()
            .map(|b| b.name().to_string())
    };
    assert_eq!(balance("none"), None);
    assert_eq!(
        balance("evenly_distributed").as_deref(),
        Some("evenly-distributed")
    );
    assert_eq!(balance("power_saving").as_deref(), Some("power-saving"));
    let err = Policy::builtin(&rt, "powersaving").unwrap_err().to_string();
    assert!(
        err.contains("power_saving") && err.contains("none"),
        "{err}"
    );
}

#[test]
fn power_saving_policy_parameters_are_validated_against_the_reference_ranges() {
    let rt = runtime();
    let toml = |params: &str| {
        format!("name = \"p\"\n[balance]\nunit = \"power-saving\"\nparams = {{ {params} }}\n")
    };
    let parse = |params: &str| {
        Policy::parse(&rt, &toml(params), wasmsched::Format::Toml, "p.toml")
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(parse("HighUtilization = 99, HostsInReserve = 2").is_ok());
    let err = parse("HighUtilization = 100").unwrap_err();
    assert!(err.contains("balance.params.HighUtilization"), "{err}");
    let err = parse("EnableAutomaticHostPowerManagement = \"yes\"").unwrap_err();
    assert!(err.contains("expected bool, got \"yes\""), "{err}");
}

#[test]
fn the_wasm_power_saving_unit_moves_a_surplus_empty_host_to_maintenance() {
    let rt = runtime();
    let p = policy(
        &rt,
        r#"
name = "ps"
max_balance_actions = 2
[[filters]]
unit = "memory"
[balance]
unit = "power-saving"
params = { EnableAutomaticHostPowerManagement = true, HostsInReserve = 1 }
"#,
    );
    let c = cluster(
        snapshot()
            .host(managed("spm").spm().empty_minutes(100))
            .host(managed("e1").empty_minutes(30))
            .host(managed("e2").empty_minutes(60))
            .build(),
    );
    let plan = p.balance(&c).unwrap();
    match &plan.actions[..] {
        [PlannedAction::Power {
            host,
            action,
            reason,
        }] => {
            assert_eq!((host.as_str(), *action), ("e2", PowerAction::ToMaintenance));
            assert!(reason.starts_with("rule 4"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The builtin power_saving policy ships with host power management off.
    let plan = Policy::builtin(&rt, "power_saving")
        .unwrap()
        .balance(&c)
        .unwrap();
    assert!(plan.actions.is_empty(), "{plan:?}");
}

#[test]
fn a_vm_that_may_only_run_on_a_powered_down_host_requests_its_wake_up() {
    let pinned = vm("pinned").migration(MigrationMode::PinnedToHost).build();
    let pinned = policy_sdk::Vm {
        dedicated_hosts: vec!["d".into()],
        ..pinned
    };
    let with = |h: HostBuilder| {
        snapshot()
            .host(host("up"))
            .host(h)
            .time_unix(1_000_000)
            .build()
    };
    use policy_sdk::HostStatus::*;
    // (case, the VM's host, expected action)
    let cases = [
        (
            "down",
            managed("d").status(Down),
            Some(PowerAction::PowerUp),
        ),
        (
            "maintenance",
            managed("d").status(Maintenance),
            Some(PowerAction::Activate),
        ),
        ("mid-shutdown", managed("d").status(PoweringDown), None),
    ];
    for (case, h, expected) in cases {
        let s = with(h);
        let wake = WakeUp::needed(&s, &pinned).expect(case);
        assert_eq!(wake.action, expected, "{case}: {wake}");
        if expected.is_none() {
            assert!(wake.reason.contains("shutting down"), "{case}: {wake}");
        }
    }
    // Its host is up: no wake-up, a normal decision.
    assert_eq!(WakeUp::needed(&with(managed("d")), &pinned), None);
    // Through the policy: no decision, the wake-up.
    let rt = runtime();
    let c = cluster(with(managed("d").status(Down)));
    let outcome = Policy::builtin_default(&rt)
        .unwrap()
        .schedule_or_wake(&c, &ScheduleRequest::new(pinned.clone()))
        .unwrap();
    match outcome {
        StartOutcome::WakeUp(w) => {
            assert_eq!(w.host.as_deref(), Some("d"));
            assert!(w.to_string().contains("requesting power_up of d"), "{w}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.pending_record_count(), 0, "nothing reserved");
}

/// Regression (a balance cycle that did nothing printed `0 action(s), 0 refused` and the rule
/// that decided it only reached debug logs): the builtin balance units, in wasm, say why
/// they propose nothing, and the plan carries it (text and JSON).
#[test]
fn regression_a_balance_cycle_that_does_nothing_says_which_rule_decided() {
    let rt = runtime();
    let c = cluster(
        snapshot()
            .host(managed("a").cpu_usage(30))
            .host(managed("b").cpu_usage(40))
            .vm(vm("v").current_host("a").status(VmStatus::Up).build())
            .build(),
    );
    let cases = [
        (
            "evenly_distributed",
            vec!["no migration: no host is over-utilized (CPU >= 80% for 2 min)"],
        ),
        (
            "power_saving",
            vec![
                "no migration: no host is over-utilized",
                "no power action: automatic host power management is disabled",
            ],
        ),
        ("none", vec!["policy \"none\" has no balance unit"]),
    ];
    for (name, expected) in cases {
        let plan = Policy::builtin(&rt, name).unwrap().balance(&c).unwrap();
        assert!(
            plan.actions.is_empty() && plan.refused.is_empty(),
            "{name}: {plan:?}"
        );
        assert_eq!(plan.notes.len(), expected.len(), "{name}: {:?}", plan.notes);
        for (note, want) in plan.notes.iter().zip(expected) {
            assert!(note.starts_with(want), "{name}: {note}");
        }
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["notes"].as_array().unwrap().len(), plan.notes.len());
    }
}
