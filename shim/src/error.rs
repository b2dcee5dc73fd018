//! Typed errors of the shim, and how each maps to a ttrpc status containerd shows the user.
//!
//! Every message says what failed, with the path or value, and what to do about it.

use std::path::PathBuf;

use ttrpc::Code;

/// Errors at module boundaries inside the shim.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is unreadable or invalid.
    #[error("configuration {path}: {msg}")]
    Config { path: PathBuf, msg: String },

    /// A request carried a bad value (id, bundle, config.json, ...).
    #[error("{0}")]
    InvalidArgument(String),

    /// The container, process or sandbox named does not exist.
    #[error("{0}")]
    NotFound(String),

    /// The container exists already.
    #[error("{0}")]
    AlreadyExists(String),

    /// The request does not fit the container's current state.
    #[error("{0}")]
    FailedPrecondition(String),

    /// A file the shim needs (kernel, binary, ...) is missing.
    #[error("{what} {path} not found: {hint}")]
    Missing { what: &'static str, path: PathBuf, hint: String },

    /// Starting a helper program failed.
    #[error("starting {what} ({path}): {source}")]
    Spawn {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The VM did not come up (or died while coming up).
    #[error("microVM failed to boot: {0}")]
    Boot(String),

    /// The guest agent misbehaved or is unreachable.
    #[error("guest agent: {0}")]
    Agent(String),

    /// The guest agent did not answer in time, or its connection broke.
    #[error("guest agent unreachable: {0}")]
    AgentUnreachable(String),

    /// A deadline passed.
    #[error("timed out: {0}")]
    Timeout(String),

    /// Mounting or unmounting failed.
    #[error("mount: {0}")]
    Mount(String),

    /// A task of the shim itself failed (a panic: a bug of ours).
    #[error("internal: {0}")]
    Internal(String),
}

/// Result with the shim's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    /// The ttrpc status code containerd receives for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::Config { .. } | Error::Missing { .. } => Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Timeout(_) => Code::DEADLINE_EXCEEDED,
            Error::Agent(_) | Error::AgentUnreachable(_) => Code::UNAVAILABLE,
            Error::Spawn { .. } | Error::Io { .. } | Error::Boot(_) | Error::Mount(_) | Error::Internal(_) => {
                Code::INTERNAL
            }
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

impl From<Error> for containerd_shim::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument(m) => containerd_shim::Error::InvalidArgument(m),
            Error::NotFound(m) => containerd_shim::Error::NotFoundError(m),
            other => containerd_shim::Error::Other(other.to_string()),
        }
    }
}

/// The ttrpc error for a Task method Bulwark does not implement.
pub fn unimplemented(method: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(
        Code::UNIMPLEMENTED,
        format!("{method} is not implemented by the bulwark runtime"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_ttrpc() {
        let e: ttrpc::Error = Error::NotFound("container x not found".into()).into();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::NOT_FOUND);
                assert!(s.message().contains("container x"));
            }
            other => panic!("unexpected {other:?}"),
        }
        match unimplemented("Pause") {
            ttrpc::Error::RpcStatus(s) => assert_eq!(s.code(), Code::UNIMPLEMENTED),
            other => panic!("unexpected {other:?}"),
        }
    }
}
