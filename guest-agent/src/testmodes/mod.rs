//! Test-only guest modes: a broken or hostile guest on demand, for the host's fault-matrix and
//! hostile-guest tests (`tests/tests/faults.rs`, `tests/tests/hostile.rs`). The modes exist
//! only with the cargo feature `test-modes`, which only the agent of the test initramfs has
//! (`build/guest-test/initramfs.cpio`, made by `bulwark_build`). The production agent has none
//! of them: it refuses the parameter (logged) and runs normally.
//!
//! A mode is chosen on the guest kernel command line, `bulwark.test_mode=<name>` (a test sets
//! the shim's `[vm] kernel_params` and points `[paths] initrd` at the test initramfs):
//!
//! | mode | what the guest does |
//! | --- | --- |
//! | `panic-after-start` | crashes its kernel (sysrq `c`) 2 s after the first container started |
//! | `kill-agent-after-start` | the agent (PID 1, so the guest kernel panics too) exits 2 s after the first container started |
//! | `liar` | acknowledges every SignalProcess without delivering it, never reports an exit |
//! | `mute` | stops answering every agent call once the first container started |
//! | `huge-replies` | StatsContainer and ListProcesses replies just under ttrpc's 4 MiB message cap, oversized OOM event ids, a 3 MiB Check reply once started |
//! | `flood-logs` | once started: log lines on the log connection and the serial console as fast as they go |
//! | `garbage-frames` | once started: random bytes on the log connection, random frames on the telemetry port |
//! | `oversize` | once started: one endless line on the log connection, over-cap frame lengths and endless frames on the telemetry port |
//! | `vsock-flood` | once started: vsock connections and data to its own CID and a sibling CID, as fast as they go |
//!
//! "The first container started" is the first successful StartContainer, or the n-th with
//! `bulwark.test_mode_starts=<n>` (a CRI pod's first container is its pause container).
//!
//! main.rs has two hooks, plain pass-throughs in the production agent: [`TestMode::agent`]
//! (the service main registers) and [`TestMode::log_connection`] (the READY + log
//! connection). `mode.rs` names the modes and holds the "after start" trigger, `agent.rs` wraps
//! the agent API, `floods.rs` writes the hostile streams.

use std::sync::Arc;

use protocol::agent_ttrpc::Agent;

use crate::init::logging::LogReceiver;
use crate::rpc::AgentService;
use crate::vsock;

#[cfg(feature = "test-modes")]
mod agent;
#[cfg(feature = "test-modes")]
mod floods;
#[cfg(feature = "test-modes")]
mod mode;
#[cfg(feature = "test-modes")]
use mode::{first_start, Mode};

/// The kernel command line parameter naming the mode.
pub const PARAM: &str = "bulwark.test_mode";
/// The parameter saying after which StartContainer the "after start" modes act (default 1).
#[cfg(feature = "test-modes")]
pub const STARTS_PARAM: &str = "bulwark.test_mode_starts";

/// The value of `bulwark.test_mode=` on a kernel command line, if any (pure).
pub fn requested(cmdline: &str) -> Option<&str> {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix(PARAM)?.strip_prefix('='))
}

/// The test mode this agent runs in: always none in the production build.
pub struct TestMode {
    #[cfg(feature = "test-modes")]
    mode: Option<Mode>,
    /// After which StartContainer the "after start" modes act.
    #[cfg(feature = "test-modes")]
    starts: u32,
}

impl TestMode {
    /// The mode the kernel command line asks for (logged either way).
    pub fn from_kernel_cmdline() -> TestMode {
        let m = Self::from_cmdline(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
        #[cfg(feature = "test-modes")]
        first_start::set_after(m.starts);
        m
    }

    /// The production agent: no modes; a request for one is refused (logged).
    #[cfg(not(feature = "test-modes"))]
    pub fn from_cmdline(cmdline: &str) -> TestMode {
        if let Some(name) = requested(cmdline) {
            tracing::error!("{PARAM}={name:?} refused: this agent has no test modes; running normally");
        }
        TestMode {}
    }

    /// The test agent: the mode named on the command line, if it is one.
    #[cfg(feature = "test-modes")]
    pub fn from_cmdline(cmdline: &str) -> TestMode {
        let starts = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(STARTS_PARAM)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(1);
        let mode = requested(cmdline).and_then(|name| match Mode::parse(name) {
            Some(m) => {
                tracing::warn!("TEST MODE {name} ACTIVE (after start {starts}): this guest misbehaves on purpose");
                Some(m)
            }
            None => {
                let known: Vec<&str> = Mode::ALL.iter().map(|(n, _)| *n).collect();
                tracing::error!("unknown test mode {name:?} (known: {}); running normally", known.join(" "));
                None
            }
        });
        TestMode { mode, starts }
    }

    /// Whether a mode is active (never in the production build).
    #[cfg(test)]
    pub fn is_active(&self) -> bool {
        #[cfg(feature = "test-modes")]
        return self.mode.is_some();
        #[cfg(not(feature = "test-modes"))]
        false
    }

    /// The ttrpc service main registers: the agent API itself, or the active mode's wrapper
    /// around it.
    pub fn agent(&self, service: Arc<AgentService>) -> Arc<dyn Agent + Send + Sync> {
        #[cfg(feature = "test-modes")]
        if let Some(mode) = self.mode {
            return agent::Hostile::wrap(mode, service);
        }
        service
    }

    /// The READY + log connection: announce and forward the log lines, or (modes that abuse
    /// the guest's streams) announce, forward until the first container started, then abuse.
    pub async fn log_connection(self, lines: LogReceiver) {
        #[cfg(feature = "test-modes")]
        if let Some(mode) = self.mode.filter(|m| m.abuses_streams()) {
            return floods::log_connection(mode, lines).await;
        }
        vsock::announce_and_forward_logs(lines).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameter_is_found_on_a_command_line() {
        assert_eq!(requested("console=ttyS0 bulwark.test_mode=liar quiet"), Some("liar"));
        assert_eq!(requested("console=ttyS0 quiet"), None);
        assert_eq!(requested("bulwark.test_modex=liar"), None);
        assert_eq!(requested("bulwark.test_mode="), Some(""));
    }

    /// The production agent has no test modes: a command line asking for one changes nothing.
    #[cfg(not(feature = "test-modes"))]
    #[test]
    fn the_production_agent_has_no_test_modes() {
        for name in ["liar", "mute", "panic-after-start", "kill-agent-after-start", "huge-replies", "flood-logs"] {
            let m = TestMode::from_cmdline(&format!("console=ttyS0 {PARAM}={name}"));
            assert!(!m.is_active(), "{name} must not be active in the production agent");
        }
    }

    #[cfg(feature = "test-modes")]
    #[test]
    fn every_mode_is_named_and_parsed_back() {
        for (name, mode) in Mode::ALL {
            assert_eq!(Mode::parse(name), Some(mode));
            assert_eq!(mode.name(), name);
            assert!(TestMode::from_cmdline(&format!("quiet {PARAM}={name}")).is_active());
        }
        assert!(!TestMode::from_cmdline("quiet bulwark.test_mode=no-such-mode").is_active());
        assert!(!TestMode::from_cmdline("quiet").is_active());
    }

    #[cfg(feature = "test-modes")]
    #[test]
    fn the_modes_act_after_the_nth_start_only() {
        first_start::set_after(2);
        assert!(!first_start::mark());
        assert!(!first_start::started());
        assert!(first_start::mark());
        assert!(first_start::started());
        assert!(!first_start::mark(), "once");
    }
}
