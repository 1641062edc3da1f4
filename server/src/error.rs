//! Errors as HTTP answers: a status and a JSON body naming what is wrong.

use crate::store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use wasmsched::ErrorKind;

/// An error answer: `{"error": "...", "field": "vm.memory_mb"}` with its status.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What is wrong.
    pub message: String,
    /// The field path inside the request body, when the body is at fault.
    pub field: Option<String>,
}

/// The JSON body of an error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What is wrong, in one line.
    pub error: String,
    /// The path of the offending field in the request body (e.g. `vm.memory_mb`), when
    /// known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }

    /// 404 for an unknown cluster.
    pub fn unknown_cluster(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("unknown cluster {id:?} (create it with PUT /v1/clusters/{id})"),
        )
    }

    /// 400 for a request body that does not parse, naming the field path.
    pub fn bad_body(error: serde_path_to_error::Error<serde_json::Error>) -> Self {
        Self::bad_body_at("", error)
    }

    /// 400 for a part of the request body at `prefix` (e.g. `requests[2]`) that does not
    /// parse, naming the field path from the body's root.
    pub fn bad_body_at(prefix: &str, error: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = error.path().to_string();
        let path = (path != "." && !path.is_empty()).then_some(path);
        let field = match (prefix.is_empty(), path) {
            (true, path) => path,
            (false, None) => Some(prefix.to_string()),
            (false, Some(path)) => Some(format!("{prefix}.{path}")),
        };
        let inner = error.into_inner();
        let message = match &field {
            Some(field) => format!("request body: {field}: {inner}"),
            None => format!("request body: {inner}"),
        };
        Self {
            status: StatusCode::BAD_REQUEST,
            message,
            field,
        }
    }
}

impl From<wasmsched::Error> for ApiError {
    fn from(error: wasmsched::Error) -> Self {
        let status = match error.kind() {
            ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::ModuleRejected => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::UnitFault => StatusCode::BAD_GATEWAY,
            ErrorKind::Io | ErrorKind::Engine => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let field = match &error {
            wasmsched::Error::Input { field, .. } => field.clone(),
            _ => None,
        };
        Self {
            status,
            message: error.to_string(),
            field,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let status = match error {
            StoreError::Closed | StoreError::Fenced { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, format!("not durable, nothing reserved: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            field: self.field,
        };
        (self.status, axum::Json(body)).into_response()
    }
}
