//! Replaying lifecycle events through the engine: a mass start, VMs coming up or failing,
//! migrations, hosts going down or away, each applied to a [`Cluster`] with a [`Policy`],
//! one after another, reporting the decisions made and the pending resources left after
//! every event.
//!
//! A [`Scenario`] is read from JSON or TOML ([`Scenario::from_file`]):
//!
//! ```json
//! {
//!   "vms": [{ "id": "batch-1", "memory_mb": 8192 }],
//!   "events": [
//!     { "event": "start", "vms": ["web-1", "web-2", "batch-1"] },
//!     { "event": "vm_up", "vm": "web-1" },
//!     { "event": "vm_failed", "vm": "web-2" },
//!     { "event": "host_down", "host": "host-3", "reschedule": false },
//!     { "event": "migrate", "vm": "db-1" },
//!     { "event": "migration_finished", "vm": "db-1" }
//!   ]
//! }
//! ```
//!
//! Balance cycles over time: `{ "event": "balance", "cycles": 12, "minutes": 5 }` runs the
//! policy's balance unit once per cycle, after advancing a simulated clock and sending
//! every host's report (usage recomputed from its VMs), and carries the plan out (see
//! `crate::timeline`); `{ "event": "load", "vms": [...], "cpu_usage_percent": 40 }`
//! changes VMs' CPU usage and `{ "event": "stop", "vms": [...] }` shuts VMs down. A VM that
//! may only run on hosts that are not up is not scheduled by `start`: the engine requests
//! the wake-up of one of them ([`Effect::WakeUp`]) and the simulated manager carries it out.
//!
//! [`validate`] checks the whole scenario against the cluster before anything runs: every
//! VM and host an event names must exist, and every event must make sense after the ones
//! before it, assuming every decision finds a host (starting a running VM, `vm_up` for a
//! VM nothing started, migrating a VM that does not run... are errors naming the event
//! index and field, e.g. `events[3].vm`). What only the decisions can tell (a `vm_up` for a
//! VM that found no host) is not an error: [`run`] reports the event as skipped for that
//! VM ([`Effect::Skipped`]) and goes on.

mod format;
mod report;
mod runner;
mod validate;

pub use format::{Event, Scenario};
use report::list;
#[cfg(test)]
use report::thousands;
pub use report::{describe, samples, Summary};
pub use runner::{run, EventOutcome};
use runner::{AfterFailure, Effect, HostPending};
pub use validate::validate;

use crate::timeline::{self, Clock, CycleReport, Sample};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use wasmsched::plan::{PlannedAction, Reschedule, WakeUp};
use wasmsched::sdk::wire::sync::Change;
use wasmsched::sdk::{HostStatus, PendingAggregate, Snapshot, Vm, VmStatus};
use wasmsched::{
    Cluster, Decision, Detail, Error, PlacementKind, Policy, Result, ScheduleRequest, VmFailed,
};

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::testing::{host, snapshot, vm};
    use policy_sdk::AffinityPolarity;
    use std::sync::OnceLock;
    use wasmsched::decision::Outcome;
    use wasmsched::{Format, Runtime};

    /// The builtin default policy, compiled once for all tests.
    fn policy() -> &'static Policy {
        static POLICY: OnceLock<(Runtime, Policy)> = OnceLock::new();
        let (_, policy) = POLICY.get_or_init(|| {
            let runtime = Runtime::builder().cache_dir(None).build().unwrap();
            let policy = Policy::builtin_default(&runtime).unwrap();
            (runtime, policy)
        });
        policy
    }

    fn scenario(json: &str) -> Scenario {
        wasmsched::parse_document(json, Format::Json, "events.json").unwrap()
    }

    /// Hosts h1..h4; `running` runs on h1; `down-1` is down in the cluster file.
    fn small_cluster() -> Snapshot {
        snapshot()
            .hosts((1..=4).map(|i| host(&format!("h{i}")).memory_mb(16_384)))
            .vm(vm("running").current_host("h1"))
            .vm(vm("down-1"))
            .build()
    }

    /// The field and message of an input error.
    fn input_error(result: Result<()>) -> (String, String) {
        match result {
            Err(Error::Input {
                file,
                field,
                message,
            }) => {
                assert_eq!(file, "events.json");
                (field.unwrap_or_default(), message)
            }
            other => panic!("expected an input error, got {other:?}"),
        }
    }

    #[test]
    fn events_read_from_json_and_toml_with_reschedule_defaulting_to_true() {
        let json = scenario(
            r#"{"events": [{"event": "vm_failed", "vm": "a"},
                           {"event": "host_down", "host": "h1", "reschedule": false}]}"#,
        );
        let toml: Scenario = wasmsched::parse_document(
            "[[events]]\nevent = \"vm_failed\"\nvm = \"a\"\n\n[[events]]\nevent = \
             \"host_down\"\nhost = \"h1\"\nreschedule = false\n",
            Format::Toml,
            "events.toml",
        )
        .unwrap();
        assert_eq!(json, toml);
        assert!(json.vms.is_empty());
        assert_eq!(
            json.events,
            [
                Event::VmFailed {
                    vm: "a".into(),
                    reschedule: true
                },
                Event::HostDown {
                    host: "h1".into(),
                    reschedule: false
                },
            ]
        );
        // Typos are reported, with the event's position.
        let err = wasmsched::parse_document::<Scenario>(
            r#"{"events": [{"event": "vm_up", "vm": "a"}, {"event": "vm_up", "vmm": "a"}]}"#,
            Format::Json,
            "events.json",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("events[1]") && err.contains("vmm"), "{err}");
        let err = wasmsched::parse_document::<Scenario>(
            r#"{"events": [{"event": "power_cycle", "host": "h1"}]}"#,
            Format::Json,
            "events.json",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("power_cycle"), "{err}");
    }

    #[test]
    fn validate_names_the_event_and_field_of_an_unknown_vm() {
        let s = scenario(
            r#"{"events": [{"event": "start", "vms": ["down-1"]},
                           {"event": "vm_up", "vm": "web-9"}]}"#,
        );
        let (field, message) = input_error(validate(&s, &small_cluster(), "events.json"));
        assert_eq!(field, "events[1].vm");
        assert_eq!(message, r#"unknown VM "web-9""#);
    }

    #[test]
    fn validate_names_the_position_of_an_unknown_vm_in_a_start_list() {
        let s = scenario(
            r#"{"vms": [{"id": "new-1"}],
                "events": [{"event": "start", "vms": ["down-1", "new-1", "nope"]}]}"#,
        );
        let (field, message) = input_error(validate(&s, &small_cluster(), "events.json"));
        assert_eq!(field, "events[0].vms[2]");
        assert_eq!(message, r#"unknown VM "nope""#);
    }

    #[test]
    fn validate_names_an_unknown_host() {
        let s = scenario(r#"{"events": [{"event": "host_down", "host": "h9"}]}"#);
        let (field, message) = input_error(validate(&s, &small_cluster(), "events.json"));
        assert_eq!(field, "events[0].host");
        assert_eq!(message, r#"unknown host "h9""#);
    }

    #[test]
    fn validate_rejects_events_that_cannot_follow_the_ones_before() {
        let cases = [
            // (scenario, field, part of the message)
            (
                r#"{"vms": [{"id": "down-1"}], "events": []}"#,
                "vms[0].id",
                "already defined in the cluster",
            ),
            // Regression (an oversized scenario VM was found when its start ran).
            (
                r#"{"vms": [{"id": "big", "cpu": {"sockets": 64, "cores_per_socket": 64, "threads_per_core": 2}}], "events": []}"#,
                "vms[0].cpu",
                "more than 4096 vCPUs",
            ),
            // Regression (a load event for a VM that does not run was accepted).
            (
                r#"{"events": [{"event": "load", "vms": ["down-1"], "cpu_usage_percent": 50}]}"#,
                "events[0].vms[0]",
                "is not running: a load applies to running VMs",
            ),
            (
                r#"{"events": [{"event": "start", "vms": ["down-1"]},
                               {"event": "load", "vms": ["down-1"], "cpu_usage_percent": 50}]}"#,
                "events[1].vms[0]",
                "is being started; send vm_up",
            ),
            (
                r#"{"vms": [{"id": "x"}, {"id": "x"}], "events": []}"#,
                "vms[1].id",
                "duplicate VM id",
            ),
            (
                r#"{"events": [{"event": "start", "vms": ["down-1", "down-1"]}]}"#,
                "events[0].vms[1]",
                "listed twice",
            ),
            (
                r#"{"events": [{"event": "start", "vms": ["running"]}]}"#,
                "events[0].vms[0]",
                r#"already running on "h1""#,
            ),
            (
                r#"{"events": [{"event": "vm_up", "vm": "down-1"}]}"#,
                "events[0].vm",
                "not being started or migrated",
            ),
            (
                r#"{"events": [{"event": "start", "vms": ["down-1"]},
                               {"event": "vm_failed", "vm": "down-1", "reschedule": false},
                               {"event": "vm_up", "vm": "down-1"}]}"#,
                "events[2].vm",
                "not being started or migrated",
            ),
            (
                r#"{"events": [{"event": "migrate", "vm": "down-1"}]}"#,
                "events[0].vm",
                "nothing to migrate",
            ),
            (
                r#"{"events": [{"event": "start", "vms": ["down-1"]},
                               {"event": "migrate", "vm": "down-1"}]}"#,
                "events[1].vm",
                "send vm_up first",
            ),
            (
                r#"{"events": [{"event": "migration_finished", "vm": "running"}]}"#,
                "events[0].vm",
                "not being migrated",
            ),
            (
                r#"{"events": [{"event": "remove_host", "host": "h2"},
                               {"event": "host_up", "host": "h2"}]}"#,
                "events[1].host",
                "removed by events[0]",
            ),
            (
                r#"{"events": [{"event": "start", "vms": []}]}"#,
                "events[0].vms",
                "at least one VM",
            ),
        ];
        for (json, want_field, want_message) in cases {
            let (field, message) =
                input_error(validate(&scenario(json), &small_cluster(), "events.json"));
            assert_eq!(field, want_field, "{json}");
            assert!(message.contains(want_message), "{json}: {message}");
        }
        // And the sequences they break are fine the right way round.
        let ok = scenario(
            r#"{"events": [{"event": "start", "vms": ["down-1"]},
                           {"event": "vm_up", "vm": "down-1"},
                           {"event": "migrate", "vm": "down-1"},
                           {"event": "migration_failed", "vm": "down-1"},
                           {"event": "migrate", "vm": "running"},
                           {"event": "migration_finished", "vm": "running"},
                           {"event": "remove_host", "host": "h1"},
                           {"event": "start", "vms": ["running"]}]}"#,
        );
        validate(&ok, &small_cluster(), "events.json").unwrap();
    }

    fn chosen(outcome: &EventOutcome, vm: &str) -> Option<String> {
        outcome
            .decisions
            .iter()
            .find(|d| d.vm == vm)
            .unwrap_or_else(|| panic!("no decision for {vm} in {outcome}"))
            .chosen
            .clone()
    }

    #[test]
    fn run_starts_fails_and_reschedules_away_from_failed_and_down_hosts() {
        // a, b, c must run apart; four hosts, so one stays free of them.
        let cluster = Cluster::new(
            snapshot()
                .hosts((1..=4).map(|i| host(&format!("h{i}")).memory_mb(16_384)))
                .affinity_group("apart", AffinityPolarity::Negative, true, &["a", "b", "c"])
                .build(),
            "<test>",
        )
        .unwrap();
        let s = scenario(
            r#"{"vms": [{"id": "a", "memory_mb": 2048}, {"id": "b", "memory_mb": 2048},
                        {"id": "c", "memory_mb": 2048}],
                "events": [{"event": "start", "vms": ["a", "b", "c"]},
                           {"event": "vm_up", "vm": "a"},
                           {"event": "vm_failed", "vm": "b"}]}"#,
        );
        let outcomes = run(policy(), &cluster, &s, Detail::Full).unwrap();
        let [start, up, failed] = &outcomes[..] else {
            panic!("three outcomes")
        };

        // The mass start spreads the group: each decision saw the earlier ones pending.
        let hosts: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|vm| chosen(start, vm).expect("placed"))
            .collect();
        let distinct: BTreeSet<&String> = hosts.iter().collect();
        assert_eq!(distinct.len(), 3, "{start}");
        assert_eq!(start.pending.len(), 3);
        assert_eq!(start.pending_changed.len(), 3);
        let (host_a, host_b, host_c) = (&hosts[0], &hosts[1], &hosts[2]);
        let free = (1..=4)
            .map(|i| format!("h{i}"))
            .find(|h| !hosts.contains(h))
            .unwrap();

        // a comes up: its records go, the others stay.
        assert_eq!(
            up.effects,
            [Effect::Started {
                vm: "a".into(),
                host: host_a.clone(),
                migrated_from: None,
                released: up.released,
            }]
        );
        assert!(up.released > 0);
        assert_eq!(up.pending_changed, [host_a.as_str()]);
        assert!(up.pending.iter().all(|p| !p.pending.has_vm("a")));

        // b fails: its host is blacklisted, a and c are where the others are: the free host.
        let Effect::Failed { vm, host, next, .. } = &failed.effects[0] else {
            panic!("{failed}")
        };
        assert_eq!((vm.as_str(), host.as_ref()), ("b", Some(host_b)));
        assert_eq!(
            next,
            &AfterFailure::Rescheduled {
                without: vec![host_b.clone()]
            }
        );
        assert_eq!(chosen(failed, "b"), Some(free.clone()));
        let decision = &failed.decisions[0];
        let on_failed = decision.hosts.iter().find(|h| h.host == *host_b).unwrap();
        assert_eq!(
            on_failed.outcome,
            Outcome::NotCandidate {
                reason: "blacklisted".into()
            }
        );

        // c's host goes down: c fails there and is rescheduled on the only host left
        // without a member (b's first host, free again).
        let down = scenario(&format!(
            r#"{{"events": [{{"event": "host_down", "host": "{host_c}"}}]}}"#
        ));
        let outcomes = run(policy(), &cluster, &down, Detail::Full).unwrap();
        let down = &outcomes[0];
        assert_eq!(
            down.effects[0],
            Effect::HostStatus {
                host: host_c.clone(),
                status: HostStatus::Down
            }
        );
        assert!(
            matches!(&down.effects[1], Effect::Failed { vm, host: Some(h), next: AfterFailure::Rescheduled { .. }, .. }
                if vm == "c" && h == host_c),
            "{down}"
        );
        assert_eq!(chosen(down, "c"), Some(host_b.clone()));
        assert!(down.pending.iter().all(|p| p.host != *host_c), "{down}");
        assert!(down.pending_changed.contains(host_c));

        let text = down.to_string();
        assert!(
            text.starts_with(&format!("#0 host_down {host_c}\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("  c -> {host_b} (1/4 hosts available)")),
            "{text}"
        );
        let summary = Summary::of(&outcomes, &cluster);
        assert_eq!(
            (summary.decisions, summary.placed, summary.failed),
            (1, 1, 1)
        );
        let c_host = summary.hosts.iter().find(|h| h.host == *host_b).unwrap();
        assert_eq!(c_host.pending_vms, ["c"]);
        let down_host = summary.hosts.iter().find(|h| h.host == *host_c).unwrap();
        assert_eq!(down_host.status, HostStatus::Down);
    }

    #[test]
    fn a_vm_with_no_host_is_reported_and_later_events_about_it_are_skipped() {
        let cluster = Cluster::new(
            snapshot().host(host("h1").memory_mb(4_096)).build(),
            "<test>",
        )
        .unwrap();
        let s = scenario(
            r#"{"vms": [{"id": "small", "memory_mb": 1024}, {"id": "big", "memory_mb": 8192}],
                "events": [{"event": "start", "vms": ["small", "big"]},
                           {"event": "vm_up", "vm": "big"},
                           {"event": "vm_up", "vm": "small"}]}"#,
        );
        let outcomes = run(policy(), &cluster, &s, Detail::Full).unwrap();
        assert_eq!(chosen(&outcomes[0], "small"), Some("h1".into()));
        assert_eq!(chosen(&outcomes[0], "big"), None);
        let text = outcomes[0].to_string();
        assert!(
            text.contains("  small -> h1 (1/1 hosts available)\n"),
            "{text}"
        );
        assert!(
            text.contains("  big: no host: 0/1 hosts available: 1 memory: "),
            "{text}"
        );
        assert!(
            text.contains("  pending: h1: 1 VM, 1 vCPU, 1,088 MiB overcommit, load 3%\n"),
            "{text}"
        );
        assert_eq!(
            outcomes[1].effects,
            [Effect::Skipped {
                vm: "big".into(),
                reason: "not placed: no host was found for it".into()
            }]
        );
        assert_eq!(
            outcomes[2].to_string().lines().last(),
            Some("  pending: h1: nothing")
        );
        let summary = Summary::of(&outcomes, &cluster);
        assert_eq!(summary.not_placed, ["big"]);
        assert_eq!((summary.placed, summary.started), (1, 1));
        assert_eq!(summary.hosts[0].started_vms, ["small"]);
        assert!(
            summary.to_string().contains("1 not placed (big)"),
            "{summary}"
        );
    }

    #[test]
    fn removing_a_host_reschedules_the_vms_placed_there() {
        let cluster = Cluster::new(
            snapshot()
                .host(host("h1").memory_mb(16_384))
                .host(host("h2").memory_mb(8_192))
                .vm(vm("old").current_host("h1"))
                .build(),
            "<test>",
        )
        .unwrap();
        let s = scenario(
            r#"{"vms": [{"id": "new"}],
                "events": [{"event": "start", "vms": ["new"]},
                           {"event": "remove_host", "host": "h1"}]}"#,
        );
        let outcomes = run(policy(), &cluster, &s, Detail::Full).unwrap();
        // The host with more free memory first, then the other one.
        assert_eq!(chosen(&outcomes[0], "new"), Some("h1".into()));
        let removed = &outcomes[1];
        assert_eq!(
            removed.effects,
            [Effect::HostRemoved {
                host: "h1".into(),
                released: removed.released,
                displaced: vec!["new".into()],
                stopped: vec!["old".into()],
            }]
        );
        assert_eq!(chosen(removed, "new"), Some("h2".into()));
        assert_eq!(removed.pending_changed, ["h1", "h2"]);
    }

    /// A VM that no request would accept is named before anything runs; an error that only
    /// a decision finds (a fail-closed unit fault, a reservation the cluster refuses) is
    /// reported naming the event and the position in it.
    #[test]
    fn bad_vms_are_named_up_front_and_run_errors_name_the_event_and_position() {
        let runtime = Runtime::builder().cache_dir(None).build().unwrap();
        let policy = Policy::parse(
            &runtime,
            "name = \"p\"\n[[filters]]\nunit = \"memory\"\n",
            Format::Toml,
            "p.toml",
        )
        .unwrap();
        let cluster = Cluster::new(snapshot().host(host("h1")).build(), "<test>").unwrap();
        // A VM the request checks refuse (no CPU): the error names event and position.
        let mut bad = vm("bad").build();
        bad.cpu.sockets = 0;
        let s = Scenario {
            vms: vec![vm("ok").build(), bad],
            events: vec![Event::Start {
                vms: vec!["ok".into(), "bad".into()],
            }],
        };
        let err = run(&policy, &cluster, &s, Detail::Full)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("<scenario>: vms[1].cpu: sockets, cores_per_socket"),
            "{err}"
        );
        let event = &s.events[0];
        let failed = cluster
            .set_host_status("gone", HostStatus::Down)
            .unwrap_err();
        let err = runner::at("events[0].vms[1]".into(), event, Some("bad"), failed);
        assert_eq!(
            err.to_string(),
            "events[0].vms[1] (start bad): unknown host \"gone\""
        );
    }

    #[test]
    fn thousands_groups_digits() {
        for (n, want) in [
            (0, "0"),
            (999, "999"),
            (4_224, "4,224"),
            (1_234_567, "1,234,567"),
        ] {
            assert_eq!(thousands(n), want);
        }
    }

    fn example(path: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/power-day")
            .join(path)
    }

    #[test]
    fn simulated_day_shuts_hosts_down_at_night_and_wakes_them_in_the_morning() {
        let rt = Runtime::builder().cache_dir(None).build().unwrap();
        let p = Policy::from_file(&rt, &example("policy.toml")).unwrap();
        let c = Cluster::from_file(&example("cluster.json")).unwrap();
        let scenario = Scenario::from_file(&example("scenario.json")).unwrap();
        let outcomes = run(&p, &c, &scenario, Detail::Full).unwrap();
        let summary = Summary::of(&outcomes, &c);
        // No VM was ever left without a host.
        assert!(summary.not_placed.is_empty(), "{summary:?}");
        for o in &outcomes {
            for cycle in &o.cycles {
                assert!(cycle.failed_migrations.is_empty(), "{cycle:?}");
            }
        }
        let snapshot = c.snapshot();
        assert_eq!(snapshot.vms.iter().filter(|v| v.is_running()).count(), 18);
        // Phases: event 0 is the first day, event 3 the night, the last event the morning.
        let phase = |i: usize| -> Vec<crate::timeline::Sample> {
            outcomes[i].cycles.iter().map(|c| c.sample).collect()
        };
        let (day, night, morning) = (phase(0), phase(3), phase(outcomes.len() - 1));
        let powered = |s: &crate::timeline::Sample| s.up + s.transitioning;
        let day_min = day.iter().map(powered).min().unwrap();
        let night_end = night.last().unwrap();
        assert!(
            powered(night_end) < day_min,
            "night {night_end:?}, day min {day_min}"
        );
        assert!(night_end.down >= 3, "{night_end:?}");
        // The reserve held at night: one free host besides the one running the VMs.
        assert!(night_end.free >= 1, "{night_end:?}");
        // Woken in the morning: more hosts up at the end than at night.
        let morning_end = morning.last().unwrap();
        assert!(morning_end.up > night_end.up, "{morning_end:?}");
        // The SPM host was never touched.
        assert_eq!(snapshot.hosts[0].status, HostStatus::Up);
        // The plot draws every cycle.
        let svg = crate::timeline::svg(&samples(&outcomes), "day");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("<polyline").count(),
            1,
            "one load line over all cycles"
        );
    }

    /// Regression (`simulate` kept every host's outcome of every decision: 200k hosts and
    /// 50 VMs took 4.8 GB for 7 MB of text): a run keeps what it reports. With summary
    /// decisions (the text report) a decision keeps the chosen host and a few runners-up,
    /// whatever the cluster's size; the same decisions are made.
    #[test]
    fn regression_simulate_keeps_what_it_reports_not_every_host_of_every_decision() {
        let snapshot = snapshot()
            .hosts((0..300).map(|i| host(&format!("h{i:03}")).memory_mb(65_536)))
            .build();
        let s = scenario(
            r#"{"vms": [{"id": "a"}, {"id": "b"}, {"id": "c"}],
                "events": [{"event": "start", "vms": ["a", "b", "c"]}]}"#,
        );
        let run_with = |detail: Detail| {
            let cluster = Cluster::new(snapshot.clone(), "<test>").unwrap();
            run(policy(), &cluster, &s, detail).unwrap()
        };
        let full = run_with(Detail::Full);
        let summary = run_with(Detail::Summary);
        for (f, s) in full[0].decisions.iter().zip(&summary[0].decisions) {
            assert_eq!(f.hosts.len(), 300);
            assert!(s.hosts.len() <= Detail::SUMMARY_HOSTS, "{}", s.hosts.len());
            assert_eq!((&f.chosen, &f.summary), (&s.chosen, &s.summary));
        }
        assert_eq!(
            full[0].to_string(),
            summary[0].to_string(),
            "the same text report"
        );
    }
}
