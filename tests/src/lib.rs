//! Shared helpers for the end-to-end tests: find the built artefacts, install Bulwark into a
//! private root with `scripts/install-node` (`install`), start a private real containerd
//! configured with it, drive it with `ctr`, and check that a sandbox
//! left nothing behind (processes, sockets, mounts, state directories). For the CRI tests:
//! `cri` starts containerd 1.6 or 2.x with its CRI plugin and a private CNI network (`cni`),
//! `cri_client` drives it like kubelet, `cri_stream` speaks the streaming protocol for
//! interactive exec and attach. For escape tests: `canary` (a watched host file, the host
//! mount table). `faults` has what the fault and hostile-guest tests share (the test
//! guest modes, a bystander pod, events, memory).
//!
//! Nothing here is faked: containerd, ctr, QEMU, virtiofsd and vhost-device-vsock are the real
//! programs. When one is missing the test fails with a message saying what to install or build.

pub mod canary;
pub mod cni;
pub mod containerd;
pub mod cri;
pub mod cri_client;
pub mod cri_stream;
pub mod faults;
pub mod install;
pub mod kubelet;
pub mod leftovers;
pub mod podnet;
pub mod process;
pub mod pty;

use std::path::{Path, PathBuf};

/// The runtime type `ctr run --runtime` takes to select Bulwark.
pub const RUNTIME: &str = "io.containerd.bulwark.v2";
/// The busybox test image built by `images/build-test-image`.
pub const TEST_IMAGE: &str = "docker.io/bulwark/busybox:test";
/// The pod sandbox ("pause") image built by `images/build-test-image`.
pub const PAUSE_IMAGE: &str = "docker.io/bulwark/pause:test";

/// Where the built pieces live. `scripts/test` builds them all before running the tests; each
/// can be overridden with an environment variable of the same name.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// Directory that holds `containerd-shim-bulwark-v2` and `bulwark`.
    pub shim_dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The guest kernel's `uname -r`.
    pub kernel_release: String,
    pub test_image: PathBuf,
    /// The pause image tarball (checked by the CRI harness, which needs it).
    pub pause_image: PathBuf,
    pub qemu: PathBuf,
    pub virtiofsd: PathBuf,
    pub vhost_device_vsock: PathBuf,
}

/// The repository root (this crate lives in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn env_path(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

fn require(path: &Path, what: &str, fix: &str) -> Result<(), String> {
    if path.exists() {
        Ok(())
    } else {
        Err(format!("{what} not found at {}: {fix}", path.display()))
    }
}

impl Artifacts {
    /// Locates every artefact, failing with a message naming the first one missing and how to
    /// get it. Tests call this first: a missing prerequisite is a failure, never a skip.
    pub fn locate() -> Result<Artifacts, String> {
        let root = repo_root();
        let build = env_path("BULWARK_BUILD", root.join("build"));
        let cache = env_path(
            "BULWARK_CACHE",
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/bulwark"),
        );
        let tools = cache.join("tools/bin");
        let a = Artifacts {
            shim_dir: env_path("BULWARK_SHIM_DIR", root.join("target/debug")),
            kernel: build.join("guest/vmlinux"),
            initrd: build.join("guest/initramfs.cpio"),
            kernel_release: String::new(),
            test_image: build.join("images/busybox-oci.tar"),
            pause_image: build.join("images/pause-oci.tar"),
            qemu: env_path("BULWARK_QEMU", PathBuf::from("/usr/bin/qemu-system-x86_64")),
            virtiofsd: env_path("BULWARK_VIRTIOFSD", tools.join("virtiofsd")),
            vhost_device_vsock: env_path("BULWARK_VHOST_DEVICE_VSOCK", tools.join("vhost-device-vsock")),
        };
        let build_hint = "run scripts/test, which builds it";
        require(&a.shim_dir.join("containerd-shim-bulwark-v2"), "the shim binary", build_hint)?;
        require(&a.shim_dir.join("bulwark"), "the bulwark CLI", build_hint)?;
        require(&a.kernel, "the guest kernel", build_hint)?;
        require(&a.initrd, "the guest initramfs", build_hint)?;
        require(&a.test_image, "the busybox test image", build_hint)?;
        require(&a.qemu, "QEMU", "apt-get install qemu-system-x86")?;
        require(&a.virtiofsd, "virtiofsd", "scripts/test installs it (cargo install virtiofsd)")?;
        require(
            &a.vhost_device_vsock,
            "vhost-device-vsock",
            "scripts/test installs it (cargo install vhost-device-vsock)",
        )?;
        for tool in ["containerd", "ctr"] {
            if process::which(tool).is_none() {
                return Err(format!("{tool} not found on PATH: apt-get install containerd"));
            }
        }
        let release_file = build.join("guest/kernel-release");
        let kernel_release = std::fs::read_to_string(&release_file)
            .map_err(|e| format!("reading {}: {e} ({build_hint})", release_file.display()))?
            .trim()
            .to_string();
        Ok(Artifacts { kernel_release, ..a })
    }
}
