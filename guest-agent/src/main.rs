//! bulwark-agent: PID 1 (`/init`) inside each Bulwark microVM.
//!
//! Static build (the guest has no libc):
//!   CARGO_TARGET_DIR=/tmp/tgt-agent RUSTFLAGS="-C target-feature=+crt-static" LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu cargo build --release --target x86_64-unknown-linux-gnu -p bulwark-agent
//!
//! Startup order only: leave the initramfs for a tmpfs root (init/boot.rs), mount the pseudo
//! filesystems and cgroup2, log to the console (init/logging.rs), load modules
//! (init/modules.rs), start the lock watchdog (init/watchdog.rs) and the reaper
//! (init/reaper.rs), mount the share if the VM has one
//! (init/share.rs), listen for ttrpc on vsock (rpc/), then connect out to the host and announce
//! READY (vsock.rs). PID 1 must never exit or panic: errors are logged and the agent keeps
//! serving.
//!
//! Layers, each calling only down: `rpc` (the ttrpc service) over `container` (specs, pods,
//! libcontainer, cgroups) over `process` (one process: pid, exit, stdio) over `init` (PID 1
//! duties, the reaper, the share); `network` (SetupSandbox) and `vsock` (READY and logs to the
//! host) stand apart, and so does `telemetry` (the eBPF syscall collector, started by
//! SetupSandbox). `testmodes`, above them all, is a hostile guest on demand for the host's
//! tests, compiled only with the cargo feature `test-modes`.
extern crate bulwark_protocol as protocol;

mod container;
mod init;
mod network;
mod process;
mod rpc;
mod telemetry;
mod testmodes;
mod vsock;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use init::{boot, logging, modules, reaper, share, watchdog};

fn main() {
    reset_sigpipe();
    std::panic::set_hook(Box::new(|info| {
        boot::early_log(&format!("panic: {info}"));
        tracing::error!("panic: {info}");
    }));
    let is_pid1 = std::process::id() == 1;

    // Stage 1 (initramfs) -> stage 2 (tmpfs root). On success in stage 1 this does not return.
    let switched = if is_pid1 {
        match boot::switch_root_if_needed() {
            Ok(s) => s,
            Err(e) => {
                boot::early_log(&format!("could not leave the initramfs ({e}); containers will use no_pivot"));
                false
            }
        }
    } else {
        true
    };

    let mount_errors = if is_pid1 { boot::mount_pseudo_filesystems() } else { vec![] };
    if is_pid1 {
        boot::setup_console_fds();
    }
    let log_lines = logging::init();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pid1 = is_pid1,
        tmpfs_root = switched,
        "bulwark-agent starting"
    );
    for e in mount_errors {
        tracing::error!("boot mount: {e}");
    }
    if is_pid1 {
        let (enabled, errors) = boot::enable_cgroup_controllers();
        tracing::info!("cgroup v2 controllers enabled: {}", enabled.join(" "));
        for e in errors {
            tracing::warn!("cgroup: {e}");
        }
        let (loaded, errors) = modules::load_all(Path::new(modules::MODULE_DIR));
        tracing::info!("kernel modules loaded: {}", loaded.join(" "));
        for e in errors {
            tracing::error!("module: {e}");
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    match runtime {
        Ok(rt) => rt.block_on(serve(log_lines, !switched)),
        Err(e) => tracing::error!("cannot build the async runtime: {e}"),
    }
    // Only reached on a fatal error. PID 1 must not exit (kernel panic): power off instead, so
    // the host sees the VM stop rather than a hang.
    tracing::error!("bulwark-agent cannot serve; powering off");
    std::thread::sleep(Duration::from_secs(1));
    if is_pid1 {
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

async fn serve(log_lines: logging::LogReceiver, no_pivot: bool) {
    let test_mode = testmodes::TestMode::from_kernel_cmdline();
    tokio::spawn(watchdog::run());
    let reaper = reaper::Reaper::new();
    if std::process::id() == 1 {
        tokio::spawn(reaper.clone().run());
    }

    let share = share::Share::new();
    if Path::new("/sys/fs/virtiofs").exists() {
        // Mount at boot when the VM has a share; otherwise the first CreateContainer retries.
        if let Err(e) = share.ensure_mounted().await {
            tracing::info!("share not mounted at boot: {e}");
        }
    }

    let service = test_mode.agent(Arc::new(rpc::AgentService::new(reaper, share, no_pivot)));
    let addr = format!("vsock://-1:{}", protocol::AGENT_PORT);
    // The vsock transport may take a moment to appear after the module loads.
    let mut server = None;
    for attempt in 0..50 {
        let services = protocol::agent_ttrpc::create_agent(service.clone());
        match vsock::host_only_listener(protocol::AGENT_PORT) {
            Ok(l) => {
                server = Some(ttrpc::r#async::Server::new().add_listener(l).register_service(services));
                break;
            }
            Err(e) => {
                if attempt == 0 || attempt == 49 {
                    tracing::warn!("binding {addr} failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let Some(mut server) = server else {
        tracing::error!("could not listen on {addr}");
        return;
    };
    if let Err(e) = server.start().await {
        tracing::error!("starting the ttrpc server failed: {e}");
        return;
    }
    tracing::info!("agent API listening on {addr} (connections from CID {} only)", protocol::HOST_CID);
    tokio::spawn(test_mode.log_connection(log_lines));
    let mut t = tokio::time::interval(Duration::from_secs(60));
    loop {
        t.tick().await;
        let dropped = logging::dropped_lines();
        if dropped > 0 {
            tracing::debug!(dropped, "log lines not forwarded (queue full)");
        }
    }
}

/// Rust's runtime starts every program with SIGPIPE ignored, and an ignored disposition is
/// inherited across exec: without this, container processes would start with SIGPIPE ignored
/// (`yes | head` would never end). Runc gives them the default, so does Bulwark. The agent
/// itself is unaffected: the kernel does not deliver default-action signals to PID 1, so its
/// writes to closed pipes and sockets still fail with EPIPE.
fn reset_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installs the default disposition, no handler code runs; called first thing in
    // main, before any other thread exists.
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        boot::early_log(&format!("could not reset SIGPIPE to its default: {e}"));
    }
}
