//! A bounded load test of the service: N concurrent clients x M schedule requests over
//! loopback HTTP against an in-process server with a fresh SQLite store, on a synthetic
//! cluster; the in-process mass start of the same VMs on the same cluster is measured in
//! the same run as the baseline. Stops by itself.
//!
//! ```text
//! cargo run --release -p wasmsched-server --features loadtest --bin wasmsched-loadtest -- \
//!     --clients 8 --requests 250 --hosts 1000
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmsched::{Cluster, Detail, Policy, Runtime, ScheduleRequest};
use wasmsched_server::ServeOptions;
use wasmsched_testkit::synth;

#[derive(Debug)]
struct Args {
    clients: usize,
    requests: usize,
    hosts: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        clients: 8,
        requests: 125,
        hosts: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        let n: usize = value
            .parse()
            .map_err(|e| anyhow::anyhow!("{flag} {value}: {e}"))?;
        match flag.as_str() {
            "--clients" => args.clients = n.max(1),
            "--requests" => args.requests = n.max(1),
            "--hosts" => args.hosts = n.max(1),
            _ => anyhow::bail!("unknown flag {flag} (--clients N --requests M --hosts H)"),
        }
    }
    Ok(args)
}

/// A keep-alive HTTP/1.1 connection.
struct Connection {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Connection {
    fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    fn send(&mut self, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
        write!(
            self.stream,
            "{method} {path} HTTP/1.1\r\nHost: loadtest\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad status line {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let total = args.clients * args.requests;
    let snapshot = synth::snapshot_of(args.hosts);
    let vms = synth::vm_mix(total, "load");

    // Baseline: the in-process mass start of the same VMs (wasm builtins).
    let runtime = Runtime::builder().build()?;
    let policy = Policy::builtin_default(&runtime)?;
    let cluster = Cluster::new(snapshot.clone(), "<loadtest>")?;
    let requests: Vec<ScheduleRequest> = vms
        .iter()
        .map(|vm| ScheduleRequest::new(vm.clone()).detail(Detail::Summary))
        .collect();
    let started = Instant::now();
    let decisions = policy.schedule_batch(&cluster, &requests);
    let in_process = started.elapsed();
    let in_process_placed = decisions
        .iter()
        .filter(|d| matches!(d, Ok(d) if d.chosen.is_some()))
        .count();
    let in_process_rate = total as f64 / in_process.as_secs_f64();

    // The service, in this process, on a loopback port with a fresh store.
    let data = std::env::temp_dir().join(format!("wasmsched-loadtest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let mut options = ServeOptions::new();
    options.listen = "127.0.0.1:0".into();
    options.data = data.clone();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_runtime = Runtime::builder().build()?;
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(wasmsched_server::serve_until(
                options,
                server_runtime,
                None,
                move |addr| {
                    let _ = addr_tx.send(addr);
                },
                async move {
                    let _ = stop_rx.await;
                },
            ))
    });
    let addr: SocketAddr = addr_rx.recv_timeout(Duration::from_secs(60))?;
    let mut setup = Connection::open(addr)?;
    let (status, body) = setup.send(
        "PUT",
        "/v1/clusters/load",
        &serde_json::to_string(&snapshot)?,
    )?;
    anyhow::ensure!(status == 200, "PUT cluster: {status} {body}");

    let vms = Arc::new(vms);
    let started = Instant::now();
    let workers: Vec<_> = (0..args.clients)
        .map(|c| {
            let vms = vms.clone();
            let n = args.requests;
            std::thread::spawn(move || -> anyhow::Result<(Vec<Duration>, usize, usize)> {
                let mut conn = Connection::open(addr)?;
                let (mut latencies, mut errors, mut placed) = (Vec::with_capacity(n), 0, 0);
                for i in 0..n {
                    let vm = &vms[c * n + i];
                    let body = serde_json::json!({ "vm": vm }).to_string();
                    let t = Instant::now();
                    match conn.send("POST", "/v1/clusters/load/schedule", &body) {
                        Ok((200, text)) => {
                            latencies.push(t.elapsed());
                            let value: serde_json::Value = serde_json::from_str(&text)?;
                            placed += usize::from(value["host"].is_string());
                        }
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            conn = Connection::open(addr)?;
                        }
                    }
                }
                Ok((latencies, errors, placed))
            })
        })
        .collect();
    let (mut latencies, mut errors, mut placed) = (Vec::new(), 0, 0);
    for worker in workers {
        let (l, e, p) = worker.join().expect("client thread")?;
        latencies.extend(l);
        errors += e;
        placed += p;
    }
    let took = started.elapsed();
    latencies.sort();

    // Over-commit check with plain host arithmetic (the memory filter's two rules).
    let (status, body) = setup.send("GET", "/v1/clusters/load", "")?;
    anyhow::ensure!(status == 200, "GET cluster: {status} {body}");
    let state: serde_json::Value = serde_json::from_str(&body)?;
    let over: Vec<String> = state["snapshot"]["hosts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|h| {
            let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
            let m = &h["memory"];
            let p = &h["pending"];
            n(&m["committed_mb"]) + n(&p["overcommit_memory_mb"]) > n(&m["max_scheduling_mb"])
                || n(&p["memory_mb"]) > n(&m["free_mb"]) + n(&m["swap_free_mb"])
        })
        .map(|h| h["id"].as_str().unwrap_or("?").to_string())
        .collect();
    let _ = stop_tx.send(());
    server.join().expect("server thread")?;
    let _ = std::fs::remove_dir_all(&data);

    let rate = latencies.len() as f64 / took.as_secs_f64();
    println!(
        "cluster: {} hosts; {} clients x {} requests = {total} VMs",
        args.hosts, args.clients, args.requests
    );
    println!(
        "in-process mass start: {:.1} ms, {in_process_rate:.0} decisions/s, {in_process_placed} placed",
        in_process.as_secs_f64() * 1e3
    );
    println!(
        "HTTP + durable store:  {:.1} ms, {rate:.0} decisions/s, {placed} placed, p50 {:.2} ms, p99 {:.2} ms",
        took.as_secs_f64() * 1e3,
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "HTTP throughput / in-process: {:.0}%",
        rate / in_process_rate * 100.0
    );
    println!("errors: {errors}; over-committed hosts: {}", over.len());
    if errors > 0 || !over.is_empty() {
        anyhow::bail!("load test failed: {errors} errors, over-committed: {over:?}");
    }
    Ok(())
}
