//! A hostile guest, end to end through CRI (the test guest's modes,
//! guest-agent/src/testmodes/), beside a bystander pod that answers an exec every 2 s
//! throughout (tests/src/faults.rs `CriScene`). While the guest abuses the host, the pod's
//! shim stays under [`SHIM_BOUND_MIB`] of resident memory (its peak, VmHWM, from
//! /proc/<pid>/status) and vhost-device-vsock under [`VSOCK_BOUND_MIB`]; the pod keeps
//! working (a flood) or is ended cleanly (a guest that stops answering, or lies about
//! kills); nothing is left behind. docs/faults.md states the bounds.

use std::process::Command;
use std::time::{Duration, Instant};

use bulwark_e2e::cri::{ContainerdVersion, K8S_NAMESPACE};
use bulwark_e2e::faults::{memory, sandbox_processes, with_test_mode_and, CriScene, MemoryWatch, Pod};
use bulwark_e2e::process::{poll, run};

/// The bound on the shim's resident memory (debug build) while its guest is hostile.
const SHIM_BOUND_MIB: u64 = 96;
/// The bound on vhost-device-vsock's resident memory while its guest floods vsock.
const VSOCK_BOUND_MIB: u64 = 32;
/// How long each abuse lasts.
const ABUSE: Duration = Duration::from_secs(45);

/// Bytes a process has written so far (`wchar` of /proc/<pid>/io). vhost-device-vsock writes
/// what the guest sends to the host's sockets with write(2): its wchar is how much the guest
/// pushed at the shim (the shim's own reads are recv(2)s, which `rchar` does not count).
fn bytes_written(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("wchar: ")?.trim().parse().ok()))
        .unwrap_or(0)
}

/// The pod's vhost-device-vsock.
fn vsock_helper(s: &CriScene, pod: &Pod) -> Result<i32, String> {
    let found = sandbox_processes(&s.c.shim.runtime_dir, K8S_NAMESPACE, &pod.id, "vhost-device-vsock");
    match found.as_slice() {
        [one] => Ok(one.pid),
        other => Err(format!("expected one vhost-device-vsock for pod {}: {other:?}", pod.name)),
    }
}

/// An exec into the pod's app container must answer.
fn answers(s: &CriScene, pod: &Pod) -> Result<(), String> {
    let r = s.c.client.exec_sync(&pod.app, &["echo", "still-working"], 60)?;
    if r.stdout == "still-working\n" {
        Ok(())
    } else {
        Err(format!("exec into pod {}: {r:?}", pod.name))
    }
}

/// Runs `during` repeatedly for ABUSE while sampling the pod's shim; returns its peak (KiB)
/// and how many bytes the guest pushed at it meanwhile.
fn abuse(s: &CriScene, pod: &Pod, mut during: impl FnMut() -> Result<(), String>) -> Result<(u64, u64), String> {
    let shim = s.shim_pid(pod)?;
    let helper = vsock_helper(s, pod)?;
    let pushed_before = bytes_written(helper);
    let watch = MemoryWatch::start(shim);
    let start = Instant::now();
    let mut result = Ok(());
    while start.elapsed() < ABUSE && result.is_ok() {
        result = during();
        std::thread::sleep(Duration::from_secs(1));
    }
    let read = bytes_written(helper).saturating_sub(pushed_before);
    let mut peak = watch.finish();
    if let Some(m) = memory(shim) {
        peak.hwm_kib = peak.hwm_kib.max(m.hwm_kib);
    }
    result?;
    eprintln!(
        "pod {}: shim peak RSS {} KiB (VmHWM), {} MB pushed by its guest in {:?}",
        pod.name,
        peak.hwm_kib,
        read / 1_000_000,
        ABUSE
    );
    if peak.hwm_kib > SHIM_BOUND_MIB * 1024 {
        return Err(format!("the shim of pod {} peaked at {} KiB, over {SHIM_BOUND_MIB} MiB", pod.name, peak.hwm_kib));
    }
    Ok((peak.hwm_kib, read))
}

/// The modes that abuse the guest→host streams: the pod keeps working, the shim stays
/// bounded, the console log stays under its cap, the shim really had the bytes to read.
#[test]
fn floods_and_garbage_on_the_guest_streams_are_bounded() -> Result<(), String> {
    let mut s = CriScene::start()?;
    for (mode, min_read_mb) in [("flood-logs", 5), ("garbage-frames", 5), ("oversize", 5)] {
        let pod = s.run_pod(mode, Some((mode, 2)))?;
        let engaged = poll(Duration::from_secs(60), || {
            s.console(&pod).contains(&format!("test mode {mode}: the log connection now carries")).then_some(())
        });
        if engaged.is_none() {
            return Err(format!("the {mode} guest never started its abuse: {}", s.console(&pod)));
        }
        let mut n = 0;
        let (_, read) = abuse(&s, &pod, || {
            n += 1;
            if n % 5 == 0 {
                answers(&s, &pod)?;
            }
            // The console log stays within its two caps (1 MiB each) whatever the guest writes.
            let dir = s.state_dir(&pod);
            let size = |f: &str| std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
            let (now, prev) = (size("console.log"), size("console.log.1"));
            if now > 1 << 20 || prev > 1 << 20 {
                return Err(format!("console.log {now} bytes, console.log.1 {prev} bytes: over the 1 MiB cap"));
            }
            Ok(())
        })?;
        if read < min_read_mb * 1_000_000 {
            return Err(format!("the {mode} guest pushed only {read} bytes in {ABUSE:?}: no flood to speak of"));
        }
        if mode == "flood-logs" && !s.state_dir(&pod).join("console.log.1").exists() {
            return Err("the console flood never filled the first console log cap".into());
        }
        answers(&s, &pod)?;
        s.end_pod(&pod)?;
    }
    let n = s.finish()?;
    eprintln!("the bystander answered {n} execs throughout");
    Ok(())
}

/// Replies as large as ttrpc carries (stats files, process lists, OOM event ids, Check): the
/// host keeps what its bounds say, its memory stays bounded, the pod keeps working.
#[test]
fn huge_replies_are_bounded() -> Result<(), String> {
    let mut s = CriScene::start()?;
    let pod = s.run_pod("huge", Some(("huge-replies", 2)))?;
    let ctr = ContainerdVersion::V1.bin_dir()?.join("ctr");
    let mut n = 0;
    let (_, read) = abuse(&s, &pod, || {
        n += 1;
        // Stats through CRI and containerd's Metrics, the process list through ctr: each call
        // must come back (ok or an error), bounded in time.
        let _ = s.c.client.container_stats(&pod.app);
        for args in [["task", "ps", &pod.app], ["task", "metrics", &pod.app]] {
            run(
                Command::new(&ctr).arg("-a").arg(&s.c.socket).args(["-n", "k8s.io"]).args(args),
                Duration::from_secs(60),
            )?;
        }
        if n % 5 == 0 {
            answers(&s, &pod)?;
        }
        Ok(())
    })?;
    if read < 50_000_000 {
        return Err(format!("only {read} bytes from the huge-replies guest: the replies were not huge"));
    }
    answers(&s, &pod)?;
    s.end_pod(&pod)?;
    let n = s.finish()?;
    eprintln!("the bystander answered {n} execs throughout");
    Ok(())
}

/// A guest that stops answering once its containers run: the health check ends the pod
/// (its tasks exit non-zero with exit events), Stop/RemovePodSandbox succeed.
#[test]
fn a_guest_that_stops_answering_is_ended() -> Result<(), String> {
    let mut s = CriScene::start()?;
    let pod = s.run_pod("mute", Some(("mute", 2)))?;
    let since = Instant::now();
    // 3 failed checks, 10 s apart, each given 10 s: about a minute; 120 s on a loaded machine.
    for id in [&pod.app, &pod.id] {
        let exit = s.events.wait_exit(id, Duration::from_secs(120).saturating_sub(since.elapsed()))?;
        if exit.exit_status == 0 {
            return Err(format!("the mute guest's task {id} exited 0: {exit:?}"));
        }
    }
    eprintln!("the mute guest's pod ended {:.1} s after it stopped answering", since.elapsed().as_secs_f64());
    s.wait_pod_down(&pod, Duration::from_secs(30))?;
    let took = s.end_pod(&pod)?;
    eprintln!("StopPodSandbox + RemovePodSandbox: {:.1} s", took.as_secs_f64());
    let n = s.finish()?;
    eprintln!("the bystander answered {n} execs throughout");
    Ok(())
}

/// A guest that acknowledges every kill and never reports an exit cannot keep its pod: the
/// app container is reported killed (137) after the host's grace period, StopPodSandbox
/// kills the VM, and everything is removed.
#[test]
fn a_lying_guest_cannot_keep_its_pod_from_stopping() -> Result<(), String> {
    let mut s = CriScene::start()?;
    let pod = s.run_pod("liar", Some(("liar", 2)))?;
    let cl = &s.c.client;
    let t = Instant::now();
    cl.stop_container(&pod.app, 2)?;
    let st = cl.wait_exited(&pod.app, Duration::from_secs(60))?;
    eprintln!("StopContainer of the liar's app: {:.1} s, exit code {}", t.elapsed().as_secs_f64(), st.exit_code);
    if st.exit_code != 137 {
        return Err(format!("the liar's app container: {st:?}, expected exit code 137"));
    }
    let exit = s.events.wait_exit(&pod.app, Duration::from_secs(10))?;
    if exit.exit_status != 137 {
        return Err(format!("the liar's app exit event: {exit:?}"));
    }
    if !s.console(&pod).contains("SignalProcess acknowledged, not delivered") {
        return Err(format!("the liar never lied: {}", s.console(&pod)));
    }
    let t = Instant::now();
    s.end_pod(&pod)?;
    let took = t.elapsed();
    eprintln!("StopPodSandbox + RemovePodSandbox of the liar: {:.1} s", took.as_secs_f64());
    s.events.wait_exit(&pod.id, Duration::from_secs(10))?;
    if took > Duration::from_secs(90) {
        return Err(format!("ending the liar's pod took {took:?}"));
    }
    let n = s.finish()?;
    eprintln!("the bystander answered {n} execs throughout");
    Ok(())
}

/// A guest that sends vsock packets to its own CID and to a sibling CID as fast as the device
/// takes them. Linux refuses its own CID, so the test guest plays a hostile kernel: it takes
/// the vsock device from Linux and puts 100 000 packets (4 KiB each, three in four to its own
/// CID) on it directly, posting no receive buffers. vhost-device-vsock (built with
/// scripts/patches/vhost-device-vsock-0.3.0-bounded.patch) drops them, so its memory stays
/// under VSOCK_BOUND_MIB (unpatched, it queues them all: about 400 MB). With its vsock gone the
/// guest no longer answers: the health check ends the pod, and nothing is left behind.
#[test]
fn vsock_floods_to_other_cids_are_bounded() -> Result<(), String> {
    let mut s = CriScene::start()?;
    // iomem=relaxed: the guest's /dev/mem may map the page of the vsock device's registers,
    // which it shares with other virtio-mmio devices.
    let pod = s.run_pod_with("vflood", &with_test_mode_and(&s.c.shim, "vsock-flood", 2, "iomem=relaxed")?)?;
    let helper = vsock_helper(&s, &pod)?;
    let watch = MemoryWatch::start(helper);
    // Progress is on the console only (the guest's vsock is gone): read it while the pod lives.
    let mut took: Option<u64> = None;
    let mut console = String::new();
    let done = poll(Duration::from_secs(180), || {
        let text = s.console(&pod);
        if !text.is_empty() {
            console = text;
        }
        took =
            console.lines().filter_map(|l| l.split("the device took ").nth(1)?.split(' ').next()?.parse().ok()).max();
        (console.contains("vsock-flood: done:") || console.contains("driving the vsock device:")).then_some(())
    });
    let peak = watch.finish();
    eprintln!(
        "vhost-device-vsock under a vsock flood: peak RSS {} KiB (VmHWM); the device took {took:?} packets",
        peak.hwm_kib
    );
    if done.is_none() || !console.contains("vsock-flood: done:") {
        let tail: Vec<&str> = console.lines().filter(|l| l.contains("vsock-flood")).collect();
        return Err(format!("the vsock-flood guest did not finish its flood: {tail:#?}"));
    }
    if took.unwrap_or(0) < 100_000 {
        return Err(format!("the device took only {took:?} packets"));
    }
    if peak.hwm_kib > VSOCK_BOUND_MIB * 1024 {
        return Err(format!("vhost-device-vsock peaked at {} KiB, over {VSOCK_BOUND_MIB} MiB", peak.hwm_kib));
    }
    // The guest can no longer be reached: the health check ends the pod.
    s.events.wait_exit(&pod.app, Duration::from_secs(120))?;
    s.wait_pod_down(&pod, Duration::from_secs(30))?;
    s.end_pod(&pod)?;
    let n = s.finish()?;
    eprintln!("the bystander answered {n} execs throughout");
    Ok(())
}
