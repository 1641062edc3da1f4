//! The stores on both backends, the embedded SQLite file and a real PostgreSQL: what is
//! acknowledged is what a reopened store loads, in order, with a VM's later write
//! replacing its earlier one; the service over each: after concurrent changes, what a
//! restart (or a takeover) restores is what memory held. And PostgreSQL's leases: one
//! holder at a time, and a replica that lost its lease cannot write.
//!
//! The PostgreSQL tests need a server: `scripts/with-postgres cargo test --workspace`
//! (see `wasmsched_testkit::postgres`); without one they are reported as ignored.

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use wasmsched_server::lease::{Acquired, Leases, Replica};
use wasmsched_server::metrics::Metrics;
use wasmsched_server::postgres::{PostgresOptions, PostgresStore};
use wasmsched_server::replica::Route;
use wasmsched_server::service::{HostUsage, VmEvent};
use wasmsched_server::sqlite::SqliteStore;
use wasmsched_server::store::{
    LeaseToken, PolicySpec, Store, StoreError, StoredCluster, StoredPlacement, Write,
};
use wasmsched_server::Service;

/// Where a test keeps its state.
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

/// The lease of the tests' PostgreSQL replicas: short, so takeovers are quick.
const TEST_LEASE: Duration = Duration::from_millis(600);

async fn postgres_store(url: &str, replica: &str) -> Arc<PostgresStore> {
    let options = PostgresOptions {
        url: url.to_string(),
        replica: Replica {
            id: replica.into(),
            url: format!("http://{replica}.invalid"),
        },
        lease: TEST_LEASE,
    };
    Arc::new(
        PostgresStore::open(options, Arc::new(Metrics::default()))
            .await
            .unwrap(),
    )
}

impl Backend {
    fn sqlite() -> Self {
        Backend::Sqlite(tempfile::tempdir().unwrap())
    }

    fn postgres(test: &str) -> Self {
        Backend::Postgres(wasmsched_testkit::postgres::fresh_database(test))
    }

    /// The store as replica `replica` opens it (one replica per process on SQLite).
    async fn open(&self, replica: &str) -> (Arc<dyn Store>, Option<Arc<PostgresStore>>) {
        match self {
            Backend::Sqlite(dir) => {
                let store = SqliteStore::open(dir.path(), Arc::new(Metrics::default()))
                    .await
                    .unwrap();
                (Arc::new(store), None)
            }
            Backend::Postgres(url) => {
                let store = postgres_store(url, replica).await;
                (store.clone(), Some(store))
            }
        }
    }

    /// The token to write `cluster` under: a lease taken now on PostgreSQL.
    async fn lease(pg: &Option<Arc<PostgresStore>>, cluster: &str) -> Option<LeaseToken> {
        let pg = pg.as_ref()?;
        match pg.acquire(cluster).await.unwrap() {
            Acquired::Granted(token) => Some(token),
            held => panic!("{cluster}: {held:?}"),
        }
    }

    /// What the store holds of `cluster`.
    async fn stored(
        store: &Arc<dyn Store>,
        pg: &Option<Arc<PostgresStore>>,
        cluster: &str,
    ) -> Option<StoredCluster> {
        match pg {
            Some(pg) => pg.load_cluster(cluster).await.unwrap(),
            None => store
                .load()
                .await
                .unwrap()
                .into_iter()
                .find(|c| c.id == cluster),
        }
    }

    /// The service over this backend as replica `replica` (native builtin units). On
    /// PostgreSQL it is made to serve cluster `c` (taking the lease once it is free).
    async fn service(&self, replica: &str) -> Arc<Service> {
        let runtime = wasmsched_testkit::native::runtime();
        let metrics = Arc::new(Metrics::default());
        let (store, pg) = self.open(replica).await;
        let Some(pg) = pg else {
            return Service::start(runtime, store, metrics).await.unwrap();
        };
        let service = Service::start_replica(runtime, store, pg, metrics)
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match service.route("c", true, true).await {
                Route::Local => return service,
                other => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "never took c: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

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

async fn store_reloads_acknowledged_writes_with_later_writes_winning(backend: Backend) {
    let (store, pg) = backend.open("a").await;
    assert!(Backend::stored(&store, &pg, "c").await.is_none());
    let token = Backend::lease(&pg, "c").await;
    store
        .submit(
            token,
            vec![Write::PutCluster {
                cluster: "c".into(),
                snapshot: r#"{"hosts":[]}"#.into(),
                policy: PolicySpec::Builtin("none".into()),
            }],
        )
        .await
        .unwrap();
    // Concurrent submissions (group commit) each resolve once durable.
    let waits: Vec<_> = (0..50)
        .map(|i| store.submit(token, vec![reserve("c", &format!("v{i}"), "h1")]))
        .collect();
    for wait in waits {
        wait.await.unwrap();
    }
    store
        .submit(token, vec![reserve("c", "v3", "h2")])
        .await
        .unwrap();
    store
        .submit(
            token,
            vec![Write::Release {
                cluster: "c".into(),
                vm: "v7".into(),
            }],
        )
        .await
        .unwrap();
    store.close().await;
    assert!(
        matches!(store.submit(token, vec![]).await, Err(StoreError::Closed)),
        "closed stores refuse writes"
    );

    let (reopened, pg) = backend.open("b").await;
    let c = Backend::stored(&reopened, &pg, "c").await.expect("stored");
    assert_eq!(c.policy, PolicySpec::Builtin("none".into()));
    assert_eq!(c.placements.len(), 49, "50 reserved, one released");
    assert!(c.placements.iter().all(|p| p.vm != "v7"));
    let v3: Vec<&StoredPlacement> = c.placements.iter().filter(|p| p.vm == "v3").collect();
    assert_eq!(v3.len(), 1, "no duplicates");
    assert_eq!(v3[0].host, "h2", "the later placement wins");
    assert_eq!(c.placements.last().unwrap().vm, "v3", "in write order");
    reopened.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_store_reloads_acknowledged_writes_with_later_writes_winning() {
    store_reloads_acknowledged_writes_with_later_writes_winning(Backend::sqlite()).await;
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "needs PostgreSQL: scripts/with-postgres cargo test --workspace"
)]
#[tokio::test(flavor = "multi_thread")]
async fn postgres_store_reloads_acknowledged_writes_with_later_writes_winning() {
    store_reloads_acknowledged_writes_with_later_writes_winning(Backend::postgres("reloads")).await;
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

async fn concurrent_changes_to_one_host_and_one_vm_are_restored_as_memory_last_held_them(
    backend: Backend,
) {
    let service = backend.service("a").await;
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

    // Opened next to the live one, as after a kill -9: nothing closed or flushed. (On
    // PostgreSQL another replica takes the cluster over once the first stops renewing.)
    if matches!(backend, Backend::Postgres(_)) {
        drop(service);
    }
    let restarted = backend.service("b").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_changes_to_one_host_and_one_vm_are_restored_as_memory_last_held_them() {
    concurrent_changes_to_one_host_and_one_vm_are_restored_as_memory_last_held_them(
        Backend::sqlite(),
    )
    .await;
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "needs PostgreSQL: scripts/with-postgres cargo test --workspace"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_changes_to_one_host_and_one_vm_are_taken_over_as_memory_last_held_them(
) {
    concurrent_changes_to_one_host_and_one_vm_are_restored_as_memory_last_held_them(
        Backend::postgres("concurrent"),
    )
    .await;
}

fn fenced(result: Result<(), StoreError>) -> (i64, i64) {
    match result {
        Err(StoreError::Fenced { token, current, .. }) => (token, current),
        other => panic!("expected a fenced write, got {other:?}"),
    }
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "needs PostgreSQL: scripts/with-postgres cargo test --workspace"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_lease_has_one_holder_and_a_replica_that_lost_it_cannot_write() {
    let url = wasmsched_testkit::postgres::fresh_database("fencing");
    let a = postgres_store(&url, "a").await;
    let b = postgres_store(&url, "b").await;
    a.heartbeat().await.unwrap();
    let Acquired::Granted(ta) = a.acquire("c").await.unwrap() else {
        panic!("a new cluster's lease is free")
    };
    a.submit(
        Some(ta),
        vec![
            Write::PutCluster {
                cluster: "c".into(),
                snapshot: r#"{"hosts":[]}"#.into(),
                policy: PolicySpec::default(),
            },
            reserve("c", "v1", "h1"),
        ],
    )
    .await
    .unwrap();

    // While A's lease runs, B cannot take it and is told who holds it, and where.
    match b.acquire("c").await.unwrap() {
        Acquired::Held { holder, remaining } => {
            assert_eq!(holder.id, "a");
            assert_eq!(holder.url, "http://a.invalid");
            assert!(remaining <= TEST_LEASE, "{remaining:?}");
        }
        granted => panic!("B took a held lease: {granted:?}"),
    }
    assert_eq!(b.view("c").await.unwrap().held.unwrap().0.id, "a");
    assert_eq!(a.renew(vec![("c".into(), ta)]).await.unwrap(), ["c"]);
    assert!(b.orphans().await.unwrap().is_empty());

    // A writes on while it is paused past its lease and B takes over: every write A was
    // told is durable is in what B rebuilds from, and none lands after the takeover.
    let writer = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let give_up = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < give_up {
                let vm = format!("late-{}", acknowledged.len());
                match a.submit(Some(ta), vec![reserve("c", &vm, "h2")]).await {
                    Ok(()) => acknowledged.push(vm),
                    Err(e) => return (acknowledged, Some(e)),
                }
            }
            (acknowledged, None)
        })
    };
    tokio::time::sleep(TEST_LEASE + Duration::from_millis(200)).await;
    let orphans = b.orphans().await.unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert!(orphans[0].expired_for > Duration::ZERO, "{orphans:?}");
    let Acquired::Granted(tb) = b.acquire("c").await.unwrap() else {
        panic!("an expired lease is free")
    };
    assert!(tb > ta, "a takeover raises the token: {ta:?} -> {tb:?}");
    let rebuilt = b.load_cluster("c").await.unwrap().unwrap();
    let (acknowledged, refusal) = writer.await.unwrap();
    assert!(!acknowledged.is_empty(), "A wrote before the takeover");
    assert!(
        matches!(refusal, Some(StoreError::Fenced { .. })),
        "A's writes after the takeover are fenced: {refusal:?}"
    );
    let stored: Vec<&str> = rebuilt.placements.iter().map(|p| p.vm.as_str()).collect();
    for vm in &acknowledged {
        assert!(
            stored.contains(&vm.as_str()),
            "{vm} acknowledged, then lost"
        );
    }
    assert_eq!(
        stored.len(),
        acknowledged.len() + 1,
        "v1 and A's acknowledged writes"
    );

    // A wakes: its writes are refused whole, and its renewal finds nothing to renew.
    let late = a
        .submit(
            Some(ta),
            vec![
                reserve("c", "v2", "h2"),
                Write::Release {
                    cluster: "c".into(),
                    vm: "v1".into(),
                },
            ],
        )
        .await;
    assert_eq!(fenced(late), (ta.0, tb.0));
    assert!(a.renew(vec![("c".into(), ta)]).await.unwrap().is_empty());
    // Without a token, nothing is written; a submission covers one cluster.
    assert_eq!(
        fenced(a.submit(None, vec![reserve("c", "v3", "h1")]).await),
        (0, 0)
    );
    let mixed = b
        .submit(
            Some(tb),
            vec![reserve("c", "v4", "h1"), reserve("d", "v4", "h1")],
        )
        .await;
    assert!(
        matches!(&mixed, Err(StoreError::Database(m)) if m.contains("one submission wrote clusters")),
        "{mixed:?}"
    );
    b.submit(Some(tb), vec![reserve("c", "v5", "h1")])
        .await
        .unwrap();
    let after = b.load_cluster("c").await.unwrap().unwrap();
    let vms: Vec<&str> = after.placements.iter().map(|p| p.vm.as_str()).collect();
    assert!(vms.contains(&"v1") && vms.contains(&"v5"), "{vms:?}");
    assert!(
        !vms.iter().any(|v| ["v2", "v3", "v4"].contains(v)),
        "{vms:?}"
    );

    // Given up, the lease is free at once; the next holder's token is higher again.
    b.release(vec![("c".into(), tb)]).await.unwrap();
    let Acquired::Granted(tc) = a.acquire("c").await.unwrap() else {
        panic!("a released lease is free")
    };
    assert!(tc > tb);
}
