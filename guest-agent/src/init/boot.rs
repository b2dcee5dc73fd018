//! Boot duties of PID 1: leave the initramfs for a real tmpfs root (so youki's pivot_root
//! works), then mount the pseudo filesystems and set up pure cgroup v2.
//!
//! pivot_root(2) fails with EINVAL while the caller's root is the initramfs `rootfs` (it has no
//! parent mount). So stage 1 copies /init and /lib/modules into a fresh tmpfs, moves that tmpfs
//! onto `/`, chroots into it and re-executes /init with [`SWITCHED_ENV`] set (stage 2).
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};

/// Set in the environment of the re-executed agent once the root is a real tmpfs.
pub const SWITCHED_ENV: &str = "BULWARK_SWITCHED";
const NEWROOT: &str = "/newroot";

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("mounting {fstype} on {target}: {source}")]
    Mount { fstype: String, target: String, source: nix::Error },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Sys { what: &'static str, source: nix::Error },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BootError {
    let path = path.display().to_string();
    move |source| BootError::Io { what, path, source }
}

/// Mounts `fstype` on `target` (creating the directory) unless something is mounted there.
pub fn mount_fs(source: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> Result<(), BootError> {
    let t = Path::new(target);
    fs::create_dir_all(t).map_err(io_err("creating mount point", t))?;
    if is_mountpoint(t) {
        return Ok(());
    }
    mount(Some(source), t, Some(fstype), flags, data).map_err(|source| BootError::Mount {
        fstype: fstype.to_string(),
        target: target.to_string(),
        source,
    })
}

/// True when `path` is on a different device than its parent (a mount point).
pub fn is_mountpoint(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (fs::metadata(path), fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev() || a.ino() == b.ino(),
        _ => false,
    }
}

/// Writes to the kernel console before logging exists (best effort).
pub fn early_log(msg: &str) {
    if let Ok(mut f) = fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(f, "bulwark-agent: {msg}");
    }
}

/// Makes sure fds 0, 1 and 2 are the console (or /dev/null), so that no file we open later
/// lands on them and nothing we print goes into some random file.
pub fn setup_console_fds() {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
        .or_else(|_| fs::OpenOptions::new().read(true).write(true).open("/dev/null"));
    if let Ok(f) = file {
        for fd in 0..3 {
            if f.as_raw_fd() != fd {
                // SAFETY: dup2 on a valid open fd onto 0..=2; no Rust object owns those fds
                // except std's stdio handles, which expect exactly this.
                unsafe { libc::dup2(f.as_raw_fd(), fd) };
            }
        }
        if f.as_raw_fd() <= 2 {
            std::mem::forget(f); // it *is* one of the stdio fds now; keep it open
        }
    }
}

/// Stage 1: if we still run on the initramfs, move to a tmpfs root and re-exec /init there.
/// Returns normally (having not switched) when anything fails; the caller then uses
/// libcontainer's no_pivot mode. Returns Ok(true) when already switched.
pub fn switch_root_if_needed() -> Result<bool, BootError> {
    if std::env::var_os(SWITCHED_ENV).is_some() {
        std::env::remove_var(SWITCHED_ENV);
        return Ok(true);
    }
    // The console first, so that stage 1 failures are visible.
    let _ = mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"));
    setup_console_fds();

    mount_fs("tmpfs", NEWROOT, "tmpfs", MsFlags::empty(), Some("mode=0755"))?;
    let new = Path::new(NEWROOT);
    let exe = Path::new("/init");
    copy_file(exe, &new.join("init"))?;
    copy_dir(Path::new("/lib/modules"), &new.join("lib/modules"))?;
    for d in ["dev", "proc", "sys", "run", "tmp"] {
        let p = new.join(d);
        fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
    }
    // Keep the console across the switch: move /dev into the new root.
    mount(Some("/dev"), &new.join("dev"), None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|source| BootError::Sys { what: "moving /dev into the new root", source })?;
    // Free the initramfs copies (they would otherwise pin RAM under the new root).
    let _ = fs::remove_file(exe);
    let _ = fs::remove_dir_all("/lib/modules");

    nix::unistd::chdir(new).map_err(|source| BootError::Sys { what: "chdir /newroot", source })?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|source| BootError::Sys { what: "moving /newroot onto /", source })?;
    nix::unistd::chroot(".").map_err(|source| BootError::Sys { what: "chroot", source })?;
    nix::unistd::chdir("/").map_err(|source| BootError::Sys { what: "chdir /", source })?;

    let path = CString::new("/init").unwrap_or_default();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut s = k.into_encoded_bytes();
            s.push(b'=');
            s.extend(v.into_encoded_bytes());
            CString::new(s).ok()
        })
        .collect();
    env.extend(CString::new(format!("{SWITCHED_ENV}=1")).ok());
    let args = [path.clone()];
    let err = nix::unistd::execve(&path, &args, &env).err();
    // execve only returns on failure. We are chrooted into the tmpfs already, so pivot_root
    // will work anyway: carry on in this process.
    early_log(&format!("re-exec of /init after the root switch failed ({err:?}); continuing"));
    Ok(true)
}

fn copy_file(from: &Path, to: &Path) -> Result<(), BootError> {
    if let Some(p) = to.parent() {
        fs::create_dir_all(p).map_err(io_err("creating", p))?;
    }
    fs::copy(from, to).map_err(io_err("copying", from))?;
    let mode = fs::metadata(from).map(|m| m.permissions().mode()).unwrap_or(0o755);
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", to))?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), BootError> {
    fs::create_dir_all(to).map_err(io_err("creating", to))?;
    let entries = match fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("reading", from)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("reading", from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ft = entry.file_type().map_err(io_err("stat", &src))?;
        if ft.is_dir() {
            copy_dir(&src, &dst)?;
        } else if ft.is_file() {
            copy_file(&src, &dst)?;
        }
    }
    Ok(())
}

/// Stage 2 mounts. Returns the failures (logged by the caller once logging works); the agent
/// keeps going: a missing /dev/shm must not stop it from answering the host.
pub fn mount_pseudo_filesystems() -> Vec<BootError> {
    let nsx = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let steps: [(&str, &str, &str, MsFlags, Option<&str>); 8] = [
        ("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755")),
        ("proc", "/proc", "proc", nsx, None),
        ("sysfs", "/sys", "sysfs", nsx, None),
        ("devpts", "/dev/pts", "devpts", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("gid=5,mode=620,ptmxmode=666")),
        ("tmpfs", "/dev/shm", "tmpfs", nsx, Some("mode=1777")),
        ("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755")),
        ("tmpfs", "/tmp", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777")),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", nsx, Some("nsdelegate")),
    ];
    let mut errors = Vec::new();
    for (src, target, fstype, flags, data) in steps {
        if let Err(e) = mount_fs(src, target, fstype, flags, data) {
            errors.push(e);
        }
    }
    errors
}

/// Enables every available controller in the root cgroup's subtree_control, one at a time so
/// one refusal does not hide the others. Returns the enabled list and the failures.
pub fn enable_cgroup_controllers() -> (Vec<String>, Vec<BootError>) {
    let root = Path::new("/sys/fs/cgroup");
    let mut enabled = Vec::new();
    let mut errors = Vec::new();
    let controllers = match fs::read_to_string(root.join("cgroup.controllers")) {
        Ok(c) => c,
        Err(e) => {
            errors.push(io_err("reading", &root.join("cgroup.controllers"))(e));
            return (enabled, errors);
        }
    };
    let ctl = root.join("cgroup.subtree_control");
    for c in controllers.split_whitespace() {
        match fs::write(&ctl, format!("+{c}")) {
            Ok(()) => enabled.push(c.to_string()),
            Err(e) => errors.push(io_err("enabling a controller in", &ctl)(e)),
        }
    }
    (enabled, errors)
}
