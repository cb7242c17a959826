//! Errors: [`Error`] for starting a server, [`ApiError`] for answering a request with the
//! OCI distribution error JSON.

use std::path::PathBuf;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Why a server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file the server needs (htpasswd, certificate, key) is unusable.
    #[error("{what} {path}: {reason}")]
    File {
        /// What the file is for, e.g. `htpasswd file`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line where it applies.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] ferry_core::Error),
    /// The HTTP server failed.
    #[error("serving on {addr}: {source}")]
    Serve {
        /// The address served.
        addr: std::net::SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// An error answer: an HTTP status and one OCI error (`{"errors":[{code,message,detail}]}`).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The OCI error code, e.g. `BLOB_UNKNOWN`.
    pub code: &'static str,
    /// One line for humans.
    pub message: String,
    /// Extra headers (`WWW-Authenticate`, `Content-Range`).
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

/// Result of a request handler.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

impl ApiError {
    /// An error of `status` and OCI `code`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// The same error with one more response header.
    pub fn with_header(mut self, name: header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    /// 404 `NAME_UNKNOWN`: the store names no image under this repository.
    pub fn name_unknown(repo: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("repository {repo:?} is not in this store"),
        )
    }

    /// 400 `NAME_INVALID`.
    pub fn name_invalid(repo: &str, why: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            format!("invalid repository name {repo:?}: {why}"),
        )
    }

    /// 404 `BLOB_UNKNOWN`.
    pub fn blob_unknown(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob {what} is not in this store"),
        )
    }

    /// 404 `MANIFEST_UNKNOWN`.
    pub fn manifest_unknown(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("manifest {what} is not in this store"),
        )
    }

    /// 400 `DIGEST_INVALID`.
    pub fn digest_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", message)
    }

    /// 405 `UNSUPPORTED`: pushes to a read-only server.
    pub fn read_only() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this ferry serve is read-only: start it with --allow-push to accept pushes",
        )
    }

    /// 405 `UNSUPPORTED` for an operation the server never does.
    pub fn unsupported(what: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("ferry serve does not support {what}"),
        )
    }

    /// 500 `UNKNOWN`: a local failure (store, file system).
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            message.to_string(),
        )
    }

    /// The store error as an answer: missing things are 404, everything else 500.
    pub fn store(e: ferry_core::Error) -> Self {
        match e {
            ferry_core::Error::BlobNotFound(d) => Self::blob_unknown(d),
            ferry_core::Error::ImageNotFound(what) => Self::manifest_unknown(what),
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        } else {
            tracing::debug!(status = %self.status, code = self.code, "{}", self.message);
        }
        let body = serde_json::json!({
            "errors": [{"code": self.code, "message": self.message, "detail": null}]
        });
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}
