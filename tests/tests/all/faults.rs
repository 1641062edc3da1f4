//! Units that trap, loop, grow memory or return garbage: the decision names the unit and
//! applies its failure mode, the engine keeps serving, and the bad instance is replaced.

use integration_tests::{policy, runtime_with_misbehave};
use policy_sdk::testing::{host, snapshot, vm};
use policy_sdk::MigrationMode;
use wasmsched::{Cluster, Error, FailureMode, Policy, Runtime, ScheduleRequest, UnitFault};

fn cluster() -> Cluster {
    Cluster::new(
        snapshot()
            .host(host("a"))
            .host(host("b").cpu_usage(50))
            .vm(vm("running").current_host("a"))
            .build(),
        "<test>",
    )
    .unwrap()
}

fn chaos_policy(rt: &Runtime, mode: &str, extra: &str) -> Policy {
    policy(
        rt,
        &format!(
            "name = \"chaos\"\n[[filters]]\nunit = \"chaos\"\ndeadline_ms = 200\nmemory_limit_mb = 64\n{extra}\n[filters.params]\nmode = \"{mode}\"\n[[weights]]\nunit = \"cpu-load\"\n"
        ),
    )
}

fn fault_of(result: wasmsched::Result<wasmsched::Decision>) -> (String, UnitFault) {
    match result {
        Err(Error::Unit { unit, fault, .. }) => (unit, fault),
        other => panic!("expected a unit fault, got {other:?}"),
    }
}

#[test]
fn filter_faults_fail_the_request_naming_the_unit_and_the_engine_keeps_serving() {
    let rt = runtime_with_misbehave();
    let c = cluster();
    let request = ScheduleRequest::new(vm("v").build());
    let healthy = chaos_policy(&rt, "pass", "");
    let module = rt
        .modules()
        .into_iter()
        .find(|m| m.manifest().module == "misbehave")
        .unwrap();
    type Check = fn(&UnitFault) -> bool;
    let cases: &[(&str, Check)] = &[
        (
            "trap",
            |f| matches!(f, UnitFault::Trap(m) if m.contains("chaos unit asked to trap")),
        ),
        ("loop", |f| matches!(f, UnitFault::Deadline { ms: 200 })),
        ("grow", |f| matches!(f, UnitFault::MemoryCap { mb: 64 })),
        (
            "wrong_length",
            |f| matches!(f, UnitFault::BadOutput(m) if m.contains("3 verdicts for 2 candidate hosts")),
        ),
        (
            "bad_pointer",
            |f| matches!(f, UnitFault::BadOutput(m) if m.contains("outside guest memory")),
        ),
        (
            "garbage",
            |f| matches!(f, UnitFault::BadOutput(m) if m.contains("does not decode")),
        ),
    ];
    for (mode, expected) in cases {
        let discarded_before = module.stats().instances_discarded;
        let bad = chaos_policy(&rt, mode, "");
        let (unit, fault) = fault_of(bad.schedule(&c, &request));
        assert_eq!(unit, "chaos", "{mode}");
        assert!(expected(&fault), "{mode}: unexpected fault {fault}");
        assert!(
            fault.to_string().len() < 2_000,
            "{mode}: fault message stays readable"
        );
        assert_eq!(
            module.stats().instances_discarded,
            discarded_before + 1,
            "{mode}: instance replaced"
        );
        // The same module keeps serving with a fresh instance.
        let d = healthy.schedule(&c, &request).unwrap();
        assert_eq!(
            d.chosen.as_deref(),
            Some("a"),
            "{mode}: engine still serves"
        );
    }
}

#[test]
fn a_fail_open_filter_is_skipped_and_reported() {
    let rt = runtime_with_misbehave();
    let p = chaos_policy(&rt, "trap", "failure = \"open\"");
    let d = p
        .schedule(&cluster(), &ScheduleRequest::new(vm("v").build()))
        .unwrap();
    assert_eq!(d.chosen.as_deref(), Some("a"));
    assert_eq!(d.unit_failures.len(), 1);
    assert_eq!(d.unit_failures[0].unit, "chaos");
    assert_eq!(d.unit_failures[0].applied, FailureMode::Open);
    assert!(d.unit_failures[0].error.contains("trap"));
}

#[test]
fn a_trapping_weight_fails_open_by_default_and_drops_out_of_the_sum() {
    let rt = runtime_with_misbehave();
    let p = policy(
        &rt,
        "name = \"w\"\n[[weights]]\nunit = \"chaos-weight\"\nfactor = 50\n[weights.params]\nmode = \"trap\"\n[[weights]]\nunit = \"cpu-load\"\n",
    );
    let d = p
        .schedule(&cluster(), &ScheduleRequest::new(vm("v").build()))
        .unwrap();
    assert_eq!(d.chosen.as_deref(), Some("a"));
    assert_eq!(d.unit_failures.len(), 1);
    assert_eq!(d.unit_failures[0].unit, "chaos-weight");
    assert!(d.hosts[0].weights.iter().all(|w| &*w.unit == "cpu-load"));
}

#[test]
fn balance_actions_naming_unknown_hosts_or_vms_are_errors_naming_the_unit() {
    let rt = runtime_with_misbehave();
    let c = cluster();
    for (mode, needle) in [
        ("unknown_host", "unknown host index 9999"),
        ("unknown_vm", "unknown VM index 9999"),
    ] {
        let p = policy(&rt, &format!("name = \"b\"\n[balance]\nunit = \"chaos-balance\"\n[balance.params]\nmode = \"{mode}\"\n"));
        match p.balance(&c) {
            Err(Error::Unit {
                unit,
                fault: UnitFault::BadOutput(m),
                ..
            }) => {
                assert_eq!(unit, "chaos-balance");
                assert!(m.contains(needle), "{mode}: {m}");
            }
            other => panic!("{mode}: expected a bad-output fault, got {other:?}"),
        }
    }
    // In range, the action is no fault: it reaches the engine's checks, which refuse it
    // because its only candidate is the VM's own host.
    let ok = policy(&rt, "name = \"b\"\n[balance]\nunit = \"chaos-balance\"\n");
    let plan = ok.balance(&c).unwrap();
    assert!(plan.actions.is_empty(), "{plan:?}");
    assert_eq!(plan.refused.len(), 1, "{plan:?}");
    assert!(
        plan.refused[0]
            .why
            .contains("no proposed destination passes"),
        "{plan:?}"
    );
}

#[test]
fn balance_never_migrates_a_vm_whose_mode_forbids_it() {
    let rt = runtime_with_misbehave();
    let c = Cluster::new(
        snapshot()
            .host(host("a"))
            .vm(vm("pinned")
                .current_host("a")
                .migration(MigrationMode::ManualOnly))
            .build(),
        "<test>",
    )
    .unwrap();
    let p = policy(&rt, "name = \"b\"\n[balance]\nunit = \"chaos-balance\"\n");
    let plan = p.balance(&c).unwrap();
    assert!(plan.actions.is_empty());
    assert_eq!(plan.refused.len(), 1);
    assert!(plan.refused[0].why.contains("manual_only"));
}
