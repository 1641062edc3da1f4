//! The HTTP API: handlers, their OpenAPI description (utoipa), the router and its layers
//! (auth, body limit, timeout, request ids, tracing).

use crate::error::{ApiError, ErrorBody};
use crate::forward::{Forwarder, FORWARDED_BY};
use crate::lease::Replica;
use crate::replica::Route;
use crate::service::{HostChange, HostUsage, PutOutcome, Service, VmEvent};
use crate::store::PolicySpec;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wasmsched::sdk::{Host, HostStatus, Snapshot};
use wasmsched::shadow::ShadowStatus;
use wasmsched::{MigrationTrigger, ScheduleRequest};

/// What the router needs besides the service.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Bearer token every request but `/healthz` must carry; `None`: no authentication.
    pub token: Option<String>,
    /// Largest request body, bytes (413 beyond).
    pub body_limit: usize,
    /// Longest a request may take (408 beyond).
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
struct AppState {
    service: Arc<Service>,
    token: Option<Arc<str>>,
    forwarder: Forwarder,
    body_limit: usize,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wasmsched",
        description = "Scheduling decisions over cluster snapshots, with durable pending reservations."
    ),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// The router and the OpenAPI document, built from the same handler list.
pub fn router(service: Arc<Service>, config: &ApiConfig) -> Router {
    let (router, _) = routes_and_doc();
    let state = AppState {
        service,
        token: config.token.as_deref().map(Arc::from),
        forwarder: Forwarder::new(),
        body_limit: config.body_limit,
    };
    router
        .layer(middleware::from_fn_with_state(state.clone(), route))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.timeout,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let id = request
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", id, method = %request.method(), uri = %request.uri())
            }),
        )
        .layer(SetRequestIdLayer::x_request_id(Sequential::default()))
        .with_state(state)
}

/// The OpenAPI document of every route, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes_and_doc().1
}

fn routes_and_doc() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(units))
        .routes(routes!(put_cluster, get_cluster))
        .routes(routes!(put_policy))
        .routes(routes!(schedule))
        .routes(routes!(schedule_batch))
        .routes(routes!(vm_started))
        .routes(routes!(vm_failed))
        .routes(routes!(migration_finished))
        .routes(routes!(migration_failed))
        .routes(routes!(release))
        .routes(routes!(migrate))
        .routes(routes!(memory_plan))
        .routes(routes!(memory_confirm))
        .routes(routes!(memory_fail))
        .routes(routes!(add_host))
        .routes(routes!(remove_host))
        .routes(routes!(host_status))
        .routes(routes!(evacuate))
        .routes(routes!(usage))
        .routes(routes!(balance))
        .routes(routes!(pending_on_host))
        .routes(routes!(pending_of_vm))
        .split_for_parts()
}

/// Request ids `1`, `2`, ... (unless the client sent an `x-request-id`).
#[derive(Debug, Clone, Default)]
struct Sequential(Arc<AtomicU64>);

impl MakeRequestId for Sequential {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        HeaderValue::from_str(&n.to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// Compares in time independent of where the two differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => {
            next.run(request).await
        }
        _ => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <token>)",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// The cluster a request path names (`/v1/clusters/{id}` and below), percent-decoded.
fn cluster_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1/clusters/")?;
    let raw = rest.split('/').next().filter(|id| !id.is_empty())?;
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

/// The header naming the replica that served a request about a cluster (with replicas).
pub const SERVED_BY: &str = "x-wasmsched-replica";

/// 503 with `Retry-After` (whole seconds, at least 1).
fn unavailable(message: String, retry_after: Duration) -> Response {
    let mut response = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// With replicas: a request about a cluster is served where the cluster's lease is, so
/// it is forwarded when another replica holds it (see `docs/replicas.md`). Alone, it
/// always goes on.
async fn route(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(id) = cluster_of(request.uri().path()) else {
        return next.run(request).await;
    };
    let creating = request.method() == Method::PUT
        && request
            .uri()
            .path()
            .trim_end_matches('/')
            .matches('/')
            .count()
            == 3;
    let forwarded = request.headers().contains_key(FORWARDED_BY);
    match state.service.route(&id, creating, forwarded).await {
        Route::Local => served_here(&state, next.run(request).await),
        Route::Forward(holder) => {
            // Kept, to be sent again (or served here) when the holder cannot be reached.
            let (parts, body) = request.into_parts();
            let Ok(body) = axum::body::to_bytes(body, state.body_limit).await else {
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body larger than {} bytes", state.body_limit),
                )
                .into_response();
            };
            let again = |parts: &axum::http::request::Parts| {
                Request::from_parts(parts.clone(), axum::body::Body::from(body.clone()))
            };
            let why = match forward(&state, &holder, again(&parts)).await {
                Ok(response) => return response,
                Err(why) => why,
            };
            // Down (refused, no route): not a live replica any more. Ask once more where
            // the cluster goes: a free cluster may be taken here, or another replica may
            // hold it by now.
            state.service.replica_unreachable(&holder.id, &id);
            let down = |why: String| {
                unavailable(
                    format!("cluster {id:?}: its holder did not answer ({why}); retry"),
                    Duration::from_secs(1),
                )
            };
            match state.service.route(&id, creating, forwarded).await {
                Route::Local => served_here(&state, next.run(again(&parts)).await),
                Route::Forward(other) if other.id != holder.id => {
                    match forward(&state, &other, again(&parts)).await {
                        Ok(response) => response,
                        Err(why) => {
                            state.service.replica_unreachable(&other.id, &id);
                            down(why)
                        }
                    }
                }
                Route::Forward(_) => down(why),
                Route::Unavailable {
                    message,
                    retry_after,
                } => unavailable(message, retry_after),
            }
        }
        Route::Unavailable {
            message,
            retry_after,
        } => unavailable(message, retry_after),
    }
}

/// Names this replica in an answer it served itself (with replicas).
fn served_here(state: &AppState, mut response: Response) -> Response {
    if let Some(me) = state.service.replica_id() {
        if let Ok(value) = HeaderValue::from_str(me) {
            response.headers_mut().insert(SERVED_BY, value);
        }
    }
    response
}

/// Sends `request` on to `holder`, counting it.
async fn forward(state: &AppState, holder: &Replica, request: Request) -> Result<Response, String> {
    let me = state.service.replica_id().unwrap_or("replica").to_string();
    state
        .service
        .metrics()
        .requests_forwarded
        .fetch_add(1, Ordering::Relaxed);
    state.forwarder.forward(holder, &me, request).await
}

async fn count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    state.service.metrics().answered(response.status().as_u16());
    response
}

/// Parses a JSON body; a bad one is a 400 naming the field path.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(ApiError::bad_body)
}

/// Parses a schedule request, `detail` defaulting to `summary`.
fn schedule_request(mut value: serde_json::Value, at: &str) -> Result<ScheduleRequest, ApiError> {
    if let Some(object) = value.as_object_mut() {
        object
            .entry("detail")
            .or_insert_with(|| serde_json::Value::String("summary".into()));
    }
    serde_path_to_error::deserialize(value).map_err(|e| ApiError::bad_body_at(at, e))
}

/// A decision with `host` (the chosen host id, or `null`), serialized straight from the
/// decision (no intermediate `serde_json::Value`: it is the answer to every schedule call).
#[derive(Serialize)]
struct DecisionAnswer<'a> {
    host: Option<&'a str>,
    #[serde(flatten)]
    decision: &'a wasmsched::Decision,
}

/// One entry of a batch answer: a decision, or why the request failed.
#[derive(Serialize)]
#[serde(untagged)]
enum BatchEntry<'a> {
    Decided(DecisionAnswer<'a>),
    Failed { error: &'a str, status: u16 },
}

/// The answer to a batch.
#[derive(Serialize)]
struct BatchAnswer<'a> {
    decisions: Vec<BatchEntry<'a>>,
}

fn decision_answer(decision: &wasmsched::Decision) -> DecisionAnswer<'_> {
    DecisionAnswer {
        host: decision.chosen.as_deref(),
        decision,
    }
}

/// `GET /healthz` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Liveness: 200 while the process serves.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "Serving", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// `GET /readyz` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// Clusters restored and the store open, not shutting down.
    pub ready: bool,
    /// Modules serving.
    pub modules: usize,
    /// Generation of the published module set.
    pub generation: u64,
}

/// Readiness: 200 when clusters are restored and requests are taken, 503 otherwise.
#[utoipa::path(get, path = "/readyz", tag = "service",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
async fn readyz(State(state): State<AppState>) -> Response {
    let status = state.service.runtime().status();
    let ready = state.service.is_ready();
    let body = Readiness {
        ready,
        modules: status.modules.len(),
        generation: status.generation,
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.service.metrics().render(&state.service.gauges());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "service",
    responses((status = 200, description = "The OpenAPI document", body = serde_json::Value)))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

/// Modules and units serving, files refused by the last reload, the watcher.
#[utoipa::path(get, path = "/v1/units", tag = "service",
    responses((status = 200, description = "wasmsched::RuntimeStatus", body = serde_json::Value)))]
async fn units(State(state): State<AppState>) -> Json<wasmsched::RuntimeStatus> {
    Json(state.service.runtime().status())
}

/// Creates or replaces a cluster from a snapshot (the JSON of a cluster file). Pending
/// reservations are kept on hosts the new snapshot still has.
#[utoipa::path(put, path = "/v1/clusters/{id}", tag = "clusters",
    params(("id" = String, Path, description = "Cluster id")),
    request_body(content = serde_json::Value, description = "A cluster snapshot (policy_sdk::Snapshot)"),
    responses((status = 200, body = PutOutcome), (status = 400, body = ErrorBody)))]
async fn put_cluster(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<PutOutcome>, ApiError> {
    let snapshot: Snapshot = parse(&body)?;
    Ok(Json(state.service.put_cluster(id, snapshot, None).await?))
}

/// `GET /v1/clusters/{id}` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterState {
    /// Cluster id.
    pub id: String,
    /// The policy.
    pub policy: PolicySpec,
    /// VMs placed and not yet started.
    pub pending_vms: usize,
    /// The current snapshot, pending aggregates filled.
    #[schema(value_type = Object)]
    pub snapshot: Arc<Snapshot>,
    /// The policy's shadow units: per unit, the decisions made, those it would have changed
    /// and its faults, with the last few changed decisions as examples.
    #[schema(value_type = Object)]
    pub shadow: ShadowStatus,
}

/// A cluster's current snapshot (with pending aggregates) and policy.
#[utoipa::path(get, path = "/v1/clusters/{id}", tag = "clusters",
    params(("id" = String, Path, description = "Cluster id")),
    responses((status = 200, body = ClusterState), (status = 404, body = ErrorBody)))]
async fn get_cluster(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ClusterState>, ApiError> {
    let summary = state.service.cluster(&id)?;
    Ok(Json(ClusterState {
        id,
        policy: summary.policy,
        pending_vms: summary.pending_vms,
        snapshot: summary.snapshot,
        shadow: summary.shadow,
    }))
}

/// `PUT /v1/clusters/{id}/policy` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PolicySet {
    /// The policy's name.
    pub name: String,
}

/// Sets a cluster's policy: `{"builtin": "power_saving"}` or `{"document": {"text": "...",
/// "format": "toml"}}`.
#[utoipa::path(put, path = "/v1/clusters/{id}/policy", tag = "clusters",
    params(("id" = String, Path, description = "Cluster id")),
    request_body = PolicySpec,
    responses((status = 200, body = PolicySet), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn put_policy(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<PolicySet>, ApiError> {
    let spec: PolicySpec = parse(&body)?;
    let name = state.service.set_policy(&id, spec).await?;
    Ok(Json(PolicySet { name }))
}

/// Schedules one VM: `{"vm": {...}}`, optionally `blacklist`, `whitelist`, `kind`,
/// `detail` (`summary` by default, `full` lists every host). The answer's `host` is the
/// chosen host or `null`; the reservation is durable before the answer is sent.
#[utoipa::path(post, path = "/v1/clusters/{id}/schedule", tag = "scheduling",
    params(("id" = String, Path, description = "Cluster id")),
    request_body(content = serde_json::Value, description = "wasmsched::ScheduleRequest"),
    responses((status = 200, description = "wasmsched::Decision plus `host`", body = serde_json::Value),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody)))]
async fn schedule(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = schedule_request(parse(&body)?, "")?;
    let decision = state.service.schedule(&id, request).await?;
    Ok(Json(decision_answer(&decision)).into_response())
}

/// `POST .../schedule/batch` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Schedule requests, decided in order (each sees the ones before).
    #[schema(value_type = Vec<Object>)]
    pub requests: Vec<serde_json::Value>,
}

/// Schedules VMs in order (a mass start); one entry per request: a decision with `host`,
/// or `{"error": ...}`. Every reservation is durable before the answer is sent.
#[utoipa::path(post, path = "/v1/clusters/{id}/schedule/batch", tag = "scheduling",
    params(("id" = String, Path, description = "Cluster id")),
    request_body = BatchRequest,
    responses((status = 200, description = "`{\"decisions\": [...]}`", body = serde_json::Value),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn schedule_batch(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let batch: BatchRequest = parse(&body)?;
    let requests = batch
        .requests
        .into_iter()
        .enumerate()
        .map(|(i, r)| schedule_request(r, &format!("requests[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let results = state.service.schedule_batch(&id, requests).await?;
    let decisions: Vec<BatchEntry<'_>> = results
        .iter()
        .map(|r| match r {
            Ok(decision) => BatchEntry::Decided(decision_answer(decision)),
            Err(e) => BatchEntry::Failed {
                error: &e.message,
                status: e.status.as_u16(),
            },
        })
        .collect();
    Ok(Json(BatchAnswer { decisions }).into_response())
}

async fn event(
    state: &AppState,
    id: &str,
    vm: String,
    event: VmEvent,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(state.service.vm_event(id, vm, event).await?))
}

/// The VM came up on the host it was placed on: its pending resources are released.
#[utoipa::path(post, path = "/v1/clusters/{id}/vms/{vm}/started", tag = "lifecycle",
    params(("id" = String, Path, description = "Cluster id"), ("vm" = String, Path, description = "VM id")),
    responses((status = 200, description = "wasmsched::Release", body = serde_json::Value),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn vm_started(
    State(state): State<AppState>,
    Path((id, vm)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    event(&state, &id, vm, VmEvent::Started).await
}

/// `POST .../failed` body (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FailedReport {
    /// Place a failed start again on another host (default `false`).
    pub reschedule: bool,
}

/// The VM failed to start (or migrate): its pending resources are released; with
/// `{"reschedule": true}` a failed start is decided again without the hosts it tried.
#[utoipa::path(post, path = "/v1/clusters/{id}/vms/{vm}/failed", tag = "lifecycle",
    params(("id" = String, Path, description = "Cluster id"), ("vm" = String, Path, description = "VM id")),
    request_body(content = FailedReport, description = "Optional"),
    responses((status = 200, description = "wasmsched::VmFailed or FailedPlacement", body = serde_json::Value),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn vm_failed(
    State(state): State<AppState>,
    Path((id, vm)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let report: FailedReport = if body.is_empty() {
        FailedReport::default()
    } else {
        parse(&body)?
    };
    event(
        &state,
        &id,
        vm,
        VmEvent::Failed {
            reschedule: report.reschedule,
        },
    )
    .await
}

/// A migration finished on its destination.
#[utoipa::path(post, path = "/v1/clusters/{id}/vms/{vm}/migration-finished", tag = "lifecycle",
    params(("id" = String, Path, description = "Cluster id"), ("vm" = String, Path, description = "VM id")),
    responses((status = 200, description = "wasmsched::Release", body = serde_json::Value),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn migration_finished(
    State(state): State<AppState>,
    Path((id, vm)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    event(&state, &id, vm, VmEvent::MigrationFinished).await
}

/// A migration failed: the destination's pending resources are released.
#[utoipa::path(post, path = "/v1/clusters/{id}/vms/{vm}/migration-failed", tag = "lifecycle",
    params(("id" = String, Path, description = "Cluster id"), ("vm" = String, Path, description = "VM id")),
    responses((status = 200, description = "wasmsched::Release", body = serde_json::Value),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn migration_failed(
    State(state): State<AppState>,
    Path((id, vm)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    event(&state, &id, vm, VmEvent::MigrationFailed).await
}

/// The VM was cancelled: its pending resources are released (twice releases nothing).
#[utoipa::path(post, path = "/v1/clusters/{id}/vms/{vm}/release", tag = "lifecycle",
    params(("id" = String, Path, description = "Cluster id"), ("vm" = String, Path, description = "VM id")),
    responses((status = 200, description = "wasmsched::Release", body = serde_json::Value),
        (status = 404, body = ErrorBody)))]
async fn release(
    State(state): State<AppState>,
    Path((id, vm)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    event(&state, &id, vm, VmEvent::Release).await
}

/// `POST .../migrate` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// `automatic`, `user_forced` or `host_maintenance`.
    #[schema(value_type = String)]
    pub trigger: MigrationTrigger,
}

/// Chooses a destination for a running VM and reserves there.
#[utoipa::path(post, path = "/v1/clusters/{id}/vms/{vm}/migrate", tag = "scheduling",
    params(("id" = String, Path, description = "Cluster id"), ("vm" = String, Path, description = "VM id")),
    request_body = MigrateRequest,
    responses((status = 200, description = "wasmsched::Migration", body = serde_json::Value),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn migrate(
    State(state): State<AppState>,
    Path((id, vm)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: MigrateRequest = parse(&body)?;
    Ok(Json(state.service.migrate(&id, vm, request.trigger).await?))
}

/// `POST .../memory` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryRequest {
    /// The VM's new memory size, MiB.
    pub memory_mb: u64,
}

/// Plans a memory hot set of a running VM (plug or unplug) on its host.
#[utoipa::path(post, path = "/v1/clusters/{id}/vms/{vm}/memory", tag = "scheduling",
    params(("id" = String, Path, description = "Cluster id"), ("vm" = String, Path, description = "VM id")),
    request_body = MemoryRequest,
    responses((status = 200, description = "wasmsched::MemoryPlan", body = serde_json::Value),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn memory_plan(
    State(state): State<AppState>,
    Path((id, vm)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: MemoryRequest = parse(&body)?;
    Ok(Json(
        state
            .service
            .hot_set_memory(&id, vm, request.memory_mb)
            .await?,
    ))
}

/// The VM's memory change in flight was done.
#[utoipa::path(post, path = "/v1/clusters/{id}/vms/{vm}/memory/confirm", tag = "lifecycle",
    params(("id" = String, Path, description = "Cluster id"), ("vm" = String, Path, description = "VM id")),
    responses((status = 200, description = "wasmsched::MemoryChangeDone", body = serde_json::Value),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn memory_confirm(
    State(state): State<AppState>,
    Path((id, vm)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(state.service.memory_change(&id, vm, true).await?))
}

/// The VM's memory change in flight failed.
#[utoipa::path(post, path = "/v1/clusters/{id}/vms/{vm}/memory/fail", tag = "lifecycle",
    params(("id" = String, Path, description = "Cluster id"), ("vm" = String, Path, description = "VM id")),
    responses((status = 200, description = "wasmsched::MemoryChangeDone", body = serde_json::Value),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn memory_fail(
    State(state): State<AppState>,
    Path((id, vm)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(state.service.memory_change(&id, vm, false).await?))
}

/// A host joined the cluster (body: a host as in a cluster file).
#[utoipa::path(post, path = "/v1/clusters/{id}/hosts", tag = "hosts",
    params(("id" = String, Path, description = "Cluster id")),
    request_body(content = serde_json::Value, description = "policy_sdk::Host"),
    responses((status = 200, description = "`{\"epoch\": n}`", body = serde_json::Value),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn add_host(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let host: Host = parse(&body)?;
    Ok(Json(
        state
            .service
            .host_change(&id, HostChange::Add(Box::new(host)))
            .await?,
    ))
}

/// A host left the cluster: its pending records are released; VMs placed there need a
/// new decision (listed as `displaced`).
#[utoipa::path(delete, path = "/v1/clusters/{id}/hosts/{host}", tag = "hosts",
    params(("id" = String, Path, description = "Cluster id"), ("host" = String, Path, description = "Host id")),
    responses((status = 200, description = "wasmsched::HostRemoved", body = serde_json::Value),
        (status = 404, body = ErrorBody)))]
async fn remove_host(
    State(state): State<AppState>,
    Path((id, host)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        state
            .service
            .host_change(&id, HostChange::Remove(host))
            .await?,
    ))
}

/// `PUT .../status` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    /// `up`, `maintenance`, `down`, `non_operational`, ...
    #[schema(value_type = String)]
    pub status: HostStatus,
}

/// A host's status changed; `down` or `non_operational` also fails the VMs placed there
/// and decides them again.
#[utoipa::path(put, path = "/v1/clusters/{id}/hosts/{host}/status", tag = "hosts",
    params(("id" = String, Path, description = "Cluster id"), ("host" = String, Path, description = "Host id")),
    request_body = StatusRequest,
    responses((status = 200, description = "`{\"epoch\": n}` or the VMs decided again", body = serde_json::Value),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn host_status(
    State(state): State<AppState>,
    Path((id, host)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: StatusRequest = parse(&body)?;
    Ok(Json(
        state
            .service
            .host_change(&id, HostChange::Status(host, request.status))
            .await?,
    ))
}

/// Host maintenance: a migration (reserved) for every VM running on the host.
#[utoipa::path(post, path = "/v1/clusters/{id}/hosts/{host}/evacuate", tag = "scheduling",
    params(("id" = String, Path, description = "Cluster id"), ("host" = String, Path, description = "Host id")),
    responses((status = 200, description = "A list of wasmsched::Migration", body = serde_json::Value),
        (status = 404, body = ErrorBody)))]
async fn evacuate(
    State(state): State<AppState>,
    Path((id, host)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(state.service.evacuate(&id, host).await?))
}

/// `POST .../usage` body: the small message an engine sends every few seconds.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageRequest {
    /// One entry per host that changed.
    pub hosts: Vec<HostUsage>,
}

/// `POST .../usage` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Epoch {
    /// The snapshot's new epoch.
    pub epoch: u64,
}

/// Per-host usage figures (CPU %, free memory, free swap, running VMs), applied as one
/// epoch.
#[utoipa::path(post, path = "/v1/clusters/{id}/usage", tag = "hosts",
    params(("id" = String, Path, description = "Cluster id")),
    request_body = UsageRequest,
    responses((status = 200, body = Epoch), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn usage(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Epoch>, ApiError> {
    let request: UsageRequest = parse(&body)?;
    let epoch = state.service.usage(&id, request.hosts).await?;
    Ok(Json(Epoch { epoch }))
}

/// The balance unit's plan (migrations, power actions); nothing is executed or reserved.
#[utoipa::path(get, path = "/v1/clusters/{id}/balance", tag = "scheduling",
    params(("id" = String, Path, description = "Cluster id")),
    responses((status = 200, description = "wasmsched::BalancePlan", body = serde_json::Value),
        (status = 404, body = ErrorBody)))]
async fn balance(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(state.service.balance(&id).await?))
}

/// Pending records on a host and their aggregate.
#[utoipa::path(get, path = "/v1/clusters/{id}/pending/hosts/{host}", tag = "pending",
    params(("id" = String, Path, description = "Cluster id"), ("host" = String, Path, description = "Host id")),
    responses((status = 200, description = "`{host, aggregate, records}`", body = serde_json::Value),
        (status = 404, body = ErrorBody)))]
async fn pending_on_host(
    State(state): State<AppState>,
    Path((id, host)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(state.service.pending(&id, &host, true)?))
}

/// A VM's placement, pending records and aggregate.
#[utoipa::path(get, path = "/v1/clusters/{id}/pending/vms/{vm}", tag = "pending",
    params(("id" = String, Path, description = "Cluster id"), ("vm" = String, Path, description = "VM id")),
    responses((status = 200, description = "`{vm, placement, aggregate, records}`", body = serde_json::Value),
        (status = 404, body = ErrorBody)))]
async fn pending_of_vm(
    State(state): State<AppState>,
    Path((id, vm)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(state.service.pending(&id, &vm, false)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in `server/openapi.json` is what the handlers generate; regenerate it
    /// with `UPDATE_OPENAPI=1 cargo test -p wasmsched-server openapi`.
    #[test]
    fn checked_in_openapi_matches_the_routes() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
        let generated = openapi().to_pretty_json().unwrap() + "\n";
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "server/openapi.json differs from the routes; run UPDATE_OPENAPI=1 cargo test -p wasmsched-server openapi"
        );
    }

    /// Tokens compare equal only when identical, whatever the length.
    #[test]
    fn constant_time_eq_accepts_only_the_same_token() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
