//! Containers in the guest. This file holds what every part shares: the errors and the checks
//! on identifiers and paths from the host (pure). The parts, each with one job:
//! - `spec.rs`: pure rewriting of the host's OCI spec and exec process JSON for the guest;
//! - `seccomp.rs`: the default seccomp profile for specs without one, AF_VSOCK denied in
//!   profiles containers bring (pure);
//! - `pod.rs`: how a container's namespaces, sysctls, /dev/shm and shared mounts map onto the
//!   pod in the VM (the rewrite is pure; shm mounts and sysctl writes are the I/O);
//! - `bundle.rs`: the container's files in the guest: rootfs and shared mounts resolved in the
//!   virtio-fs share, the bundle directory (config.json, exec process JSON);
//! - `runtime.rs`: the only module that calls libcontainer (create/start/kill/delete/exec,
//!   pause/resume, the exec executor), behind the small [`runtime::Runtime`] trait;
//! - `exec.rs`: starting an exec process (ExecProcess) through the runtime;
//! - `locks.rs`: each container's lifecycle lock (one order for create/exec/pause/resume/
//!   delete; an exec is refused while the container is paused);
//! - `cgroups.rs`: each container's guest cgroup (stats, updates, pause, processes, OOM events).
use std::path::{Component, Path};

use crate::process::ProcessIoError;

pub mod bundle;
pub mod cgroups;
pub mod exec;
pub mod locks;
pub mod pod;
pub mod runtime;
pub mod seccomp;
pub mod spec;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{0}")]
    InvalidId(String),
    #[error("invalid rootfs_path {0:?}: must be a non-empty relative path without '..'")]
    InvalidRootfsPath(String),
    #[error("rootfs {path} is not usable: {reason}")]
    Rootfs { path: String, reason: String },
    #[error("invalid OCI spec: {0}")]
    Spec(String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
    #[error("libcontainer {op} of {id} failed: {source}")]
    Libcontainer { op: &'static str, id: String, source: Box<libcontainer::error::LibcontainerError> },
    /// A libcontainer call in its helper process (init/helper.rs) failed, timed out or crashed.
    #[error("{0}")]
    Helper(String),
    /// The container's lifecycle lock (container/locks.rs) stayed busy.
    #[error("container {id:?} is busy ({holder} in progress); try again")]
    Busy { id: String, holder: &'static str },
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("invalid exec process: {0}")]
    InvalidProcess(String),
    #[error("container {0:?} is not running (its init process has exited): cannot exec in it")]
    NotRunning(String),
    #[error("container {0:?} is paused: cannot exec in it until it is resumed")]
    Paused(String),
    #[error("the seccomp profile of container {0:?} uses SCMP_ACT_NOTIFY, which the agent does not support for exec processes")]
    NotifySeccomp(String),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("exec stdio: {0}")]
    Io(#[from] ProcessIoError),
    #[error("{what} {path}: {source}")]
    File { what: &'static str, path: String, source: std::io::Error },
    #[error("internal task failed: {0}")]
    Join(String),
}

/// Container and exec ids become directory names: the rule both sides enforce (protocol/).
pub fn validate_id(id: &str) -> Result<(), ContainerError> {
    bulwark_protocol::validate_id(id).map_err(|e| ContainerError::InvalidId(e.to_string()))
}

/// `rootfs_path` must be a plain relative path (normal components and "." only).
pub fn validate_rootfs_path(p: &str) -> Result<&Path, ContainerError> {
    let path = Path::new(p);
    let bad = || ContainerError::InvalidRootfsPath(p.to_string());
    if p.is_empty() || p.contains('\0') {
        return Err(bad());
    }
    let mut normal = 0;
    for c in path.components() {
        match c {
            Component::Normal(_) => normal += 1,
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    if normal == 0 {
        return Err(bad());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_path_validation() {
        for good in ["rootfs", "c1/rootfs", "./c1/rootfs", "a/./b"] {
            assert!(validate_rootfs_path(good).is_ok(), "{good}");
        }
        for bad in ["", "/abs", "..", "../x", "a/../../b", "a/..", ".", "./", "a\0b"] {
            assert!(validate_rootfs_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn id_validation() {
        assert!(validate_id("abc-1_2.3").is_ok());
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
