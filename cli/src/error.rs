//! The CLI's errors: each says what went wrong and, where there is one, what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node configuration cannot be used.
    #[error("{0}")]
    Config(String),
    /// No sandbox of that name under the runtime directory.
    #[error("no sandbox {name:?} under {runtime_dir} (bulwark ps lists them)")]
    NoSuchSandbox { name: String, runtime_dir: PathBuf },
    /// More than one sandbox of that name (in different containerd namespaces).
    #[error(
        "{name:?} names sandboxes in several containerd namespaces: {namespaces}; give its state directory instead"
    )]
    Ambiguous { name: String, namespaces: String },
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("writing the output: {0}")]
    Output(String),
}

pub type Result<T> = std::result::Result<T, Error>;
