//! `bw.mode=cgroup`: proves the shim's host cgroup code (crate `bulwark-host-cgroup`, the very
//! code `shim/src/jail/cgroup.rs` runs) against a real cgroup v2 kernel: this guest's, with
//! cgroup2 mounted at /sys/fs/cgroup and nothing else, which the hybrid-mode host cannot offer.
//!
//! A sandbox cgroup is created from a kubelet-style cgroupsPath with limits computed from pod
//! resources + overhead, then processes are moved into its VMM leaf the way the shim moves
//! QEMU and its helpers (fork, `add_process`, go):
//! - a child that populates 16 MiB exits 0, one that populates 128 MiB is OOM-killed at
//!   `memory.max` (48 MiB);
//! - a CPU spinner (1.5 s wall) is throttled at `cpu.max` (`nr_throttled` > 0, usage well
//!   below the wall time);
//! - a fork bomb stops at `pids.max` (16 pids in the cgroup, `pids.events` max > 0);
//! - `remove` kills what is left (`cgroup.kill` on the VMM leaf) and the cgroup is gone.
//! Plus a systemd-format path (expanded slices; cgroupfs fallback, no systemd here) created
//! and removed. `bw.cgroup_limits=off` runs the same with loose limits (memory 400 MiB, no CPU
//! limit, 200 pids: the control run that the e2e test expects to show no enforcement at the
//! tight values).
//!
//! Results are `key=value` words appended to the report line sent over vsock.

use std::path::Path;
use std::time::{Duration, Instant};

use bulwark_host_cgroup::{compute, path, Hierarchy, Overhead, PodResources, SandboxCgroup, VMM_LEAF};

const MIB: u64 = 1024 * 1024;

fn mount_cgroup2() -> Result<(), String> {
    let _ = std::fs::create_dir_all("/sys/fs/cgroup");
    // SAFETY: constant NUL-terminated strings, no data argument.
    let r = unsafe {
        libc::mount(c"cgroup2".as_ptr(), c"/sys/fs/cgroup".as_ptr(), c"cgroup2".as_ptr(), 0, std::ptr::null())
    };
    if r == 0 {
        Ok(())
    } else {
        Err(format!("mount cgroup2: {}", std::io::Error::last_os_error()))
    }
}

/// Forks a child that waits until it has been moved into the sandbox's VMM leaf, then runs
/// `work` and exits with its status.
fn spawn_in(cg: &SandboxCgroup, work: impl FnOnce() -> i32) -> Result<i32, String> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: this program is single-threaded; the child only runs `work` and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let mut b = [0u8; 1];
        // SAFETY: our own pipe fds; b is a valid 1-byte buffer.
        unsafe {
            libc::close(fds[1]);
            libc::read(fds[0], b.as_mut_ptr().cast(), 1);
            libc::close(fds[0]);
        }
        let code = work();
        // SAFETY: leaving the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let moved = cg.add_process(VMM_LEAF, pid as u32);
    // SAFETY: our own pipe fds; a 1-byte write of a static buffer.
    unsafe {
        libc::close(fds[0]);
        libc::write(fds[1], b"g".as_ptr().cast(), 1);
        libc::close(fds[1]);
    }
    moved.map(|()| pid).map_err(|e| format!("moving child: {e}"))
}

fn wait(pid: i32) -> String {
    let mut st = 0;
    // SAFETY: pid is our child; st is a valid int.
    let r = unsafe { libc::waitpid(pid, &mut st, 0) };
    if r != pid {
        return format!("waitpid-failed:{}", std::io::Error::last_os_error());
    }
    if libc::WIFEXITED(st) {
        format!("exit:{}", libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        format!("signal:{}", libc::WTERMSIG(st))
    } else {
        format!("status:{st}")
    }
}

/// Maps and touches `bytes` of anonymous memory (MAP_POPULATE: charged inside one syscall).
fn hog(bytes: usize) -> i32 {
    // SAFETY: anonymous private mapping, no fd; the result is checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return 3;
    }
    // SAFETY: p..p+bytes is our fresh writable mapping.
    unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0x5a, bytes) };
    0
}

fn spin(wall: Duration) -> i32 {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < wall {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
    0
}

fn bomb() -> i32 {
    loop {
        // SAFETY: single-threaded child; every process of the bomb runs this same loop.
        let r = unsafe { libc::fork() };
        if r < 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn stat(cg: &SandboxCgroup, file: &str, key: &str) -> String {
    cg.read(file)
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')).map(str::to_string)))
        .unwrap_or_else(|| "?".into())
}

fn reap_all() {
    // SAFETY: non-blocking reap of any child (PID 1 inherits the bomb's orphans).
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

pub fn run(limits_off: bool) -> String {
    let mut out = vec![format!("cgroup-mode={}", if limits_off { "off" } else { "on" })];
    if let Err(e) = mount_cgroup2() {
        return format!("cgroup-error={}", e.replace(' ', "_"));
    }
    let h = match Hierarchy::detect() {
        Ok(h) => h,
        Err(e) => return format!("cgroup-error=detect:{}", e.to_string().replace(' ', "_")),
    };
    out.push(format!("mount={}", h.mount.display()));
    let pod = if limits_off {
        PodResources { memory_bytes: Some(384 * MIB), ..Default::default() }
    } else {
        PodResources {
            cpu_quota_us: Some(20_000),
            cpu_period_us: Some(100_000),
            cpu_shares: Some(1024),
            memory_bytes: Some(32 * MIB),
        }
    };
    let overhead = Overhead {
        memory_bytes: 16 * MIB,
        cpu_millis: 5,
        // Off: loose enough to show that the bomb goes past 16, bounded so the guest survives it.
        pids_max: if limits_off { 200 } else { 16 },
        io_weight: 100,
    };
    let limits = compute(&pod, 512 * MIB, &overhead);
    let rel = match path::parse("/kubepods/burstable/pod0c0ffee/sandbox1") {
        Ok(p) => p.rel,
        Err(e) => return format!("cgroup-error={}", e.to_string().replace(' ', "_")),
    };
    let cg = match h.create(&rel, &limits) {
        Ok((cg, applied)) => {
            out.push(format!("skipped={}", applied.skipped.join(",")));
            cg
        }
        Err(e) => return format!("cgroup-error=create:{}", e.to_string().replace(' ', "_")),
    };
    for f in ["memory.max", "memory.high", "pids.max", "cpu.max", "cpu.weight"] {
        out.push(format!("{f}={}", cg.read(f).unwrap_or_default().trim().replace(' ', "/")));
    }

    // Memory: under the limit survives, over it is OOM-killed.
    let r = spawn_in(&cg, || hog(16 * MIB as usize)).map(wait);
    out.push(format!("mem_under={}", r.unwrap_or_else(|e| e.replace(' ', "_"))));
    let r = spawn_in(&cg, || hog(128 * MIB as usize)).map(wait);
    out.push(format!("mem_over={}", r.unwrap_or_else(|e| e.replace(' ', "_"))));
    out.push(format!("oom_kill={}", stat(&cg, "memory.events", "oom_kill")));

    // CPU: throttled at cpu.max (the spinner's share of cpu.stat: after minus before).
    let wall = Duration::from_millis(1500);
    let num = |k: &str| stat(&cg, "cpu.stat", k).parse::<u64>().ok();
    let before = (num("usage_usec"), num("nr_throttled"));
    let r = spawn_in(&cg, || spin(wall)).map(wait);
    out.push(format!("cpu_spin={}", r.unwrap_or_else(|e| e.replace(' ', "_"))));
    let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => b.saturating_sub(a).to_string(),
        _ => "?".into(),
    };
    out.push(format!("cpu_throttled={}", delta(before.1, num("nr_throttled"))));
    let usage_ms = match (before.0, num("usage_usec")) {
        (Some(a), Some(b)) => (b.saturating_sub(a) / 1000).to_string(),
        _ => "?".into(),
    };
    out.push(format!("cpu_usage_ms={usage_ms}"));
    out.push(format!("cpu_wall_ms={}", wall.as_millis()));

    // pids: a fork bomb stops at pids.max.
    match spawn_in(&cg, bomb) {
        Ok(_) => {
            std::thread::sleep(Duration::from_millis(1500));
            out.push(format!("pids_current={}", cg.read("pids.current").unwrap_or_default().trim()));
            // The event is counted where the fork failed: the leaf.
            out.push(format!("pids_events_max={}", stat(&cg, "vmm/pids.events", "max")));
        }
        Err(e) => out.push(format!("pids_bomb={}", e.replace(' ', "_"))),
    }

    // Teardown: the bomb is still running; remove kills the VMM leaf and removes the cgroup.
    let removed = cg.remove(40, Duration::from_millis(50));
    reap_all();
    out.push(format!(
        "removed={}",
        match removed {
            Ok(()) if !cg.path().exists() => "yes".to_string(),
            Ok(()) => "still-there".to_string(),
            Err(e) => e.to_string().replace(' ', "_"),
        }
    ));
    out.push(format!("parent_kept={}", Path::new("/sys/fs/cgroup/kubepods/burstable/pod0c0ffee").is_dir()));

    // The systemd format (no systemd here: the shim falls back to cgroupfs on the expanded path).
    let r = path::parse("kubepods-besteffort-pod0c0ffee.slice:cri-containerd:sandbox2")
        .map_err(|e| e.to_string())
        .and_then(|p| h.create(&p.rel, &limits).map_err(|e| e.to_string()).map(|(cg, _)| cg));
    let systemd = match r {
        Ok(cg) => {
            let expected = Path::new(
                "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0c0ffee.slice/cri-containerd-sandbox2.scope",
            );
            let at = cg.path() == expected && expected.join(VMM_LEAF).is_dir();
            let sleeper = spawn_in(&cg, || spin(Duration::from_secs(30)));
            let gone = cg.remove(40, Duration::from_millis(50)).is_ok() && !expected.exists();
            reap_all();
            format!("{}", at && sleeper.is_ok() && gone)
        }
        Err(e) => e.replace(' ', "_"),
    };
    out.push(format!("systemd_path={systemd}"));
    out.join(" ")
}
