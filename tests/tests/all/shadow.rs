//! Shadow units from real wasm modules: they run beside the live policy on every decision,
//! the decisions they would have changed are counted with the last few as examples, and a
//! shadow unit that traps is counted as a fault without touching the live decision.

use integration_tests::{max_vms_wasm, policy, runtime_with_misbehave};
use policy_sdk::testing::{host, snapshot, vm};
use policy_sdk::UnitKind;
use wasmsched::shadow::{ShadowEffect, SHADOW_EXAMPLES};
use wasmsched::{Cluster, ErrorKind, Format, Policy, ScheduleRequest};

/// `a` is the least loaded host (the live choice) but runs 5 VMs; `c` has the most memory.
fn cluster() -> Cluster {
    Cluster::new(
        snapshot()
            .host(host("a").cpu_usage(0).running_vms(5).memory_mb(16_384))
            .host(host("b").cpu_usage(95).running_vms(1).memory_mb(32_768))
            .host(host("c").cpu_usage(90).memory_mb(65_536))
            .build(),
        "<test>",
    )
    .unwrap()
}

const LIVE: &str = "[[filters]]\nunit = \"memory\"\n[[weights]]\nunit = \"cpu-load\"\n";

/// The live policy plus: a shadow cap of 3 VMs per host (the example operator module), a
/// shadow free-memory weight x2 (builtin), and a shadow filter and weight that trap
/// (the misbehaving fixture module).
const SHADOWED: &str = "name = \"shadowed\"\n[[filters]]\nunit = \"memory\"\n\
    [[filters]]\nunit = \"max-vms-per-host\"\nshadow = true\nparams = { max_vms = 3 }\n\
    [[filters]]\nunit = \"chaos\"\nshadow = true\ndeadline_ms = 200\nparams = { mode = \"trap\" }\n\
    [[weights]]\nunit = \"cpu-load\"\n\
    [[weights]]\nunit = \"free-memory\"\nfactor = 2\nshadow = true\n\
    [[weights]]\nunit = \"chaos-weight\"\nshadow = true\nparams = { mode = \"trap\" }\n";

#[test]
fn shadow_units_count_the_decisions_they_would_change_and_a_trapping_one_changes_nothing() {
    let rt = runtime_with_misbehave();
    rt.load_file(&max_vms_wasm()).unwrap();
    let shadowed = policy(&rt, SHADOWED);
    let live_only = policy(&rt, &format!("name = \"live\"\n{LIVE}"));
    let (with_shadow, without) = (cluster(), cluster());
    let vms = 7;
    for i in 1..=vms {
        let request = ScheduleRequest::new(vm(&format!("v{i}")).build());
        let d = shadowed.schedule(&with_shadow, &request).unwrap();
        let reference = live_only.schedule(&without, &request).unwrap();
        // The live decision is the one the policy without shadow units makes.
        assert_eq!(d.chosen.as_deref(), Some("a"), "v{i}");
        assert_eq!(d.chosen, reference.chosen, "v{i}");
        let scores = |d: &wasmsched::Decision| d.hosts.iter().map(|h| h.score).collect::<Vec<_>>();
        assert_eq!(scores(&d), scores(&reference), "v{i}");
        assert!(d.unit_failures.is_empty(), "v{i}: {:?}", d.unit_failures);
        assert!(d.reservation.is_some(), "v{i}: the live choice is reserved");
        // What this decision's shadow units would have done.
        let effect = |unit: &str| {
            d.shadow
                .iter()
                .find(|s| &*s.unit == unit)
                .unwrap_or_else(|| panic!("v{i}: no shadow entry for {unit}: {:?}", d.shadow))
        };
        let capped = effect("max-vms-per-host");
        assert!(
            matches!(&capped.effect, ShadowEffect::RejectsChosen { code, .. } if code == "too_many_vms"),
            "{capped:?}"
        );
        assert_eq!(capped.would_choose.as_deref(), Some("c"));
        let memory = effect("free-memory");
        assert_eq!(memory.effect, ShadowEffect::PrefersOther);
        assert_eq!(memory.would_choose.as_deref(), Some("c"));
        assert!(effect("chaos").is_fault());
        assert!(effect("chaos-weight").is_fault());
        assert_eq!(d.shadow.len(), 4, "{:?}", d.shadow);
    }

    let status = shadowed.shadow_status();
    assert_eq!(status.policy, "shadowed");
    let units: Vec<(&str, UnitKind, u64, u64, u64)> = status
        .units
        .iter()
        .map(|u| (&*u.unit, u.kind, u.decisions, u.changed, u.faults))
        .collect();
    assert_eq!(
        units,
        [
            ("max-vms-per-host", UnitKind::Filter, vms, vms, 0),
            ("chaos", UnitKind::Filter, vms, 0, vms),
            ("free-memory", UnitKind::Weight, vms, vms, 0),
            ("chaos-weight", UnitKind::Weight, vms, 0, vms),
        ]
    );
    // The last examples, oldest first, bounded.
    let capped = &status.units[0];
    let example_vms: Vec<&str> = capped.examples.iter().map(|e| e.vm.as_str()).collect();
    let first_kept = vms as usize - SHADOW_EXAMPLES + 1;
    let expected: Vec<String> = (first_kept..=vms as usize)
        .map(|i| format!("v{i}"))
        .collect();
    assert_eq!(example_vms, expected);
    assert!(capped
        .examples
        .iter()
        .all(|e| e.chosen.as_deref() == Some("a") && e.would_choose.as_deref() == Some("c")));
    let fault = status.units[1].last_fault.as_deref().unwrap_or_default();
    assert!(!fault.is_empty(), "the last fault is kept");
    assert_eq!(status.units[2].factor, Some(2));
}

#[test]
fn shadow_weight_of_a_live_unit_replaces_it_and_agreeing_units_list_nothing() {
    let rt = runtime_with_misbehave();
    // cpu-load x2 live; in shadow at x0 it cannot rank anything, so free-memory decides.
    let what_if = policy(
        &rt,
        "name = \"what-if\"\n[[filters]]\nunit = \"memory\"\n\
         [[weights]]\nunit = \"cpu-load\"\nfactor = 2\n\
         [[weights]]\nunit = \"free-memory\"\n\
         [[weights]]\nunit = \"cpu-load\"\nfactor = 0\nshadow = true\n\
         [[filters]]\nunit = \"cpu\"\nshadow = true\n",
    );
    let d = what_if
        .schedule(&cluster(), &ScheduleRequest::new(vm("v").build()))
        .unwrap();
    assert_eq!(d.chosen.as_deref(), Some("a"));
    assert_eq!(d.shadow.len(), 1, "the cpu filter agrees: {:?}", d.shadow);
    assert_eq!(&*d.shadow[0].unit, "cpu-load");
    assert_eq!(d.shadow[0].would_choose.as_deref(), Some("c"));
    let status = what_if.shadow_status();
    assert_eq!(
        status
            .units
            .iter()
            .map(|u| (&*u.unit, u.changed))
            .collect::<Vec<_>>(),
        [("cpu", 0), ("cpu-load", 1)]
    );
}

#[test]
fn shadow_mode_is_refused_for_balance_units_and_for_a_unit_shadowed_twice() {
    let rt = runtime_with_misbehave();
    let cases = [
        (
            "name = \"p\"\n[balance]\nunit = \"evenly-distributed\"\nshadow = true\n",
            "balance.shadow",
        ),
        (
            "name = \"p\"\n[[filters]]\nunit = \"cpu\"\nshadow = true\n[[filters]]\nunit = \"cpu\"\nshadow = true\n",
            "filters[1].unit",
        ),
    ];
    for (text, field) in cases {
        let err = Policy::parse(&rt, text, Format::Toml, "p.toml").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
}
