//! Replicas on a real PostgreSQL: two `wasmsched serve --store postgres://...` processes,
//! driven over HTTP. Needs a server: `scripts/with-postgres cargo test --workspace`
//! (without one these tests are reported as ignored).

use super::{cluster, exchange, http, vm, Server};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The lease the replicas run with here: short, so takeovers are quick, yet long enough
/// that renewals on a loaded machine keep it (a lapse moves the cluster, which the tests
/// tolerate by asking who holds it).
const LEASE_MS: u64 = 2_000;

/// The VMs' memory: large against the per-VM overhead the memory filter adds, so that a
/// host made for `fit` VMs (half a VM of slack) takes exactly `fit`.
const VM_MB: u64 = 4_096;

/// Starts replica `id` on the database `url`. Requests may take minutes (a loaded
/// machine deciding a big batch): the tests wait for answers, not for a timeout.
fn replica(url: &str, id: &str, data: &std::path::Path) -> Server {
    Server::start(
        data,
        &[
            "--store",
            url,
            "--replica-id",
            id,
            "--lease-ms",
            &LEASE_MS.to_string(),
            "--timeout-ms",
            "600000",
        ],
    )
}

/// One request; `None` when the replica could not be reached at all.
fn try_call(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Option<(u16, String, Value)> {
    let stream = TcpStream::connect(addr).ok()?;
    let body = body.map(Value::to_string);
    let (status, head, text) = exchange(
        stream,
        addr,
        method,
        path,
        body.as_deref().map(str::as_bytes),
        None,
    )?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Some((status, head, value))
}

/// The replica a response says served it (`x-wasmsched-replica`).
fn served_by(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix("x-wasmsched-replica: "))
        .map(|v| v.trim().to_string())
}

/// Schedules `vm` through the replicas in turn (starting at `first`) until one answers
/// 200; returns the chosen host, when the answered attempt was sent, and when it was
/// answered.
fn schedule_until_answered(
    addrs: &[String],
    first: usize,
    cluster: &str,
    vm_id: &str,
    deadline: Instant,
) -> (Option<String>, Instant, Instant) {
    let body = json!({"vm": vm(vm_id, VM_MB)});
    let path = format!("/v1/clusters/{cluster}/schedule");
    for attempt in 0.. {
        let addr = &addrs[(first + attempt) % addrs.len()];
        let sent = Instant::now();
        match try_call(addr, "POST", &path, Some(&body)) {
            Some((200, _, answer)) => {
                return (
                    answer["host"].as_str().map(str::to_string),
                    sent,
                    Instant::now(),
                );
            }
            // Down (refused), forwarded to a holder that died (503), timed out (408):
            // the answer is unknown or negative, so ask again (scheduling a placed VM
            // again places it anew, never twice).
            Some((503 | 502 | 408, _, _)) | None => {}
            Some((status, _, answer)) => panic!("{vm_id}: {status} {answer}"),
        }
        assert!(Instant::now() < deadline, "{vm_id}: never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    unreachable!()
}

/// Every VM's placement and every host's distinct VMs, as `server` sees them.
fn placements(
    server: &Server,
    cluster: &str,
    vms: &[String],
    hosts: usize,
) -> (
    BTreeMap<String, Option<String>>,
    BTreeMap<String, BTreeSet<String>>,
) {
    let placed = vms
        .iter()
        .map(|v| {
            let p = server.ok(
                "GET",
                &format!("/v1/clusters/{cluster}/pending/vms/{v}"),
                None,
            );
            (
                v.clone(),
                p["placement"]["host"].as_str().map(str::to_string),
            )
        })
        .collect();
    let by_host = (0..hosts)
        .map(|h| {
            let p = server.ok(
                "GET",
                &format!("/v1/clusters/{cluster}/pending/hosts/h{h}"),
                None,
            );
            let vms = p["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["vm"].as_str().unwrap().to_string())
                .collect();
            (format!("h{h}"), vms)
        })
        .collect();
    (placed, by_host)
}

fn signal(server: &Server, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal}");
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "needs PostgreSQL: scripts/with-postgres cargo test --workspace"
)]
#[test]
fn replicas_mass_start_through_both_survives_kill_9_of_the_holder_placing_every_vm_once() {
    let url = wasmsched_testkit::postgres::fresh_database("failover");
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A is alone when the cluster is created, so A holds it.
    let a = replica(&url, "a", data_a.path());
    const HOSTS: usize = 32;
    const FIT: usize = 10;
    a.ok(
        "PUT",
        "/v1/clusters/mass",
        Some(&cluster(HOSTS, FIT as u64, VM_MB)),
    );
    let b = replica(&url, "b", data_b.path());
    // Whichever replica is asked, the answer comes from the holder (A, unless a renewal
    // lapsed on a loaded machine and B took the cluster over).
    let holder = |server: &Server| {
        let (status, head, _) = try_call(&server.addr, "GET", "/v1/clusters/mass", None).unwrap();
        assert_eq!(status, 200);
        served_by(&head).expect("named")
    };
    assert_eq!(holder(&a), holder(&b), "one holder, whoever is asked");
    let (a, b) = if holder(&b) == "a" { (a, b) } else { (b, a) };

    // 4 clients x 100 VMs (400 asked, 320 fit), each request to the replicas in turn; `a`
    // is the holder, killed midway, `b` the survivor.
    let addrs = vec![a.addr.clone(), b.addr.clone()];
    let answered = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(120);
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (addrs, answered) = (addrs.clone(), answered.clone());
            std::thread::spawn(move || {
                (0..100)
                    .map(|i| {
                        let id = format!("c{c}-{i}");
                        let (host, sent, at) =
                            schedule_until_answered(&addrs, c + i, "mass", &id, deadline);
                        answered.fetch_add(1, Ordering::SeqCst);
                        (id, host, sent, at)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    while answered.load(Ordering::SeqCst) < 120 {
        assert!(Instant::now() < deadline, "the mass start stalled");
        std::thread::sleep(Duration::from_millis(2));
    }
    let answered_before_kill = answered.load(Ordering::SeqCst);
    a.kill(); // SIGKILL (and reaped): no lease given up, no write flushed
    let killed_at = Instant::now();
    let answers: Vec<(String, Option<String>, Instant, Instant)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(answered_before_kill < 400, "killed midway");
    // The first answer to a decision asked for after the kill (by B: A is gone).
    let first_after = answers
        .iter()
        .filter(|(_, _, sent, _)| *sent > killed_at)
        .map(|(_, _, _, answered)| *answered)
        .min()
        .expect("answers after the kill");
    let takeover = first_after - killed_at;
    eprintln!(
        "takeover after kill -9: the first decision asked after the kill answered {} ms \
         after it (lease {LEASE_MS} ms)",
        takeover.as_millis()
    );
    assert!(
        takeover < Duration::from_millis(LEASE_MS * 10),
        "takeover took {takeover:?}"
    );

    // Every VM as last answered, once; no host beyond its room; the room all used.
    let vms: Vec<String> = answers.iter().map(|(v, _, _, _)| v.clone()).collect();
    let (placed, by_host) = placements(&b, "mass", &vms, HOSTS);
    for (vm, host, _, _) in &answers {
        assert_eq!(
            &placed[vm], host,
            "{vm}: answered {host:?}, held {:?}",
            placed[vm]
        );
    }
    let mut seen = BTreeSet::new();
    for (host, vms) in &by_host {
        assert!(vms.len() <= FIT, "{host} over-committed: {} VMs", vms.len());
        for vm in vms {
            assert!(seen.insert(vm.clone()), "{vm} placed twice");
        }
    }
    let placed_count = placed.values().filter(|h| h.is_some()).count();
    assert_eq!(seen.len(), placed_count, "records and placements agree");
    assert_eq!(
        placed_count,
        HOSTS * FIT,
        "400 asked, exactly the room placed"
    );
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "needs PostgreSQL: scripts/with-postgres cargo test --workspace"
)]
#[test]
fn replicas_holder_paused_past_its_lease_cannot_write_when_it_wakes() {
    let url = wasmsched_testkit::postgres::fresh_database("paused");
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(&url, "a", data_a.path());
    a.ok("PUT", "/v1/clusters/p", Some(&cluster(100, 100, VM_MB)));
    let b = replica(&url, "b", data_b.path());
    // `a` is the holder from here on (A, unless a renewal lapsed on a loaded machine).
    let (status, head, _) = try_call(&b.addr, "GET", "/v1/clusters/p", None).unwrap();
    assert_eq!(status, 200);
    let held_by_b = served_by(&head).as_deref() == Some("b");
    let (a, b) = if held_by_b { (b, a) } else { (a, b) };
    let new_holder = if held_by_b { "a" } else { "b" };

    // A big batch to A: A decides it in one go and commits it at the end. A is stopped
    // while deciding, past its lease.
    const BATCH: usize = 6_000;
    let requests: Vec<Value> = (0..BATCH)
        .map(|i| json!({"vm": vm(&format!("batch-{i}"), VM_MB)}))
        .collect();
    let batch = json!({ "requests": requests });
    let batch_to_a = {
        let addr = a.addr.clone();
        std::thread::spawn(move || {
            try_call(&addr, "POST", "/v1/clusters/p/schedule/batch", Some(&batch))
                .expect("A answers once it wakes")
        })
    };
    let decided = |server: &Server| -> u64 {
        http(&server.addr, "GET", "/metrics", None, None)
            .1
            .lines()
            .find_map(|l| l.strip_prefix("wasmsched_decisions_total{outcome=\"placed\"} "))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    while seen == 0 {
        assert!(Instant::now() < deadline, "A never started the batch");
        std::thread::sleep(Duration::from_millis(2));
        seen = decided(&a);
    }
    signal(&a, "-STOP");
    assert!(
        (seen as usize) < BATCH,
        "A finished the batch before it was paused ({seen} decided)"
    );
    std::thread::sleep(Duration::from_millis(LEASE_MS * 2));

    // B takes the cluster over (A's lease expired) and places VMs of its own.
    let addrs = vec![b.addr.clone()];
    let after: Vec<String> = (0..10).map(|i| format!("after-{i}")).collect();
    for id in &after {
        let (host, _, _) = schedule_until_answered(&addrs, 0, "p", id, deadline);
        assert!(host.is_some(), "{id} placed by B");
    }

    // A wakes with the batch decided on a state that is no longer the cluster's: the
    // database refuses its write, so the batch is answered 503 and nothing of it stays.
    signal(&a, "-CONT");
    let (status, _, answer) = batch_to_a.join().unwrap();
    assert_eq!(status, 503, "{answer}");
    let message = answer["error"].as_str().unwrap_or_default();
    assert!(message.contains("lease lost"), "{message}");
    let metrics = http(&a.addr, "GET", "/metrics", None, None).1;
    let fenced: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wasmsched_store_fenced_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        fenced >= 1,
        "A's write was refused by the database:\n{metrics}"
    );

    let state = b.ok("GET", "/v1/clusters/p", None);
    assert_eq!(
        state["pending_vms"],
        after.len(),
        "only B's placements are held"
    );
    let sample: Vec<String> = (0..BATCH)
        .step_by(250)
        .map(|i| format!("batch-{i}"))
        .chain(after.iter().cloned())
        .collect();
    let (placed, _) = placements(&b, "p", &sample, 0);
    for (vm, host) in &placed {
        assert_eq!(host.is_some(), vm.starts_with("after-"), "{vm}: {host:?}");
    }
    // A serves on, forwarding to the new holder.
    let (status, head, answer) = try_call(
        &a.addr,
        "POST",
        "/v1/clusters/p/schedule",
        Some(&json!({"vm": vm("late", VM_MB)})),
    )
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(served_by(&head).as_deref(), Some(new_holder));
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "needs PostgreSQL: scripts/with-postgres cargo test --workspace"
)]
#[test]
fn replicas_spread_clusters_serve_them_through_either_and_hand_them_over_on_shutdown() {
    let url = wasmsched_testkit::postgres::fresh_database("spread");
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(&url, "a", data_a.path());
    let b = replica(&url, "b", data_b.path());
    // Both are live (each saw the other's heartbeat) before the clusters are created.
    std::thread::sleep(Duration::from_millis(LEASE_MS));
    let names: Vec<String> = (0..8).map(|i| format!("spread-{i}")).collect();
    for name in &names {
        let (status, _, answer) = try_call(
            &b.addr,
            "PUT",
            &format!("/v1/clusters/{name}"),
            Some(&cluster(4, 4, VM_MB)),
        )
        .unwrap();
        assert_eq!(status, 200, "{name}: {answer}");
    }
    // Each cluster is served by one replica, whichever is asked; both hold some.
    let mut holders = BTreeMap::new();
    for name in &names {
        let path = format!("/v1/clusters/{name}");
        let via_a = served_by(&try_call(&a.addr, "GET", &path, None).unwrap().1);
        let via_b = served_by(&try_call(&b.addr, "GET", &path, None).unwrap().1);
        assert_eq!(via_a, via_b, "{name}: one holder");
        holders.insert(name.clone(), via_a.expect("named"));
    }
    let on_a: Vec<&String> = holders
        .iter()
        .filter(|(_, h)| *h == "a")
        .map(|(n, _)| n)
        .collect();
    assert!(
        !on_a.is_empty() && on_a.len() < names.len(),
        "spread over both: {holders:?}"
    );

    // A shuts down gracefully: it gives its leases up, so B serves A's clusters at once,
    // well before A's leases would have expired.
    let stopped = Instant::now();
    assert!(a.terminate(), "a clean shutdown");
    for name in on_a {
        let (status, head, answer) = try_call(
            &b.addr,
            "POST",
            &format!("/v1/clusters/{name}/schedule"),
            Some(&json!({"vm": vm("after-handover", VM_MB)})),
        )
        .unwrap();
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(served_by(&head).as_deref(), Some("b"));
    }
    assert!(
        stopped.elapsed() < Duration::from_millis(LEASE_MS * 3),
        "handed over without waiting for the leases: {:?}",
        stopped.elapsed()
    );
}
