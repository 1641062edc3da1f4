//! End-to-end tests of `wasmsched serve`: the real binary on a free loopback port, driven
//! over HTTP with a minimal HTTP/1.1 client (std only), its state in a temporary `--data`.
//!
//! They live in the cli package because only there does Cargo build the `wasmsched`
//! binary for tests (`CARGO_BIN_EXE_wasmsched`); the server crate's own tests cover what
//! needs no process (the OpenAPI document, token comparison).

mod common;
#[path = "serve/replicas.rs"]
mod replicas;

use common::example_unit;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A running `wasmsched serve`; killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// Starts the server on `127.0.0.1:0` with `--data data` and `extra` arguments, and
    /// waits for the line that names its port.
    fn start(data: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wasmsched"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .arg("--no-cache")
            .current_dir(repo())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("wasmsched serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("wasmsched serving on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server { child, addr }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let (status, text) = http(&self.addr, method, path, body.as_deref(), None);
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, value) = self.call(method, path, body);
        assert_eq!(status, 200, "{method} {path}: {value}");
        value
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit; returns whether it exited cleanly.
    fn terminate(mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        status.success()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request (`Connection: close`); returns the status and the body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, String) {
    http_raw(addr, method, path, body.map(str::as_bytes), token)
}

fn http_raw(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
) -> (u16, String) {
    let stream = TcpStream::connect(addr).expect("connect");
    let (status, _, body) = exchange(stream, addr, method, path, body, token)
        .unwrap_or_else(|| panic!("{method} {path}: no answer (connection closed)"));
    (status, body)
}

/// One request on `stream`; returns the status, the response head (lower case) and the
/// body, or `None` when the connection closed without an answer.
fn exchange(
    mut stream: TcpStream,
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
) -> Option<(u16, String, String)> {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let body = body.unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    // The server may answer (413) before reading all of a large body.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Some((status, head.to_ascii_lowercase(), body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&tail[..size]);
        rest = &tail[size + 2..];
    }
    out
}

/// `count` identical hosts, each with room (by memory) for exactly `fit` VMs of `vm_mb`.
fn cluster(count: usize, fit: u64, vm_mb: u64) -> Value {
    let hosts: Vec<Value> = (0..count)
        .map(|i| {
            json!({
                "id": format!("h{i}"),
                "name": format!("host-{i}"),
                "status": "up",
                "cpu": {"sockets": 2, "cores_per_socket": 16, "threads_per_core": 2},
                "memory": {
                    "physical_mb": fit * vm_mb + vm_mb / 2,
                    "free_mb": fit * vm_mb + vm_mb / 2,
                    "committed_mb": 0,
                    "max_scheduling_mb": fit * vm_mb + vm_mb / 2,
                    "swap_free_mb": 0
                }
            })
        })
        .collect();
    json!({"cluster": {"id": "c", "memory_overcommit_percent": 100}, "hosts": hosts})
}

fn vm(id: &str, mb: u64) -> Value {
    json!({"id": id, "memory_mb": mb, "cpu": {"sockets": 1, "cores_per_socket": 1, "threads_per_core": 1}})
}

/// Chosen host of each decision (host id per VM).
fn pending_hosts(server: &Server, cluster: &str, vms: &[String]) -> Vec<Option<String>> {
    vms.iter()
        .map(|v| {
            let p = server.ok(
                "GET",
                &format!("/v1/clusters/{cluster}/pending/vms/{v}"),
                None,
            );
            p["placement"]["host"].as_str().map(str::to_string)
        })
        .collect()
}

#[test]
fn serve_answers_health_schedule_with_a_durable_reservation_and_lifecycle() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    assert_eq!(server.ok("GET", "/healthz", None)["status"], "ok");
    assert_eq!(server.ok("GET", "/readyz", None)["ready"], true);

    let put = server.ok("PUT", "/v1/clusters/c1", Some(&cluster(2, 2, 4096)));
    assert_eq!(
        (put["created"].clone(), put["hosts"].clone()),
        (json!(true), json!(2))
    );

    let d = server.ok(
        "POST",
        "/v1/clusters/c1/schedule",
        Some(&json!({"vm": vm("a", 4096)})),
    );
    let host = d["host"].as_str().expect("a host").to_string();
    assert!(
        d["summary"]
            .as_str()
            .unwrap()
            .contains("2/2 hosts available"),
        "{d}"
    );
    let pending = server.ok(
        "GET",
        &format!("/v1/clusters/c1/pending/hosts/{host}"),
        None,
    );
    assert!(
        !pending["records"].as_array().unwrap().is_empty(),
        "{pending}"
    );

    // Fill the cluster: 4 VMs fit in all, the fifth gets `host: null` with the reason.
    for id in ["b", "c", "d"] {
        let d = server.ok(
            "POST",
            "/v1/clusters/c1/schedule",
            Some(&json!({"vm": vm(id, 4096)})),
        );
        assert!(d["host"].is_string(), "{d}");
    }
    let full = server.ok(
        "POST",
        "/v1/clusters/c1/schedule",
        Some(&json!({"vm": vm("e", 4096), "detail": "full"})),
    );
    assert!(full["host"].is_null(), "{full}");
    assert!(
        full["summary"].as_str().unwrap().starts_with("0/2"),
        "{full}"
    );
    assert_eq!(
        full["hosts"].as_array().unwrap().len(),
        2,
        "full detail lists every host"
    );

    // Lifecycle: started releases the pending records; a second report conflicts.
    server.ok("POST", "/v1/clusters/c1/vms/a/started", None);
    let (status, body) = server.call("POST", "/v1/clusters/c1/vms/a/started", None);
    assert_eq!(status, 409, "{body}");
    let (status, body) = server.call("POST", "/v1/clusters/c1/vms/nobody/started", None);
    assert_eq!(status, 404, "{body}");
    // Release frees room: the VM that did not fit now does.
    server.ok("POST", "/v1/clusters/c1/vms/b/release", None);
    let again = server.ok(
        "POST",
        "/v1/clusters/c1/schedule",
        Some(&json!({"vm": vm("e", 4096)})),
    );
    assert!(again["host"].is_string(), "{again}");
    // A failed start with reschedule lands elsewhere or nowhere, never on the host it failed on.
    let failed = server.ok(
        "POST",
        "/v1/clusters/c1/vms/c/failed",
        Some(&json!({"reschedule": true})),
    );
    assert_eq!(failed["vm"], "c", "{failed}");

    let metrics = http(&server.addr, "GET", "/metrics", None, None).1;
    assert!(
        metrics.contains("wasmsched_decisions_total{outcome=\"placed\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wasmsched_decision_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wasmsched_store_commit_seconds_count"),
        "{metrics}"
    );
    assert!(metrics.contains("wasmsched_reservations_held"), "{metrics}");

    // A shadow filter (the memory filter with 64 GiB of overhead: it rejects every host)
    // never changes a decision; each decision it would have changed is counted.
    server.ok("PUT", "/v1/clusters/c2", Some(&cluster(2, 2, 4096)));
    let shadowed = "name = \"shadowed\"\n[[filters]]\nunit = \"memory\"\n[[filters]]\nunit = \"memory\"\nshadow = true\nparams = { overhead_mb = 65536 }\n";
    server.ok(
        "PUT",
        "/v1/clusters/c2/policy",
        Some(&json!({"document": {"text": shadowed, "format": "toml"}})),
    );
    for id in ["s1", "s2"] {
        let d = server.ok(
            "POST",
            "/v1/clusters/c2/schedule",
            Some(&json!({"vm": vm(id, 4096), "detail": "full"})),
        );
        assert!(d["host"].is_string(), "{d}");
        assert_eq!(d["shadow"][0]["effect"]["kind"], "rejects_chosen", "{d}");
    }
    let metrics = http(&server.addr, "GET", "/metrics", None, None).1;
    assert!(
        metrics.contains("wasmsched_shadow_changed_total{cluster=\"c2\",policy=\"shadowed\",kind=\"filter\",unit=\"memory\"} 2"),
        "{metrics}"
    );
    // The cluster's state shows the same counts, with the changed decisions as examples.
    let state = server.ok("GET", "/v1/clusters/c2", None);
    let unit = &state["shadow"]["units"][0];
    assert_eq!(unit["unit"], "memory", "{state}");
    assert_eq!(
        (unit["decisions"].as_u64(), unit["changed"].as_u64()),
        (Some(2), Some(2))
    );
    let examples: Vec<&str> = unit["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["vm"].as_str().unwrap())
        .collect();
    assert_eq!(examples, ["s1", "s2"], "{state}");
    assert!(server.terminate(), "SIGTERM is a clean exit");
}

#[test]
fn serve_maps_bad_input_to_400_naming_the_field_404_and_413() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &["--body-limit", "100000"]);
    let (status, body) = server.call(
        "POST",
        "/v1/clusters/nope/schedule",
        Some(&json!({"vm": vm("a", 1)})),
    );
    assert_eq!(status, 404, "{body}");
    server.ok("PUT", "/v1/clusters/c1", Some(&cluster(1, 1, 1024)));
    let (status, body) = server.call(
        "POST",
        "/v1/clusters/c1/schedule",
        Some(&json!({"vm": {"id": "a", "memory_mb": "lots"}})),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "vm.memory_mb", "{body}");
    let (status, body) = server.call(
        "PUT",
        "/v1/clusters/c2",
        Some(&json!({"hosts": [{"id": "h", "memory": {"free_mb": -1}}]})),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "hosts[0].memory.free_mb", "{body}");
    let (status, body) = http(
        &server.addr,
        "POST",
        "/v1/clusters/c1/schedule",
        Some("{"),
        None,
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.call("POST", "/v1/clusters/c1/hosts", Some(&json!({"id": "h0"})));
    assert_eq!(status, 409, "a host id taken: {body}");
    let big = vec![b' '; 200_000];
    let (status, _) = http_raw(&server.addr, "PUT", "/v1/clusters/c3", Some(&big), None);
    assert_eq!(status, 413);
}

#[test]
fn serve_requires_the_bearer_token_and_refuses_to_listen_openly_without_one() {
    let data = tempfile::tempdir().unwrap();
    let token_file = data.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let server = Server::start(
        &data.path().join("db"),
        &["--token-file", token_file.to_str().unwrap()],
    );
    assert_eq!(http(&server.addr, "GET", "/healthz", None, None).0, 200);
    assert_eq!(http(&server.addr, "GET", "/v1/units", None, None).0, 401);
    assert_eq!(
        http(&server.addr, "GET", "/v1/units", None, Some("wrong")).0,
        401
    );
    assert_eq!(
        http(&server.addr, "GET", "/v1/units", None, Some("s3cret")).0,
        200
    );
    server.kill();

    let out = Command::new(env!("CARGO_BIN_EXE_wasmsched"))
        .args(["serve", "--listen", "0.0.0.0:0", "--no-cache", "--data"])
        .arg(data.path().join("db2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve without --token-file"),
        "{err}"
    );
}

#[test]
fn serve_restart_after_kill_9_mid_mass_start_keeps_every_acknowledged_reservation() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    // 10 hosts x 3 VMs of 2 GiB.
    server.ok("PUT", "/v1/clusters/mass", Some(&cluster(10, 3, 2048)));
    let addr = server.addr.clone();
    // A client thread starts VMs one request at a time; the server is killed midway.
    let client = std::thread::spawn(move || {
        let mut acknowledged = Vec::new();
        for i in 0..200 {
            let body = json!({"vm": vm(&format!("vm-{i}"), 2048)}).to_string();
            let Ok(mut stream) = TcpStream::connect(&addr) else {
                break;
            };
            drop(stream.set_read_timeout(Some(Duration::from_secs(30))));
            let req = format!(
                "POST /v1/clusters/mass/schedule HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(req.as_bytes()).is_err() {
                break;
            }
            let mut raw = String::new();
            if stream.read_to_string(&mut raw).is_err() || !raw.starts_with("HTTP/1.1 200") {
                break;
            }
            let json: Value = serde_json::from_str(raw.split_once("\r\n\r\n").unwrap().1).unwrap();
            acknowledged.push((format!("vm-{i}"), json["host"].as_str().map(str::to_string)));
        }
        acknowledged
    });
    let started = Instant::now();
    loop {
        let m = http(&server.addr, "GET", "/metrics", None, None).1;
        let pending: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("wasmsched_vms_pending "))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if pending >= 12 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill(); // SIGKILL
    let acknowledged = client.join().unwrap();
    // 12 reservations were durable; the answer to the last one may not have arrived.
    assert!(
        acknowledged.len() >= 11,
        "killed midway, after {}",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() < 30,
        "killed midway, before the cluster is full"
    );

    let server = Server::start(data.path(), &[]);
    let names: Vec<String> = acknowledged.iter().map(|(v, _)| v.clone()).collect();
    let restored = pending_hosts(&server, "mass", &names);
    for ((vm, host), after) in acknowledged.iter().zip(&restored) {
        assert_eq!(
            host, after,
            "{vm}: acknowledged on {host:?}, restored on {after:?}"
        );
    }
    // No duplicates: the records held equal one set per VM.
    let state = server.ok("GET", "/v1/clusters/mass", None);
    assert!(
        state["pending_vms"].as_u64().unwrap() >= acknowledged.len() as u64,
        "{}",
        state["pending_vms"]
    );
    for h in 0..10 {
        let p = server.ok(
            "GET",
            &format!("/v1/clusters/mass/pending/hosts/h{h}"),
            None,
        );
        let vms: std::collections::BTreeSet<&str> = p["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["vm"].as_str().unwrap())
            .collect();
        assert!(vms.len() <= 3, "h{h} holds {vms:?}");
    }
    // The next decisions see the restored reservations: 30 fit in all, never more.
    let mut placed = state["pending_vms"].as_u64().unwrap();
    for i in 100..140 {
        let d = server.ok(
            "POST",
            "/v1/clusters/mass/schedule",
            Some(&json!({"vm": vm(&format!("vm-{i}"), 2048)})),
        );
        placed += u64::from(d["host"].is_string());
    }
    assert_eq!(placed, 30, "exactly the cluster's room, over restart");
}

#[test]
fn serve_concurrent_clients_on_one_cluster_never_over_commit() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    server.ok("PUT", "/v1/clusters/busy", Some(&cluster(6, 4, 1024)));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                (0..8)
                    .filter(|i| {
                        let body = json!({"vm": vm(&format!("t{t}-{i}"), 1024)}).to_string();
                        let (status, text) = http(
                            &addr,
                            "POST",
                            "/v1/clusters/busy/schedule",
                            Some(&body),
                            None,
                        );
                        assert_eq!(status, 200, "{text}");
                        serde_json::from_str::<Value>(&text).unwrap()["host"].is_string()
                    })
                    .count()
            })
        })
        .collect();
    let placed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(placed, 24, "6 hosts x 4 fit, 48 asked");
    for h in 0..6 {
        let p = server.ok(
            "GET",
            &format!("/v1/clusters/busy/pending/hosts/h{h}"),
            None,
        );
        let vms = p["aggregate"]["vms"].as_array().unwrap().len();
        assert_eq!(vms, 4, "h{h}: {p}");
    }
}

#[test]
fn serve_batch_schedules_in_order_and_usage_updates_are_small_deltas() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    server.ok("PUT", "/v1/clusters/b", Some(&cluster(2, 1, 1024)));
    let batch = server.ok(
        "POST",
        "/v1/clusters/b/schedule/batch",
        Some(&json!({"requests": [{"vm": vm("x", 1024)}, {"vm": vm("y", 1024)}, {"vm": vm("z", 1024)}]})),
    );
    let hosts: Vec<&Value> = batch["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["host"])
        .collect();
    assert!(
        hosts[0].is_string() && hosts[1].is_string() && hosts[0] != hosts[1],
        "{batch}"
    );
    assert!(hosts[2].is_null(), "{batch}");
    let (status, body) = server.call(
        "POST",
        "/v1/clusters/b/schedule/batch",
        Some(&json!({"requests": [{"vm": vm("ok", 1)}, {"vm": {"id": "bad", "memory_mb": true}}]})),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "requests[1].vm.memory_mb", "{body}");

    let epoch = server.ok(
        "POST",
        "/v1/clusters/b/usage",
        Some(&json!({"hosts": [{"host": "h0", "cpu_percent": 93, "free_memory_mb": 100, "swap_free_mb": 0, "running_vms": 7}]})),
    )["epoch"]
        .as_u64()
        .unwrap();
    let state = server.ok("GET", "/v1/clusters/b", None);
    assert_eq!(state["snapshot"]["epoch"], epoch);
    assert_eq!(state["snapshot"]["hosts"][0]["cpu_usage_percent"], 93);
    assert_eq!(state["snapshot"]["hosts"][0]["running_vms"], 7);
    let (status, body) = server.call(
        "POST",
        "/v1/clusters/b/usage",
        Some(&json!({"hosts": [{"host": "ghost", "cpu_percent": 1}]})),
    );
    assert_eq!(status, 404, "{body}");

    // Host deltas: a removed host releases its pending VM; status changes stick.
    let removed = server.ok(
        "DELETE",
        &format!("/v1/clusters/b/hosts/{}", hosts[0].as_str().unwrap()),
        None,
    );
    assert_eq!(
        removed["displaced"].as_array().unwrap().len(),
        1,
        "{removed}"
    );
    server.ok(
        "PUT",
        "/v1/clusters/b/hosts/h1/status",
        Some(&json!({"status": "maintenance"})),
    );
    let state = server.ok("GET", "/v1/clusters/b", None);
    assert_eq!(state["snapshot"]["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(state["snapshot"]["hosts"][0]["status"], "maintenance");
}

#[test]
fn serve_replacing_a_snapshot_keeps_pending_reservations_and_drops_those_on_gone_hosts() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    server.ok("PUT", "/v1/clusters/r", Some(&cluster(2, 1, 1024)));
    let a = server.ok(
        "POST",
        "/v1/clusters/r/schedule",
        Some(&json!({"vm": vm("a", 1024)})),
    );
    let b = server.ok(
        "POST",
        "/v1/clusters/r/schedule",
        Some(&json!({"vm": vm("b", 1024)})),
    );
    let (ha, hb) = (a["host"].as_str().unwrap(), b["host"].as_str().unwrap());
    // The new snapshot keeps only host a's.
    let mut snapshot = cluster(2, 1, 1024);
    let keep = if ha == "h0" { 0 } else { 1 };
    let kept_host = snapshot["hosts"][keep].clone();
    snapshot["hosts"] = json!([kept_host]);
    let put = server.ok("PUT", "/v1/clusters/r", Some(&snapshot));
    assert_eq!(put["kept"], json!(["a"]), "{put}");
    assert_eq!(put["dropped"], json!([format!("b@{hb}")]), "{put}");
    // Still full: the kept reservation counts.
    let c = server.ok(
        "POST",
        "/v1/clusters/r/schedule",
        Some(&json!({"vm": vm("c", 1024)})),
    );
    assert!(c["host"].is_null(), "{c}");
}

#[test]
fn serve_policies_per_cluster_and_hot_reload_of_the_watched_directory() {
    let data = tempfile::tempdir().unwrap();
    let policies = tempfile::tempdir().unwrap();
    let server = Server::start(
        data.path(),
        &["--policies", policies.path().to_str().unwrap()],
    );
    let small: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/clusters/small.json")).unwrap(),
    )
    .unwrap();
    let web: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/vms/web.json")).unwrap(),
    )
    .unwrap();
    server.ok("PUT", "/v1/clusters/small", Some(&small));
    let document = json!({"document": {"text": std::fs::read_to_string(repo().join("examples/policies/max-vms.toml")).unwrap()}});
    // The unit is not there yet: the policy is refused, naming it.
    let (status, body) = server.call("PUT", "/v1/clusters/small/policy", Some(&document));
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(
        body["error"].as_str().unwrap().contains("max-vms-per-host"),
        "{body}"
    );
    // A builtin by name works.
    assert_eq!(
        server.ok(
            "PUT",
            "/v1/clusters/small/policy",
            Some(&json!({"builtin": "power_saving"}))
        )["name"],
        "power_saving"
    );

    // Drop the module into the watched directory while serving.
    std::fs::copy(
        example_unit(),
        policies.path().join("max_vms_per_host.wasm"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = server.call("PUT", "/v1/clusters/small/policy", Some(&document));
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dropped module was never loaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let uses_unit = |server: &Server| {
        let d = server.ok(
            "POST",
            "/v1/clusters/small/schedule",
            Some(&json!({"vm": web, "detail": "full"})),
        );
        server.ok("POST", "/v1/clusters/small/vms/web-1/release", None);
        d.to_string().contains("too_many_vms")
    };
    assert!(
        uses_unit(&server),
        "the next decision uses the dropped module"
    );

    // A broken version of the module is refused, named, and the old one keeps serving.
    std::fs::write(policies.path().join("max_vms_per_host.wasm"), b"not wasm").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let units = server.ok("GET", "/v1/units", None);
        if units["problems"]
            .to_string()
            .contains("max_vms_per_host.wasm")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broken module was never reported: {units}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(uses_unit(&server), "the good module keeps serving");
    let metrics = http(&server.addr, "GET", "/metrics", None, None).1;
    assert!(
        metrics.contains("wasmsched_rejected_module_files 1"),
        "{metrics}"
    );
}

#[test]
fn serve_openapi_document_lists_every_route_and_matches_the_checked_in_one() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let served = server.ok("GET", "/openapi.json", None);
    let checked_in: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("server/openapi.json")).unwrap())
            .unwrap();
    assert_eq!(served, checked_in, "server/openapi.json is stale");
    let paths = served["paths"].as_object().unwrap();
    for path in [
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/v1/clusters/{id}",
        "/v1/clusters/{id}/schedule",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    // Every documented route answers something other than 404-for-unknown-route/405.
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let concrete = path
                .replace("{id}", "none")
                .replace("{vm}", "v")
                .replace("{host}", "h");
            let (status, body) = http(
                &server.addr,
                &method.to_uppercase(),
                &concrete,
                Some("{}"),
                None,
            );
            assert_ne!(status, 405, "{method} {path}");
            if status == 404 {
                assert!(
                    body.contains("unknown"),
                    "{method} {path} is not routed: {body}"
                );
            }
        }
    }
}

#[test]
fn python_client_example_drives_a_mass_start_against_a_real_server() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 not found; skipped");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let out = Command::new("python3")
        .arg(repo().join("examples/python/mass_start.py"))
        .args(["--url", &format!("http://{}", server.addr), "--vms", "8"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches(" -> ").count(), 8, "{stdout}");
    assert!(stdout.contains("placed 8 of 8"), "{stdout}");
}

/// Three 64 GiB hosts; `h0` runs `run1` and `run2` and is busy (CPU 95% for 10 min),
/// `h1` runs `db` (4 GiB, room to grow by hot plug), `h2` is idle.
fn running_cluster() -> Value {
    let host = |id: &str, cpu: u32, committed: u64| {
        json!({
            "id": id, "name": id, "status": "up",
            "cpu": {"sockets": 2, "cores_per_socket": 16, "threads_per_core": 2},
            "cpu_usage_percent": cpu, "cpu_usage_duration_minutes": 10,
            "memory": {"physical_mb": 65_536, "free_mb": 65_536 - committed,
                       "committed_mb": committed, "max_scheduling_mb": 65_536,
                       "swap_free_mb": 0}
        })
    };
    let running = |id: &str, on: &str| {
        json!({"id": id, "memory_mb": 4_096, "status": "up", "current_host": on,
               "cpu_usage_percent": 40,
               "cpu": {"sockets": 1, "cores_per_socket": 2, "threads_per_core": 1}})
    };
    json!({
        "cluster": {"id": "c", "memory_overcommit_percent": 100},
        "hosts": [host("h0", 95, 8_320), host("h1", 5, 4_160), host("h2", 5, 0)],
        "vms": [running("run1", "h0"), running("run2", "h0"), running("db", "h1")]
    })
}

/// The `placement` of a VM's pending records: `(host, kind)`, or `None`.
fn placement(server: &Server, cluster: &str, vm: &str) -> Option<(String, String)> {
    let p = server.ok(
        "GET",
        &format!("/v1/clusters/{cluster}/pending/vms/{vm}"),
        None,
    );
    let placement = &p["placement"];
    placement["host"].as_str().map(|host| {
        let kind = placement["kind"]["kind"]
            .as_str()
            .or(placement["kind"].as_str())
            .unwrap_or("?");
        (host.to_string(), kind.to_string())
    })
}

#[test]
fn serve_migrate_evacuate_balance_memory_and_409_for_events_that_cannot_follow() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    server.ok("PUT", "/v1/clusters/c", Some(&running_cluster()));
    server.ok(
        "PUT",
        "/v1/clusters/c/policy",
        Some(&json!({"builtin": "evenly_distributed"})),
    );

    // Balance: a plan for the busy host, nothing reserved.
    let plan = server.ok("GET", "/v1/clusters/c/balance", None);
    assert!(
        plan["actions"].is_array() && plan["notes"].is_array(),
        "{plan}"
    );
    assert!(
        !plan["actions"].as_array().unwrap().is_empty(),
        "h0 is over-utilized: {plan}"
    );
    assert_eq!(
        server.ok("GET", "/v1/clusters/c", None)["pending_vms"],
        0,
        "nothing reserved"
    );

    // Migrate one VM: a destination other than its host, reserved as a migration.
    let moved = server.ok(
        "POST",
        "/v1/clusters/c/vms/run1/migrate",
        Some(&json!({"trigger": "user_forced"})),
    );
    assert_eq!(
        (moved["kind"].as_str(), moved["source"].as_str()),
        (Some("scheduled"), Some("h0")),
        "{moved}"
    );
    let to = moved["decision"]["chosen"]
        .as_str()
        .expect("a destination")
        .to_string();
    assert_ne!(to, "h0");
    assert_eq!(
        placement(&server, "c", "run1").map(|p| p.0),
        Some(to.clone())
    );
    // A migrating VM is not started; a started VM does not finish a migration.
    let (status, body) = server.call("POST", "/v1/clusters/c/vms/run1/started", None);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("migration-finished"),
        "{body}"
    );
    let (status, body) = server.call("POST", "/v1/clusters/c/vms/run2/migration-finished", None);
    assert_eq!(status, 409, "run2 holds no placement: {body}");
    server.ok("POST", "/v1/clusters/c/vms/run1/migration-finished", None);
    assert_eq!(
        placement(&server, "c", "run1"),
        None,
        "released on its destination"
    );
    let state = server.ok("GET", "/v1/clusters/c", None);
    let run1 = state["snapshot"]["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "run1")
        .unwrap();
    assert_eq!(run1["current_host"], to.as_str(), "{run1}");

    // Evacuate h0 for maintenance: run2 (still there) gets a migration, reserved.
    let migrations = server.ok("POST", "/v1/clusters/c/hosts/h0/evacuate", None);
    let vms: Vec<&str> = migrations
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["decision"]["vm"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(vms, ["run2"], "{migrations}");
    let (host, kind) = placement(&server, "c", "run2").expect("run2 reserved");
    assert_ne!(host, "h0");
    assert_eq!(kind, "migration");
    let (status, body) = server.call("POST", "/v1/clusters/c/hosts/nowhere/evacuate", None);
    assert_eq!(status, 404, "{body}");
    // A failed migration leaves the VM on its source and releases the destination.
    server.ok("POST", "/v1/clusters/c/vms/run2/migration-failed", None);
    assert_eq!(placement(&server, "c", "run2"), None);

    // Memory hot set: a plug is pending on the VM's host until confirmed.
    let (status, body) = server.call("POST", "/v1/clusters/c/vms/db/memory/confirm", None);
    assert_eq!(status, 409, "nothing in flight: {body}");
    let plan = server.ok(
        "POST",
        "/v1/clusters/c/vms/db/memory",
        Some(&json!({"memory_mb": 6_144})),
    );
    assert_eq!(
        (plan["change"]["kind"].as_str(), plan["host"].as_str()),
        (Some("plug"), Some("h1")),
        "{plan}"
    );
    let pending = server.ok("GET", "/v1/clusters/c/pending/hosts/h1", None);
    assert_eq!(pending["aggregate"]["memory_mb"], 2_048, "{pending}");
    let (status, body) = server.call(
        "POST",
        "/v1/clusters/c/vms/db/memory",
        Some(&json!({"memory_mb": 8_192})),
    );
    assert_eq!(status, 409, "one change in flight per VM: {body}");
    let failed = server.ok("POST", "/v1/clusters/c/vms/db/memory/fail", None);
    assert_eq!(failed["memory_mb"], 4_096, "{failed}");
    let pending = server.ok("GET", "/v1/clusters/c/pending/hosts/h1", None);
    assert_eq!(pending["aggregate"]["memory_mb"], 0, "{pending}");
    server.ok(
        "POST",
        "/v1/clusters/c/vms/db/memory",
        Some(&json!({"memory_mb": 6_144})),
    );
    let done = server.ok("POST", "/v1/clusters/c/vms/db/memory/confirm", None);
    assert_eq!(done["memory_mb"], 6_144, "{done}");
}

#[test]
fn serve_restart_after_kill_9_keeps_acknowledged_usage_lifecycle_reports_and_memory_hot_sets() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    server.ok("PUT", "/v1/clusters/c", Some(&running_cluster()));
    // Each change below is acknowledged; none is followed by a snapshot PUT or a shutdown.
    server.ok(
        "POST",
        "/v1/clusters/c/usage",
        Some(&json!({"hosts": [{"host": "h2", "cpu_percent": 37, "free_memory_mb": 50_000, "running_vms": 3}]})),
    );
    for vm_id in ["a", "b", "f"] {
        let d = server.ok(
            "POST",
            "/v1/clusters/c/schedule",
            Some(&json!({"vm": vm(vm_id, 2_048)})),
        );
        assert!(d["host"].is_string(), "{d}");
    }
    server.ok("POST", "/v1/clusters/c/vms/a/started", None);
    server.ok(
        "POST",
        "/v1/clusters/c/vms/f/failed",
        Some(&json!({"reschedule": false})),
    );
    let moved = server.ok(
        "POST",
        "/v1/clusters/c/vms/run1/migrate",
        Some(&json!({"trigger": "user_forced"})),
    );
    assert!(moved["decision"]["chosen"].is_string(), "{moved}");
    server.ok("POST", "/v1/clusters/c/vms/run1/migration-finished", None);
    server.ok(
        "POST",
        "/v1/clusters/c/vms/db/memory",
        Some(&json!({"memory_mb": 6_144})),
    );
    let before = server.ok("GET", "/v1/clusters/c", None);
    let pending_before: Vec<Value> = ["a", "b", "f", "run1", "db"]
        .iter()
        .map(|v| server.ok("GET", &format!("/v1/clusters/c/pending/vms/{v}"), None))
        .collect();
    server.kill(); // SIGKILL: no graceful flush

    let server = Server::start(data.path(), &[]);
    let after = server.ok("GET", "/v1/clusters/c", None);
    let host = |state: &Value, id: &str| {
        state["snapshot"]["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["id"] == id)
            .cloned()
            .unwrap()
    };
    let h2 = host(&after, "h2");
    assert_eq!(
        (h2["cpu_usage_percent"].as_u64(), h2["running_vms"].as_u64()),
        (Some(37), Some(3)),
        "the usage update: {h2}"
    );
    for h in ["h0", "h1", "h2"] {
        assert_eq!(
            host(&before, h),
            host(&after, h),
            "host {h} (usage, accounting, pending)"
        );
    }
    let vms = |state: &Value| {
        let mut vms = state["snapshot"]["vms"].as_array().unwrap().clone();
        vms.sort_by_key(|v| v["id"].as_str().unwrap().to_string());
        vms
    };
    assert_eq!(vms(&before), vms(&after), "VMs (started, migrated, memory)");
    assert!(
        vms(&after)
            .iter()
            .any(|v| v["id"] == "a" && v["status"] == "up"),
        "a is up after the restart"
    );
    let pending_after: Vec<Value> = ["a", "b", "f", "run1", "db"]
        .iter()
        .map(|v| server.ok("GET", &format!("/v1/clusters/c/pending/vms/{v}"), None))
        .collect();
    assert_eq!(pending_before, pending_after, "pending records of each VM");
    assert_eq!(
        pending_after[4]["aggregate"]["memory_mb"], 2_048,
        "the plug is pending again"
    );
    // The restored hot set can be confirmed.
    let done = server.ok("POST", "/v1/clusters/c/vms/db/memory/confirm", None);
    assert_eq!(done["memory_mb"], 6_144, "{done}");
}

#[test]
fn serve_answers_408_when_a_request_outlives_the_timeout_keeps_no_reservation_and_keeps_serving() {
    let data = tempfile::tempdir().unwrap();
    // The cluster goes in without a tight timeout; the second server restores it.
    let server = Server::start(data.path(), &[]);
    server.ok("PUT", "/v1/clusters/t", Some(&cluster(100, 20, 1_024)));
    assert!(server.terminate());
    // 1,000 decisions take far more than 50 ms on any machine (tens of microseconds each
    // at the very least); a slower machine only makes them slower. The cluster's worker
    // starts on the batch at once, so it is usually deciding when the caller leaves.
    let server = Server::start(data.path(), &["--timeout-ms", "50"]);
    let requests: Vec<Value> = (0..1_000)
        .map(|i| json!({"vm": vm(&format!("v{i}"), 1_024)}))
        .collect();
    let batch = json!({ "requests": requests }).to_string();
    let (status, text) = http(
        &server.addr,
        "POST",
        "/v1/clusters/t/schedule/batch",
        Some(&batch),
        None,
    );
    assert_eq!(status, 408, "{text}");
    // The server keeps serving: a request that needs no waiting finishes in time.
    assert_eq!(http(&server.addr, "GET", "/healthz", None, None).0, 200);
    // Nothing was acknowledged, so nothing stays reserved: what the worker decided after
    // the caller left is released (polled: the release follows the batch's commit; a poll
    // answered 408 on a slow machine is asked again).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, text) = http(&server.addr, "GET", "/metrics", None, None);
        if status == 200 && text.contains("\nwasmsched_vms_pending 0\n") {
            break;
        }
        assert!(Instant::now() < deadline, "still pending: {status} {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        server.terminate(),
        "a clean shutdown after a timed-out request"
    );
    // The release is durable: restarted, the cluster holds no reservation.
    let server = Server::start(data.path(), &[]);
    let state = server.ok("GET", "/v1/clusters/t", None);
    assert_eq!(state["pending_vms"], 0, "{}", state["pending_vms"]);
    assert!(server.terminate());
}

/// The target directory unit crates build into: under this build's own (next to the
/// `wasmsched` binary's profile directory), shared across runs and crates.
fn units_target() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_wasmsched"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("toolkit-units")
}

/// Runs the `wasmsched` binary for the author loop: unit crates build into one shared
/// target directory under this build's own (compiled dependencies are reused across runs
/// and crates), with no network (the scaffold's Cargo.lock pins the SDK's dependencies).
fn author(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wasmsched"))
        .args(args)
        .arg("--no-cache")
        .env("CARGO_TARGET_DIR", units_target())
        .env("CARGO_NET_OFFLINE", "true")
        .output()
        .expect("wasmsched runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn author_loop_new_build_test_check_then_the_next_served_decision_uses_the_unit() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_str().unwrap();

    // new: a filter crate whose SDK is this repository's (a path dependency).
    let out = author(&["new", "retired-hosts", "--kind", "filter", "--dir", dir]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let unit_crate = work.path().join("retired-hosts");
    let manifest = std::fs::read_to_string(unit_crate.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&repo().join("policy-sdk").display().to_string()),
        "{manifest}"
    );
    let again = author(&["new", "retired-hosts", "--kind", "filter", "--dir", dir]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("already exists"));

    // Its own native tests pass at once.
    let units_target = units_target();
    let native = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--lib", "--offline"])
        .current_dir(&unit_crate)
        .env("CARGO_TARGET_DIR", &units_target)
        .output()
        .unwrap();
    assert!(native.status.success(), "{}", text(&native.stderr));
    assert!(
        text(&native.stdout).contains("2 passed"),
        "{}",
        text(&native.stdout)
    );

    // build: a size-optimized module, where --json says.
    let out = author(&["build", unit_crate.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let built: Value = serde_json::from_slice(&out.stdout).unwrap();
    let module = PathBuf::from(built["module"].as_str().unwrap());
    assert_eq!(
        built["bytes"].as_u64(),
        Some(std::fs::metadata(&module).unwrap().len())
    );
    let module_arg = module.to_str().unwrap();

    // test: the scaffold's cases pass...
    let cases = unit_crate.join("cases.toml");
    let out = author(&["test", module_arg, "--cases", cases.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("3 passed, 0 failed"),
        "{}",
        text(&out.stdout)
    );
    // ...and a wrong expectation fails with a diff naming the host.
    let good = std::fs::read_to_string(&cases).unwrap();
    let wrong = good.replacen(
        "host-1 = \"pass\", host-2",
        "host-1 = { reject = \"retired_host\" }, host-2",
        1,
    );
    assert_ne!(
        wrong, good,
        "the scaffold's first case expects host-1 to pass"
    );
    let wrong_cases = unit_crate.join("wrong-cases.toml");
    std::fs::write(&wrong_cases, wrong).unwrap();
    let out = author(&["test", module_arg, "--cases", wrong_cases.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let diff = text(&out.stdout);
    for part in [
        "FAIL the default prefix rejects the old-* host",
        "host host-1:",
        "expected: reject retired_host",
        "got:      pass",
        "2 passed, 1 failed",
    ] {
        assert!(diff.contains(part), "{part:?} missing from\n{diff}");
    }

    // check: the engine loads it; the parameter's type is one word in JSON.
    let out = author(&["check", module_arg, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["units"][0]["name"], "retired-hosts");
    assert_eq!(report["units"][0]["kind"], "filter");
    assert_eq!(report["units"][0]["params"][0]["type"], "string");
    assert_eq!(report["units"][0]["params"][0]["default"], "old-");
    assert!(report["trial"]["hosts"].as_u64().unwrap() > 0, "{report}");
    assert!(report["imports"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["module"] == "wasmsched"));

    // Copy it into the directory a running server watches: the next decision uses it.
    let data = tempfile::tempdir().unwrap();
    let policies = tempfile::tempdir().unwrap();
    let server = Server::start(
        data.path(),
        &["--policies", policies.path().to_str().unwrap()],
    );
    server.ok("PUT", "/v1/clusters/c", Some(&cluster(3, 4, 1024)));
    std::fs::copy(&module, policies.path().join("retired-hosts.wasm")).unwrap();
    let document = json!({"document": {"text":
        "name = \"retire\"\n[[filters]]\nunit = \"retired-hosts\"\n[filters.params]\nprefix = \"host-1\"\n"}});
    let deadline = Instant::now() + Duration::from_secs(60);
    while server
        .call("PUT", "/v1/clusters/c/policy", Some(&document))
        .0
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "the copied module was never loaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let decision = server.ok(
        "POST",
        "/v1/clusters/c/schedule",
        Some(&json!({"vm": vm("web-1", 1024), "detail": "full"})),
    );
    let rejected: Vec<&Value> = decision["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["outcome"]["kind"] == "rejected")
        .collect();
    assert_eq!(rejected.len(), 1, "{decision}");
    assert_eq!(rejected[0]["host"], "h1");
    assert_eq!(rejected[0]["outcome"]["unit"], "retired-hosts");
    assert_eq!(rejected[0]["outcome"]["code"], "retired_host");
}
