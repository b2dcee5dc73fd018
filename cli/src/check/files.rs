//! Checks of what the configuration names on disk: QEMU, virtiofsd and vhost-device-vsock (the
//! hybrid vsock helper) present and runnable; the guest kernel and initramfs present and
//! readable by the unprivileged sandbox uid QEMU runs as; the guest image's protocol version
//! (`protocol-version` next to the initramfs, written by images/build-guest-image) equal to the
//! shim's; the runtime directory reachable by the jailed helpers (docs/jail.md).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bulwark_shim::config::Config;

use super::command;
use super::outcome::Outcome;

const REINSTALL: &str = "scripts/install-node installs it (or correct the path in the configuration)";

/// `path` must be an executable file that answers `--version`; returns its first line.
fn binary(check: &'static str, key: &str, path: &Path, fix: &str) -> Outcome {
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(e) => return Outcome::fail(check, format!("{key} = {}: {e}", path.display()), fix),
    };
    if !md.is_file() || md.permissions().mode() & 0o111 == 0 {
        return Outcome::fail(check, format!("{key} = {} is not an executable file", path.display()), fix);
    }
    match command::run(Command::new(path).arg("--version"), Duration::from_secs(10)) {
        Ok(o) if o.success => {
            let version = o.stdout.lines().chain(o.stderr.lines()).find(|l| !l.trim().is_empty()).unwrap_or("");
            Outcome::ok(check, format!("{} ({})", path.display(), version.trim()))
        }
        Ok(o) => Outcome::fail(
            check,
            format!("{} --version failed: {}", path.display(), o.stderr.lines().next().unwrap_or("").trim()),
            fix,
        ),
        Err(e) => Outcome::fail(check, e, fix),
    }
}

/// Why the sandbox uid (an unprivileged "other") could not reach `path`, if it could not:
/// every existing directory above it must be searchable by others.
fn unreachable_by_others(path: &Path) -> Option<String> {
    for dir in path.ancestors().skip(1) {
        match std::fs::metadata(dir) {
            Ok(md) if md.permissions().mode() & 0o001 == 0 => {
                return Some(format!(
                    "{} is not searchable by other users (mode {:o})",
                    dir.display(),
                    md.permissions().mode() & 0o7777
                ));
            }
            _ => {}
        }
    }
    None
}

/// The guest kernel or initramfs: a file readable by others below searchable directories.
fn image_file(check: &'static str, key: &str, path: &Path) -> Outcome {
    let md = match std::fs::metadata(path) {
        Ok(md) if md.is_file() => md,
        Ok(_) => return Outcome::fail(check, format!("{key} = {} is not a file", path.display()), REINSTALL),
        Err(e) => return Outcome::fail(check, format!("{key} = {}: {e}", path.display()), REINSTALL),
    };
    if md.permissions().mode() & 0o004 == 0 {
        return Outcome::fail(
            check,
            format!(
                "{} is not readable by other users: QEMU opens it as the sandbox's unprivileged uid",
                path.display()
            ),
            format!("chmod o+r {}", path.display()),
        );
    }
    if let Some(why) = unreachable_by_others(path) {
        return Outcome::fail(
            check,
            format!("{}: {why}; QEMU opens it as the sandbox's unprivileged uid", path.display()),
            "chmod o+x on that directory, or install the image elsewhere (scripts/install-node: /opt/bulwark/share)",
        );
    }
    Outcome::ok(check, format!("{} ({} MiB)", path.display(), md.len() >> 20))
}

/// The guest image's protocol version against the shim's.
fn protocol(initrd: &Path) -> Outcome {
    let want = bulwark_protocol::PROTOCOL_VERSION;
    let file = initrd.with_file_name("protocol-version");
    let text = match std::fs::read(&file) {
        Ok(t) if t.len() <= 64 => String::from_utf8_lossy(&t).trim().to_string(),
        Ok(_) => return Outcome::fail("guest protocol", format!("{} is not a version number", file.display()), REINSTALL),
        Err(e) => {
            return Outcome::warn(
                "guest protocol",
                format!("cannot tell the guest image's protocol version ({}: {e}); the shim refuses an agent of another version at boot", file.display()),
                "install the guest image with its protocol-version file (scripts/install-node)",
            )
        }
    };
    match text.parse::<u32>() {
        Ok(v) if v == want => {
            Outcome::ok("guest protocol", format!("the guest image speaks protocol {v}, as this shim"))
        }
        Ok(v) => Outcome::fail(
            "guest protocol",
            format!("the guest image speaks protocol {v}, this shim {want}: every boot would be refused"),
            "install the guest image built with this shim (scripts/install-node installs both)",
        ),
        Err(_) => Outcome::fail(
            "guest protocol",
            format!("{} holds {text:?}, not a version number", file.display()),
            REINSTALL,
        ),
    }
}

/// The runtime directory: a directory (or creatable), its parents searchable by others.
fn runtime_dir(dir: &Path) -> Outcome {
    if dir.exists() && !dir.is_dir() {
        return Outcome::fail(
            "runtime dir",
            format!("{} is not a directory", dir.display()),
            "remove it or set paths.runtime_dir",
        );
    }
    match unreachable_by_others(dir) {
        Some(why) => Outcome::fail(
            "runtime dir",
            format!(
                "{}: {why}; the jailed helpers (an unprivileged uid) cannot reach their sockets below it",
                dir.display()
            ),
            "chmod o+x on that directory (0711 or 0755, as /run), or set paths.runtime_dir elsewhere",
        ),
        None => Outcome::ok(
            "runtime dir",
            format!("{}{}", dir.display(), if dir.exists() { "" } else { " (created at the first pod)" }),
        ),
    }
}

pub fn checks(cfg: &Config) -> Vec<Outcome> {
    let p = &cfg.paths;
    vec![
        binary("qemu", "paths.qemu", &p.qemu, "apt-get install qemu-system-x86 (or correct paths.qemu)"),
        binary("virtiofsd", "paths.virtiofsd", &p.virtiofsd, REINSTALL),
        binary("vsock helper", "paths.vhost_device_vsock", &p.vhost_device_vsock, REINSTALL),
        image_file("guest kernel", "paths.kernel", &p.kernel),
        image_file("guest initramfs", "paths.initrd", &p.initrd),
        protocol(&p.initrd),
        runtime_dir(&p.runtime_dir),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::outcome::Status;

    #[test]
    fn missing_unreadable_and_mismatched_files_fail_with_a_fix() {
        let dir = std::env::temp_dir().join(format!("bulwark-cli-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let o = binary("qemu", "paths.qemu", &dir.join("nope"), "apt-get install qemu-system-x86");
        assert_eq!(o.status, Status::Fail);
        assert!(o.detail.contains("nope") && o.fix.unwrap().contains("apt-get"));
        let o = binary("sh", "x", Path::new("/bin/true"), "");
        assert_eq!(o.status, Status::Ok, "{o:?}");

        let initrd = dir.join("initramfs.cpio");
        std::fs::write(&initrd, b"x").unwrap();
        std::fs::set_permissions(&initrd, std::fs::Permissions::from_mode(0o600)).unwrap();
        let o = image_file("guest initramfs", "paths.initrd", &initrd);
        assert_eq!(o.status, Status::Fail);
        assert!(o.fix.unwrap().starts_with("chmod o+r"));
        std::fs::set_permissions(&initrd, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(image_file("guest initramfs", "paths.initrd", &initrd).status, Status::Ok);

        assert_eq!(protocol(&initrd).status, Status::Warn, "no version file: cannot tell");
        std::fs::write(dir.join("protocol-version"), format!("{}\n", bulwark_protocol::PROTOCOL_VERSION)).unwrap();
        assert_eq!(protocol(&initrd).status, Status::Ok);
        std::fs::write(dir.join("protocol-version"), "9999\n").unwrap();
        let o = protocol(&initrd);
        assert_eq!(o.status, Status::Fail);
        assert!(o.detail.contains("9999"), "{o:?}");

        let private = dir.join("private");
        std::fs::create_dir_all(private.join("rd")).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let o = runtime_dir(&private.join("rd"));
        assert_eq!(o.status, Status::Fail, "{o:?}");
        assert_eq!(runtime_dir(&dir.join("rd2")).status, Status::Ok);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// images/build-guest-image reads the agent's protocol version from this exact line.
    #[test]
    fn the_protocol_version_line_is_where_the_image_build_reads_it() {
        let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../protocol/src/lib.rs")).unwrap();
        let line = format!("pub const PROTOCOL_VERSION: u32 = {};", bulwark_protocol::PROTOCOL_VERSION);
        assert!(src.lines().any(|l| l == line), "protocol/src/lib.rs lacks the line {line:?}");
    }
}
