//! What a sandbox attaches on the host: container rootfs (rootfs.rs; an overlay over id-mapped
//! layers for the unprivileged virtiofsd: idmapped_overlay.rs), host bind mounts shared
//! into the VM (volumes.rs), unmount-and-remove of a directory (mount.rs) and the pod network
//! (network/).

pub mod idmapped_overlay;
pub mod mount;
pub mod network;
pub mod rootfs;
pub mod share;
pub mod volumes;
