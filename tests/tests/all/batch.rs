//! One crossing per module per decision (`wasmsched_batch`): the default policy's twelve
//! units cross into the builtin scheduling module once, decide exactly as one unit at a time
//! does, weights that ride with an earlier module's batch are cut down to the hosts later
//! modules leave, and a batch that faults is run again unit by unit.

use integration_tests::{device_filter_wasm, policy, runtime, runtime_with_misbehave};
use policy_sdk::testing::{host, snapshot, vm};
use std::collections::HashMap;
use wasmsched::decision::Outcome;
use wasmsched::status::ModuleStats;
use wasmsched::{Cluster, Decision, Detail, FailureMode, Policy, Runtime, ScheduleRequest};
use wasmsched_testkit::native;
use wasmsched_testkit::synth::{self, VmKind};

/// Each module's counters, by module name.
fn stats(runtime: &Runtime) -> HashMap<String, ModuleStats> {
    runtime
        .modules()
        .iter()
        .map(|m| (m.manifest().module.clone(), m.stats()))
        .collect()
}

fn full(policy: &Policy, cluster: &Cluster, kind: VmKind) -> Decision {
    let request = ScheduleRequest::new(kind.vm("probe")).detail(Detail::Full);
    policy.evaluate(&cluster.view(), &request).unwrap()
}

#[test]
fn a_default_policy_decision_crosses_into_the_scheduling_module_once() {
    let runtime = native::wasm_runtime();
    let policy = Policy::builtin_default(&runtime).unwrap();
    let (cluster, _) = synth::realistic_cluster(200).unwrap();
    for kind in VmKind::ALL {
        full(&policy, &cluster, kind);
        let before = stats(&runtime);
        let decision = full(&policy, &cluster, kind);
        assert!(decision.available > 1, "{kind:?}: the weights run");
        let after = stats(&runtime);
        let (a, b) = (&after["scheduling"], &before["scheduling"]);
        assert_eq!(a.batches - b.batches, 1, "{kind:?}: crossed once");
        assert_eq!(a.unit_calls, b.unit_calls, "{kind:?}: no unit call");
        assert_eq!(a.delta_syncs + a.full_syncs, b.delta_syncs + b.full_syncs);
        assert_eq!(
            after["balance"], before["balance"],
            "balance is not in the policy"
        );
    }
}

/// The default policy's filters and weights, each alone in a policy: one plain unit call
/// per decision, the reference a batched decision must match.
fn one_unit_policies(runtime: &Runtime, default: &Policy) -> (Vec<Policy>, Vec<Policy>) {
    let filters = default
        .filters()
        .iter()
        .map(|u| {
            policy(
                runtime,
                &format!("name = \"f\"\n[[filters]]\nunit = \"{}\"\n", u.name()),
            )
        })
        .collect();
    let weights = default
        .weights()
        .iter()
        .map(|u| {
            policy(
                runtime,
                &format!("name = \"w\"\n[[weights]]\nunit = \"{}\"\n", u.name()),
            )
        })
        .collect();
    (filters, weights)
}

#[test]
fn batched_decisions_equal_one_unit_at_a_time_for_every_vm_kind() {
    let runtime = native::wasm_runtime();
    let default = Policy::builtin_default(&runtime).unwrap();
    let (filters, weights) = one_unit_policies(&runtime, &default);
    let (cluster, _) = synth::realistic_cluster(300).unwrap();
    let mut rejected_after_the_first_filters = 0;
    for kind in VmKind::ALL {
        let batched = full(&default, &cluster, kind);
        // Per filter, in policy order: the hosts it rejects on its own, with the code.
        let rejects: Vec<(String, HashMap<String, String>)> = filters
            .iter()
            .map(|p| {
                let d = full(p, &cluster, kind);
                let codes = d
                    .hosts
                    .into_iter()
                    .filter_map(|h| match h.outcome {
                        Outcome::Rejected { code, .. } => Some((h.host, code)),
                        _ => None,
                    })
                    .collect();
                (d.filters[0].to_string(), codes)
            })
            .collect();
        // Per weight: every host's raw penalty, computed alone over all hosts.
        let raws: Vec<(String, HashMap<String, i64>)> = weights
            .iter()
            .map(|p| {
                let d = full(p, &cluster, kind);
                let unit = d.hosts[0].weights[0].unit.to_string();
                let raw = d
                    .hosts
                    .iter()
                    .map(|h| (h.host.clone(), h.weights[0].raw))
                    .collect();
                (unit, raw)
            })
            .collect();
        for h in &batched.hosts {
            // The first filter in policy order that rejects the host on its own.
            let expected = rejects
                .iter()
                .find_map(|(unit, codes)| codes.get(&h.host).map(|c| (unit.as_str(), c.as_str())));
            match (&h.outcome, expected) {
                (Outcome::Rejected { unit, code, .. }, Some((u, c))) => {
                    assert_eq!((&**unit, code.as_str()), (u, c), "{kind:?} {}", h.host);
                    if !["memory", "cpu"].contains(&u) {
                        rejected_after_the_first_filters += 1;
                    }
                }
                (Outcome::Chosen | Outcome::Available, None) => {
                    assert_eq!(h.weights.len(), raws.len(), "{kind:?} {}", h.host);
                    for (score, (unit, raw)) in h.weights.iter().zip(&raws) {
                        assert_eq!(&*score.unit, unit.as_str());
                        assert_eq!(score.raw, raw[&h.host], "{kind:?} {} {unit}", h.host);
                    }
                }
                (outcome, expected) => {
                    panic!("{kind:?} {}: {outcome:?}, expected {expected:?}", h.host)
                }
            }
        }
    }
    // Filters after the first two turn hosts away: the batch narrowed the candidates
    // between filters as one unit at a time does.
    assert!(rejected_after_the_first_filters > 0);
}

/// A module's weights ride with the last batch of its filters. When another module's
/// filter runs after that batch and turns hosts away, the weights' penalties (computed over
/// the candidates of that batch) are cut down to the hosts left, each keeping its own.
#[test]
fn weights_that_ride_with_an_earlier_batch_are_cut_to_the_final_survivors() {
    let rt = runtime();
    rt.load_file(&device_filter_wasm()).unwrap();
    let p = policy(
        &rt,
        "name = \"cut\"\n[[filters]]\nunit = \"memory\"\n\
         [[filters]]\nunit = \"devices\"\n[filters.params]\nkind = \"gpu\"\n\
         [[weights]]\nunit = \"cpu-load\"\n[[weights]]\nunit = \"free-memory\"\n",
    );
    let weights_alone = policy(
        &rt,
        "name = \"w\"\n[[weights]]\nunit = \"cpu-load\"\n[[weights]]\nunit = \"free-memory\"\n",
    );
    let cluster = Cluster::new(
        snapshot()
            .host(host("a").custom_free("gpu", 1).cpu_usage(30))
            .host(host("b").cpu_usage(0))
            .host(host("c").custom_free("gpu", 1).cpu_usage(10))
            .host(host("d").custom_free("gpu", 1).cpu_usage(20))
            .build(),
        "<test>",
    )
    .unwrap();
    let request = ScheduleRequest::new(vm("v").needs("gpu", 1).build()).detail(Detail::Full);
    let before = stats(&rt);
    let d = p.evaluate(&cluster.view(), &request).unwrap();
    let after = stats(&rt);
    assert_eq!(
        after["scheduling"].batches - before["scheduling"].batches,
        1,
        "memory and both weights cross once, before the devices filter"
    );
    // Each weight alone over every host (nothing turned away): the raw penalties.
    let alone = weights_alone.evaluate(&cluster.view(), &request).unwrap();
    let raw = |host: &str, unit: &str| {
        let h = alone.hosts.iter().find(|h| h.host == host).unwrap();
        h.weights.iter().find(|w| &*w.unit == unit).unwrap().raw
    };
    assert_eq!(d.available, 3);
    assert_eq!(d.chosen.as_deref(), Some("c"), "{d}");
    for h in &d.hosts {
        match (&h.outcome, h.host.as_str()) {
            (Outcome::Rejected { unit, .. }, "b") => assert_eq!(&**unit, "devices"),
            (Outcome::Chosen | Outcome::Available, "a" | "c" | "d") => {
                let units: Vec<&str> = h.weights.iter().map(|w| &*w.unit).collect();
                assert_eq!(units, ["cpu-load", "free-memory"], "{}", h.host);
                for w in &h.weights {
                    assert_eq!(w.raw, raw(&h.host, &w.unit), "{} {}", h.host, w.unit);
                }
            }
            (outcome, host) => panic!("{host}: {outcome:?}"),
        }
    }
}

#[test]
fn a_batch_that_traps_is_run_again_unit_by_unit_blaming_only_the_unit_at_fault() {
    let runtime = runtime_with_misbehave();
    let p = policy(
        &runtime,
        "name = \"mixed\"\n\
         [[filters]]\nunit = \"chaos\"\nfailure = \"open\"\n[filters.params]\nmode = \"trap\"\n\
         [[weights]]\nunit = \"chaos-weight\"\n\
         [[weights]]\nunit = \"cpu-load\"\n",
    );
    let cluster = Cluster::new(
        snapshot()
            .host(host("a"))
            .host(host("b").cpu_usage(50))
            .build(),
        "<test>",
    )
    .unwrap();
    let misbehave = |rt: &Runtime| stats(rt)["misbehave"];
    let before = misbehave(&runtime);
    let d = p
        .evaluate(
            &cluster.view(),
            &ScheduleRequest::new(vm("v").build()).detail(Detail::Full),
        )
        .unwrap();
    let after = misbehave(&runtime);
    assert_eq!(d.chosen.as_deref(), Some("a"));
    assert_eq!(d.unit_failures.len(), 1, "{:?}", d.unit_failures);
    assert_eq!(d.unit_failures[0].unit, "chaos");
    assert_eq!(d.unit_failures[0].applied, FailureMode::Open);
    assert!(d.unit_failures[0]
        .error
        .contains("chaos unit asked to trap"));
    // The weight of the same module still scores every host.
    for h in &d.hosts {
        let units: Vec<&str> = h.weights.iter().map(|w| &*w.unit).collect();
        assert_eq!(units, ["chaos-weight", "cpu-load"], "{}", h.host);
    }
    assert_eq!(after.batches - before.batches, 1, "one batch tried");
    assert_eq!(
        after.unit_calls - before.unit_calls,
        2,
        "then each unit alone"
    );
    assert_eq!(
        after.instances_discarded - before.instances_discarded,
        2,
        "the batch's and the trapping call's instances"
    );
}
