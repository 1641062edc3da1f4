//! # wasmsched-server
//!
//! The HTTP scheduling service behind `wasmsched serve`: engines written in Java or Python
//! send cluster snapshots, deltas and lifecycle reports, and ask for decisions over HTTP.
//! Every reservation is durable in a [`Store`] before the decision is answered, so a
//! restart (even after `kill -9`) rebuilds each cluster and its pending resources and no
//! later decision over-commits a host.
//!
//! * [`api`]: the routes, their OpenAPI document, authentication, limits.
//! * [`service`]: the clusters, their policies, every operation, without HTTP.
//! * [`store`]: the durable-state trait; [`commit`]: group commit, shared by the stores;
//!   [`sql`]: the SQL of every write, shared by [`sqlite`] (the embedded default) and
//!   [`postgres`] (the store several replicas share).
//! * [`lease`]: cluster leases and fencing tokens; [`replica`]: what a replica knows of
//!   its peers; [`forward`]: sending a request on to the replica holding its cluster.
//! * [`metrics`]: Prometheus text.
//!
//! [`serve`] runs it all until SIGINT/SIGTERM (graceful: in-flight requests finish, the
//! store is flushed and closed).

#![warn(missing_docs)]

pub mod api;
pub mod commit;
pub mod error;
pub mod forward;
pub mod lease;
pub mod metrics;
pub mod postgres;
pub mod replica;
pub mod service;
pub mod sql;
pub mod sqlite;
pub mod store;

pub use api::{openapi, router, ApiConfig};
pub use service::Service;
pub use store::{Store, StoreError};

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wasmsched::{Runtime, WatchOptions};

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (`127.0.0.1:8080`; port 0 picks a free one).
    pub listen: String,
    /// Directory of the durable state (`wasmsched.db`).
    pub data: PathBuf,
    /// Policy directory to watch and hot-reload while serving.
    pub policies: Option<PathBuf>,
    /// File holding the bearer token; required when listening beyond loopback.
    pub token_file: Option<PathBuf>,
    /// Largest request body in bytes (413 beyond).
    pub body_limit: usize,
    /// Longest a request may take (408 beyond).
    pub timeout: Duration,
    /// Where the durable state lives: `None` for the embedded store under `data`, or a
    /// `postgres://` URL shared by several replicas.
    pub store: Option<String>,
    /// With a shared store: this replica's id (default: host name, process id and start
    /// time).
    pub replica_id: Option<String>,
    /// With a shared store: the base URL other replicas forward requests to (default:
    /// `http://` and the bound address, when that is a specific address).
    pub advertise: Option<String>,
    /// With a shared store: how long a cluster lease lasts without renewal; a replica
    /// that dies is replaced within about this long (plus a third of it).
    pub lease: Duration,
}

impl ServeOptions {
    /// Defaults: loopback port 8080, the user's data directory, 16 MiB bodies, 30 s.
    pub fn new() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data: default_data_dir(),
            policies: None,
            token_file: None,
            body_limit: 16 << 20,
            timeout: Duration::from_secs(30),
            store: None,
            replica_id: None,
            advertise: None,
            lease: Duration::from_secs(3),
        }
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// `<user data dir>/wasmsched` (e.g. `~/.local/share/wasmsched`), or `./wasmsched-data`.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("wasmsched"))
        .unwrap_or_else(|| PathBuf::from("wasmsched-data"))
}

/// Reads the token file: its first line, which must not be empty.
fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--token-file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    anyhow::ensure!(
        !token.is_empty(),
        "--token-file {}: the file is empty (put the bearer token on its first line)",
        path.display()
    );
    Ok(token)
}

/// Serves until SIGINT or SIGTERM. Prints `wasmsched serving on http://ADDR` on stdout
/// once the socket listens (tests and scripts read the port from it).
pub fn serve(options: ServeOptions, runtime: Runtime) -> anyhow::Result<()> {
    let token = options.token_file.as_deref().map(read_token).transpose()?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    tokio.block_on(serve_until(
        options,
        runtime,
        token,
        |local| println!("wasmsched serving on http://{local}"),
        shutdown_signal(),
    ))
}

/// Serves until `shutdown` resolves, then finishes in-flight requests, flushes and closes
/// the store. `on_listen` is told the bound address. (For embedding, e.g. the load test.)
pub async fn serve_until(
    options: ServeOptions,
    runtime: Runtime,
    token: Option<String>,
    on_listen: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&options.listen)
        .await
        .with_context(|| format!("--listen {}", options.listen))?
        .collect();
    if token.is_none() {
        if let Some(open) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            anyhow::bail!(
                "--listen {}: {open} is reachable beyond loopback; refusing to serve without \
                 --token-file (a bearer token)",
                options.listen
            );
        }
    }
    if let Some(dir) = &options.policies {
        let report = runtime
            .watch(dir.clone(), WatchOptions::default())
            .with_context(|| format!("--policies {}", dir.display()))?;
        for rejected in &report.rejected {
            tracing::warn!("policy directory: skipped {rejected}");
        }
    }
    let listener = tokio::net::TcpListener::bind(addrs.as_slice())
        .await
        .with_context(|| format!("--listen {}", options.listen))?;
    let local = listener.local_addr()?;
    let metrics = Arc::new(metrics::Metrics::default());
    let service = match options.store.as_deref() {
        None => {
            let store = sqlite::SqliteStore::open(&options.data, metrics.clone())
                .await
                .with_context(|| format!("--data {}", options.data.display()))?;
            Service::start(runtime, Arc::new(store), metrics).await?
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let replica = lease::Replica {
                id: options
                    .replica_id
                    .clone()
                    .unwrap_or_else(default_replica_id),
                url: advertised_url(options.advertise.as_deref(), local)?,
            };
            anyhow::ensure!(
                options.lease >= Duration::from_millis(300),
                "--lease-ms {}: at least 300 ms (renewals run every third of it)",
                options.lease.as_millis()
            );
            let store = Arc::new(
                postgres::PostgresStore::open(
                    postgres::PostgresOptions {
                        url: url.to_string(),
                        replica: replica.clone(),
                        lease: options.lease,
                    },
                    metrics.clone(),
                )
                .await
                .context("--store")?,
            );
            tracing::info!(replica = replica.id, url = replica.url, "replica joining");
            Service::start_replica(runtime, store.clone(), store, metrics).await?
        }
        Some(other) => anyhow::bail!(
            "--store {other:?}: not a store (leave it out for the embedded store under \
             --data, or give a postgres:// URL)"
        ),
    };
    let config = ApiConfig {
        token,
        body_limit: options.body_limit,
        timeout: options.timeout,
    };
    let app = router(service.clone(), &config);
    tracing::info!(%local, data = %options.data.display(), "serving");
    on_listen(local);
    let stopping = service.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
            stopping.set_unready();
        })
        .await?;
    service.close().await;
    service.runtime().stop_watching();
    tracing::info!("store flushed and closed");
    Ok(())
}

/// `<host name>-<process id>-<start time in ms, base 36>`: unique among replicas without
/// configuration, readable in logs and in the `replicas` table.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".into());
    let mut millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut stamp = Vec::new();
    while millis > 0 {
        stamp.push(char::from_digit((millis % 36) as u32, 36).unwrap_or('0'));
        millis /= 36;
    }
    stamp.reverse();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        stamp.into_iter().collect::<String>()
    )
}

/// The URL other replicas reach this one at: `--advertise`, or `http://` and the bound
/// address when it names one interface.
fn advertised_url(advertise: Option<&str>, local: SocketAddr) -> anyhow::Result<String> {
    match advertise {
        Some(url) => {
            anyhow::ensure!(
                url.starts_with("http://"),
                "--advertise {url:?}: give the base URL other replicas reach this one at, \
                 e.g. http://10.0.0.5:8080"
            );
            Ok(url.trim_end_matches('/').to_string())
        }
        None => {
            anyhow::ensure!(
                !local.ip().is_unspecified(),
                "--listen {local}: listening on every interface; give --advertise \
                 http://ADDRESS:PORT (where the other replicas reach this one)"
            );
            Ok(format!("http://{local}"))
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
