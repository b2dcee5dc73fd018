//! The host cgroup v2 of a sandbox, enforced for real. This host runs cgroup v1 for cpu,
//! memory and pids (hybrid mode), so the shim's cgroup code (crate `bulwark-host-cgroup`) is
//! proven inside a VM booted from the project's guest kernel with pure cgroup v2:
//! `images/boot-check --cgroup on` boots `images/test-init` in `bw.mode=cgroup`, which runs the
//! same create / add_process / remove calls as `shim/src/jail/cgroup.rs` and reports what the
//! kernel did over vsock. Every result is asserted exactly.
//!
//! `--cgroup off` is the control run: the same scenario with loose limits must show none of
//! the enforcement, so the assertions of the first test can fail.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use bulwark_e2e::process::run;
use bulwark_e2e::repo_root;

/// images/boot-check keeps its run files in one directory: the two tests of this file take
/// turns (the test runner runs them in parallel).
static BOOT_CHECK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Boots the cgroup scenario and returns the guest's `key=value` results.
fn boot(mode: &str) -> Result<HashMap<String, String>, String> {
    let _turn = BOOT_CHECK.lock().unwrap_or_else(|p| p.into_inner());
    let script = repo_root().join("images/boot-check");
    let out = run(
        Command::new(&script).args(["--accel", "tcg", "--timeout", "120", "--cgroup", mode]),
        Duration::from_secs(600),
    )?;
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    if !out.status.success() {
        return Err(format!("{} --cgroup {mode} failed ({}):\n{stdout}\n{stderr}", script.display(), out.status));
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("boot-check: ok "))
        .ok_or_else(|| format!("no result line from boot-check:\n{stdout}\n{stderr}"))?;
    eprintln!("[host_cgroup {mode}] {line}");
    let kv: HashMap<String, String> = line
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(e) = kv.get("cgroup-error") {
        return Err(format!("the guest's cgroup scenario failed: {e}\n{line}"));
    }
    Ok(kv)
}

fn get<'a>(kv: &'a HashMap<String, String>, k: &str) -> &'a str {
    kv.get(k).map(String::as_str).unwrap_or("<missing>")
}

fn num(kv: &HashMap<String, String>, k: &str) -> u64 {
    get(kv, k).parse().unwrap_or_else(|_| panic!("{k} = {:?} is not a number: {kv:?}", get(kv, k)))
}

const MIB: u64 = 1024 * 1024;

#[test]
fn limits_are_enforced_in_a_pure_cgroup_v2_kernel() -> Result<(), String> {
    let kv = boot("on")?;
    assert_eq!(get(&kv, "cgroup-mode"), "on");
    assert_eq!(get(&kv, "mount"), "/sys/fs/cgroup");
    assert_eq!(get(&kv, "skipped"), "", "every limit written (io.weight included)");
    // The limits formula: 32 MiB pod + 16 MiB overhead; 20000/100000 + 5 millicores; 1024
    // shares; 16 pids.
    assert_eq!(num(&kv, "memory.max"), 48 * MIB);
    assert_eq!(num(&kv, "memory.high"), 45 * MIB);
    assert_eq!(get(&kv, "cpu.max"), "20500/100000");
    assert_eq!(get(&kv, "cpu.weight"), "39");
    assert_eq!(get(&kv, "pids.max"), "16");
    // Memory: 16 MiB fits, 128 MiB is OOM-killed (SIGKILL) at memory.max, counted once.
    assert_eq!(get(&kv, "mem_under"), "exit:0");
    assert_eq!(get(&kv, "mem_over"), "signal:9");
    assert_eq!(get(&kv, "oom_kill"), "1");
    // CPU: the 1.5 s spinner is throttled and gets about 20% (TCG timing: well under half).
    assert_eq!(get(&kv, "cpu_spin"), "exit:0");
    assert!(num(&kv, "cpu_throttled") > 0, "{kv:?}");
    assert!(num(&kv, "cpu_usage_ms") * 2 < num(&kv, "cpu_wall_ms"), "not throttled to 20%: {kv:?}");
    // pids: the fork bomb holds exactly pids.max pids, and hit the limit.
    assert_eq!(get(&kv, "pids_current"), "16");
    assert!(num(&kv, "pids_events_max") > 0, "{kv:?}");
    // Teardown killed the bomb (cgroup.kill of the VMM leaf) and removed the sandbox cgroup,
    // not kubelet's pod cgroup above it.
    assert_eq!(get(&kv, "removed"), "yes");
    assert_eq!(get(&kv, "parent_kept"), "true");
    // The systemd format: the expanded slices, the scope, created and removed.
    assert_eq!(get(&kv, "systemd_path"), "true");
    Ok(())
}

#[test]
fn control_run_with_loose_limits_shows_no_enforcement() -> Result<(), String> {
    let kv = boot("off")?;
    assert_eq!(get(&kv, "cgroup-mode"), "off");
    assert_eq!(get(&kv, "cpu.max"), "max/100000");
    assert_eq!(get(&kv, "mem_over"), "exit:0", "128 MiB fits under 400 MiB");
    assert_eq!(get(&kv, "oom_kill"), "0");
    assert_eq!(get(&kv, "cpu_throttled"), "0");
    assert!(num(&kv, "cpu_usage_ms") * 2 > num(&kv, "cpu_wall_ms"), "unlimited spinner got under half: {kv:?}");
    assert!(num(&kv, "pids_current") > 16, "{kv:?}");
    assert_eq!(get(&kv, "removed"), "yes");
    Ok(())
}
