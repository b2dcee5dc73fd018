//! The `bulwark` CLI against real installs: `bulwark check` on this node (a private install by
//! scripts/install-node; KVM judged, a VM really booted) and with each prerequisite removed in
//! turn; `bulwark ps` and `bulwark inspect` on a pod running in containerd 1.6 through CRI;
//! `bulwark events` on the syscalls of a running container (the guest's collector, the shim's
//! relay and its frames file are the real ones).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bulwark_e2e::containerd::{search_path, Containerd, ShimConfig, CTR_LIMIT};
use bulwark_e2e::cri::{ContainerdVersion, CriContainerd, HANDLER_BULWARK};
use bulwark_e2e::cri_client::CriClient;
use bulwark_e2e::install::{install_node, Installed};
use bulwark_e2e::{process, Artifacts};
use serde_json::Value;

const MIB: i64 = 1024 * 1024;

/// A private install for `bulwark check` (no containerd running: check reads the config with
/// `containerd config dump`), removed on drop.
struct Node {
    dir: PathBuf,
    node: Installed,
    containerd: PathBuf,
    containerd_config: PathBuf,
}

impl Node {
    fn install(name: &str) -> Result<Node, String> {
        let artifacts = Artifacts::locate()?;
        let dir = PathBuf::from(format!("/tmp/bwl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let containerd_config = dir.join("containerd.toml");
        std::fs::write(
            &containerd_config,
            format!("version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n", dir.display()),
        )
        .map_err(|e| e.to_string())?;
        let containerd = ContainerdVersion::V1.bin_dir()?.join("containerd");
        let mut shim = ShimConfig::for_test(&artifacts, &dir);
        let node = install_node(&artifacts, &dir, &containerd_config, &containerd, &mut shim)?;
        Ok(Node { dir, node, containerd, containerd_config })
    }

    /// `bulwark check --json` with `extra` arguments; (exit code, report).
    fn check(&self, config: &Path, extra: &[&str]) -> Result<(i32, Value), String> {
        let mut cmd = Command::new(&self.node.cli);
        cmd.arg("check").arg("--json").arg("--config").arg(config);
        if !extra.contains(&"--containerd") {
            cmd.arg("--containerd").arg(&self.containerd);
        }
        if !extra.contains(&"--containerd-config") {
            cmd.arg("--containerd-config").arg(&self.containerd_config);
        }
        // containerd 1.6 finds the shim on its PATH: the install's /usr/local/bin.
        cmd.env("PATH", search_path(Some(&self.node.bin_dir), None)).args(extra);
        let out = process::run(&mut cmd, Duration::from_secs(300))?;
        let report: Value = serde_json::from_str(&out.stdout)
            .map_err(|e| format!("bulwark check printed no JSON ({e}): {}{}", out.stdout, out.stderr))?;
        Ok((out.status.code().unwrap_or(-1), report))
    }

    /// The installed config.toml with `from` replaced by `to`, as a new file.
    fn config_with(&self, name: &str, from: &str, to: &str) -> Result<PathBuf, String> {
        let text = std::fs::read_to_string(&self.node.shim_config).map_err(|e| e.to_string())?;
        assert!(text.contains(from), "the installed config has no {from:?}:\n{text}");
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text.replace(from, to)).map_err(|e| e.to_string())?;
        Ok(path)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The checks of a report by name: (status, detail, fix).
fn checks(report: &Value) -> Vec<(String, String, String, String)> {
    report["checks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
                    (s("check"), s("status"), s("detail"), s("fix"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn find<'a>(checks: &'a [(String, String, String, String)], name: &str) -> &'a (String, String, String, String) {
    checks.iter().find(|c| c.0 == name).unwrap_or_else(|| panic!("no check {name:?} in {checks:#?}"))
}

/// Whether QEMU, running as an unprivileged sandbox uid with /dev/kvm's group (never root's),
/// can open /dev/kvm at all on this host.
fn kvm_openable_by_the_jail() -> bool {
    std::fs::metadata("/dev/kvm").is_ok_and(|m| m.gid() != 0 && m.permissions().mode() & 0o060 == 0o060)
}

#[test]
fn check_judges_kvm_and_boots_a_vm_on_this_node() -> Result<(), String> {
    let n = Node::install("check")?;
    let (code, report) = n.check(&n.node.shim_config, &[])?;
    let all = checks(&report);
    assert_eq!(code, 0, "the install is complete: the node can run pods: {all:#?}");
    assert_eq!(report["ready"], true);
    let kvm = find(&all, "kvm");
    let boot = find(&all, "boot");
    assert_eq!(boot.1, "ok", "a VM really booted: {boot:?}");
    match kvm.1.as_str() {
        "ok" => assert!(boot.2.contains("under KVM"), "KVM reported usable, so the boot ran under it: {all:#?}"),
        "warn" => {
            assert!(kvm.2.contains("KVM unusable") && kvm.2.contains("TCG"), "{kvm:?}");
            assert!(kvm.3.contains("kvm_intel"), "the fix says how to get KVM: {kvm:?}");
            assert!(boot.2.contains("under TCG"), "the fallback boot ran under TCG: {boot:?}");
        }
        other => panic!("kvm check {other}: {kvm:?}"),
    }
    if !kvm_openable_by_the_jail() {
        assert_eq!(kvm.1, "warn", "/dev/kvm is not usable by the jailed QEMU here, yet KVM was reported usable");
        assert!(kvm.3.contains("/dev/kvm is mode"), "the fix names /dev/kvm's permissions: {kvm:?}");
    }
    for c in ["config", "qemu", "virtiofsd", "vsock helper", "guest kernel", "guest initramfs", "guest protocol"] {
        assert_eq!(find(&all, c).1, "ok", "{c}: {all:#?}");
    }
    assert_eq!(find(&all, "containerd config").1, "ok", "{all:#?}");
    assert!(std::fs::read_dir(n.dir.join("r/.probe")).map(|d| d.count()).unwrap_or(0) == 0, "the test VM is gone");
    Ok(())
}

#[test]
fn check_names_each_missing_prerequisite_and_its_fix() -> Result<(), String> {
    let n = Node::install("missing")?;
    let (code, report) = n.check(&n.node.shim_config, &["--quick"])?;
    assert_eq!(code, 0, "the complete install passes: {:#?}", checks(&report));
    let prefix = n.dir.join("opt/bulwark");
    let p = |rel: &str| prefix.join(rel).display().to_string();

    // A copy of the guest image whose protocol version is not the shim's.
    let other = n.dir.join("other-image");
    std::fs::create_dir_all(&other).map_err(|e| e.to_string())?;
    std::fs::copy(prefix.join("share/initramfs.cpio"), other.join("initramfs.cpio")).map_err(|e| e.to_string())?;
    std::fs::write(other.join("protocol-version"), "999\n").map_err(|e| e.to_string())?;
    // A runtime directory below a directory the jailed helpers cannot pass.
    let private = n.dir.join("private");
    std::fs::create_dir_all(&private).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
    let rd = n.dir.join("r").display().to_string();

    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "qemu",
            "/usr/bin/qemu-system-x86_64".into(),
            "/nonexistent/qemu-system-x86_64".into(),
            "apt-get install qemu-system-x86",
        ),
        ("virtiofsd", p("libexec/virtiofsd"), "/nonexistent/virtiofsd".into(), "install-node"),
        ("vsock helper", p("libexec/vhost-device-vsock"), "/nonexistent/vhost-device-vsock".into(), "install-node"),
        ("guest kernel", p("share/vmlinux"), "/nonexistent/vmlinux".into(), "install-node"),
        ("guest initramfs", p("share/initramfs.cpio"), "/nonexistent/initramfs.cpio".into(), "install-node"),
        (
            "guest protocol",
            p("share/initramfs.cpio"),
            other.join("initramfs.cpio").display().to_string(),
            "install-node",
        ),
        ("runtime dir", rd, private.join("r").display().to_string(), "chmod o+x"),
        ("config", "[cgroup]".into(), "[cgroup]\nrequird = true".into(), "shim/src/config.rs"),
    ];
    for (check, from, to, fix) in cases {
        let config = n.config_with(&check.replace(" ", "-"), &from, &to)?;
        let (code, report) = n.check(&config, &["--quick"])?;
        let all = checks(&report);
        let failed: Vec<&str> = all.iter().filter(|c| c.1 == "fail").map(|c| c.0.as_str()).collect();
        assert_eq!(code, 1, "{check} missing: the node is not ready: {all:#?}");
        assert_eq!(failed, [check], "only {check} fails: {all:#?}");
        let c = find(&all, check);
        assert!(c.3.contains(fix), "{check}'s fix should mention {fix:?}: {c:?}");
    }

    // containerd without the runtime, and no containerd at all.
    let bare = n.dir.join("bare.toml");
    std::fs::write(&bare, "version = 2\n").map_err(|e| e.to_string())?;
    let (code, report) =
        n.check(&n.node.shim_config, &["--quick", "--containerd-config", &bare.display().to_string()])?;
    let all = checks(&report);
    assert_eq!(code, 1);
    assert_eq!(find(&all, "containerd config").1, "fail", "{all:#?}");
    assert!(find(&all, "containerd config").3.contains("install-node"));
    let (code, report) = n.check(&n.node.shim_config, &["--quick", "--containerd", "/nonexistent/containerd"])?;
    let all = checks(&report);
    assert_eq!(code, 1);
    assert!(find(&all, "containerd").3.contains("apt-get install containerd"), "{all:#?}");
    Ok(())
}

fn cli(node: &Installed, args: &[&str]) -> Result<process::Output, String> {
    let mut cmd = Command::new(&node.cli);
    cmd.args(args).arg("--config").arg(&node.shim_config);
    process::run(&mut cmd, Duration::from_secs(60))
}

fn json(out: &process::Output) -> Result<Value, String> {
    if !out.status.success() {
        return Err(format!("bulwark failed: {}", out.stderr));
    }
    serde_json::from_str(&out.stdout).map_err(|e| format!("not JSON ({e}): {}", out.stdout))
}

#[test]
fn ps_and_inspect_show_a_running_pod() -> Result<(), String> {
    let c = CriContainerd::start(ContainerdVersion::V1)?;
    let cl = &c.client;
    let log_dir = c.pod_log_dir("cli")?;
    let mut config = CriClient::pod_config("cli-pod", "bwk-cli", &log_dir);
    config.annotations.insert("bulwark.io/tenant".into(), "acme".into());
    if let Some(linux) = config.linux.as_mut() {
        linux.resources = Some(k8s_cri::v1::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 200_000,
            memory_limit_in_bytes: 320 * MIB,
            ..Default::default()
        });
    }
    let pod = cl.run_pod_sandbox(&config, HANDLER_BULWARK)?;
    let result = ps_and_inspect(&c, &pod);
    let stopped = cl.stop_pod(&pod).and_then(|_| cl.remove_pod(&pod));
    result.map_err(|e| format!("{e}\n{}", c.diagnostics()))?;
    stopped?;
    let gone = process::poll(Duration::from_secs(30), || {
        let rows = json(&cli(&c.node, &["ps", "--json"]).ok()?).ok()?;
        rows.as_array()?.iter().all(|r| r["sandbox_id"] != pod.as_str()).then_some(())
    });
    assert!(gone.is_some(), "bulwark ps still lists the removed pod");
    c.assert_clean(&[])
}

fn ps_and_inspect(c: &CriContainerd, pod: &str) -> Result<(), String> {
    let rows = json(&cli(&c.node, &["ps", "--json"])?)?;
    let row = rows
        .as_array()
        .and_then(|a| a.iter().find(|r| r["sandbox_id"] == pod))
        .ok_or_else(|| format!("bulwark ps does not list pod {pod}: {rows:#}"))?;
    assert_eq!(row["pod_name"], "cli-pod", "{row:#}");
    assert_eq!(row["pod_namespace"], "bulwark-e2e", "{row:#}");
    assert_eq!(row["pod_uid"], "uid-cli-pod", "{row:#}");
    assert_eq!(row["tenant"], "acme", "the tenant annotation reached the shim (pod_annotations): {row:#}");
    assert_eq!(row["containerd_namespace"], "k8s.io");
    assert_eq!((row["vcpus"].as_u64(), row["memory_mib"].as_u64()), (Some(2), Some(320)), "{row:#}");
    assert_eq!(row["state"], "running");
    assert!(row["uptime_secs"].as_u64().is_some_and(|u| u < 600), "{row:#}");
    let vm_pid = row["vm_pid"].as_i64().ok_or("no VM pid")?;
    let exe = std::fs::read_link(format!("/proc/{vm_pid}/exe")).map_err(|e| format!("VM pid {vm_pid}: {e}"))?;
    assert!(exe.to_string_lossy().contains("qemu-system"), "the VM pid {vm_pid} runs {}", exe.display());

    let text = cli(&c.node, &["ps"])?;
    let line =
        text.stdout.lines().find(|l| l.contains("cli-pod")).ok_or(format!("no pod line in:\n{}", text.stdout))?;
    for want in ["bulwark-e2e", &vm_pid.to_string(), "320Mi", "running"] {
        assert!(line.contains(want), "bulwark ps line lacks {want:?}: {line}");
    }

    let d = json(&cli(&c.node, &["inspect", pod, "--json"])?)?;
    let procs = d["processes"].as_array().ok_or("no processes")?;
    for name in ["qemu", "virtiofsd", "vhost-device-vsock"] {
        let p = procs.iter().find(|p| p["name"] == name).ok_or(format!("inspect lists no {name}: {d:#}"))?;
        assert_eq!(p["running"], true, "{name}: {p:#}");
        let pid = p["pid"].as_i64().unwrap_or(0);
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("{name} {pid}: {e}"))?;
        let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().nth(1));
        assert_eq!(p["uid"].to_string(), uid.unwrap_or("?"), "{name}'s uid as /proc says");
    }
    let qemu_uid = procs.iter().find(|p| p["name"] == "qemu").and_then(|p| p["uid"].as_u64()).unwrap_or(0);
    assert!(qemu_uid >= 2_000_000_000, "QEMU runs as a jail uid: {qemu_uid}");
    let sockets = d["sockets"].as_array().ok_or("no sockets")?;
    assert!(sockets.iter().any(|s| s["what"] == "hybrid vsock socket" && s["socket"] == true), "{sockets:#?}");
    let logs = d["logs"].as_array().ok_or("no logs")?;
    assert!(logs.iter().any(|l| l["what"] == "console.log" && l["bytes"].as_u64().is_some()), "{logs:#?}");
    assert!(
        d["share_entries"].as_array().is_some_and(|e| e.iter().any(|x| x == pod)),
        "the pause container's share: {d:#}"
    );
    let netns = d["network"]["netns"].as_str().ok_or(format!("no pod network: {d:#}"))?;
    assert_eq!(netns, c.client.pod_netns(pod)?, "the pod's netns");
    assert!(d["network"]["taps"].as_array().is_some_and(|t| !t.is_empty()), "{d:#}");

    let text = cli(&c.node, &["inspect", pod])?;
    for want in ["processes", "qemu", "vhost-device-vsock", "sockets", "console.log", "network    netns", "tenant acme"]
    {
        assert!(text.stdout.contains(want), "bulwark inspect lacks {want:?}:\n{}", text.stdout);
    }
    let missing = cli(&c.node, &["inspect", "no-such-sandbox"])?;
    assert!(!missing.status.success() && missing.stderr.contains("bulwark ps lists them"), "{missing:?}");
    Ok(())
}

#[test]
fn events_show_a_running_containers_syscalls() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let id = "cli-events";
    // The busybox image has no /etc/shadow: the container writes one, then keeps reading it.
    let script = "echo 'root:*:19000::::::' >/etc/shadow; while true; do cat /etc/shadow >/dev/null; sleep 1; done";
    let mut run = c.spawn_run(id, &["sh", "-c", script])?;
    let result = events_of(&c, id);
    let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    let _ = process::wait_bounded(&mut run, CTR_LIMIT);
    let _ = c.ctr(&["containers", "rm", id]);
    result.map_err(|e| format!("{e}\n{}", c.diagnostics()))?;
    c.assert_clean()
}

/// The openat of /etc/shadow by container `id`, through `bulwark events` and `--follow`.
fn events_of(c: &Containerd, id: &str) -> Result<(), String> {
    use std::io::BufRead;
    c.wait_running(id)?;
    let wanted = |l: &str| l.contains(&format!("container={id}")) && l.contains("openat path=/etc/shadow");
    let mut follow = Command::new(&c.node.cli)
        .args(["events", id, "--follow", "--config"])
        .arg(&c.node.shim_config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("bulwark events --follow: {e}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().ok_or("no stdout")?;
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut last = String::new();
    let once = process::poll(Duration::from_secs(180), || {
        let out = cli(&c.node, &["events", id]).ok()?;
        last = out.stdout.lines().rev().take(5).collect::<Vec<_>>().join("\n");
        out.stdout.lines().find(|l| wanted(l)).map(str::to_string)
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut followed = None;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if wanted(&l) => {
                followed = Some(l);
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let line =
        once.ok_or(format!("bulwark events never showed the container's openat of /etc/shadow; last lines:\n{last}"))?;
    assert!(line.contains(" proc=") && line.contains(" uid=0 "), "the process and its uid: {line}");
    assert!(line.starts_with("20"), "the line starts with the host's time: {line}");
    assert!(followed.is_some(), "bulwark events --follow did not show it");
    Ok(())
}
