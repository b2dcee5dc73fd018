//! containerd-shim-bulwark-v2: runs each pod in a QEMU microVM. The shim itself is the
//! `bulwark_shim` library (src/lib.rs: start there to follow a container to the VM).

use bulwark_shim::{shim, RUNTIME_ID};

fn main() {
    let config = containerd_shim::Config {
        // We supervise our children (QEMU, virtiofsd, vhost-device-vsock) with tokio::process;
        // the library must not waitpid(-1) them away.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(containerd_shim::asynchronous::run::<shim::BulwarkShim>(RUNTIME_ID, Some(config)));
    // Let in-flight blocking work finish (e.g. the `delete` reply on stdout), but never hang
    // on a thread stuck in a blocking syscall once everything is torn down.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
}
