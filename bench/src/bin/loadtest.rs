//! `wasmsched-loadtest`: a bounded load test of `wasmsched serve`. It starts the real
//! server binary on a loopback port with a fresh `--data` directory, sends N concurrent
//! clients x M schedule requests against a synthetic cluster, checks that no host is
//! over-committed, stops the server, and compares the service's throughput with the
//! in-process mass start of the same VMs on the same cluster, measured in the same run.
//!
//! ```text
//! cargo build --release -p wasmsched-cli --bin wasmsched
//! cargo run --release -p wasmsched-bench --bin wasmsched-loadtest -- \
//!     --clients 8 --requests 125 --hosts 1000
//! ```
//!
//! The target (issue 15): HTTP plus the durable journal cost at most 30% of the in-process
//! throughput, i.e. service / in-process >= 0.7. See `docs/performance.md`, "Service".
//!
//! With `--postgres` (run under `scripts/with-postgres --durable`, which names the server
//! in `WASMSCHED_TEST_POSTGRES`) the same load also runs against one replica on
//! PostgreSQL in the same run, and `--failover N` measures N takeovers: two replicas, the
//! holder of a cluster killed with SIGKILL, the time until the survivor answers a decision
//! about it (see `docs/replicas.md`):
//!
//! ```text
//! scripts/with-postgres --durable cargo run --release -p wasmsched-bench \
//!     --bin wasmsched-loadtest -- --postgres --failover 5
//! ```

use anyhow::{bail, ensure, Context as _, Result};
use clap::Parser;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmsched::{Cluster, Detail, Policy, Runtime, ScheduleRequest};
use wasmsched_testkit::synth;

/// The service throughput must be at least this share of the in-process one.
const TARGET_RATIO: f64 = 0.7;

/// Load test of `wasmsched serve` against the in-process mass start of the same VMs.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Concurrent clients (one keep-alive connection each).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Schedule requests per client.
    #[arg(long, default_value_t = 125)]
    requests: usize,
    /// Hosts of the synthetic cluster.
    #[arg(long, default_value_t = 1_000)]
    hosts: usize,
    /// Runs of the in-process mass start, half before and half after the service's (the
    /// median counts).
    #[arg(long, default_value_t = 4)]
    in_process_runs: usize,
    /// The `wasmsched` binary to serve with (default: next to this one, e.g.
    /// `target/release/wasmsched`).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Also run the load against one replica on PostgreSQL (the server named by
    /// `WASMSCHED_TEST_POSTGRES`, a fresh database), in the same run.
    #[arg(long)]
    postgres: bool,
    /// With --postgres: measure this many takeovers after `kill -9` of a cluster's holder.
    #[arg(long, default_value_t = 0, requires = "postgres")]
    failover: usize,
    /// With --failover: the replicas' lease, ms (the default of `wasmsched serve`).
    #[arg(long, default_value_t = 3_000)]
    lease_ms: u64,
}

/// `wasmsched serve` on a loopback port with a fresh data directory; SIGKILLed if dropped
/// before [`Server::stop`].
struct Server {
    child: Child,
    addr: String,
    _data: tempfile::TempDir,
}

impl Server {
    /// Starts the server with `extra` arguments (e.g. `--store URL`).
    fn start(binary: &PathBuf, extra: &[String]) -> Result<Self> {
        let data = tempfile::tempdir()?;
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--no-cache", "--data"])
            .arg(data.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .context("reading the server's first line")?;
        let addr = line
            .trim()
            .strip_prefix("wasmsched serving on http://")
            .with_context(|| format!("unexpected first line {line:?}"))?
            .to_string();
        Ok(Self {
            child,
            addr,
            _data: data,
        })
    }

    /// CPU time the server process used so far (Linux `/proc`; `None` elsewhere).
    fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the command name (which ends with ')'): utime and stime are the
        // 12th and 13th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let per_second: u64 =
            String::from_utf8(Command::new("getconf").arg("CLK_TCK").output().ok()?.stdout)
                .ok()?
                .trim()
                .parse()
                .ok()?;
        Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
    }

    /// SIGTERM (graceful shutdown), then waits; fails unless the exit is clean.
    fn stop(mut self) -> Result<()> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        ensure!(sent.success(), "kill -TERM failed");
        let status = self.child.wait()?;
        ensure!(status.success(), "the server exited with {status}");
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A keep-alive HTTP/1.1 connection (the server answers with `Content-Length`).
struct Connection {
    reader: BufReader<std::net::TcpStream>,
    stream: std::net::TcpStream,
    request: Vec<u8>,
}

impl Connection {
    fn open(addr: &str) -> Result<Self> {
        let stream = std::net::TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            stream,
            request: Vec::new(),
        })
    }

    fn send(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        self.request.clear();
        write!(
            self.request,
            "{method} {path} HTTP/1.1\r\nHost: loadtest\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        self.stream.write_all(&self.request)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = None;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>()?);
                }
            }
        }
        let length = length.context("an answer without Content-Length")?;
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, String::from_utf8(body)?))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The server binary: `--server`, or `wasmsched` next to this executable.
fn server_binary(args: &Args) -> Result<PathBuf> {
    let path = match &args.server {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the executable's directory")?
            .join(format!("wasmsched{}", std::env::consts::EXE_SUFFIX)),
    };
    ensure!(
        path.is_file(),
        "{} not found: build it first (cargo build --release -p wasmsched-cli --bin wasmsched) \
         or pass --server PATH",
        path.display()
    );
    Ok(path)
}

/// The in-process mass start: the same VMs, one `schedule_batch` on a fresh cluster per
/// run (after one warm-up run); the time of each run and the VMs placed.
fn in_process(
    snapshot: &wasmsched::sdk::Snapshot,
    requests: &[ScheduleRequest],
    runs: usize,
) -> Result<(Vec<Duration>, usize)> {
    let runtime = Runtime::builder().cache_dir(None).build()?;
    let policy = Policy::builtin_default(&runtime)?;
    let mut times = Vec::new();
    let mut placed = 0;
    for run in 0..=runs.max(1) {
        let cluster = Cluster::new(snapshot.clone(), "<loadtest>")?;
        let started = Instant::now();
        let decisions = policy.schedule_batch(&cluster, requests);
        let took = started.elapsed();
        placed = 0;
        for decision in decisions {
            placed += usize::from(decision.context("in-process decision")?.chosen.is_some());
        }
        if run > 0 {
            times.push(took);
        }
    }
    Ok((times, placed))
}

/// The one field of a decision the clients read (parsed without building the rest: the
/// clients share the machine with the server).
#[derive(Debug, serde::Deserialize)]
struct Answer {
    host: Option<String>,
}

/// What the clients measured.
#[derive(Debug, Default)]
struct Load {
    latencies: Vec<Duration>,
    errors: Vec<String>,
    placed: usize,
    took: Duration,
}

/// `clients` threads, each sending its share of `bodies` in order on one connection.
fn drive(addr: &str, cluster: &str, bodies: Arc<Vec<String>>, clients: usize) -> Result<Load> {
    let per_client = bodies.len() / clients;
    let path = format!("/v1/clusters/{cluster}/schedule");
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (bodies, addr, path) = (bodies.clone(), addr.to_string(), path.clone());
            std::thread::spawn(move || -> Result<Load> {
                let mut conn = Connection::open(&addr)?;
                let mut load = Load::default();
                for body in &bodies[c * per_client..(c + 1) * per_client] {
                    let sent = Instant::now();
                    match conn.send("POST", &path, body) {
                        Ok((200, text)) => {
                            load.latencies.push(sent.elapsed());
                            let answer: Answer = serde_json::from_str(&text)?;
                            load.placed += usize::from(answer.host.is_some());
                        }
                        Ok((status, text)) => load.errors.push(format!("{status} {text}")),
                        Err(e) => {
                            load.errors.push(e.to_string());
                            conn = Connection::open(&addr)?;
                        }
                    }
                }
                Ok(load)
            })
        })
        .collect();
    let mut total = Load::default();
    for worker in workers {
        let load = worker.join().expect("client thread")?;
        total.latencies.extend(load.latencies);
        total.errors.extend(load.errors);
        total.placed += load.placed;
    }
    total.took = started.elapsed();
    total.latencies.sort();
    Ok(total)
}

/// Hosts whose pending memory breaks the memory filter's two rules (plain arithmetic on
/// the served snapshot, independent of the units).
fn over_committed(state: &Value) -> Vec<String> {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    state["snapshot"]["hosts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|h| {
            let (m, p) = (&h["memory"], &h["pending"]);
            n(&m["committed_mb"]) + n(&p["overcommit_memory_mb"]) > n(&m["max_scheduling_mb"])
                || n(&p["memory_mb"]) > n(&m["free_mb"]) + n(&m["swap_free_mb"])
        })
        .map(|h| h["id"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The service's own figures: store commits, their mean latency, and submissions, from
/// `/metrics` (unlabelled samples by name).
fn store_figures(conn: &mut Connection) -> Result<(f64, f64, f64)> {
    let (status, text) = conn.send("GET", "/metrics", "")?;
    ensure!(status == 200, "GET /metrics: {status}");
    let sample = |name: &str| {
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    Ok((
        sample("wasmsched_store_commit_seconds_count"),
        sample("wasmsched_store_commit_seconds_sum"),
        sample("wasmsched_store_submissions_total"),
    ))
}

/// One load against one server: what the clients and the server's metrics measured.
struct ServiceRun {
    load: Load,
    rate: f64,
    pending_vms: usize,
    over: Vec<String>,
    cpu: Option<Duration>,
    commits: f64,
    commit_ms: f64,
    per_commit: f64,
}

/// Starts the server (with `extra` arguments), creates the clusters, warms up, drives the
/// load, checks the result, stops the server.
fn service_run(
    binary: &PathBuf,
    extra: &[String],
    snapshot: &wasmsched::sdk::Snapshot,
    vms: &[wasmsched::sdk::Vm],
    clients: usize,
) -> Result<ServiceRun> {
    let server = Server::start(binary, extra)?;
    let mut setup = Connection::open(&server.addr)?;
    let snapshot_json = serde_json::to_string(snapshot)?;
    for cluster in ["warm", "load"] {
        let (status, body) =
            setup.send("PUT", &format!("/v1/clusters/{cluster}"), &snapshot_json)?;
        ensure!(status == 200, "PUT {cluster}: {status} {body}");
    }
    // Warm-up on another cluster: every client's first requests (wasm instances, threads).
    let warm: Vec<String> = synth::vm_mix(clients * 4, "warm")
        .iter()
        .map(|vm| serde_json::json!({ "vm": vm }).to_string())
        .collect();
    let warmed = drive(&server.addr, "warm", Arc::new(warm), clients)?;
    ensure!(warmed.errors.is_empty(), "warm-up: {:?}", warmed.errors);
    let bodies: Vec<String> = vms
        .iter()
        .map(|vm| serde_json::json!({ "vm": vm }).to_string())
        .collect();
    let store_before = store_figures(&mut setup)?;
    let cpu_before = server.cpu_time();
    let load = drive(&server.addr, "load", Arc::new(bodies), clients)?;
    let cpu_after = server.cpu_time();
    let store_after = store_figures(&mut setup)?;
    let commits = store_after.0 - store_before.0;
    let commit_ms = (store_after.1 - store_before.1) / commits.max(1.0) * 1e3;
    let per_commit = (store_after.2 - store_before.2) / commits.max(1.0);

    let (status, body) = setup.send("GET", "/v1/clusters/load", "")?;
    ensure!(status == 200, "GET cluster: {status} {body}");
    let state: Value = serde_json::from_str(&body)?;
    let over = over_committed(&state);
    let pending_vms = state["pending_vms"].as_u64().unwrap_or(0) as usize;
    drop(setup);
    server.stop()?;
    let rate = load.latencies.len() as f64 / load.took.as_secs_f64();
    Ok(ServiceRun {
        rate,
        pending_vms,
        over,
        cpu: cpu_before
            .zip(cpu_after)
            .map(|(before, after)| after.saturating_sub(before)),
        commits,
        commit_ms,
        per_commit,
        load,
    })
}

impl ServiceRun {
    /// Prints the run's figures under `name`; fails on errors, over-commits, or pending
    /// reservations that differ from the placements answered.
    fn report(&self, name: &str, total: usize, in_process_rate: f64) -> Result<()> {
        let load = &self.load;
        println!(
            "{name}: {:.0} decisions/s in {:.0} ms, {} placed ({} pending), p50 {:.2} ms, p99 {:.2} ms",
            self.rate,
            ms(load.took),
            load.placed,
            self.pending_vms,
            ms(percentile(&load.latencies, 0.50)),
            ms(percentile(&load.latencies, 0.99)),
        );
        if let Some(used) = self.cpu {
            println!(
                "  server CPU: {:.0} ms for {total} decisions = {:.3} ms each (in-process: {:.3} ms each); {:.2} cores busy on average",
                ms(used),
                ms(used) / total as f64,
                1e3 / in_process_rate,
                used.as_secs_f64() / load.took.as_secs_f64()
            );
        }
        println!(
            "  store: {:.0} commits, {:.2} ms each on average, {:.1} submissions per commit",
            self.commits, self.commit_ms, self.per_commit
        );
        println!(
            "  errors: {}; over-committed hosts: {}",
            load.errors.len(),
            self.over.len()
        );
        if !load.errors.is_empty() || !self.over.is_empty() || self.pending_vms != load.placed {
            bail!(
                "{name}: load test failed: {} errors (first: {:?}), over-committed: {:?}, {} placed but {} pending",
                load.errors.len(),
                load.errors.first(),
                self.over,
                load.placed,
                self.pending_vms
            );
        }
        Ok(())
    }
}

/// `--failover`: `rounds` times, replica A alone creates a cluster, replica B joins and
/// serves it through A, A is killed (SIGKILL); the time from the kill to the first
/// decision B answers about the cluster.
fn failover(binary: &PathBuf, url: &str, rounds: usize, lease_ms: u64) -> Result<Vec<Duration>> {
    let snapshot = serde_json::to_string(&synth::snapshot_of(100))?;
    let vms = synth::vm_mix(rounds * 1_000, "failover");
    let mut takeovers = Vec::new();
    for round in 0..rounds {
        let args = |id: &str| -> Vec<String> {
            [
                "--store",
                url,
                "--replica-id",
                id,
                "--lease-ms",
                &lease_ms.to_string(),
            ]
            .map(String::from)
            .to_vec()
        };
        let a = Server::start(binary, &args(&format!("a{round}")))?;
        let cluster = format!("/v1/clusters/failover-{round}");
        let (status, body) = Connection::open(&a.addr)?.send("PUT", &cluster, &snapshot)?;
        ensure!(status == 200, "PUT: {status} {body}");
        let b = Server::start(binary, &args(&format!("b{round}")))?;
        let schedule = format!("{cluster}/schedule");
        let mut next = vms[round * 1_000..].iter();
        let mut ask = |addr: &str| -> Result<u16> {
            let vm = next.next().context("out of VMs")?;
            let body = serde_json::json!({ "vm": vm }).to_string();
            Ok(Connection::open(addr)
                .and_then(|mut c| c.send("POST", &schedule, &body))
                .map_or(0, |(status, _)| status))
        };
        ensure!(ask(&b.addr)? == 200, "B forwards to A");
        // Let A renew at least once, as in steady operation.
        std::thread::sleep(Duration::from_millis(lease_ms / 2));
        let mut a = a;
        a.child.kill()?;
        let killed = Instant::now();
        a.child.wait()?;
        loop {
            if ask(&b.addr)? == 200 {
                break;
            }
            ensure!(
                killed.elapsed() < Duration::from_millis(lease_ms * 10),
                "no takeover"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        takeovers.push(killed.elapsed());
        b.stop()?;
    }
    Ok(takeovers)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; measure with --release");
    }
    let binary = server_binary(&args)?;
    let clients = args.clients.max(1);
    let total = clients * args.requests.max(1);
    let snapshot = synth::snapshot_of(args.hosts);
    let vms = synth::vm_mix(total, "load");
    let requests: Vec<ScheduleRequest> = vms
        .iter()
        .map(|vm| ScheduleRequest::new(vm.clone()).detail(Detail::Summary))
        .collect();
    let postgres = args
        .postgres
        .then(|| {
            std::env::var(wasmsched_testkit::postgres::ENV).map_err(|_| {
                anyhow::anyhow!(
                    "--postgres: {} is not set; run under scripts/with-postgres --durable",
                    wasmsched_testkit::postgres::ENV
                )
            })?;
            Ok::<_, anyhow::Error>(wasmsched_testkit::postgres::fresh_database("loadtest"))
        })
        .transpose()?;
    // Half the in-process runs before the service's, half after: the machine's load
    // drifts, and the ratio should compare like with like.
    let half = args.in_process_runs.max(2).div_ceil(2);
    let (mut in_process_times, in_process_placed) = in_process(&snapshot, &requests, half)?;
    let embedded = service_run(&binary, &[], &snapshot, &vms, clients)?;
    let on_postgres = match &postgres {
        Some(url) => Some(service_run(
            &binary,
            &["--store".to_string(), url.clone()],
            &snapshot,
            &vms,
            clients,
        )?),
        None => None,
    };
    in_process_times.extend(in_process(&snapshot, &requests, half)?.0);
    in_process_times.sort();
    let in_process_rate = total as f64 / in_process_times[in_process_times.len() / 2].as_secs_f64();

    println!(
        "cluster: {} hosts; {clients} clients x {} requests = {total} VMs; server {}",
        args.hosts,
        args.requests,
        binary.display()
    );
    println!(
        "in-process mass start: {in_process_rate:.0} decisions/s (median of {} runs, half before and half after the services'), {in_process_placed} placed",
        in_process_times.len()
    );
    embedded.report(
        "service, embedded store (HTTP + SQLite)",
        total,
        in_process_rate,
    )?;
    let ratio = embedded.rate / in_process_rate;
    println!(
        "target service/in-process >= {TARGET_RATIO}: {} (ratio {ratio:.2})",
        if ratio >= TARGET_RATIO {
            "met"
        } else {
            "missed"
        }
    );
    if let Some(run) = &on_postgres {
        run.report(
            "service, one replica on PostgreSQL (HTTP + PostgreSQL)",
            total,
            in_process_rate,
        )?;
        println!(
            "PostgreSQL / embedded store: {:.2} (PostgreSQL / in-process {:.2})",
            run.rate / embedded.rate,
            run.rate / in_process_rate
        );
    }
    if let Some(url) = &postgres {
        if args.failover > 0 {
            let mut takeovers = failover(&binary, url, args.failover, args.lease_ms)?;
            takeovers.sort();
            let list: Vec<String> = takeovers.iter().map(|t| format!("{:.0}", ms(*t))).collect();
            println!(
                "takeover after kill -9 of the holder (lease {} ms): median {:.0} ms, max {:.0} ms (ms: {})",
                args.lease_ms,
                ms(takeovers[takeovers.len() / 2]),
                ms(*takeovers.last().expect("rounds > 0")),
                list.join(", ")
            );
        }
    }
    Ok(())
}
