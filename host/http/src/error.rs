//! [`ApiError`]: every error the API returns, as JSON with a stable code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use workhost::{StoreError, WorkError};

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid`, `unauthorized`, `forbidden`,
    /// `csrf`, `not_found`, `conflict`, `store`, `internal`.
    pub code: &'static str,
    /// One line for people, naming the field or the problem.
    pub message: String,
}

/// An error of the API: its status and code, and a message.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store", e.to_string())
    }
}

impl From<WorkError> for ApiError {
    fn from(e: WorkError) -> ApiError {
        match e {
            WorkError::Store(s) => s.into(),
            WorkError::UnknownTask(_) => ApiError::not_found(e.to_string()),
            WorkError::UnknownHandler(_) => ApiError::not_found(e.to_string()),
            WorkError::WrongState { .. } | WorkError::Conflict(_) => ApiError::conflict(e.to_string()),
            other => ApiError::invalid(other.to_string()),
        }
    }
}
