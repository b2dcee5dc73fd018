//! Checks of the host kernel and privileges: root, /dev/kvm (KVM_CREATE_VM, through the shim's
//! own accel code), seccomp filters (the VMM jail's), cgroup v2 with the controllers the host
//! cgroup of each sandbox needs (through the `host-cgroup` crate's detection).

use bulwark_host_cgroup::Hierarchy;
use bulwark_shim::config::Config;

use super::outcome::Outcome;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn root() -> Outcome {
    if is_root() {
        Outcome::ok("root", "running as root")
    } else {
        // Without root no test boot can run, so the node cannot be shown ready.
        Outcome::fail(
            "root",
            "not running as root: the test boot cannot run and state directories may be unreadable, so the \
             node is not verified",
            "run bulwark check as root (as the shim runs)",
        )
    }
}

/// Whether `/dev/kvm` opens and a VM can be created in it (not yet whether a guest boots).
pub fn kvm_create() -> Result<(), String> {
    bulwark_shim::vmm::accel::kvm_create_vm()
}

/// The kernel's seccomp filter support with the action the jail uses (kill the process).
pub fn seccomp() -> Outcome {
    const FILE: &str = "/proc/sys/kernel/seccomp/actions_avail";
    let fix = "a kernel built with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER (every distribution kernel is)";
    match std::fs::read_to_string(FILE) {
        Ok(actions) if actions.split_whitespace().any(|a| a == "kill_process") => {
            Outcome::ok("seccomp", format!("seccomp filters with actions: {}", actions.trim()))
        }
        Ok(actions) => Outcome::fail(
            "seccomp",
            format!("the kernel's seccomp lacks kill_process (has: {}): the VMM jail needs it", actions.trim()),
            fix,
        ),
        Err(e) => {
            Outcome::fail("seccomp", format!("no seccomp filter support ({FILE}: {e}): the VMM jail needs it"), fix)
        }
    }
}

/// cgroup v2 with cpu, memory and pids: each sandbox's host cgroup (docs/host-cgroup.md).
pub fn cgroup(cfg: &Config) -> Outcome {
    match Hierarchy::detect().and_then(|h| h.check().map(|c| (h, c))) {
        Ok((h, controllers)) => Outcome::ok(
            "cgroup v2",
            format!(
                "{} with the controllers {}",
                h.mount.display(),
                controllers.iter().map(String::as_str).collect::<Vec<_>>().join(" ")
            ),
        ),
        Err(e) if cfg.cgroup.required => Outcome::fail(
            "cgroup v2",
            format!("{e}; cgroup.required = true: every pod is refused"),
            "give the host a cgroup v2 hierarchy with cpu, memory and pids (as the message says), or set cgroup.required = false",
        ),
        Err(e) => Outcome::warn(
            "cgroup v2",
            format!("{e}; pods run, but QEMU and its helpers get no host cgroup limits (cgroup.required = false)"),
            "give the host a cgroup v2 hierarchy with cpu, memory and pids (the message above says how)",
        ),
    }
}
