//! A container's rootfs overlay for the unprivileged virtiofsd: overlayfs cannot be id-mapped
//! itself, so it is mounted over id-mapped layers (jail/idmap.rs has the ids and the user
//! namespace). Each layer is a detached clone of its directory, id-mapped before it is used
//! (host/fs.rs: `open_tree`, `mount_setattr`), and named `/proc/self/fd/N` in the overlay's
//! options. overlayfs does its own work in the upper layer (work directory, whiteouts,
//! copy-up) with the mounter's credentials, which must map through the upper layer's id-map
//! too: the overlay is mounted by a thread whose fs uid/gid are the block's root
//! (`SECBIT_NO_SETUID_FIXUP` keeps its capabilities meanwhile).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use crate::host::fs::{clone_mount, cstr, open_source, set_mount_attr};
use crate::jail::idmap::IdMap;

/// A detached, id-mapped clone of the directory `path` (not its submounts).
fn layer(map: &IdMap, path: &Path) -> io::Result<OwnedFd> {
    let tree = clone_mount(&open_source(path)?, false)?;
    set_mount_attr(&tree, libc::MOUNT_ATTR_IDMAP, Some(map.userns_fd()), false)?;
    Ok(tree)
}

/// Mounts a containerd overlay (its `options`) on `target` over layers id-mapped through `map`.
pub fn mount(map: &IdMap, options: &[String], target: &Path) -> Result<(), String> {
    let o = OverlayOptions::parse(options)?;
    let open = |p: &Path| {
        layer(map, p).map_err(|e| {
            format!(
                "id-mapping the layer {}: {e} (its filesystem may not support idmapped mounts; \
                 jail.unprivileged_virtiofsd = false runs virtiofsd as root instead)",
                p.display()
            )
        })
    };
    let lowers = o.lower.iter().map(|p| open(p)).collect::<Result<Vec<_>, _>>()?;
    let upper = o.upper.as_ref().map(|(parent, _, _)| open(parent)).transpose()?;
    let mut data = format!(
        "lowerdir={}",
        lowers.iter().map(|f| format!("/proc/self/fd/{}", f.as_raw_fd())).collect::<Vec<_>>().join(":")
    );
    if let (Some(fd), Some((_, up, work))) = (&upper, &o.upper) {
        let at = |name: &str| format!("/proc/self/fd/{}/{name}", fd.as_raw_fd());
        data.push_str(&format!(",upperdir={},workdir={}", at(up), at(work)));
    }
    for x in &o.other {
        data.push(',');
        data.push_str(x);
    }
    let data = CString::new(data).map_err(|_| "NUL in the overlay options".to_string())?;
    let target_c = cstr(target).map_err(|e| format!("the overlay's target {}: {e}", target.display()))?;
    let base = map.host_root();
    let r = std::thread::scope(|s| {
        s.spawn(|| mount_as(base, &target_c, &data)).join().unwrap_or_else(|_| Err(io::Error::other("panicked")))
    });
    r.map_err(|e| format!("mounting the overlay on {} over id-mapped layers: {e}", target.display()))
}

/// In a thread of its own (credentials are per thread): fs uid/gid `base` with the
/// capabilities kept, then the overlay mount. The thread ends with its credentials.
fn mount_as(base: u32, target: &CString, data: &CString) -> io::Result<()> {
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    // SAFETY: plain system calls on this thread's credentials; the pointers are valid C strings
    // owned by the caller for the duration of the call.
    unsafe {
        if libc::prctl(libc::PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::syscall(libc::SYS_setfsgid, base);
        libc::syscall(libc::SYS_setfsuid, base);
        // Each returns the previous value: asking again tells whether the change took.
        if libc::syscall(libc::SYS_setfsuid, base) != i64::from(base)
            || libc::syscall(libc::SYS_setfsgid, base) != i64::from(base)
        {
            return Err(io::Error::other("could not take the id-map's fs ids"));
        }
        let overlay = c"overlay";
        if libc::mount(overlay.as_ptr(), target.as_ptr(), overlay.as_ptr(), 0, data.as_ptr().cast()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// containerd's overlay options, split (pure).
#[derive(Debug, PartialEq, Eq)]
struct OverlayOptions {
    lower: Vec<PathBuf>,
    /// The common parent of upperdir and workdir, and their names in it.
    upper: Option<(PathBuf, String, String)>,
    other: Vec<String>,
}

impl OverlayOptions {
    fn parse(options: &[String]) -> Result<OverlayOptions, String> {
        let plain = |p: &str| {
            let path = PathBuf::from(p);
            let ok = path.is_absolute()
                && !p.contains(['\\', ',', ':'])
                && path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
            ok.then_some(path).ok_or_else(|| format!("overlay layer path {p:?} is not a plain absolute path"))
        };
        let (mut lower, mut up, mut work, mut other) = (Vec::new(), None, None, Vec::new());
        for o in options {
            if let Some(v) = o.strip_prefix("lowerdir=") {
                lower = v.split(':').map(plain).collect::<Result<_, _>>()?;
            } else if let Some(v) = o.strip_prefix("upperdir=") {
                up = Some(plain(v)?);
            } else if let Some(v) = o.strip_prefix("workdir=") {
                work = Some(plain(v)?);
            } else if o.contains(',') || o.starts_with("lowerdir+") || o.starts_with("datadir+") {
                return Err(format!("unsupported overlay option {o:?}"));
            } else {
                other.push(o.clone());
            }
        }
        if lower.is_empty() {
            return Err("overlay mount without lowerdir".into());
        }
        let upper = match (up, work) {
            (None, None) => None,
            (Some(u), Some(w)) => {
                let name = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(str::to_string);
                match (u.parent(), w.parent(), name(&u), name(&w)) {
                    (Some(pu), Some(pw), Some(nu), Some(nw)) if pu == pw => Some((pu.to_path_buf(), nu, nw)),
                    _ => {
                        return Err(format!(
                            "upperdir {} and workdir {} must be in one directory",
                            u.display(),
                            w.display()
                        ))
                    }
                }
            }
            _ => return Err("overlay mount with only one of upperdir and workdir".into()),
        };
        Ok(OverlayOptions { lower, upper, other })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;

    #[test]
    fn overlay_options_are_split_and_checked() {
        let o = |v: &[&str]| OverlayOptions::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let p = o(&["index=off", "workdir=/s/2/work", "upperdir=/s/2/fs", "lowerdir=/s/1/fs:/s/0/fs"]).unwrap();
        assert_eq!(p.lower, [PathBuf::from("/s/1/fs"), "/s/0/fs".into()]);
        assert_eq!(p.upper, Some(("/s/2".into(), "fs".into(), "work".into())));
        assert_eq!(p.other, ["index=off"]);
        assert_eq!(o(&["lowerdir=/a"]).unwrap().upper, None);
        for bad in [
            &["upperdir=/u/fs", "workdir=/u/work"][..],
            &["lowerdir=/a", "upperdir=/u/fs"],
            &["lowerdir=/a", "upperdir=/u/fs", "workdir=/w/work"],
            &["lowerdir=/a/../etc"],
            &["lowerdir=a"],
            &["lowerdir=/a\\:b"],
            &["lowerdir=/a", "x=1,lowerdir=/etc"],
            &["lowerdir+=/a"],
        ] {
            assert!(o(bad).is_err(), "{bad:?}");
        }
    }

    /// With real mounts (root): an overlay over id-mapped layers shows the disk's owners
    /// shifted into the block, takes writes and owner changes from the block's ids, and stores
    /// them unshifted; an owner outside the block cannot be written.
    #[test]
    fn an_overlay_over_id_mapped_layers_keeps_the_disk_unshifted() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root (scripts/test runs as root)");
        let base = 3_900_100_000;
        let map = IdMap::unleased(base).expect("user namespace");
        let tmp = crate::jail::testing::temp_dir("idmap-overlay");
        for d in ["lower", "snap/fs", "snap/work", "merged"] {
            std::fs::create_dir_all(tmp.join(d)).unwrap();
        }
        std::fs::write(tmp.join("lower/a"), b"a").unwrap();
        std::os::unix::fs::chown(tmp.join("lower/a"), Some(1000), Some(1000)).unwrap();
        let opts = [
            "index=off".to_string(),
            format!("lowerdir={}", tmp.join("lower").display()),
            format!("upperdir={}", tmp.join("snap/fs").display()),
            format!("workdir={}", tmp.join("snap/work").display()),
        ];
        let merged = tmp.join("merged");
        mount(&map, &opts, &merged).expect("overlay");
        // unmounted and removed however the test ends
        struct Cleanup(PathBuf, PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_dir_all(&self.1);
            }
        }
        let _cleanup = Cleanup(merged.clone(), tmp.clone());
        let md = |p: PathBuf| std::fs::symlink_metadata(p).unwrap();
        assert_eq!(md(merged.join("a")).uid(), base + 1000);
        assert_eq!(md(merged.clone()).uid(), base, "the root directory: disk uid 0");
        // a write as the block's uid 7 (a process with no capabilities at all)
        std::os::unix::fs::chown(&merged, Some(base + 7), Some(base + 7)).unwrap();
        let ok = std::process::Command::new("/bin/sh")
            .args(["-c", &format!("echo x > {}/new", merged.display())])
            .uid(base + 7)
            .gid(base + 7)
            .status()
            .unwrap();
        assert!(ok.success());
        assert_eq!(md(tmp.join("snap/fs/new")).uid(), 7, "stored unshifted");
        assert_eq!(md(tmp.join("snap/fs")).uid(), 7);
        std::os::unix::fs::chown(merged.join("a"), Some(base + 5), None).unwrap();
        assert_eq!(md(tmp.join("snap/fs/a")).uid(), 5, "copied up, unshifted");
        let e = std::os::unix::fs::chown(merged.join("a"), Some(5), None).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EOVERFLOW), "an owner outside the block");
    }
}
