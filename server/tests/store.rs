//! The SQLite store: what is acknowledged is what a reopened store loads, in order, with a
//! VM's later write replacing its earlier one.

use std::sync::Arc;
use wasmsched_server::metrics::Metrics;
use wasmsched_server::sqlite::SqliteStore;
use wasmsched_server::store::{PolicySpec, Store, StoredPlacement, Write};

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
