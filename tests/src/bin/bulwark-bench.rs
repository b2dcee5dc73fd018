//! `scripts/bench`: side-by-side timings on this machine, in one run, interleaved so that
//! background noise hits every variant alike. Prints medians and ratios:
//!   (a) plain QEMU booting the guest image until the agent's first vsock connection,
//!   (b) `ctr run --rm --runtime io.containerd.bulwark.v2 ... true`,
//!   (c) the same `ctr run` with runc,
//! and the ratios b/a and b/c.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulwark_e2e::containerd::Containerd;
use bulwark_e2e::process::poll;
use bulwark_e2e::{Artifacts, RUNTIME, TEST_IMAGE};

fn main() {
    let rounds: usize = std::env::var("BULWARK_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    if let Err(e) = bench(rounds) {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
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
    v.sort_by(|x, y| x.total_cmp(y));
    v[v.len() / 2]
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
    let khz = host_khz();
    let start = Instant::now();
    let mut qemu = Command::new(&a.qemu)
        .args(["-M", "microvm,x-option-roms=off,memory-backend=mem", "-accel", "tcg", "-cpu", "max"])
        .args(["-smp", "1", "-m", "256M"])
        .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&a.kernel)
        .arg("-initrd")
        .arg(&a.initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 reboot=t panic=-1 quiet mitigations=off nokaslr i8042.noaux i8042.nomux \
             i8042.nopnp i8042.dumbkbd cryptomgr.notests random.trust_cpu=on no_timer_check \
             tsc_early_khz={khz} tsc=reliable"
        ))
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .arg("-chardev")
        .arg(format!("socket,id=vsock,path={}", vhost.display()))
        .args(["-device", "vhost-user-vsock-device,chardev=vsock"])
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

fn host_khz() -> u64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|mhz| (mhz * 1000.0) as u64)
        .unwrap_or(2_000_000)
}

