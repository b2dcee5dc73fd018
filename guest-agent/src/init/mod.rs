//! Boot duties of PID 1, in the order main.rs runs them: leave the initramfs for a tmpfs root
//! and mount the pseudo filesystems and cgroup2 (`boot.rs`), log to the console and queue lines
//! for the host (`logging.rs`), load kernel modules (`modules.rs`), reap zombies under a lock
//! shared with libcontainer calls (`reaper.rs`), and mount the virtio-fs share (`share.rs`).
//! Nothing here uses the container, process or RPC layers.
pub mod boot;
pub mod logging;
pub mod modules;
pub mod reaper;
pub mod share;
