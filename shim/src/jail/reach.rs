//! What the sandbox uid must be able to reach on the host, checked before a jailed process
//! starts, so that a host set up wrongly fails with the directory or device and the fix named
//! (rather than deep inside a helper: vhost-device-vsock's "Failed to bind a unix stream", or
//! QEMU's "Could not access KVM kernel module").
//!
//! - Every directory above `paths.runtime_dir` must be searchable by others: the sandbox uid is
//!   neither their owner nor in their group, and vhost-device-vsock reaches its `<state>/vm/`
//!   through them (the runtime directory itself is covered in its mount view, docs/jail.md).
//! - Under KVM, `/dev/kvm` must be readable and writable by its group when that group is not
//!   root's (QEMU gets the group), or by everyone.
//!
//! The decisions are pure functions of modes and owners; the rest reads metadata.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Whether a directory of mode `mode` can be searched (walked through) by a uid that is
/// neither its owner nor in its group (pure).
pub fn searchable_by_others(mode: u32) -> bool {
    mode & 0o001 != 0
}

/// Whether a device of mode `mode` owned by group `gid` can be opened read-write by a process
/// that has `gid` as a supplementary group when `gid` is not root's (pure): what QEMU gets.
pub fn kvm_usable_by_sandbox(mode: u32, gid: u32) -> bool {
    let all = mode & 0o006 == 0o006;
    let group = gid != 0 && mode & 0o060 == 0o060;
    all || group
}

/// The directories a path walk to `dir`'s children goes through before `dir`: the lexical
/// ancestors of `dir` (their modes are those of what they resolve to) and those of its
/// resolved form, without duplicates, outermost first.
fn ancestors(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = Vec::new();
    let resolved = std::fs::canonicalize(dir).ok();
    for d in [Some(dir.to_path_buf()), resolved].into_iter().flatten() {
        let mut up: Vec<PathBuf> = d.ancestors().skip(1).map(Path::to_path_buf).collect();
        up.reverse();
        for a in up {
            if !v.contains(&a) {
                v.push(a);
            }
        }
    }
    v
}

/// Fails, naming each directory above `runtime_dir` that the sandbox uid cannot search and how
/// to fix it. A directory that does not exist (yet) is not judged here.
pub fn check_runtime_dir(runtime_dir: &Path) -> Result<(), String> {
    let blocking: Vec<String> = ancestors(runtime_dir)
        .into_iter()
        .filter_map(|d| {
            let m = std::fs::metadata(&d).ok()?;
            (!searchable_by_others(m.mode())).then(|| format!("{} (mode {:04o})", d.display(), m.mode() & 0o7777))
        })
        .collect();
    if blocking.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the jailed VMM helpers run as an unprivileged sandbox uid and must walk through every directory \
         above paths.runtime_dir = {}, but others may not search {}: make them searchable \
         (chmod o+x, i.e. mode 0711 or 0755, as /run is) or choose a runtime_dir below such directories \
         (docs/jail.md, \"A requirement on the runtime directory\")",
        runtime_dir.display(),
        blocking.join(", ")
    ))
}

/// Under KVM: fails unless the sandbox uid (with /dev/kvm's group when it is not root's) can
/// open `/dev/kvm` read-write, naming the fix.
pub fn check_kvm_device(dev: &Path) -> Result<(), String> {
    let m = std::fs::metadata(dev).map_err(|e| format!("{}: {e}", dev.display()))?;
    if kvm_usable_by_sandbox(m.mode(), m.gid()) {
        return Ok(());
    }
    Err(format!(
        "{} is mode {:04o} owned by gid {}: the jailed QEMU (an unprivileged sandbox uid that gets the device's \
         group when that group is not root's) cannot open it. Give it a group and mode 0660 (Debian's udev \
         rule: root:kvm 0660; e.g. `chgrp kvm {0} && chmod 0660 {0}`, or a udev rule \
         KERNEL==\"kvm\", GROUP=\"kvm\", MODE=\"0660\"), or use vm.acceleration = \"tcg\" (docs/jail.md)",
        dev.display(),
        m.mode() & 0o7777,
        m.gid()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn modes() {
        for (mode, ok) in [(0o755, true), (0o711, true), (0o1777, true), (0o750, false), (0o700, false), (0o701, true)]
        {
            assert_eq!(searchable_by_others(mode), ok, "{mode:o}");
        }
        assert!(kvm_usable_by_sandbox(0o660, 108), "root:kvm 0660 (Debian)");
        assert!(kvm_usable_by_sandbox(0o666, 0), "world read-write (systemd's default)");
        assert!(!kvm_usable_by_sandbox(0o660, 0), "root:root 0660: QEMU does not get root's group");
        assert!(!kvm_usable_by_sandbox(0o600, 108), "owner only");
        assert!(!kvm_usable_by_sandbox(0o640, 108), "group read-only");
    }

    #[test]
    fn a_private_parent_is_named_with_the_fix() {
        let base = crate::jail::testing::temp_dir("reach");
        let private = base.join("private");
        let runtime = private.join("r");
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = check_runtime_dir(&runtime).unwrap_err();
        assert!(e.contains(&format!("{} (mode 0700)", private.display())), "{e}");
        assert!(e.contains("chmod o+x"), "{e}");
        // The runtime directory itself may be private: it is covered in the helpers' view.
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(check_runtime_dir(&runtime), Ok(()));
        // Through a symlink, the directory it resolves to counts.
        let link = base.join("link");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert!(check_runtime_dir(&link.join("r")).unwrap_err().contains("link"));
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn ancestors_come_outermost_first_with_the_resolved_ones() {
        let v = ancestors(Path::new("/nonexistent-bulwark/a/b"));
        assert_eq!(v, [PathBuf::from("/"), "/nonexistent-bulwark".into(), "/nonexistent-bulwark/a".into()]);
    }
}
