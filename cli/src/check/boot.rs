//! KVM and a real boot, the way the shim decides (`vmm/accel.rs`): KVM counts as usable only
//! when a guest really boots under it (KVM_CREATE_VM succeeds on nested hosts whose guests then
//! spin), within the shim's own probe timeout; otherwise `vm.acceleration = "auto"` falls back
//! to TCG if `vm.allow_tcg_fallback` allows it. The boot is the shim's own probe
//! (`sandbox::boot::probe_boot`): the configured QEMU, helpers, jail, kernel and initramfs, up
//! to the agent's answer to Check, in `<runtime_dir>/.probe/<pid>`, removed afterwards.

use std::time::{Duration, Instant};

use bulwark_shim::config::{Acceleration, Config};
use bulwark_shim::sandbox::boot::probe_boot;
use bulwark_shim::vmm::accel::PROBE_TIMEOUT;
use bulwark_shim::vmm::Accel;

use super::outcome::Outcome;

/// How to give the node usable KVM, with what is wrong with /dev/kvm's permissions if that is
/// visible: QEMU runs as the sandbox uid with /dev/kvm's group added (docs/jail.md).
fn kvm_fix() -> String {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut fix = "give the node usable KVM: enable virtualization in the firmware (or nested virtualization \
                   for a VM) and load kvm_intel or kvm_amd"
        .to_string();
    if let Ok(md) = std::fs::metadata("/dev/kvm") {
        let mode = md.permissions().mode() & 0o777;
        if mode & 0o060 != 0o060 || md.gid() == 0 {
            fix.push_str(&format!(
                "; /dev/kvm is mode {mode:o}, group {}: QEMU runs as the sandbox's uid with /dev/kvm's group, \
                 which needs read and write, and must not be root's (Debian: root:kvm 0660, set by udev)",
                md.gid()
            ));
        }
    }
    fix
}

/// Boots a throwaway VM with `accel`; the time it took or why it failed.
fn boot(cfg: &Config, accel: Accel, timeout: Duration) -> Result<Duration, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start an async runtime: {e}"))?;
    let start = Instant::now();
    rt.block_on(probe_boot(cfg, accel, timeout)).map_err(|e| e.to_string())?;
    Ok(start.elapsed())
}

/// The KVM outcome when KVM cannot be used: how bad that is depends on the configuration.
fn kvm_unusable(cfg: &Config, why: String) -> Outcome {
    match (cfg.vm.acceleration, cfg.vm.allow_tcg_fallback) {
        (Acceleration::Kvm, _) => {
            Outcome::fail("kvm", format!("KVM unusable: {why}; vm.acceleration = \"kvm\": every boot fails"), kvm_fix())
        }
        (Acceleration::Auto, false) => Outcome::fail(
            "kvm",
            format!("KVM unusable: {why}; vm.allow_tcg_fallback = false: every boot is refused"),
            format!("{}; or allow the TCG fallback (vm.allow_tcg_fallback = true)", kvm_fix()),
        ),
        (Acceleration::Auto, true) => Outcome::warn(
            "kvm",
            format!(
                "KVM unusable: {why}; guests fall back to TCG: slow software emulation, and not a security \
                 boundary QEMU promises (vm.allow_tcg_fallback = false forbids it)"
            ),
            kvm_fix(),
        ),
        (Acceleration::Tcg, _) => Outcome::warn(
            "kvm",
            format!("KVM unusable ({why}), and not used: vm.acceleration = \"tcg\" (slow, not a security boundary)"),
            kvm_fix(),
        ),
    }
}

/// The "kvm" and "boot" outcomes. `create` is KVM_CREATE_VM's result; `can_boot` why a test
/// boot must not run, if so.
pub fn kvm_and_boot(cfg: &Config, create: Result<(), String>, can_boot: Result<(), String>) -> Vec<Outcome> {
    let tcg_allowed = match cfg.vm.acceleration {
        Acceleration::Tcg => true,
        Acceleration::Auto => cfg.vm.allow_tcg_fallback,
        Acceleration::Kvm => false,
    };
    let mut kvm_booted = None;
    let kvm = match (create, &can_boot) {
        (Err(e), _) => kvm_unusable(cfg, e),
        (Ok(()), _) if cfg.vm.acceleration == Acceleration::Tcg => {
            Outcome::ok("kvm", "KVM_CREATE_VM works, but vm.acceleration = \"tcg\": guests run under TCG")
        }
        (Ok(()), Err(why)) => {
            Outcome::ok("kvm", format!("KVM_CREATE_VM works (a guest boot under KVM was not tried: {why})"))
        }
        (Ok(()), Ok(())) => {
            // The timeout the shim's own probe gives KVM, unless it is told to use KVM anyway.
            let timeout = match cfg.vm.acceleration {
                Acceleration::Kvm => Duration::from_secs(cfg.vm.boot_timeout_secs),
                _ => PROBE_TIMEOUT,
            };
            match boot(cfg, Accel::Kvm, timeout) {
                Ok(t) => {
                    kvm_booted = Some(t);
                    Outcome::ok("kvm", format!("a guest booted under KVM in {:.1} s", t.as_secs_f64()))
                }
                Err(e) => kvm_unusable(
                    cfg,
                    format!("KVM_CREATE_VM works but a guest did not boot under KVM within {timeout:?} ({e})"),
                ),
            }
        }
    };
    let boot_outcome = match (can_boot, kvm_booted) {
        (Err(why), _) => Outcome::skipped("boot", format!("test boot not run: {why}")),
        (Ok(()), Some(t)) => Outcome::ok(
            "boot",
            format!(
                "a VM booted under KVM and its agent answered (protocol {}) in {:.1} s",
                bulwark_protocol::PROTOCOL_VERSION,
                t.as_secs_f64()
            ),
        ),
        (Ok(()), None) if !tcg_allowed => {
            Outcome::skipped("boot", "test boot not run: KVM is unusable and TCG is not allowed (above)")
        }
        (Ok(()), None) => {
            let timeout = Duration::from_secs(cfg.vm.boot_timeout_secs);
            match boot(cfg, Accel::Tcg, timeout) {
                Ok(t) => Outcome::ok(
                    "boot",
                    format!(
                        "a VM booted under TCG and its agent answered (protocol {}) in {:.1} s",
                        bulwark_protocol::PROTOCOL_VERSION,
                        t.as_secs_f64()
                    ),
                ),
                Err(e) => Outcome::fail(
                    "boot",
                    format!("a test VM did not boot under TCG within {timeout:?}: {e}"),
                    "the message names the failing step (run bulwark check -v for the shim's log lines); \
                     a slow node may need a larger vm.boot_timeout_secs",
                ),
            }
        }
    };
    vec![kvm, boot_outcome]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::outcome::Status;

    fn cfg(accel: Acceleration, fallback: bool) -> Config {
        let mut c = Config::default();
        c.vm.acceleration = accel;
        c.vm.allow_tcg_fallback = fallback;
        c
    }

    #[test]
    fn an_unusable_kvm_is_judged_by_the_configuration() {
        let no = || Err("opening /dev/kvm: No such file or directory".to_string());
        let skip = || Err("--quick".to_string());
        let o = kvm_and_boot(&cfg(Acceleration::Auto, true), no(), skip());
        assert_eq!((o[0].status, o[1].status), (Status::Warn, Status::Skipped));
        assert!(o[0].detail.contains("/dev/kvm") && o[0].detail.contains("TCG"), "{o:?}");
        assert!(o[0].fix.as_deref().unwrap().contains("kvm_intel"));
        let o = kvm_and_boot(&cfg(Acceleration::Auto, false), no(), skip());
        assert_eq!(o[0].status, Status::Fail);
        assert!(o[0].detail.contains("allow_tcg_fallback"));
        assert_eq!(kvm_and_boot(&cfg(Acceleration::Kvm, true), no(), skip())[0].status, Status::Fail);
        assert_eq!(kvm_and_boot(&cfg(Acceleration::Tcg, true), no(), skip())[0].status, Status::Warn);
        // No test boot when neither KVM nor TCG may run a guest.
        let o = kvm_and_boot(&cfg(Acceleration::Auto, false), no(), Ok(()));
        assert_eq!(o[1].status, Status::Skipped, "{o:?}");
        let o = kvm_and_boot(&cfg(Acceleration::Auto, true), Ok(()), skip());
        assert_eq!(o[0].status, Status::Ok);
        assert!(o[0].detail.contains("not tried"));
    }
}
