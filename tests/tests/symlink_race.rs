//! A hostile guest racing the host in the virtio-fs share, end to end (a real containerd 1.6
//! with its CRI plugin, handler `bulwark`, a real VM). While the guest plants symlinks to `/`,
//! `/etc` and a host canary's path and renames entries, over and over, in the skeleton, in
//! rootfs and in read-write volumes of every container tree it sees, the shim creates a second
//! container (with a volume) and removes another one. Two attackers, the same checks:
//!
//! - the agent itself (PID 1, outside any container), in the test guest image's test mode
//!   `symlink-race` (guest-agent/src/testmodes/symlink_race.rs), racing from boot to the end;
//! - guest root inside a tenant container (in the VM's PID namespace with CAP_SYS_PTRACE, it
//!   reaches the agent's mount of the share through `/proc/1/root/run/bulwark/share`) running
//!   `bulwark-probe share-race` for 45 s: what a tenant can do with the production image.
//!
//! Both go through the guest kernel's virtio-fs client to virtiofsd, as anything in the guest
//! must. Checked: the skeleton never took a change (EROFS every time) while the rootfs and
//! volumes did (the race was live and reached the host: the planted links are in the host's
//! volume directories); the race saw the second container's tree and the removed one's; the
//! host canary was never opened (inotify) and keeps its bytes and mtime; no mount appeared
//! under the test's directory outside the sandbox's state directory and containerd's own
//! (checked every 0.2 s), and the host's mount table outside the test directories is
//! unchanged; nothing is left behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulwark_e2e::canary::{compare_mounts, stable_host_mounts, Canary};
use bulwark_e2e::cri::{ContainerdVersion, CriContainerd, HANDLER_BULWARK, K8S_NAMESPACE};
use bulwark_e2e::cri_client::{read_cri_log, ContainerSpec, CriClient};
use bulwark_e2e::faults::test_initrd;
use bulwark_e2e::leftovers::{entries, mounts_under};
use bulwark_e2e::process::poll;
use bulwark_e2e::TEST_IMAGE;

/// How long the container attacker races (the host's work takes a few seconds of it).
const RACE_SECS: u32 = 45;

/// Who races.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attacker {
    /// The agent in test mode `symlink-race`; its lines `symlink-race ...` are in the agent's
    /// log, which the shim writes into containerd's log.
    Agent,
    /// A container running `bulwark-probe share-race`; its lines `share-race ...` are in its
    /// CRI log.
    Container,
}

/// Waits until the container's CRI log has the line `line`.
fn wait_line(log: &Path, line: &str, limit: Duration) -> Result<(), String> {
    poll(limit, || read_cri_log(log).iter().any(|(_, l)| l == line).then_some(()))
        .ok_or_else(|| format!("{} never got {line:?} within {limit:?}: {:?}", log.display(), read_cri_log(log)))
}

/// Mounts under `dir` that are neither in the sandbox's state directory nor containerd's own
/// (its root and state: rootfs snapshots, the netns): what the shim must never make.
fn stray_mounts(dir: &Path, sandbox_dir: &Path) -> Vec<String> {
    mounts_under(dir)
        .into_iter()
        .filter(|m| {
            let p = Path::new(m);
            !p.starts_with(sandbox_dir) && !p.starts_with(dir.join("state")) && !p.starts_with(dir.join("root"))
        })
        .collect()
}

/// The race's report lines, without their prefix ("saw <id>", "skeleton ok=..."), in order.
fn race_lines(c: &CriContainerd, log_dir: &Path, who: Attacker) -> Vec<String> {
    match who {
        Attacker::Container => read_cri_log(&log_dir.join("attacker.log"))
            .into_iter()
            .filter_map(|(_, l)| l.strip_prefix("share-race ").map(str::to_string))
            .collect(),
        Attacker::Agent => std::fs::read_to_string(c.dir.join("containerd.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once("symlink-race ").map(|(_, r)| r.trim_end_matches(['"', '\\']).to_string()))
            .collect(),
    }
}

/// The last `<kind> ok=<n> fail=<n> <errno>` report.
fn tally(lines: &[String], kind: &str) -> Result<(u64, u64, String), String> {
    let line = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{kind} ")))
        .ok_or_else(|| format!("no {kind} tally in the race's report: {lines:?}"))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let num = |p: &str, i: usize| w.get(i).and_then(|v| v.strip_prefix(p)).and_then(|v| v.parse().ok());
    match (num("ok=", 0), num("fail=", 1), w.get(2)) {
        (Some(ok), Some(fail), Some(e)) => Ok((ok, fail, e.to_string())),
        _ => Err(format!("bad tally {line:?}")),
    }
}

fn race_scenario(who: Attacker) -> Result<(), String> {
    let canary = Canary::plant()?;
    let c = match who {
        Attacker::Container => CriContainerd::start(ContainerdVersion::V1)?,
        Attacker::Agent => {
            let initrd = test_initrd()?;
            let params =
                format!("bulwark.test_mode=symlink-race bulwark.symlink_race_target={}", canary.file.display());
            CriContainerd::start_with(ContainerdVersion::V1, |s| {
                s.initrd = initrd;
                s.extra.push_str(&format!("\nkernel_params = \"{params}\"\n"));
            })?
        }
    };
    let cl = &c.client;
    let host_mounts_before = stable_host_mounts();
    let log_dir = c.pod_log_dir("race")?;
    let mut pod_config = CriClient::pod_config("race", "bwk-race", &log_dir);
    if who == Attacker::Container {
        // hostPID (in a Bulwark VM: the VM's PID namespace, where the agent is PID 1).
        if let Some(ns) = pod_config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
        {
            ns.pid = k8s_cri::v1::NamespaceMode::Node as i32;
        }
    }
    let pod = cl.run_pod_sandbox(&pod_config, HANDLER_BULWARK)?;
    let netns: Vec<String> = cl.pod_netns(&pod).into_iter().collect();
    let ns_dir = c.shim.runtime_dir.join(K8S_NAMESPACE);
    let sandbox_dir: PathBuf = match entries(&ns_dir).as_slice() {
        [one] => ns_dir.join(one),
        other => return Err(format!("expected one sandbox state dir in {}, found {other:?}", ns_dir.display())),
    };
    let volume = |name: &str| -> Result<PathBuf, String> {
        let d = c.dir.join(name);
        std::fs::create_dir(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        std::fs::write(d.join("data"), format!("{name}\n")).map_err(|e| e.to_string())?;
        Ok(d)
    };
    let start = |name: &str, script: &str, vol: Option<&Path>, caps: &[&str]| -> Result<String, String> {
        let mut spec = ContainerSpec::new(name, TEST_IMAGE, &["sh", "-c", script]);
        if let Some(v) = vol {
            spec.mounts.push((v.to_path_buf(), "/data".into(), false));
        }
        spec.add_caps = caps.iter().map(|s| s.to_string()).collect();
        spec.host_pid = !caps.is_empty();
        let id = cl.create_container(&pod, &pod_config, &spec)?;
        cl.start_container(&id)?;
        Ok(id)
    };
    let diag = |e: String| format!("{e}\n{}", c.diagnostics());

    let victim_vol = volume("vol-victim")?;
    let victim = start("victim", "echo victim-ready; exec sleep 100000", Some(&victim_vol), &[])?;
    wait_line(&log_dir.join("victim.log"), "victim-ready", Duration::from_secs(120)).map_err(diag)?;

    let attacker = match who {
        Attacker::Container => {
            // The agent is PID 1 of the VM's PID namespace; its root shows its mount of the share.
            let race = format!(
                "ls /proc/1/root/run/bulwark/share >/dev/null && \
                 exec bulwark-probe share-race /proc/1/root/run/bulwark/share {RACE_SECS} {}",
                canary.file.display(),
            );
            let id = start("attacker", &race, None, &["SYS_PTRACE"])?;
            wait_line(&log_dir.join("attacker.log"), "share-race started", Duration::from_secs(120)).map_err(diag)?;
            Some(id)
        }
        Attacker::Agent => {
            // The agent races from the share's mount on: it has seen the victim's tree.
            let saw = format!("saw {victim}");
            poll(Duration::from_secs(60), || race_lines(&c, &log_dir, who).contains(&saw).then_some(()))
                .ok_or_else(|| diag("the agent's race never saw the victim's tree".into()))?;
            None
        }
    };

    // While it races: a second container with a volume is created, the victim removed.
    let second_vol = volume("vol-second")?;
    let second = start("second", "echo second-ready; cat /data/data; exec sleep 100000", Some(&second_vol), &[])
        .map_err(diag)?;
    wait_line(&log_dir.join("second.log"), "second-ready", Duration::from_secs(120)).map_err(diag)?;
    cl.stop_container(&victim, 0)?;
    cl.remove_container(&victim)?;
    let removed = Instant::now();

    // Until the race ends (the container's) or for 10 s more (the agent's), every 0.2 s: no
    // mount outside the sandbox's state directory.
    let mut stray = Vec::new();
    let ended = poll(Duration::from_secs(u64::from(RACE_SECS) + 120), || {
        stray.extend(stray_mounts(&c.dir, &sandbox_dir));
        match &attacker {
            Some(id) => {
                let st = cl.container_status(id).ok()?;
                (st.state == k8s_cri::v1::ContainerState::ContainerExited as i32).then_some(())
            }
            None => (removed.elapsed() > Duration::from_secs(10)).then_some(()),
        }
    });
    assert!(stray.is_empty(), "mounts outside the sandbox state dir while the guest raced: {stray:#?}");
    ended.ok_or("the race did not end in time")?;
    let lines = race_lines(&c, &log_dir, who);
    let ctx = format!("the race's report {lines:?}\n{}", c.diagnostics());
    if who == Attacker::Container {
        assert!(lines.iter().any(|l| l == "done"), "the race did not run to its end\n{ctx}");
    }
    eprintln!("race: {:#?}", lines.iter().rev().filter(|l| !l.starts_with("saw")).take(3).collect::<Vec<_>>());
    // The race saw both host operations.
    for (what, id) in [("the second container", &second), ("the removed container", &victim)] {
        assert!(lines.contains(&format!("saw {id}")), "the race never saw {what}'s tree\n{ctx}");
    }
    // The skeleton took nothing; the tenant's own files took everything.
    let (ok, fail, errno) = tally(&lines, "skeleton")?;
    assert!(ok == 0 && fail > 0 && errno == "EROFS", "skeleton: ok={ok} fail={fail} {errno}\n{ctx}");
    for kind in ["rootfs", "volume"] {
        let (ok, _, _) = tally(&lines, kind)?;
        assert!(ok > 0, "no {kind} attempt got through: the race was not live\n{ctx}");
    }
    // The links reached the host's volume directories, as inert symlinks.
    let planted = match who {
        Attacker::Container => "bwk-canary",
        Attacker::Agent => "bwk-target",
    };
    for vol in [&victim_vol, &second_vol] {
        let target = std::fs::read_link(vol.join(planted)).map_err(|e| format!("{}: {e}", vol.display()))?;
        assert_eq!(target, canary.file, "the guest's link in {}", vol.display());
    }

    let second_log = read_cri_log(&log_dir.join("second.log"));
    assert!(second_log.iter().any(|(_, l)| l == "vol-second"), "the second container's volume: {second_log:?}");
    cl.stop_pod(&pod)?;
    cl.remove_pod(&pod)?;
    c.assert_clean(&netns)?;
    canary.check_untouched().map_err(diag)?;
    compare_mounts(&host_mounts_before, &stable_host_mounts())?;
    // The names the races plant, nowhere on the host outside the volumes.
    let names = [
        "bwk-canary",
        "bwk-target",
        "bwk-root",
        "bwk-etc",
        "bwk-dir",
        "bwk-dir2",
        "bwk-target.new",
        "bwk-root.new",
        "bwk-etc.new",
    ];
    for d in ["/", "/etc", "/tmp", "/run"] {
        let planted: Vec<String> = entries(Path::new(d)).into_iter().filter(|e| names.contains(&e.as_str())).collect();
        assert!(planted.is_empty(), "{d} holds {planted:?}");
    }
    Ok(())
}

#[test]
fn the_agent_racing_the_share_cannot_make_the_host_touch_anything_outside_the_sandbox() -> Result<(), String> {
    race_scenario(Attacker::Agent)
}

#[test]
fn a_container_racing_the_share_cannot_make_the_host_touch_anything_outside_the_sandbox() -> Result<(), String> {
    race_scenario(Attacker::Container)
}
