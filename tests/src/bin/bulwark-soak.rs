//! `scripts/soak`'s leak soak: a private containerd (1.6, CRI, CNI bridge) and one long-lived
//! anchor pod; then N cycles of: run a pod with one container, exec into it, exec into the
//! anchor, stop and remove the pod. Before and after, it counts what a pod could leak and
//! prints both: processes, mounts, taps, netns files and processes in the pods' netns,
//! sockets, state directories, cgroups, containerd's file descriptors and the anchor shim's.
//! Also the p50/p99 pod start time (RunPodSandbox until the container started). Exits 1 if a
//! count grew (after up to 60 s for the last pod's teardown to settle) or a cycle failed.
//!
//!   bulwark-soak [cycles]      (default 200)

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bulwark_e2e::cri::{ContainerdVersion, CriContainerd, HANDLER_BULWARK, K8S_NAMESPACE};
use bulwark_e2e::cri_client::{ContainerSpec, CriClient};
use bulwark_e2e::faults::shim_pid;
use bulwark_e2e::leftovers;
use bulwark_e2e::TEST_IMAGE;

fn main() {
    let cycles = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    match soak(cycles) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak failed: {e}");
            std::process::exit(1);
        }
    }
}

/// Files in /proc/<pid>/fd.
fn fds(pid: i32) -> usize {
    leftovers::entries(Path::new(&format!("/proc/{pid}/fd"))).len()
}

/// Unix sockets (files of type socket) below `dir`.
fn sockets_under(dir: &Path) -> usize {
    use std::os::unix::fs::FileTypeExt;
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_socket() => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// Processes in the network namespace of a pod (the netns files containerd pins under `dir`).
fn processes_in_pod_netns(dir: &Path) -> usize {
    leftovers::mounts_under(dir)
        .iter()
        .filter(|m| m.contains("netns"))
        .filter_map(|m| leftovers::netns_id(Path::new(m)))
        .map(|id| leftovers::processes_in_netns(id).len())
        .sum()
}

/// What the soak counts.
fn counts(c: &CriContainerd, containerd: i32, anchor_shim: i32, ids: &[String]) -> BTreeMap<&'static str, usize> {
    let dir = c.dir.to_string_lossy().to_string();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut m = BTreeMap::new();
    m.insert("processes (VM side and shims)", leftovers::vm_processes(&dir).len());
    m.insert("mounts under the test dir", leftovers::mounts_under(&c.dir).len());
    m.insert("taps in the host namespace", leftovers::host_interfaces_ending("_bwk").len());
    m.insert("bridge ports", c.net.bridge_ports().len());
    m.insert("netns files", leftovers::mounts_under(&c.dir).iter().filter(|m| m.contains("netns")).count());
    m.insert("processes in pod netns", processes_in_pod_netns(&c.dir));
    m.insert("sockets under the test dir", sockets_under(&c.dir));
    m.insert("sandbox state dirs", leftovers::entries(&c.shim.runtime_dir.join(K8S_NAMESPACE)).len());
    m.insert("cgroups of the soak's pods", leftovers::cgroups_mentioning(&ids).len());
    m.insert("containerd fds", fds(containerd));
    m.insert("anchor shim fds", fds(anchor_shim));
    m
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run_pod(c: &CriContainerd, name: &str, ids: &mut Vec<String>) -> Result<(String, String, Duration), String> {
    let cl = &c.client;
    let t = Instant::now();
    let config = CriClient::pod_config(name, name, &c.pod_log_dir(name)?);
    let pod = cl.run_pod_sandbox(&config, HANDLER_BULWARK)?;
    ids.push(pod.clone());
    let app = cl.create_container(&pod, &config, &ContainerSpec::new("app", TEST_IMAGE, &["sleep", "100000"]))?;
    ids.push(app.clone());
    cl.start_container(&app)?;
    Ok((pod, app, t.elapsed()))
}

fn exec(cl: &CriClient, id: &str) -> Result<(), String> {
    let r = cl.exec_sync(id, &["echo", "soak"], 60)?;
    if r.exit_code == 0 && r.stdout == "soak\n" {
        Ok(())
    } else {
        Err(format!("exec into {id}: {r:?}"))
    }
}

fn soak(cycles: usize) -> Result<bool, String> {
    let c = CriContainerd::start(ContainerdVersion::V1)?;
    let cl = &c.client;
    let containerd = leftovers::processes_mentioning(&c.dir.join("containerd.toml").to_string_lossy())
        .into_iter()
        .find(|p| !p.cmdline.contains("ctr"))
        .map(|p| p.pid)
        .ok_or("containerd's pid not found")?;
    let mut ids = Vec::new();
    let (anchor, anchor_app, _) = run_pod(&c, "anchor", &mut ids)?;
    let anchor_shim = shim_pid(&c.dir, &anchor).ok_or("the anchor pod's shim not found")?;
    // One warm-up cycle: containerd opens what it keeps for good (image content, plugins).
    let (pod, _, _) = run_pod(&c, "warmup", &mut ids)?;
    cl.stop_pod(&pod)?;
    cl.remove_pod(&pod)?;
    std::thread::sleep(Duration::from_secs(5));
    let before = counts(&c, containerd, anchor_shim, &ids);
    let started = Instant::now();
    let mut starts = Vec::new();
    let mut failures = Vec::new();
    for i in 0..cycles {
        let name = format!("soak-{i}");
        let cycle = (|| -> Result<Duration, String> {
            let (pod, app, took) = run_pod(&c, &name, &mut ids)?;
            let r = exec(cl, &app).and_then(|_| exec(cl, &anchor_app));
            cl.stop_pod(&pod)?;
            cl.remove_pod(&pod)?;
            r.map(|_| took)
        })();
        match cycle {
            Ok(t) => starts.push(t),
            Err(e) => {
                eprintln!("cycle {i}: {e}");
                failures.push(format!("cycle {i}: {e}"));
                // Whatever the failed cycle left is removed, so the counts show leaks only.
                for p in cl.list_pods().unwrap_or_default().into_iter().filter(|p| *p != anchor) {
                    let _ = cl.stop_pod(&p);
                    let _ = cl.remove_pod(&p);
                }
            }
        }
        if (i + 1) % 10 == 0 {
            eprintln!("{} cycles in {:.0} s", i + 1, started.elapsed().as_secs_f64());
        }
    }
    let elapsed = started.elapsed();
    // Teardown of the last pods is asynchronous in places (cgroup removal, shim exit).
    let mut after = counts(&c, containerd, anchor_shim, &ids);
    let settle = Instant::now();
    while after.iter().any(|(k, v)| v > &before[k]) && settle.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(2));
        after = counts(&c, containerd, anchor_shim, &ids);
    }
    starts.sort();
    println!("leak soak: {cycles} cycles in {:.0} s ({} failed)", elapsed.as_secs_f64(), failures.len());
    println!("{:<34} {:>8} {:>8}", "count", "before", "after");
    let mut grew = Vec::new();
    for (k, b) in &before {
        let a = after[k];
        println!("{k:<34} {b:>8} {a:>8}{}", if a > *b { "   GREW" } else { "" });
        if a > *b {
            grew.push(*k);
        }
    }
    println!(
        "pod start (RunPodSandbox until the container started): p50 {:.2} s, p99 {:.2} s, max {:.2} s over {} pods",
        percentile(&starts, 0.5).as_secs_f64(),
        percentile(&starts, 0.99).as_secs_f64(),
        starts.last().copied().unwrap_or_default().as_secs_f64(),
        starts.len()
    );
    for f in &failures {
        println!("failed: {f}");
    }
    cl.stop_pod(&anchor)?;
    cl.remove_pod(&anchor)?;
    c.assert_clean(&[])?;
    Ok(grew.is_empty() && failures.is_empty())
}
