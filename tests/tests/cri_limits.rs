//! Container limits through CRI, the way kubelet sets them (a real containerd 1.6 and 2.x with
//! its CRI plugin, handler `bulwark`, a real VM): in one pod,
//! - a container limited to 64 MiB that allocates 256 MiB is OOM-killed: CRI reports reason
//!   OOMKilled and exit code 137, and the pod's other containers live on;
//! - a fork bomb in a container with `pids.max` 64 (CRI `unified`, the cgroup v2 way) stays at
//!   64 processes, its forks are refused, and the pod stays responsive to exec meanwhile and
//!   after the bomb is stopped;
//! - a CPU spinner limited to 0.2 CPU (quota 20 ms per 100 ms) is throttled: its cpu.max in the
//!   guest is "20000 100000" and its cpu.stat shows nr_throttled > 0.
//!
//! Every check runs even when an earlier one failed; the failure lists all of them.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bulwark_e2e::cri::{Checks, ContainerdVersion, CriContainerd, HANDLER_BULWARK};
use bulwark_e2e::cri_client::{read_cri_log, ContainerSpec, CriClient};
use bulwark_e2e::process::poll;
use bulwark_e2e::TEST_IMAGE;

const MIB: i64 = 1024 * 1024;

/// Waits until the container's CRI log has a line starting with `prefix`; returns it.
fn wait_log_prefix(log: &Path, prefix: &str, limit: Duration) -> Result<String, String> {
    poll(limit, || read_cri_log(log).into_iter().map(|(_, l)| l).find(|l| l.starts_with(prefix))).ok_or_else(|| {
        format!("{} never got a line {prefix:?}... within {limit:?}; it has {:?}", log.display(), read_cri_log(log))
    })
}

/// ExecSync `sh -c script`; Err unless it exits 0 within `timeout_s`.
fn sh(cl: &CriClient, id: &str, script: &str, timeout_s: i64) -> Result<String, String> {
    let r = cl.exec_sync(id, &["sh", "-c", script], timeout_s)?;
    if r.exit_code != 0 {
        return Err(format!("`{script}` exited {}: stdout {:?} stderr {:?}", r.exit_code, r.stdout, r.stderr));
    }
    Ok(r.stdout)
}

/// The value of `key` in a cgroup `key value` file's text.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The pod answers an exec into `id` within `limit` (the exec itself is bounded too).
fn responsive(cl: &CriClient, id: &str, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let out = sh(cl, id, "echo alive", limit.as_secs() as i64)?;
    if out.trim() != "alive" || start.elapsed() > limit {
        return Err(format!("exec answered {out:?} after {:?} (limit {limit:?})", start.elapsed()));
    }
    Ok(start.elapsed())
}

/// The fork bomb's container: a monitor (shell builtins only: it never needs to fork) prints
/// `pids <current> <max> <events>` every 2 s, then the classic bomb starts.
const BOMB: &str = "mkfifo /tmp/tick; exec 3<>/tmp/tick; \
    ( while :; do read c </sys/fs/cgroup/pids.current; read m </sys/fs/cgroup/pids.max; \
      read e </sys/fs/cgroup/pids.events; echo \"pids $c $m $e\"; read -t 2 x <&3; done ) & \
    echo bomb-ready; b() { b | b & }; b; wait";

fn limits_scenario(version: ContainerdVersion) -> Result<(), String> {
    let c = CriContainerd::start(version)?;
    let cl = &c.client;
    let mut checks = Checks::new(&format!("limits/containerd-{version:?}"));
    let log_dir = c.pod_log_dir("limits")?;
    let pod_config = CriClient::pod_config("limits", "bwk-limits", &log_dir);
    let mut pod = String::new();
    if !checks.run("RunPodSandbox", || {
        pod = cl.run_pod_sandbox(&pod_config, HANDLER_BULWARK)?;
        Ok(())
    }) {
        return checks.finish(|| c.diagnostics());
    }
    let netns: Vec<String> = cl.pod_netns(&pod).into_iter().collect();
    let start = |spec: &ContainerSpec, ready: &str| -> Result<String, String> {
        let id = cl.create_container(&pod, &pod_config, spec)?;
        cl.start_container(&id)?;
        wait_log_prefix(&log_dir.join(format!("{}.log", spec.name)), ready, Duration::from_secs(120))?;
        Ok(id)
    };
    // A bystander whose exec answers show whether the pod stays responsive.
    let mut keeper = None;
    checks.run("a bystander container starts", || {
        keeper = Some(start(
            &ContainerSpec::new("keeper", TEST_IMAGE, &["sh", "-c", "echo keeper-ready; exec sleep 100000"]),
            "keeper-ready",
        )?);
        Ok(())
    });

    checks.run("a container limited to 64 MiB that allocates 256 MiB is OOMKilled with exit code 137", || {
        // tail keeps its whole (newline-free) input in memory: 256 MiB. It is the container's
        // init (exec), so its death is the container's exit.
        let mut hog = ContainerSpec::new(
            "hog",
            TEST_IMAGE,
            &[
                "sh",
                "-c",
                "mkfifo /tmp/zeros; echo hog-ready; sleep 1; head -c 268435456 /dev/zero >/tmp/zeros & \
                 exec tail /tmp/zeros >/dev/null",
            ],
        );
        hog.memory_limit = Some(64 * MIB);
        let id = start(&hog, "hog-ready")?;
        let st = cl.wait_exited(&id, Duration::from_secs(180))?;
        let log = read_cri_log(&log_dir.join("hog.log"));
        if st.reason != "OOMKilled" || st.exit_code != 137 {
            return Err(format!(
                "reason {:?} exit code {} message {:?}, log {log:?}; expected OOMKilled and 137",
                st.reason, st.exit_code, st.message
            ));
        }
        Ok(())
    });
    if let Some(k) = &keeper {
        checks
            .run("the bystander lives on after the OOM kill", || responsive(cl, k, Duration::from_secs(60)).map(drop));
    }

    checks.run("a fork bomb with pids.max 64 is contained and the pod stays responsive to exec", || {
        let mut bomb = ContainerSpec::new("bomb", TEST_IMAGE, &["sh", "-c", BOMB]);
        bomb.unified = HashMap::from([("pids.max".to_string(), "64".to_string())]);
        let id = start(&bomb, "bomb-ready")?;
        let log = log_dir.join("bomb.log");
        // The bomb reaches the limit: the kernel refuses forks (pids.events "max" grows).
        let at_limit = poll(Duration::from_secs(120), || {
            read_cri_log(&log).into_iter().rev().find_map(|(_, l)| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() == 5 && w[0] == "pids" && w[3] == "max" && w[4] != "0").then_some(l)
            })
        })
        .ok_or_else(|| format!("the bomb never hit its limit; its log: {:?}", read_cri_log(&log)))?;
        let mut answers = Vec::new();
        if let Some(k) = &keeper {
            for _ in 0..3 {
                answers.push(responsive(cl, k, Duration::from_secs(60))?);
                std::thread::sleep(Duration::from_secs(2));
            }
        }
        // Never above 64, in any report.
        let reports: Vec<String> =
            read_cri_log(&log).into_iter().map(|(_, l)| l).filter(|l| l.starts_with("pids ")).collect();
        for r in &reports {
            let w: Vec<&str> = r.split_whitespace().collect();
            let current: u64 = w.get(1).and_then(|v| v.parse().ok()).ok_or_else(|| format!("bad report {r:?}"))?;
            if current > 64 || w.get(2) != Some(&"64") {
                return Err(format!("the bomb's cgroup reported {r:?}: above its limit of 64"));
            }
        }
        eprintln!("bomb at its limit: {at_limit:?}; exec answers meanwhile: {answers:?}; {} reports", reports.len());
        cl.stop_container(&id, 0)?;
        let st = cl.wait_exited(&id, Duration::from_secs(120))?;
        eprintln!("bomb stopped: exit code {} reason {:?}", st.exit_code, st.reason);
        cl.remove_container(&id)
    });
    if let Some(k) = &keeper {
        checks.run("the bystander answers after the bomb is stopped", || {
            responsive(cl, k, Duration::from_secs(30)).map(drop)
        });
    }

    checks.run("a CPU-limited container is throttled (cpu.stat nr_throttled > 0)", || {
        let mut spin = ContainerSpec::new("spin", TEST_IMAGE, &["sh", "-c", "echo spin-ready; while :; do :; done"]);
        spin.cpu_quota = Some((20_000, 100_000));
        let id = start(&spin, "spin-ready")?;
        let max = sh(cl, &id, "cat /sys/fs/cgroup/cpu.max", 60)?;
        if max.trim() != "20000 100000" {
            return Err(format!("cpu.max in the guest is {max:?}, expected \"20000 100000\""));
        }
        let mut last = String::new();
        let throttled = poll(Duration::from_secs(60), || {
            last = sh(cl, &id, "cat /sys/fs/cgroup/cpu.stat", 30).unwrap_or_else(|e| e);
            (field(&last, "nr_throttled").unwrap_or(0) > 0 && field(&last, "throttled_usec").unwrap_or(0) > 0)
                .then_some(())
        });
        eprintln!("spinner's cpu.stat: {last:?}");
        throttled.ok_or_else(|| format!("cpu.stat never showed throttling: {last:?}"))?;
        cl.stop_container(&id, 0)?;
        cl.wait_exited(&id, Duration::from_secs(120)).map(drop)
    });

    checks.run("StopPodSandbox and RemovePodSandbox leave nothing behind", || {
        cl.stop_pod(&pod)?;
        cl.remove_pod(&pod)?;
        c.assert_clean(&netns)
    });
    checks.finish(|| c.diagnostics())
}

#[test]
fn cri_limits_containerd1() -> Result<(), String> {
    limits_scenario(ContainerdVersion::V1)
}

#[test]
fn cri_limits_containerd2() -> Result<(), String> {
    limits_scenario(ContainerdVersion::V2)
}
