//! The SQLite store: what is acknowledged is what a reopened store loads, in order, with a
//! VM's later write replacing its earlier one; and the service over it: after concurrent
//! changes, what a restart restores is what memory held.

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmsched_server::metrics::Metrics;
use wasmsched_server::service::{HostUsage, VmEvent};
use wasmsched_server::sqlite::SqliteStore;
use wasmsched_server::store::{PolicySpec, Store, StoredPlacement, Write};
use wasmsched_server::Service;

fn reserve(cluster: &str, vm: &str, host: &str) -> Write {
    Write::Reserve {
        cluster: cluster.into(),
        placement: StoredPlacement {
            vm: vm.into(),
            host: host.into(),
            vm_doc: format!(r#"{{"id":"{vm}"}}"#),
            kind: r#"{"kind":"start"}"#.into(),
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_store_reloads_acknowledged_writes_with_later_writes_winning() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let store = SqliteStore::open(dir.path(), metrics.clone())
        .await
        .unwrap();
    assert!(store.load().await.unwrap().is_empty());
    store
        .submit(vec![Write::PutCluster {
            cluster: "c".into(),
            snapshot: r#"{"hosts":[]}"#.into(),
            policy: PolicySpec::Builtin("none".into()),
        }])
        .await
        .unwrap();
    // Concurrent submissions (group commit) each resolve once durable.
    let waits: Vec<_> = (0..50)
        .map(|i| store.submit(vec![reserve("c", &format!("v{i}"), "h1")]))
        .collect();
    for wait in waits {
        wait.await.unwrap();
    }
    store.submit(vec![reserve("c", "v3", "h2")]).await.unwrap();
    store
        .submit(vec![Write::Release {
            cluster: "c".into(),
            vm: "v7".into(),
        }])
        .await
        .unwrap();
    store.close().await;
    assert!(
        store.submit(vec![]).await.is_err(),
        "closed stores refuse writes"
    );

    let reopened = SqliteStore::open(dir.path(), metrics).await.unwrap();
    let clusters = reopened.load().await.unwrap();
    assert_eq!(clusters.len(), 1);
    let c = &clusters[0];
    assert_eq!(c.policy, PolicySpec::Builtin("none".into()));
    assert_eq!(c.placements.len(), 49, "50 reserved, one released");
    assert!(c.placements.iter().all(|p| p.vm != "v7"));
    let v3: Vec<&StoredPlacement> = c.placements.iter().filter(|p| p.vm == "v3").collect();
    assert_eq!(v3.len(), 1, "no duplicates");
    assert_eq!(v3[0].host, "h2", "the later placement wins");
    assert_eq!(c.placements.last().unwrap().vm, "v3", "in write order");
    reopened.close().await;
}

/// Three hosts with room for 4 VMs of 1 GiB each; `db` (4 GiB) runs on `h1` with room
/// to grow.
fn snapshot() -> wasmsched::sdk::Snapshot {
    let host = |id: &str| {
        serde_json::json!({
            "id": id, "status": "up",
            "cpu": {"sockets": 2, "cores_per_socket": 16, "threads_per_core": 2},
            "memory": {"physical_mb": 16_384, "free_mb": 12_000, "committed_mb": 4_160,
                       "max_scheduling_mb": 16_384, "swap_free_mb": 0}
        })
    };
    serde_json::from_value(serde_json::json!({
        "cluster": {"id": "c", "memory_overcommit_percent": 100},
        "hosts": [host("h0"), host("h1"), host("h2")],
        "vms": [{"id": "db", "memory_mb": 4_096, "status": "up", "current_host": "h1",
                 "cpu": {"sockets": 1, "cores_per_socket": 2, "threads_per_core": 1}}]
    }))
    .unwrap()
}

fn small_vm(id: &str) -> wasmsched::ScheduleRequest {
    wasmsched::ScheduleRequest::new(
        serde_json::from_value(serde_json::json!({
            "id": id, "memory_mb": 1_024,
            "cpu": {"sockets": 1, "cores_per_socket": 1, "threads_per_core": 1}
        }))
        .unwrap(),
    )
}

/// Hosts and VMs (by id) of a snapshot, and every VM's placement: what a restart must
/// give back.
fn state_of(service: &Service, vms: &[&str]) -> (Vec<Value>, BTreeMap<String, Value>, Vec<Value>) {
    let snapshot = service.cluster("c").unwrap().snapshot;
    let hosts = snapshot
        .hosts
        .iter()
        .map(|h| serde_json::to_value(h).unwrap())
        .collect();
    let vm_docs = snapshot
        .vms
        .iter()
        .map(|v| (v.id.clone(), serde_json::to_value(v).unwrap()))
        .collect();
    let placements = vms
        .iter()
        .map(|vm| service.pending("c", vm, false).unwrap())
        .collect();
    (hosts, vm_docs, placements)
}

/// The service over a SQLite store in `dir` (native builtin units).
async fn open_service(dir: &std::path::Path) -> Arc<Service> {
    let metrics = Arc::new(Metrics::default());
    let store = SqliteStore::open(dir, metrics.clone()).await.unwrap();
    Service::start(
        wasmsched_testkit::native::runtime(),
        Arc::new(store),
        metrics,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_to_one_host_and_one_vm_are_restored_as_memory_last_held_them() {
    let dir = tempfile::tempdir().unwrap();
    let service = open_service(dir.path()).await;
    service
        .put_cluster("c".into(), snapshot(), None)
        .await
        .unwrap();
    let plan = service
        .hot_set_memory("c", "db".into(), 6_144)
        .await
        .unwrap();
    assert_eq!(plan["change"]["kind"], "plug", "{plan}");

    // Rounds of racing requests about the same host (usage figures) and the same VMs
    // (scheduled, started, released), each acknowledged only once durable.
    for round in 0..8u32 {
        let mut tasks = tokio::task::JoinSet::new();
        for j in 0..4u32 {
            let reporter = service.clone();
            tasks.spawn(async move {
                let usage = HostUsage {
                    host: "h0".into(),
                    cpu_percent: Some(round * 10 + j),
                    free_memory_mb: Some(u64::from(12_000 - round * 100 - j)),
                    ..HostUsage::default()
                };
                reporter.usage("c", vec![usage]).await.map(|_| ())
            });
            let service = service.clone();
            tasks.spawn(async move {
                let vm = if j % 2 == 0 { "even" } else { "odd" };
                service.schedule("c", small_vm(vm)).await?;
                let event = if round % 2 == 0 {
                    VmEvent::Release
                } else {
                    VmEvent::Started
                };
                // A report racing another about the same VM may find it gone already.
                match service.vm_event("c", vm.into(), event).await {
                    Err(e) if [404, 409].contains(&e.status.as_u16()) => Ok(()),
                    other => other.map(|_| ()),
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
    }
    service.schedule("c", small_vm("last")).await.unwrap();
    let vms = ["even", "odd", "last", "db"];
    let before = state_of(&service, &vms);
    let in_flight = service.pending("c", "db", false).unwrap();

    // Opened next to the live one, as after a kill -9: nothing closed or flushed.
    let restarted = open_service(dir.path()).await;
    let after = state_of(&restarted, &vms);
    assert_eq!(
        before.0, after.0,
        "hosts (usage figures, pending aggregates)"
    );
    assert_eq!(before.1, after.1, "VM documents (started VMs)");
    assert_eq!(before.2, after.2, "placements");
    assert_eq!(
        in_flight,
        restarted.pending("c", "db", false).unwrap(),
        "the memory plug is pending again"
    );
    // And it can be confirmed after the restart.
    let done = restarted
        .memory_change("c", "db".into(), true)
        .await
        .unwrap();
    assert_eq!(done["memory_mb"], 6_144, "{done}");
}
