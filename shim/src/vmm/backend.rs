//! Which hypervisor backend a sandbox gets (QEMU today): the one place that names the
//! backends, so the trait in mod.rs and the backends never import each other in a circle.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::qemu;
use super::Vmm;
use crate::config::Config;
use crate::host::Host;

/// The configured backend for the sandbox whose state directory is `dir` (its sockets and
/// logs go there; see [`state_files`]).
pub fn new_backend(cfg: &Config, dir: &Path, host: Arc<dyn Host>) -> Box<dyn Vmm> {
    Box::new(qemu::Qemu::new(qemu::QemuPaths::from_config(cfg), qemu::Policy::from_config(cfg), dir, host))
}

/// The files the configured backend keeps in a state directory `dir`: ("what", path) of
/// its sockets and logs (pure).
pub fn state_files(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    qemu::state_files(dir)
}
