//! Sending a request on to the replica that holds its cluster, and its answer back.
//!
//! Any replica accepts any request: one for a cluster another replica holds is forwarded
//! there over HTTP (keep-alive connections, pooled), marked with the header
//! [`FORWARDED_BY`] so that it is never forwarded twice. Clients need no knowledge of
//! which replica holds what, and need not follow redirects (many HTTP libraries do not
//! repeat a `POST` on a redirect).

use crate::lease::Replica;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Uri};
use axum::response::Response;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// The header a replica adds to a request it forwards: its own replica id.
pub const FORWARDED_BY: &str = "x-wasmsched-forwarded-by";

/// An HTTP client to the other replicas.
#[derive(Debug, Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, Body>,
}

impl Default for Forwarder {
    fn default() -> Self {
        Self::new()
    }
}

impl Forwarder {
    /// A client with a 1 s connect timeout (a dead replica is noticed at once; a slow
    /// one is bounded by the request's own timeout).
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { client }
    }

    /// Sends `request` to `to` as `me`; returns its answer, or why it could not be sent
    /// (the holder is down or unreachable).
    pub async fn forward(
        &self,
        to: &Replica,
        me: &str,
        mut request: Request,
    ) -> Result<Response, String> {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let uri: Uri = format!("{}{path}", to.url)
            .parse()
            .map_err(|e| format!("replica {:?} at {:?}: {e}", to.id, to.url))?;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        // Hop-by-hop: the connection to the holder is this replica's own.
        headers.remove(header::CONNECTION);
        headers.remove(header::HOST);
        headers.insert(
            FORWARDED_BY,
            HeaderValue::from_str(me).unwrap_or(HeaderValue::from_static("replica")),
        );
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("replica {:?} at {}: {e}", to.id, to.url))?;
        Ok(response.map(Body::new))
    }
}
