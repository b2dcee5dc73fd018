//! What a sandbox attaches on the host: container rootfs (rootfs.rs), host bind mounts shared
//! into the VM (volumes.rs), unmount-and-remove of a directory (mount.rs) and the pod network
//! (network/).

pub mod mount;
pub mod network;
pub mod rootfs;
pub mod share;
pub mod volumes;
