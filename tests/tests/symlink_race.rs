//! A hostile guest racing the host in the virtio-fs share, end to end (a real containerd 1.6
//! with its CRI plugin, handler `bulwark`, a real VM). Guest root (a container in the VM's PID
//! namespace with CAP_SYS_PTRACE, which reaches the agent's own mount of the share through
//! `/proc/1/root/run/bulwark/share`: the same FUSE requests to virtiofsd as the agent or the
//! guest kernel could send) runs `bulwark-probe share-race`: for 45 s, over and
//! over, for every container tree it sees, it plants symlinks to `/`, `/etc` and a host canary's
//! path and renames entries, in the skeleton, in rootfs and in read-write volumes, while the
//! shim creates a second container (with a volume) and removes another one.
//!
//! Checked: the skeleton never took a change (EROFS every time) while the rootfs and volumes
//! did (the race was live and reached the host: the planted links are in the host's volume
//! directories); the race saw the second container's tree appear and the removed one's; the
//! host canary was never opened (inotify) and keeps its bytes and mtime; no mount appeared
//! under the test's directory outside the sandbox's state directory and containerd's own, and
//! the host's mount table outside the test directories is unchanged; nothing is left behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_e2e::canary::{compare_mounts, stable_host_mounts, Canary};
use bulwark_e2e::cri::{ContainerdVersion, CriContainerd, HANDLER_BULWARK, K8S_NAMESPACE};
use bulwark_e2e::cri_client::{read_cri_log, ContainerSpec, CriClient};
use bulwark_e2e::leftovers::{entries, mounts_under};
use bulwark_e2e::process::poll;
use bulwark_e2e::TEST_IMAGE;

/// How long the guest races (the host's work takes a few seconds of it).
const RACE_SECS: u32 = 45;

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

/// `share-race <kind> ok=<n> fail=<n> <errno>` from the attacker's log.
fn tally(log: &[String], kind: &str) -> Result<(u64, u64, String), String> {
    let line = log
        .iter()
        .find_map(|l| l.strip_prefix(&format!("share-race {kind} ")))
        .ok_or_else(|| format!("no {kind} tally in the attacker's log: {log:?}"))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let num = |p: &str, i: usize| w.get(i).and_then(|v| v.strip_prefix(p)).and_then(|v| v.parse().ok());
    match (num("ok=", 0), num("fail=", 1), w.get(2)) {
        (Some(ok), Some(fail), Some(e)) => Ok((ok, fail, e.to_string())),
        _ => Err(format!("bad tally {line:?}")),
    }
}

#[test]
fn a_guest_racing_the_share_cannot_make_the_host_touch_anything_outside_the_sandbox() -> Result<(), String> {
    let canary = Canary::plant()?;
    let c = CriContainerd::start(ContainerdVersion::V1)?;
    let cl = &c.client;
    let host_mounts_before = stable_host_mounts();
    let log_dir = c.pod_log_dir("race")?;
    // hostPID (in a Bulwark VM: the VM's PID namespace, where the agent is PID 1).
    let mut pod_config = CriClient::pod_config("race", "bwk-race", &log_dir);
    if let Some(ns) =
        pod_config.linux.as_mut().and_then(|l| l.security_context.as_mut()).and_then(|s| s.namespace_options.as_mut())
    {
        ns.pid = k8s_cri::v1::NamespaceMode::Node as i32;
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

    // The agent is PID 1 of the VM's PID namespace; its root shows its mount of the share.
    let race = format!(
        "ls /proc/1/root/run/bulwark/share >/dev/null && exec bulwark-probe share-race /proc/1/root/run/bulwark/share {RACE_SECS} {}",
        canary.file.display(),
    );
    let attacker = start("attacker", &race, None, &["SYS_PTRACE"])?;
    wait_line(&log_dir.join("attacker.log"), "share-race started", Duration::from_secs(120)).map_err(diag)?;

    // While it races: a second container with a volume is created, the victim removed.
    let second_vol = volume("vol-second")?;
    let second = start("second", "echo second-ready; cat /data/data; exec sleep 100000", Some(&second_vol), &[])
        .map_err(diag)?;
    wait_line(&log_dir.join("second.log"), "second-ready", Duration::from_secs(120)).map_err(diag)?;
    cl.stop_container(&victim, 0)?;
    cl.remove_container(&victim)?;
    // Until the race ends, every 0.2 s: no mount outside the sandbox's state directory.
    let mut stray = Vec::new();
    let ended = poll(Duration::from_secs(u64::from(RACE_SECS) + 120), || {
        stray.extend(stray_mounts(&c.dir, &sandbox_dir));
        let st = cl.container_status(&attacker).ok()?;
        (st.state == k8s_cri::v1::ContainerState::ContainerExited as i32).then_some(st)
    });
    assert!(stray.is_empty(), "mounts outside the sandbox state dir while the guest raced: {stray:#?}");
    let st = ended.ok_or("the race did not end in time")?;
    let log: Vec<String> = read_cri_log(&log_dir.join("attacker.log")).into_iter().map(|(_, l)| l).collect();
    let ctx = format!("attacker exit {} ({:?}), log {log:?}\n{}", st.exit_code, st.reason, c.diagnostics());
    assert!(log.iter().any(|l| l == "share-race done"), "the race did not run to its end\n{ctx}");
    eprintln!("attacker: {:#?}", log.iter().filter(|l| !l.starts_with("share-race saw")).collect::<Vec<_>>());
    // The race saw both host operations.
    for (what, id) in [("the second container", &second), ("the removed container", &victim)] {
        assert!(log.contains(&format!("share-race saw {id}")), "the race never saw {what}'s tree\n{ctx}");
    }
    // The skeleton took nothing; the tenant's own files took everything.
    let (ok, fail, errno) = tally(&log, "skeleton")?;
    assert!(ok == 0 && fail > 0 && errno == "EROFS", "skeleton: ok={ok} fail={fail} {errno}\n{ctx}");
    for kind in ["rootfs", "volume"] {
        let (ok, _, _) = tally(&log, kind)?;
        assert!(ok > 0, "no {kind} attempt got through: the race was not live\n{ctx}");
    }
    // The links reached the host's volume directories, as inert symlinks.
    for vol in [&victim_vol, &second_vol] {
        let target = std::fs::read_link(vol.join("bwk-canary")).map_err(|e| format!("{}: {e}", vol.display()))?;
        assert_eq!(target, canary.file, "the guest's link in {}", vol.display());
    }

    let second_log = read_cri_log(&log_dir.join("second.log"));
    assert!(second_log.iter().any(|(_, l)| l == "vol-second"), "the second container's volume: {second_log:?}");
    cl.stop_pod(&pod)?;
    cl.remove_pod(&pod)?;
    c.assert_clean(&netns)?;
    canary.check_untouched().map_err(diag)?;
    compare_mounts(&host_mounts_before, &stable_host_mounts())?;
    for d in ["/", "/etc", "/tmp"] {
        let planted: Vec<String> = entries(Path::new(d)).into_iter().filter(|e| e.starts_with("bwk-race")).collect();
        assert!(planted.is_empty(), "{d} holds {planted:?}");
    }
    Ok(())
}
