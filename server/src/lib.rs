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
//! * [`store`]: the durable-state trait; [`sqlite`]: the embedded default.
//! * [`metrics`]: Prometheus text.
//!
//! [`serve`] runs it all until SIGINT/SIGTERM (graceful: in-flight requests finish, the
//! store is flushed and closed).

#![warn(missing_docs)]

pub mod api;
pub mod error;
pub mod metrics;
pub mod service;
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
    let metrics = Arc::new(metrics::Metrics::default());
    let store = sqlite::SqliteStore::open(&options.data, metrics.clone())
        .await
        .with_context(|| format!("--data {}", options.data.display()))?;
    let service = Service::start(runtime, Arc::new(store), metrics).await?;
    let listener = tokio::net::TcpListener::bind(addrs.as_slice())
        .await
        .with_context(|| format!("--listen {}", options.listen))?;
    let local = listener.local_addr()?;
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
