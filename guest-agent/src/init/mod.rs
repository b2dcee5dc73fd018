//! Boot duties of PID 1, in the order main.rs runs them: leave the initramfs for a tmpfs root
//! and mount the pseudo filesystems and cgroup2 (`boot.rs`), log to the console and queue lines
//! for the host (`logging.rs`), load kernel modules (`modules.rs`), reap zombies (`reaper.rs`),
//! and mount the virtio-fs share (`share.rs`); run libcontainer's calls in single-threaded
//! helper processes with a deadline (`helper.rs`); report locks held too long (`watchdog.rs`).
//! Nothing here uses the container, process or RPC layers.
pub mod boot;
pub mod helper;
pub mod logging;
pub mod modules;
pub mod reaper;
pub mod share;
pub mod watchdog;
