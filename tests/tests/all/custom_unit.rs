//! The example operator unit, built to wasm from `examples/max-vms-per-host`, loaded from a
//! directory and used by a policy.

use integration_tests::{max_vms_wasm, policy, runtime};
use policy_sdk::testing::{host, snapshot, vm};
use wasmsched::decision::Outcome;
use wasmsched::{Cluster, PlacementKind, ScheduleRequest};

#[test]
fn custom_unit_from_a_directory_filters_on_running_and_pending_vms() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(max_vms_wasm(), dir.path().join("max_vms_per_host.wasm")).unwrap();
    let rt = runtime();
    let report = rt.load_dir(dir.path()).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let p = policy(
        &rt,
        "name = \"capped\"\n[[filters]]\nunit = \"memory\"\n[[filters]]\nunit = \"max-vms-per-host\"\n[filters.params]\nmax_vms = 3\n[[weights]]\nunit = \"cpu-load\"\n",
    );
    let c = Cluster::new(
        snapshot()
            .host(host("full").running_vms(3))
            .host(host("almost").running_vms(2).cpu_usage(50))
            .host(host("pending").running_vms(1))
            .build(),
        "<t>",
    )
    .unwrap();
    for starting in ["s1", "s2"] {
        c.reserve(&vm(starting).build(), "pending", PlacementKind::Start)
            .unwrap();
    }
    let d = p
        .schedule(&c, &ScheduleRequest::new(vm("v").build()))
        .unwrap();
    assert_eq!(d.chosen.as_deref(), Some("almost"));
    for i in [0, 2] {
        assert!(
            matches!(&d.hosts[i].outcome, Outcome::Rejected { unit, code, .. } if &**unit == "max-vms-per-host" && code == "too_many_vms"),
            "{:?}",
            d.hosts[i]
        );
    }
    assert_eq!(
        d.summary,
        "1/3 hosts available, chose almost; not available: 2 max-vms-per-host: too many vms"
    );
}
