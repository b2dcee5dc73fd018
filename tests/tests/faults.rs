//! The fault matrix through CRI, beside a bystander pod that must answer an exec every 2 s
//! throughout (tests/src/faults.rs `CriScene`): the guest agent dies, the guest kernel panics
//! (both from the test guest's modes, guest-agent/src/testmodes/), and the disk of the shim's
//! runtime directory fills up. For a dead guest: the pod's tasks end with a non-zero status
//! and a `/tasks/exit` event within a bounded time, StopPodSandbox and RemovePodSandbox
//! succeed, and nothing of any pod is left behind. (kill -9 of QEMU, virtiofsd,
//! vhost-device-vsock and the shim, and a frozen VM: tests/tests/crash.rs.)

use std::path::Path;
use std::time::{Duration, Instant};

use bulwark_e2e::containerd::shim_leftovers;
use bulwark_e2e::cri::K8S_NAMESPACE;
use bulwark_e2e::faults::{install_shim_config, CriScene, Pod};
use bulwark_e2e::process::poll;
use bulwark_shim::sandbox::state_dir::sandbox_dir;

/// From the fault to the exit events of the pod's tasks: the VM's death is seen at once, the
/// guest reboots on panic (QEMU exits); the rest is a loaded 2-core machine.
const EXIT_LIMIT: Duration = Duration::from_secs(60);

/// Waits for the exits of the pod's app container and sandbox; both must be non-zero and come
/// within EXIT_LIMIT of `since`.
fn pod_tasks_end(s: &CriScene, pod: &Pod, since: Instant) -> Result<(), String> {
    for id in [&pod.app, &pod.id] {
        let exit = s
            .events
            .wait_exit(id, EXIT_LIMIT.saturating_sub(since.elapsed()))
            .map_err(|e| format!("{e}\n{}", s.c.diagnostics()))?;
        if exit.exit_status == 0 {
            return Err(format!("task {id} of pod {} exited 0 after its guest died: {exit:?}", pod.name));
        }
    }
    s.wait_pod_down(pod, Duration::from_secs(30))?;
    eprintln!(
        "pod {}: both tasks exited non-zero {:.1} s after the app container started (the fault: 2 s after it)",
        pod.name,
        since.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A guest that dies in `mode` once its app container started (`starts` = 2: pause, app):
/// the agent's last forwarded line says `agent_says`.
fn a_dead_guest_ends_its_pod(mode: &str, agent_says: &str) -> Result<(), String> {
    let mut s = CriScene::start()?;
    let victim = s.run_pod("victim", Some((mode, 2)))?;
    let started = Instant::now();
    pod_tasks_end(&s, &victim, started)?;
    // It happened as intended: the agent said what it was about to do, and the console's tail
    // (the shim logs it when QEMU exits) ends with the kernel's panic report.
    let log = s.containerd_log();
    if !log.contains(agent_says) {
        return Err(format!("the victim's agent never said {agent_says:?}"));
    }
    let panicked =
        log.lines().any(|l| l.contains("QEMU (pid") && l.contains("exited") && l.contains("Kernel Offset: disabled"));
    if !panicked {
        let qemu: Vec<&str> = log.lines().filter(|l| l.contains("QEMU (pid")).collect();
        return Err(format!("no QEMU exit with a kernel panic report in the shim log: {qemu:#?}"));
    }
    let took = s.end_pod(&victim)?;
    eprintln!("StopPodSandbox + RemovePodSandbox of the dead pod: {:.1} s", took.as_secs_f64());
    let n = s.finish()?;
    eprintln!("the bystander answered {n} execs throughout");
    Ok(())
}

#[test]
fn the_guest_agent_dying_ends_its_pod() -> Result<(), String> {
    // PID 1 exits: the guest kernel panics ("Attempted to kill init!") and reboots, QEMU exits.
    a_dead_guest_ends_its_pod("kill-agent-after-start", "test mode: the agent exits")
}

#[test]
fn a_guest_kernel_panic_ends_its_pod() -> Result<(), String> {
    a_dead_guest_ends_its_pod("panic-after-start", "test mode: crashing the guest kernel")
}

/// Mounts a tmpfs of `mib` MiB on `dir` (created); the caller unmounts it.
fn small_tmpfs(dir: &Path, mib: u32) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0755"), "bulwark-test-full"])
        .arg(dir)
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if !out.status.success() {
        return Err(format!("mounting a tmpfs on {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// Fills the filesystem of `dir` with one file; returns its path.
fn fill(dir: &Path) -> Result<std::path::PathBuf, String> {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(format!("filling {}: {e}", path.display())),
        }
    }
    let _ = f.write(&[0u8; 1]);
    Ok(path)
}

/// The runtime directory's disk fills up under a running pod (a small tmpfs the test mounts
/// as the shim's runtime directory): the running pod keeps working (exec answers), a pod
/// created while the disk is full fails cleanly (an error, nothing left of it), the running
/// pod stops and is removed while the disk is still full, and once there is room again pods
/// start there again. The bystander pod, on the normal runtime directory, answers throughout.
#[test]
fn a_full_runtime_directory_disk() -> Result<(), String> {
    let mut s = CriScene::start()?;
    let full = s.c.dir.join("rt");
    small_tmpfs(&full, 8)?;
    let result = full_disk_scenario(&mut s, &full);
    install_shim_config(&s.c.node.shim_config, &s.c.shim)?;
    // What is left on the full runtime directory (the tmpfs's own mount aside).
    let on_full = || -> Vec<String> {
        let text = format!("{}/", full.display());
        shim_leftovers(&s.c.dir, &full)
            .into_iter()
            .filter(|l| l.contains(&text) || l.starts_with("sandbox state dir") || l.starts_with("runtime dir entry"))
            .collect()
    };
    let clean = poll(Duration::from_secs(30), || on_full().is_empty().then_some(()));
    let left = on_full();
    if let Ok(c) = std::ffi::CString::new(full.to_string_lossy().as_bytes()) {
        // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let finished = s.finish();
    result?;
    if clean.is_none() {
        return Err(format!("left behind on the full runtime directory: {left:#?}"));
    }
    let n = finished?;
    eprintln!("the bystander answered {n} execs throughout");
    Ok(())
}

fn full_disk_scenario(s: &mut CriScene, full: &Path) -> Result<(), String> {
    let mut on_full = s.c.shim.clone();
    on_full.runtime_dir = full.to_path_buf();
    install_shim_config(&s.c.node.shim_config, &on_full)?;
    let running = s.run_pod("running", None)?;
    let filler = fill(full)?;
    eprintln!("{} is full", full.display());
    for i in 0..5 {
        let r = s.c.client.exec_sync(&running.app, &["echo", "still-here"], 30)?;
        if r.stdout != "still-here\n" {
            return Err(format!("exec {i} into the pod on the full disk: {r:?}"));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    // A new pod cannot get its state onto the full disk: RunPodSandbox fails, and leaves
    // nothing there.
    let refused = s.run_pod("refused", None);
    if refused.is_ok() {
        return Err("a pod started on a full runtime directory".into());
    }
    eprintln!("a pod on the full disk is refused: {:?}", refused.err());
    let running_dir = sandbox_dir(full, K8S_NAMESPACE, &running.id);
    // The running pod's own lock files (its two jail uids, its id-map block) are not leftovers.
    let lock_of = |record: &str| {
        let text = std::fs::read_to_string(running_dir.join(record)).unwrap_or_default();
        text.trim().rsplit('/').next().unwrap_or_default().to_string()
    };
    let running_uids = [lock_of("jail-uid"), lock_of("jail-uid-vsock")];
    let running_block = lock_of("jail-idmap");
    let full_text = format!("{}/", full.display());
    let left: Vec<String> = shim_leftovers(&s.c.dir, full)
        .into_iter()
        .filter(|l| {
            l.contains(&full_text)
                || l.starts_with("sandbox state dir")
                || l.starts_with("runtime dir entry")
                || (l.contains("containerd-shim-bulwark") && !l.contains(&running.id) && !l.contains(&s.bystander.id))
        })
        .filter(|l| !l.contains(&running_dir.display().to_string()) && !l.contains("filler"))
        .filter(|l| !running_uids.iter().any(|u| !u.is_empty() && l.ends_with(&format!("jail-uids/{u}"))))
        .filter(|l| running_block.is_empty() || !l.ends_with(&format!("jail-idmaps/{running_block}")))
        .filter(|l| !l.ends_with(&format!("k8s.io/{}", running_dir.file_name().unwrap_or_default().to_string_lossy())))
        .collect();
    if !left.is_empty() {
        return Err(format!("the refused pod left: {left:#?}"));
    }
    // CRI may keep the failed sandbox listed; removing it must work.
    let cl = &s.c.client;
    for pod in cl.list_pods()? {
        if pod != running.id && pod != s.bystander.id {
            cl.stop_pod(&pod)?;
            cl.remove_pod(&pod)?;
        }
    }
    let took = s.end_pod(&running)?;
    eprintln!("StopPodSandbox + RemovePodSandbox on the full disk: {:.1} s", took.as_secs_f64());
    std::fs::remove_file(&filler).map_err(|e| format!("removing {}: {e}", filler.display()))?;
    let again = s.run_pod("again", None)?;
    let r = s.c.client.exec_sync(&again.app, &["echo", "back"], 30)?;
    if r.stdout != "back\n" {
        return Err(format!("exec into a pod after the disk had room again: {r:?}"));
    }
    s.end_pod(&again)?;
    Ok(())
}
