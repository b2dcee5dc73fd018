//! Errors of the pod network setup (shared by the netns, links and attach code).

use std::path::PathBuf;

/// Errors of the pod network setup.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network namespace path {path:?} in the OCI spec is not accepted: {why}")]
    InvalidNetnsPath { path: String, why: String },
    #[error("opening the pod network namespace {path}: {source} (check that CNI created it and that it still exists)")]
    NetnsOpen { path: PathBuf, source: std::io::Error },
    #[error("{0} is the host's own network namespace; refusing to attach a VM to the host network")]
    HostNetns(PathBuf),
    #[error("entering the network namespace {path}: {source}")]
    Setns { path: PathBuf, source: std::io::Error },
    #[error("network namespace {0} has no interface besides lo: CNI did not attach one (check the CNI configuration and plugins)")]
    NoInterface(PathBuf),
    #[error("pod network namespace {path}: {what}: {source}")]
    Netlink { path: PathBuf, what: String, source: std::io::Error },
    #[error("running the netns worker thread: {0}")]
    Thread(std::io::Error),
}
