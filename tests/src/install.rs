//! Bulwark installed for one test the way a node gets it: `scripts/install-node --root <dir>`
//! with this checkout's artefacts (hard-linked, `--link`), which writes `<dir>/etc/bulwark/
//! config.toml`, puts the shim and the CLI under `<dir>/opt/bulwark` (linked from
//! `<dir>/usr/local/bin`) and adds the runtime handler `bulwark` to the test's containerd
//! config (an edit for containerd 1.6, a drop-in for 2.x). The test's own settings
//! ([`ShimConfig`]: runtime dir, VM size, acceleration, host paths, paths a test points
//! elsewhere, `extra`) go on top as `--set` options.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::containerd::ShimConfig;
use crate::{process, repo_root, Artifacts};

/// What `scripts/install-node --root` put where.
#[derive(Debug, Clone)]
pub struct Installed {
    pub root: PathBuf,
    /// `<root>/etc/bulwark/config.toml`: containerd runs with `BULWARK_CONFIG` naming it.
    pub shim_config: PathBuf,
    /// `<root>/usr/local/bin`: holds `containerd-shim-bulwark-v2` and `bulwark`.
    pub bin_dir: PathBuf,
    /// The installed `bulwark` CLI.
    pub cli: PathBuf,
}

/// `scripts/install-node` of this checkout.
pub fn script() -> PathBuf {
    repo_root().join("scripts/install-node")
}

/// TOML text of a string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `section.key=value` for every key of a TOML table, tables flattened (`tenants.a.max_vcpus`).
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in table {
        let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(t) => flatten(&name, t, out),
            other => out.push(format!("{name}={other}")),
        }
    }
}

/// The `--set` options for a test's shim configuration: the settings every test has, the
/// paths a test changed from `default` (the installed files otherwise), then `extra`.
pub fn sets(shim: &ShimConfig, default: &ShimConfig) -> Result<Vec<String>, String> {
    let mut v = vec![
        format!("vm.vcpus={}", shim.vcpus),
        format!("vm.memory_mib={}", shim.memory_mib),
        format!("vm.acceleration={}", toml_str(&shim.acceleration)),
        format!("vm.boot_timeout_secs={}", shim.boot_timeout_secs),
        format!(
            "tenant.host_paths=[{}]",
            shim.host_paths.iter().map(|p| toml_str(&p.to_string_lossy())).collect::<Vec<_>>().join(", ")
        ),
    ];
    for (key, mine, theirs) in [
        ("qemu", &shim.qemu, &default.qemu),
        ("virtiofsd", &shim.virtiofsd, &default.virtiofsd),
        ("vhost_device_vsock", &shim.vhost_device_vsock, &default.vhost_device_vsock),
        ("kernel", &shim.kernel, &default.kernel),
        ("initrd", &shim.initrd, &default.initrd),
    ] {
        if mine != theirs {
            v.push(format!("paths.{key}={}", toml_str(&mine.to_string_lossy())));
        }
    }
    if !shim.extra.trim().is_empty() {
        let table: toml::Table = format!("[vm]\n{}", shim.extra)
            .parse()
            .map_err(|e| format!("the test's extra shim config is not TOML: {e}"))?;
        flatten("", &table, &mut v);
    }
    Ok(v)
}

/// Runs `scripts/install-node --root root` for `containerd_config` (read by the containerd
/// binary `containerd`), with `shim` layered on top; `shim`'s paths then name the installed
/// files (those the test did not point elsewhere).
pub fn install_node(
    artifacts: &Artifacts,
    root: &Path,
    containerd_config: &Path,
    containerd: &Path,
    shim: &mut ShimConfig,
) -> Result<Installed, String> {
    let default = ShimConfig::for_test(artifacts, root);
    let mut cmd = Command::new(script());
    cmd.arg("--root").arg(root).arg("--containerd-config").arg(containerd_config).arg("--containerd").arg(containerd);
    cmd.arg("--link").arg("--runtime-dir").arg(&shim.runtime_dir);
    for (opt, file) in [
        ("--shim", artifacts.shim_dir.join("containerd-shim-bulwark-v2")),
        ("--cli", artifacts.shim_dir.join("bulwark")),
        ("--kernel", artifacts.kernel.clone()),
        ("--initrd", artifacts.initrd.clone()),
        ("--virtiofsd", artifacts.virtiofsd.clone()),
        ("--vhost-device-vsock", artifacts.vhost_device_vsock.clone()),
        ("--qemu", artifacts.qemu.clone()),
    ] {
        cmd.arg(opt).arg(file);
    }
    for s in sets(shim, &default)? {
        cmd.arg("--set").arg(s);
    }
    let out = process::run(&mut cmd, Duration::from_secs(120))?;
    if !out.status.success() {
        return Err(format!("scripts/install-node --root {} failed: {}{}", root.display(), out.stderr, out.stdout));
    }
    let prefix = root.join("opt/bulwark");
    for (mine, theirs, installed) in [
        (&mut shim.virtiofsd, &default.virtiofsd, prefix.join("libexec/virtiofsd")),
        (&mut shim.vhost_device_vsock, &default.vhost_device_vsock, prefix.join("libexec/vhost-device-vsock")),
        (&mut shim.kernel, &default.kernel, prefix.join("share/vmlinux")),
        (&mut shim.initrd, &default.initrd, prefix.join("share/initramfs.cpio")),
    ] {
        if mine == theirs {
            *mine = installed;
        }
    }
    Ok(Installed {
        root: root.to_path_buf(),
        shim_config: root.join("etc/bulwark/config.toml"),
        bin_dir: root.join("usr/local/bin"),
        cli: prefix.join("bin/bulwark"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shim() -> ShimConfig {
        ShimConfig {
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            virtiofsd: "/v".into(),
            vhost_device_vsock: "/h".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            runtime_dir: "/tmp/t/r".into(),
            vcpus: 1,
            memory_mib: 256,
            acceleration: "auto".into(),
            boot_timeout_secs: 120,
            host_paths: vec!["/tmp/t".into()],
            extra: String::new(),
        }
    }

    #[test]
    fn sets_carry_the_test_settings_changed_paths_and_extra() {
        let default = shim();
        let mut s = shim();
        s.kernel = "/nonexistent/vmlinux".into();
        s.extra = "allow_tcg_fallback = false\n[tenants.team-a]\nmax_vcpus = 2\n".into();
        let v = sets(&s, &default).unwrap();
        assert!(v.contains(&"vm.acceleration=\"auto\"".to_string()), "{v:?}");
        assert!(v.contains(&"tenant.host_paths=[\"/tmp/t\"]".to_string()), "{v:?}");
        assert!(v.contains(&"paths.kernel=\"/nonexistent/vmlinux\"".to_string()), "{v:?}");
        assert!(!v.iter().any(|x| x.starts_with("paths.initrd")), "unchanged paths are the installed ones: {v:?}");
        assert!(v.contains(&"vm.allow_tcg_fallback=false".to_string()), "{v:?}");
        assert!(v.contains(&"tenants.team-a.max_vcpus=2".to_string()), "{v:?}");
        s.extra = "not toml [".into();
        assert!(sets(&s, &default).is_err());
    }
}
