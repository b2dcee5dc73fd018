//! `scripts/install-node` on a private root (`--root`), against the real containerd 1.6 and 2.x
//! (their `config dump`): the runtime handler `bulwark` appears with an installed shim and the
//! tenant annotation; the runtimes, settings and bytes already in the config stay; a second run
//! changes nothing and prints nothing; `--uninstall` gives back every byte, mode and file as it
//! was (a pre-existing config.toml included), and refuses while sandboxes run or when an
//! installed file was edited. (Every other e2e test installs Bulwark the same way and then runs
//! containers through it: see install.rs.)

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bulwark_e2e::cri::ContainerdVersion;
use bulwark_e2e::install::script;
use bulwark_e2e::{process, Artifacts};

/// A private root under /tmp, removed on drop.
struct Root(PathBuf);

impl Root {
    fn new(name: &str) -> Root {
        let dir = PathBuf::from(format!("/tmp/bwi-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Root(dir)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every entry below `dir`: its type, mode, owner, and content (small files; big ones by size,
/// inode and mtime) or target (links).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())).flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let what = if md.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if md.is_dir() {
                todo.push(p.clone());
                "dir".to_string()
            } else if md.len() <= 1 << 20 {
                format!("file {}", String::from_utf8_lossy(&std::fs::read(&p).unwrap()))
            } else {
                // An installed binary or image: rewritten means another inode or mtime.
                format!("file of {} bytes, inode {}, mtime {}.{}", md.len(), md.ino(), md.mtime(), md.mtime_nsec())
            };
            out.insert(p, format!("{:o} {}:{} {what}", md.permissions().mode(), md.uid(), md.gid()));
        }
    }
    out
}

fn install_node(args: &[&str], root: &Path, config: &Path, containerd: &Path) -> Result<process::Output, String> {
    let a = Artifacts::locate()?;
    let mut cmd = Command::new(script());
    cmd.arg("--root").arg(root).arg("--containerd-config").arg(config).arg("--containerd").arg(containerd);
    cmd.arg("--bin-dir").arg(&a.shim_dir).arg("--kernel").arg(&a.kernel).arg("--initrd").arg(&a.initrd);
    cmd.arg("--virtiofsd").arg(&a.virtiofsd).arg("--vhost-device-vsock").arg(&a.vhost_device_vsock);
    process::run(cmd.args(args), Duration::from_secs(120))
}

fn uninstall(root: &Path, extra: &[&str]) -> Result<process::Output, String> {
    process::run(Command::new(script()).arg("--root").arg(root).arg("--uninstall").args(extra), Duration::from_secs(60))
}

fn dump(containerd: &Path, config: &Path) -> Result<String, String> {
    let out = process::run(
        Command::new(containerd).arg("--config").arg(config).args(["config", "dump"]),
        Duration::from_secs(30),
    )?;
    if !out.status.success() {
        return Err(format!("config dump of {}: {}", config.display(), out.stderr));
    }
    Ok(out.stdout)
}

/// The lines of table `header` (and its sub-tables) in a config dump, indentation removed.
fn table(dump: &str, header: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = Vec::new();
    for l in dump.lines().map(str::trim) {
        if l.starts_with('[') {
            inside = l.strip_prefix(header).is_some_and(|rest| rest.starts_with(']') || rest.starts_with('.'));
        }
        if inside && !l.is_empty() {
            out.push(l.to_string());
        }
    }
    out
}

/// A node's containerd config in `format` with settings and runtimes of its own.
fn existing_config(format: u32, dir: &Path) -> String {
    let (images, runtime) = match format {
        2 => ("io.containerd.grpc.v1.cri", "io.containerd.grpc.v1.cri"),
        _ => ("io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"),
    };
    let image_setting = match format {
        2 => format!("[plugins.\"{images}\"]\n  sandbox_image = \"example.com/pause:node\"\n"),
        _ => format!("[plugins.\"{images}\".pinned_images]\n  sandbox = \"example.com/pause:node\"\n"),
    };
    format!(
        "# the node's own comment\nversion = {format}\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\n{image_setting}\
         [plugins.\"{runtime}\".containerd]\n  default_runtime_name = \"runc\"\n\
         [plugins.\"{runtime}\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
         [plugins.\"{runtime}\".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n\
         [plugins.\"{runtime}\".containerd.runtimes.gvisor]\n  runtime_type = \"io.containerd.runsc.v1\"",
        d = dir.display()
    )
}

/// Install, reinstall, uninstall on a private root holding a config in `format` read by
/// containerd `version`, and a config.toml of an earlier hand install.
fn round_trip(version: ContainerdVersion, format: u32) -> Result<(), String> {
    let containerd = version.bin_dir()?.join("containerd");
    let root = Root::new(&format!("rt{format}-{version:?}"));
    let config = root.0.join("etc/containerd/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).map_err(|e| e.to_string())?;
    std::fs::write(&config, existing_config(format, &root.0)).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).map_err(|e| e.to_string())?;
    let hand = root.0.join("etc/bulwark/config.toml");
    std::fs::create_dir_all(hand.parent().unwrap()).map_err(|e| e.to_string())?;
    std::fs::write(&hand, "[vm]\nvcpus = 2\n").map_err(|e| e.to_string())?;
    let before = snapshot(&root.0);
    let dump_before = dump(&containerd, &config)?;

    let out = install_node(&[], &root.0, &config, &containerd)?;
    assert!(out.status.success(), "install-node failed: {}", out.stderr);
    assert!(out.stderr.contains("replaced the existing"), "the hand-written config.toml is named: {}", out.stderr);
    let installed = snapshot(&root.0);
    let dump_after = dump(&containerd, &config)?;
    let plugin = if dump_after.contains("'io.containerd.cri.v1.runtime'") {
        "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes."
    } else {
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes."
    };
    let bulwark = table(&dump_after, &format!("{plugin}bulwark"));
    let shim = root.0.join("opt/bulwark/bin/containerd-shim-bulwark-v2");
    for want in [
        "runtime_type = \"io.containerd.bulwark.v2\"".to_string(),
        format!("runtime_path = \"{}\"", shim.display()),
        "pod_annotations = [\"bulwark.io/tenant\"]".to_string(),
    ] {
        let want2 = want.replace('"', "'");
        assert!(bulwark.iter().any(|l| *l == want || *l == want2), "bulwark runtime lacks {want}: {bulwark:#?}");
    }
    assert!(shim.is_file(), "the shim is installed");
    for runtime in ["runc", "gvisor"] {
        let (b, a) =
            (table(&dump_before, &format!("{plugin}{runtime}")), table(&dump_after, &format!("{plugin}{runtime}")));
        assert!(!b.is_empty(), "{runtime} is in the config before");
        assert_eq!(a, b, "runtime {runtime} unchanged by the install");
    }
    assert!(dump_after.contains("example.com/pause:node"), "the node's sandbox image is kept");
    let text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
    assert!(text.starts_with("# the node's own comment\n"), "the node's own bytes come first:\n{text}");
    let cfg = std::fs::read_to_string(&hand).map_err(|e| e.to_string())?;
    assert!(cfg.contains(&format!("runtime_dir = \"{}/run/bulwark\"", root.0.display())), "{cfg}");
    assert!(cfg.contains("[telemetry]"), "the marked spot for telemetry: {cfg}");

    let again = install_node(&[], &root.0, &config, &containerd)?;
    assert!(again.status.success(), "second install failed: {}", again.stderr);
    assert_eq!((again.stdout.as_str(), again.stderr.as_str()), ("", ""), "a second install is quiet");
    assert_eq!(snapshot(&root.0), installed, "a second install changes nothing");

    let out = uninstall(&root.0, &[])?;
    assert!(out.status.success(), "uninstall failed: {}", out.stderr);
    let after = snapshot(&root.0);
    if after != before {
        let diff: Vec<_> = before
            .iter()
            .filter(|(p, v)| after.get(*p) != Some(v))
            .map(|(p, _)| format!("changed or gone: {}", p.display()))
            .chain(after.keys().filter(|p| !before.contains_key(*p)).map(|p| format!("left: {}", p.display())))
            .collect();
        panic!("uninstall did not restore the root: {diff:#?}");
    }
    Ok(())
}

#[test]
fn containerd_1_6_format_2_round_trip_restores_every_byte() -> Result<(), String> {
    round_trip(ContainerdVersion::V1, 2)
}

#[test]
fn containerd_2_format_3_round_trip_restores_every_byte() -> Result<(), String> {
    round_trip(ContainerdVersion::V2, 3)
}

#[test]
fn containerd_2_format_2_round_trip_restores_every_byte() -> Result<(), String> {
    round_trip(ContainerdVersion::V2, 2)
}

/// containerd 1.6 forgets its default runtimes when a config names one: Debian's shipped config
/// has a CRI section without runtimes, and runc must still be there after the install.
#[test]
fn containerd_1_6_keeps_its_default_runtime() -> Result<(), String> {
    let containerd = ContainerdVersion::V1.bin_dir()?.join("containerd");
    let root = Root::new("default-runc");
    let config = root.0.join("config.toml");
    let text = format!(
        "version = 2\nroot = \"{d}/root\"\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    \
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"\n",
        d = root.0.display()
    );
    std::fs::write(&config, &text).map_err(|e| e.to_string())?;
    let out = install_node(&[], &root.0, &config, &containerd)?;
    assert!(out.status.success(), "{}", out.stderr);
    let d = dump(&containerd, &config)?;
    let runc = table(&d, "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc");
    assert!(runc.contains(&"runtime_type = \"io.containerd.runc.v2\"".to_string()), "runc is gone: {d}");
    // Someone adds a line after the install: uninstall takes out only its own block.
    let mut now = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
    now.push_str("# added by the node's operator\n");
    std::fs::write(&config, &now).map_err(|e| e.to_string())?;
    let out = uninstall(&root.0, &[])?;
    assert!(out.status.success() && out.stderr.contains("changed since install"), "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(&config).map_err(|e| e.to_string())?,
        format!("{text}# added by the node's operator\n")
    );
    Ok(())
}

/// What install-node must not do: take over a bulwark runtime it did not add; uninstall under
/// running sandboxes; lose an edit of an installed file.
#[test]
fn refusals_name_the_problem() -> Result<(), String> {
    let containerd = ContainerdVersion::V1.bin_dir()?.join("containerd");
    let root = Root::new("refusals");
    let config = root.0.join("config.toml");
    let theirs = format!(
        "version = 2\nroot = \"{d}/root\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.bulwark]\n  \
         runtime_type = \"io.containerd.bulwark.v2\"\n",
        d = root.0.display()
    );
    std::fs::write(&config, &theirs).map_err(|e| e.to_string())?;
    let out = install_node(&[], &root.0, &config, &containerd)?;
    assert!(
        !out.status.success() && out.stderr.contains("already configures a runtime named bulwark"),
        "{}",
        out.stderr
    );

    std::fs::write(&config, format!("version = 2\nroot = \"{}/root\"\n", root.0.display()))
        .map_err(|e| e.to_string())?;
    let out = install_node(&["--set", "vm.vcpuz=2"], &root.0, &config, &containerd)?;
    assert!(!out.status.success() && out.stderr.contains("vcpuz"), "a bad --set is refused: {}", out.stderr);
    assert!(!root.0.join("opt").exists(), "nothing is installed after a refused configuration");
    let out = install_node(&[], &root.0, &config, &containerd)?;
    assert!(out.status.success(), "{}", out.stderr);

    // A sandbox's state directory with its pid file: the node still runs a pod.
    let sandbox = root.0.join("run/bulwark/k8s.io/pod1");
    std::fs::create_dir_all(&sandbox).map_err(|e| e.to_string())?;
    std::fs::write(sandbox.join("pids"), "qemu 12345 /usr/bin/qemu-system-x86_64\n").map_err(|e| e.to_string())?;
    let out = uninstall(&root.0, &[])?;
    assert!(!out.status.success() && out.stderr.contains("sandboxes still run"), "{}", out.stderr);
    std::fs::remove_dir_all(root.0.join("run")).map_err(|e| e.to_string())?;

    let cfg = root.0.join("etc/bulwark/config.toml");
    let mut text = std::fs::read_to_string(&cfg).map_err(|e| e.to_string())?;
    text.push_str("\n[tenants.\"team-a\"]\nmax_vcpus = 2\n");
    std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
    let out = install_node(&[], &root.0, &config, &containerd)?;
    assert!(out.status.success() && out.stderr.contains("kept"), "a reinstall keeps the edit: {}", out.stderr);
    assert!(std::fs::read_to_string(&cfg).map_err(|e| e.to_string())?.contains("team-a"));
    let out = uninstall(&root.0, &[])?;
    assert!(!out.status.success() && out.stderr.contains("changed since install"), "{}", out.stderr);
    let out = uninstall(&root.0, &["--force"])?;
    assert!(out.status.success(), "{}", out.stderr);
    let left: Vec<_> = snapshot(&root.0).into_keys().collect();
    assert_eq!(left, [config], "only the node's own config is left");
    Ok(())
}

/// The config.toml install-node writes holds the shim's own defaults (shim/src/config.rs) for
/// everything but the installed paths, the runtime directory and the telemetry socket below
/// it: a default changed in the shim shows up here.
#[test]
fn the_installed_config_is_the_shims_defaults_with_the_installed_paths() -> Result<(), String> {
    use bulwark_shim::config::Config;
    let out = process::run(
        Command::new(script()).args(["--root", "/srv/n", "--print-config", "--qemu", "/usr/bin/qemu-system-x86_64"]),
        Duration::from_secs(30),
    )?;
    assert!(out.status.success(), "{}", out.stderr);
    let cfg = Config::parse(&out.stdout, Path::new("print-config")).map_err(|e| e.to_string())?;
    let d = Config::default();
    assert_eq!(cfg.vm, d.vm);
    assert_eq!(cfg.jail, d.jail);
    assert_eq!(cfg.tenant, d.tenant);
    assert_eq!(cfg.tenants, d.tenants);
    assert_eq!(cfg.cgroup, d.cgroup);
    assert_eq!(cfg.telemetry.node_socket, Path::new("/srv/n/run/bulwark/telemetry.sock"));
    let mut t = cfg.telemetry.clone();
    t.node_socket = d.telemetry.node_socket.clone();
    assert_eq!(t, d.telemetry);
    let p = &cfg.paths;
    assert_eq!(p.qemu, Path::new("/usr/bin/qemu-system-x86_64"));
    assert_eq!(p.kernel, Path::new("/srv/n/opt/bulwark/share/vmlinux"));
    assert_eq!(p.initrd, Path::new("/srv/n/opt/bulwark/share/initramfs.cpio"));
    assert_eq!(p.virtiofsd, Path::new("/srv/n/opt/bulwark/libexec/virtiofsd"));
    assert_eq!(p.vhost_device_vsock, Path::new("/srv/n/opt/bulwark/libexec/vhost-device-vsock"));
    assert_eq!(p.runtime_dir, Path::new("/srv/n/run/bulwark"));
    Ok(())
}

/// The DaemonSet's way: `entrypoint.sh install` runs install-node with `--host-root` against a
/// node whose `/` is mounted at a second place, and containerd's checks run in the node's
/// namespaces (`nsenter --target 1`). The node here is this host seen from a private mount and
/// PID namespace whose /etc is an overlay and whose /opt, /usr/local and /var/lib are empty
/// tmpfs (so nothing reaches the real host), with a containerd config of its own; PID 1 there
/// is the namespace's shell. Files must land on the node, the configs name the node's paths
/// (never the mount point), `bulwark check` on the node passes, and `entrypoint.sh uninstall`
/// restores the config byte for byte and leaves no Bulwark file.
#[test]
fn the_daemonset_entrypoint_installs_on_the_node_root_and_uninstalls() -> Result<(), String> {
    let a = Artifacts::locate()?;
    let root = Root::new("host-root");
    let t = &root.0;
    let real_manifest = Path::new("/var/lib/bulwark/install/manifest");
    let installed_before = real_manifest.exists();
    let out = process::run(
        Command::new(script())
            .arg("--bin-dir")
            .arg(&a.shim_dir)
            .arg("--kernel")
            .arg(&a.kernel)
            .arg("--initrd")
            .arg(&a.initrd)
            .arg("--virtiofsd")
            .arg(&a.virtiofsd)
            .arg("--vhost-device-vsock")
            .arg(&a.vhost_device_vsock)
            .arg("--payload")
            .arg(t.join("payload")),
        Duration::from_secs(60),
    )?;
    assert!(out.status.success(), "--payload: {}", out.stderr);
    assert_eq!(real_manifest.exists(), installed_before, "--payload only copies: it installed nothing on this host");
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""), "--payload is quiet");
    let containerd = ContainerdVersion::V1.bin_dir()?.join("containerd");
    let config = existing_config(2, t);
    let entrypoint = bulwark_e2e::repo_root().join("runtimeclass/install/entrypoint.sh");
    let node_script = r#"
        set -euo pipefail
        mount --make-rprivate /
        mkdir -p "$T/etc-up" "$T/etc-work" "$T/host"
        mount -t overlay overlay -o "lowerdir=/etc,upperdir=$T/etc-up,workdir=$T/etc-work" /etc
        for d in /opt /usr/local /var/lib; do mount -t tmpfs tmpfs "$d"; done
        for d in /etc /opt /usr/local /var/lib; do
            case $(findmnt -n -o FSTYPE --mountpoint "$d") in overlay|tmpfs) ;; *) echo "no private $d" >&2; exit 90 ;; esac
        done
        rm -rf /etc/bulwark
        mkdir -p /etc/containerd
        printf '%s' "$CONFIG" >/etc/containerd/config.toml
        cp -p /etc/containerd/config.toml "$T/before.toml"
        mount --rbind / "$T/host"
        run() { # the entrypoint until it reports done, then SIGTERM as the kubelet does
            rm -f "$T/done"
            BULWARK_HOST_ROOT="$T/host" BULWARK_DONE_FILE="$T/done" "$ENTRYPOINT" "$@" &
            local pid=$! i
            for i in $(seq 1 600); do [ -f "$T/done" ] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            [ -f "$T/done" ] || { wait "$pid"; echo "entrypoint $1 ended without being done" >&2; exit 91; }
            kill -TERM "$pid"; wait "$pid"
        }
        run install --containerd "$CONTAINERD" --no-label --no-restart
        cp /etc/containerd/config.toml "$T/installed.toml"
        cp /etc/bulwark/config.toml "$T/bulwark.toml"
        readlink /usr/local/bin/containerd-shim-bulwark-v2 >"$T/link"
        PATH="/usr/local/bin:$PATH" /usr/local/bin/bulwark check --quick --json --containerd "$CONTAINERD" >"$T/check.json" || true
        run uninstall --no-restart
        cmp /etc/containerd/config.toml "$T/before.toml" || { echo "config not restored" >&2; exit 92; }
        for p in /opt/bulwark /etc/bulwark /var/lib/bulwark /usr/local/bin/bulwark /usr/local/bin/containerd-shim-bulwark-v2; do
            if [ -e "$p" ] || [ -L "$p" ]; then echo "left after uninstall: $p" >&2; exit 93; fi
        done
    "#;
    let out = process::run(
        Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--mount-proc", "bash", "-c", node_script])
            .env("T", t)
            .env("CONFIG", &config)
            .env("CONTAINERD", &containerd)
            .env("ENTRYPOINT", &entrypoint)
            .env("BULWARK_PAYLOAD", t.join("payload"))
            .env("BULWARK_INSTALL_NODE", script())
            .env("NODE_NAME", "node-1"),
        Duration::from_secs(180),
    )?;
    assert!(out.status.success(), "the node script failed ({:?}): {}{}", out.status, out.stdout, out.stderr);
    let read = |name: &str| std::fs::read_to_string(t.join(name)).map_err(|e| format!("{name}: {e}"));
    let installed = read("installed.toml")?;
    assert!(
        installed.contains("runtime_path = \"/opt/bulwark/bin/containerd-shim-bulwark-v2\""),
        "the node's path, not the mount point's:\n{installed}"
    );
    let cfg = read("bulwark.toml")?;
    assert!(
        cfg.contains("kernel = \"/opt/bulwark/share/vmlinux\"") && !cfg.contains(&t.display().to_string()),
        "{cfg}"
    );
    assert!(cfg.contains("node_name = \"node-1\""), "telemetry names the node: {cfg}");
    assert_eq!(read("link")?.trim(), "/opt/bulwark/bin/containerd-shim-bulwark-v2");
    let report: serde_json::Value = serde_json::from_str(&read("check.json")?).map_err(|e| e.to_string())?;
    assert_eq!(report["ready"], true, "bulwark check on the node: {report:#}");
    assert!(!t.join("etc-up/bulwark").exists(), "uninstall removed /etc/bulwark from the node");
    Ok(())
}
