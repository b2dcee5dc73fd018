//! `scripts/bench`: side-by-side timings on this machine, in one run, interleaved so that
//! background noise hits every variant alike. Prints medians and ratios:
//!   (a) plain QEMU booting the guest image until the agent's first vsock connection,
//!   (b) `ctr run --rm --runtime io.containerd.bulwark.v2 ... true`,
//!   (c) the same `ctr run` with runc,
//! and the ratios b/a and b/c; then through CRI (containerd 1.6's CRI plugin, like kubelet):
//!   (d) pod start latency: RunPodSandbox + CreateContainer + StartContainer until the
//!       container's first output line is in its CRI log, Bulwark and runc interleaved,
//!   (e) ExecSync `true` latency in a running pod, Bulwark and runc,
//!   (f) host memory of one idle Bulwark pod: PSS (/proc/<pid>/smaps_rollup) of the shim,
//!       QEMU, virtiofsd and vhost-device-vsock;
//! then (g) the guest syscall collector's cost: a syscall-heavy loop inside the guest
//! (`bulwark-probe open-loop`: open+close of /etc/passwd, 100k pairs, `BULWARK_BENCH_OPEN_LOOP`
//! to choose (1M under KVM); timed in the guest) with the collector off and on, interleaved,
//! and the ratio; then (h) the host side of telemetry at full speed: events per second through
//! the shim's relay to the Falco plugin's listener with nothing lost (tests/src/bench/relay.rs).
//! `BULWARK_BENCH_ONLY=ctr|cri|collector|relay` runs one part only.

#[path = "../bench/relay.rs"]
mod bench_relay;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulwark_e2e::containerd::Containerd;
use bulwark_e2e::cri::{ContainerdVersion, CriContainerd, HANDLER_BULWARK, HANDLER_RUNC};
use bulwark_e2e::cri_client::{read_cri_log, ContainerSpec, CriClient};
use bulwark_e2e::leftovers;
use bulwark_e2e::process::poll;
use bulwark_e2e::{Artifacts, RUNTIME, TEST_IMAGE};
use bulwark_shim::vmm::qemu::{self, VmSpec};
use bulwark_shim::vmm::Accel;

/// One part of the benchmark, given the number of rounds.
type Part = fn(usize) -> Result<(), String>;

fn main() {
    let rounds: usize = std::env::var("BULWARK_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let only = std::env::var("BULWARK_BENCH_ONLY").unwrap_or_default();
    let parts: [(&str, Part); 4] =
        [("ctr", bench), ("cri", bench_cri), ("collector", bench_collector), ("relay", bench_relay::bench_relay)];
    if !only.is_empty() && !parts.iter().any(|(name, _)| *name == only) {
        eprintln!("BULWARK_BENCH_ONLY={only:?}: expected one of ctr, cri, collector, relay");
        std::process::exit(2);
    }
    for (name, part) in parts {
        if !only.is_empty() && only != name {
            continue;
        }
        if let Err(e) = part(rounds) {
            eprintln!("{name} bench failed: {e}");
            std::process::exit(1);
        }
    }
}

/// open+close pairs of the collector benchmark's loop: `BULWARK_BENCH_OPEN_LOOP`, else 100k
/// (under TCG 1M pairs take over 4 minutes, ctr's limit, even with the collector off; with
/// KVM set it to 1000000).
fn open_loop_pairs() -> u64 {
    std::env::var("BULWARK_BENCH_OPEN_LOOP").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

/// One `bulwark-probe open-loop` in a fresh container: the loop's time in the guest, seconds.
fn open_loop(c: &Containerd, id: &str, pairs: u64) -> Result<f64, String> {
    let n = pairs.to_string();
    let out = c.ctr(&["run", "--rm", "--runtime", RUNTIME, TEST_IMAGE, id, "bulwark-probe", "open-loop", &n])?;
    let ns = out
        .stdout
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|_| out.status.success())
        .ok_or_else(|| format!("open-loop in {id}: {out:?}\n{}", c.diagnostics()))?;
    Ok(ns as f64 / 1e9)
}

/// (g): the same loop with the guest's syscall collector off and on (every openat of the
/// container goes through the BPF programs; the node socket is off, the relay still reads).
fn bench_collector(rounds: usize) -> Result<(), String> {
    let rounds = rounds.clamp(1, 3);
    let off = Containerd::start(|s| s.extra.push_str("[telemetry]\nenabled = false\n"))?;
    let on = Containerd::start(|s| s.extra.push_str("[telemetry]\nenabled = true\nnode_socket = \"\"\n"))?;
    let pairs = open_loop_pairs();
    let (mut t_off, mut t_on) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        t_off.push(open_loop(&off, &format!("loop-off-{i}"), pairs)?);
        t_on.push(open_loop(&on, &format!("loop-on-{i}"), pairs)?);
    }
    let (a, b) = (median(&mut t_off), median(&mut t_on));
    println!("(g) {pairs} open+close in the guest, {rounds} round(s), medians:");
    println!("    collector off: {a:>8.3} s ({:>6.2} us per pair)", a * 1e6 / pairs as f64);
    println!("    collector on:  {b:>8.3} s ({:>6.2} us per pair)", b * 1e6 / pairs as f64);
    println!("    on/off: {:.2}x", b / a);
    Ok(())
}

fn bench(rounds: usize) -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let mut plain = Vec::new();
    let mut bulwark = Vec::new();
    let mut runc = Vec::new();
    // One warm-up of each so caches (page cache, snapshot unpack, accel probe) are equal.
    ctr_run(&c, RUNTIME, "warm-b")?;
    ctr_run(&c, "io.containerd.runc.v2", "warm-r")?;
    plain_boot(&c.artifacts, &c.dir.join("plain"))?;
    for i in 0..rounds {
        plain.push(plain_boot(&c.artifacts, &c.dir.join("plain"))?);
        bulwark.push(ctr_run(&c, RUNTIME, &format!("b{i}"))?);
        runc.push(ctr_run(&c, "io.containerd.runc.v2", &format!("r{i}"))?);
    }
    let (a, b, r) = (median(&mut plain), median(&mut bulwark), median(&mut runc));
    println!("rounds: {rounds} (medians; one warm-up each not counted)");
    println!("(a) plain QEMU boot to the agent's first vsock connection: {:>8.3} s", a);
    println!("(b) ctr run --rm true, Bulwark:                            {:>8.3} s", b);
    println!("(c) ctr run --rm true, runc:                               {:>8.3} s", r);
    println!("b/a = {:.2}   b/c = {:.1}", b / a, b / r);
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|x, y| x.total_cmp(y));
    v[v.len() / 2]
}

/// One measured CRI pod: ids, its start latency and its ExecSync latencies.
struct PodRun {
    pod: String,
    start: f64,
    exec: Result<Vec<f64>, String>,
}

/// RunPodSandbox + CreateContainer + StartContainer until the first log line, then three
/// ExecSync `true` calls; the pod keeps running (the caller removes it).
fn cri_pod_run(c: &CriContainerd, handler: &str, name: &str) -> Result<PodRun, String> {
    let cl = &c.client;
    let log_dir = c.pod_log_dir(name)?;
    let config = CriClient::pod_config(name, name, &log_dir);
    let spec = ContainerSpec::new("main", TEST_IMAGE, &["sh", "-c", "echo first; exec sleep 100000"]);
    let log = log_dir.join("main.log");
    let t0 = Instant::now();
    let pod = cl.run_pod_sandbox(&config, handler)?;
    let started = (|| {
        let id = cl.create_container(&pod, &config, &spec)?;
        cl.start_container(&id)?;
        let deadline = Duration::from_secs(240);
        loop {
            if read_cri_log(&log).iter().any(|(_, l)| l == "first") {
                break;
            }
            if t0.elapsed() > deadline {
                return Err(format!("{handler} pod {name}: no first output within {deadline:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok((id, t0.elapsed().as_secs_f64()))
    })();
    let (id, start) = match started {
        Ok(v) => v,
        Err(e) => {
            let _ = cl.stop_pod(&pod);
            let _ = cl.remove_pod(&pod);
            return Err(e);
        }
    };
    let exec = (0..3)
        .map(|_| {
            let t = Instant::now();
            let r = cl.exec_sync(&id, &["true"], 30)?;
            if r.exit_code != 0 {
                return Err(format!("ExecSync true exited {}", r.exit_code));
            }
            Ok(t.elapsed().as_secs_f64())
        })
        .collect::<Result<Vec<f64>, String>>();
    Ok(PodRun { pod, start, exec })
}

/// Sum of the PSS (kB) of the VM-side processes (shim, QEMU, virtiofsd, vhost-device-vsock)
/// of the containerd under `dir`, with one line per process.
fn vm_pss_kib(dir: &Path) -> (u64, Vec<String>) {
    let mut total = 0;
    let mut lines = Vec::new();
    for p in leftovers::vm_processes(&dir.to_string_lossy()) {
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", p.pid)).unwrap_or_default();
        let pss = rollup
            .lines()
            .find(|l| l.starts_with("Pss:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        total += pss;
        let name = p.cmdline.split_whitespace().next().unwrap_or("?").rsplit('/').next().unwrap_or("?").to_string();
        lines.push(format!("    {name:<28} pid {:>7}  PSS {:>8} kB", p.pid, pss));
    }
    (total, lines)
}

fn remove_pod(c: &CriContainerd, pod: &str) {
    let _ = c.client.stop_pod(pod);
    let _ = c.client.remove_pod(pod);
}

fn bench_cri(rounds: usize) -> Result<(), String> {
    let c = CriContainerd::start(ContainerdVersion::V1)?;
    let (mut start_b, mut start_r, mut exec_b, mut exec_r) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut errors: Vec<String> = Vec::new();
    let mut pss: Option<(u64, Vec<String>)> = None;
    // Warm-up of each (snapshots, page cache), not counted.
    for (h, n) in [(HANDLER_BULWARK, "warm-b"), (HANDLER_RUNC, "warm-r")] {
        match cri_pod_run(&c, h, n) {
            Ok(run) => remove_pod(&c, &run.pod),
            Err(e) => errors.push(format!("warm-up {h}: {e}")),
        }
    }
    for i in 0..rounds {
        for (handler, starts, execs) in
            [(HANDLER_BULWARK, &mut start_b, &mut exec_b), (HANDLER_RUNC, &mut start_r, &mut exec_r)]
        {
            match cri_pod_run(&c, handler, &format!("{handler}-{i}")) {
                Ok(run) => {
                    starts.push(run.start);
                    match run.exec {
                        Ok(mut t) => execs.push(median(&mut t)),
                        Err(e) => errors.push(format!("round {i} {handler} ExecSync: {e}")),
                    }
                    if handler == HANDLER_BULWARK && pss.is_none() {
                        // Idle: nothing runs but `sleep`; let the boot's page activity settle.
                        std::thread::sleep(Duration::from_secs(3));
                        pss = Some(vm_pss_kib(&c.dir));
                    }
                    remove_pod(&c, &run.pod);
                }
                Err(e) => errors.push(format!("round {i} {handler} pod start: {e}")),
            }
        }
    }
    let (sb, sr, eb, er) = (median(&mut start_b), median(&mut start_r), median(&mut exec_b), median(&mut exec_r));
    println!();
    println!("CRI (containerd 1.6 CRI plugin), {rounds} rounds interleaved, medians:");
    println!("(d) pod start to first output, Bulwark: {:>8.3} s   ({} ok)", sb, start_b.len());
    println!("(d) pod start to first output, runc:    {:>8.3} s   ({} ok)", sr, start_r.len());
    println!("(e) ExecSync true, Bulwark:             {:>8.3} s   ({} ok)", eb, exec_b.len());
    println!("(e) ExecSync true, runc:                {:>8.3} s   ({} ok)", er, exec_r.len());
    println!("pod start Bulwark/runc = {:.1}   ExecSync Bulwark/runc = {:.1}", sb / sr, eb / er);
    match pss {
        Some((total, lines)) => {
            println!("(f) host memory of one idle Bulwark pod (PSS): {:.1} MiB", total as f64 / 1024.0);
            for l in lines {
                println!("{l}");
            }
        }
        None => println!("(f) host memory of one idle Bulwark pod: not measured (no Bulwark pod started)"),
    }
    for e in &errors {
        println!("error: {e}");
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{} CRI measurements failed (listed above)", errors.len()))
    }
}

fn ctr_run(c: &Containerd, runtime: &str, id: &str) -> Result<f64, String> {
    let start = Instant::now();
    let out = c.ctr(&["run", "--rm", "--runtime", runtime, TEST_IMAGE, id, "true"])?;
    let t = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!("ctr run with {runtime} failed: {out:?}\n{}", c.diagnostics()));
    }
    Ok(t)
}

/// Boots the guest image with QEMU alone (vhost-device-vsock for the vsock device, nothing
/// else) and times it until the agent connects to the host's log port.
fn plain_boot(a: &Artifacts, dir: &Path) -> Result<f64, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let vhost = dir.join("vhost-vsock.sock");
    let uds = dir.join("vsock.sock");
    let listener = UnixListener::bind(dir.join(format!("vsock.sock_{}", bulwark_protocol::LOG_PORT)))
        .map_err(|e| format!("listening: {e}"))?;
    let mut vsock = Command::new(&a.vhost_device_vsock)
        .arg("--vm")
        .arg(format!("guest-cid=3,socket={},uds-path={}", vhost.display(), uds.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting vhost-device-vsock: {e}"))?;
    poll(Duration::from_secs(10), || vhost.exists().then_some(()));
    // The shim's own QEMU command line (VM of 1 vCPU / 256 MiB, TCG, no share, no NIC).
    let spec = VmSpec {
        vcpus: 1,
        memory_mib: 256,
        accel: Accel::Tcg,
        kernel: a.kernel.clone(),
        initrd: a.initrd.clone(),
        extra_kernel_params: String::new(),
        vsock_socket: vhost.clone(),
        fs_socket: None,
        console_log: dir.join("console.log"),
        log: dir.join("qemu.log"),
        nics: Vec::new(),
        // paths, not fds: the benchmark starts QEMU itself, unjailed
        fds: qemu::PassedFds::default(),
        sandbox: true,
        name: None,
    };
    let args = qemu::build_args(&spec, qemu::host_tsc_khz());
    let start = Instant::now();
    let mut qemu = Command::new(&a.qemu)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting QEMU: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let connected = poll(Duration::from_secs(120), || listener.accept().ok().map(|_| start.elapsed()));
    let _ = qemu.kill();
    let _ = qemu.wait();
    let _ = vsock.kill();
    let _ = vsock.wait();
    let _ = std::fs::remove_dir_all(dir);
    connected
        .map(|d| d.as_secs_f64())
        .ok_or_else(|| "the agent never connected to the host in a plain QEMU boot".to_string())
}
