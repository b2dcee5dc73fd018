//! Pod networking without CRI: a CNI-bridge-like netns (podnet.rs) handed to the sandbox with
//! `ctr run --with-ns network:<path>`. The VM gets the pod interface's MAC, MTU, addresses
//! and routes; the pod reaches a server on the bridge gateway, the host reaches a server in
//! the pod by the pod IP; afterwards no tap, qdisc or netns holder is left. Bad netns inputs
//! fail clearly and leave nothing behind. A tenant's bandwidth ceiling is a tbf qdisc on the
//! tap and on the CNI interface, and transfers both ways take at least as long as it implies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulwark_e2e::containerd::{Containerd, CTR_LIMIT, NAMESPACE};
use bulwark_e2e::podnet::{iproute, PodNet};
use bulwark_e2e::process::wait_bounded;
use bulwark_e2e::{RUNTIME, TEST_IMAGE};

/// Bulk payload sent each way (exercises segmentation/checksum offloads through the taps).
const BULK: usize = 1 << 20;

type ServerHandle = std::thread::JoinHandle<Result<String, String>>;

/// A one-shot TCP server on the bridge gateway: reads a line, answers "pong-from-host" and
/// BULK bytes.
fn gateway_server(net: &PodNet) -> Result<(u16, ServerHandle), String> {
    one_shot_server(net.gateway)
}

fn one_shot_server(addr: std::net::Ipv4Addr) -> Result<(u16, ServerHandle), String> {
    let listener = TcpListener::bind((addr, 0)).map_err(|e| format!("binding {addr}: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let h = std::thread::spawn(move || {
        let start = Instant::now();
        loop {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false).map_err(|e| e.to_string())?;
                    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
                    let mut line = String::new();
                    BufReader::new(&s).take(256).read_line(&mut line).map_err(|e| e.to_string())?;
                    s.write_all(b"pong-from-host\n").map_err(|e| e.to_string())?;
                    s.write_all(&vec![b'y'; BULK]).map_err(|e| e.to_string())?;
                    return Ok(format!("{peer} said {line:?}"));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() > CTR_LIMIT {
                        return Err("nobody connected to the gateway server".into());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        }
    });
    Ok((port, h))
}

/// Connects to the pod's server (retrying until it listens) and reads what it sends.
fn fetch_from_pod(addr: SocketAddr) -> Result<String, String> {
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
                let mut got = String::new();
                (&mut s)
                    .take(2 * BULK as u64)
                    .read_to_string(&mut got)
                    .map_err(|e| format!("reading from {addr}: {e}"))?;
                return Ok(got);
            }
            Err(e) if start.elapsed() > CTR_LIMIT => return Err(format!("connecting to {addr}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

fn ctr_run_in_netns(c: &Containerd, netns: &str, id: &str, script: &str) -> Command {
    let mut cmd = Command::new("ctr");
    cmd.arg("-a")
        .arg(&c.socket)
        .args(["-n", NAMESPACE, "run", "--rm", "--runtime", RUNTIME])
        .arg("--with-ns")
        .arg(format!("network:{netns}"))
        .args([TEST_IMAGE, id, "sh", "-c", script]);
    cmd
}

#[test]
fn pod_gets_the_cni_interface_and_traffic_flows_both_ways() -> Result<(), String> {
    let net = PodNet::bridge(1400)?;
    let ino_before = std::fs::metadata(&net.netns_path).map_err(|e| e.to_string())?;
    let (port, server) = gateway_server(&net)?;
    let c = Containerd::start(|_| {})?;
    let script = format!(
        "ip -o link show eth0; ip -o addr show dev eth0; echo HOSTNAME=$(hostname); ip route; ip -6 route; \
         echo ping | nc {gw} {port} > /tmp/from-host; head -n1 /tmp/from-host; echo BYTES=$(wc -c < /tmp/from-host); \
         (echo hello-from-pod; head -c {BULK} /dev/zero | tr '\\0' x) | nc -l -p 8080; echo DONE",
        gw = net.gateway
    );
    let mut run = ctr_run_in_netns(&c, &net.netns_path.to_string_lossy(), "podnet", &script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting ctr run: {e}"))?;
    let mut stdout = run.stdout.take().ok_or("no stdout")?;
    let mut stderr = run.stderr.take().ok_or("no stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let from_pod = fetch_from_pod(SocketAddr::from((net.pod_ip, 8080)));
    let status = wait_bounded(&mut run, CTR_LIMIT)?;
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    let served = server.join().map_err(|_| "gateway server panicked".to_string())?;
    let ctx = format!("ctr run: {status}\nstdout:\n{out}\nstderr:\n{err}\n{}", c.diagnostics());

    eprintln!("guest output:\n{out}");
    assert!(status.success(), "{ctx}");
    let from_pod = from_pod?;
    assert!(from_pod.starts_with("hello-from-pod\n"), "host -> pod by the pod IP\n{ctx}");
    assert_eq!(from_pod.len(), 15 + BULK, "bulk data from the pod was cut short\n{ctx}");
    assert!(from_pod[15..].bytes().all(|b| b == b'x'), "bulk data from the pod corrupted");
    let served = served.map_err(|e| format!("pod -> gateway: {e}\n{ctx}"))?;
    assert!(served.contains(&net.pod_ip.to_string()), "the gateway saw another source: {served}");
    assert!(out.contains("pong-from-host"), "pod -> gateway reply missing\n{ctx}");
    assert!(out.contains(&format!("BYTES={}", 15 + BULK)), "bulk data to the pod was cut short\n{ctx}");
    let link = out.lines().find(|l| l.contains("eth0") && l.contains("link/ether")).unwrap_or("");
    assert!(link.contains(&format!("link/ether {}", net.mac)), "guest NIC MAC is not the CNI MAC\n{ctx}");
    assert!(link.contains("mtu 1400"), "guest MTU is not the CNI MTU\n{ctx}");
    assert!(out.contains(&format!("inet {}/24", net.pod_ip)), "IPv4 address missing\n{ctx}");
    assert!(out.contains(&format!("inet6 {}/64", net.pod_ip6)), "IPv6 address missing\n{ctx}");
    assert!(out.contains(&format!("default via {} dev eth0", net.gateway)), "default route missing\n{ctx}");
    assert!(out.contains(&format!("default via {} dev eth0", net.gateway6)), "IPv6 default route missing\n{ctx}");
    assert!(out.contains("DONE"), "{ctx}");

    c.assert_clean()?;
    let left = bulwark_e2e::process::poll(Duration::from_secs(20), || net.leftovers().ok().filter(|l| l.is_empty()));
    if left.is_none() {
        return Err(format!("left in the pod netns: {:?}\n{ctx}", net.leftovers()));
    }
    // The netns file is the same one (nobody replaced it) and deleting it succeeds.
    let ino_after = std::fs::metadata(&net.netns_path).map_err(|e| e.to_string())?;
    use std::os::unix::fs::MetadataExt;
    assert_eq!(ino_before.ino(), ino_after.ino());
    iproute("ip", &["netns", "del", &net.netns])?;
    Ok(())
}

#[test]
fn missing_netns_fails_clearly_and_leaves_nothing() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let path = format!("/var/run/netns/bwk-missing-{}", std::process::id());
    let out = bulwark_e2e::process::run(&mut ctr_run_in_netns(&c, &path, "nonetns", "echo should-not-run"), CTR_LIMIT)?;
    assert!(!out.status.success(), "ran without its netns: {out:?}");
    assert!(!out.stdout.contains("should-not-run"), "{out:?}");
    assert!(out.stderr.contains("network namespace") && out.stderr.contains(&path), "unclear error: {}", out.stderr);
    let _ = c.ctr(&["container", "rm", "nonetns"]);
    c.assert_clean()
}

#[test]
fn netns_without_interface_fails_clearly_and_leaves_nothing() -> Result<(), String> {
    let net = PodNet::empty_netns()?;
    let c = Containerd::start(|_| {})?;
    let out = bulwark_e2e::process::run(
        &mut ctr_run_in_netns(&c, &net.netns_path.to_string_lossy(), "nonic", "echo should-not-run"),
        CTR_LIMIT,
    )?;
    assert!(!out.status.success(), "ran without a NIC: {out:?}");
    assert!(out.stderr.contains("no interface besides lo"), "unclear error: {}", out.stderr);
    let _ = c.ctr(&["container", "rm", "nonic"]);
    c.assert_clean()?;
    let left = net.leftovers()?;
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

#[test]
fn killed_shim_is_cleaned_up_in_the_pod_netns_too() -> Result<(), String> {
    let net = PodNet::bridge(1500)?;
    let c = Containerd::start(|_| {})?;
    let mut run = ctr_run_in_netns(&c, &net.netns_path.to_string_lossy(), "netcrash", "sleep 600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting ctr run: {e}"))?;
    c.wait_running("netcrash")?;
    let qdiscs = iproute("tc", &["-n", &net.netns, "qdisc", "show"])?.stdout;
    assert!(qdiscs.contains("ingress"), "no ingress qdisc while the pod runs: {qdiscs}");
    let shims: Vec<_> = bulwark_e2e::leftovers::vm_processes(&c.dir.to_string_lossy())
        .into_iter()
        .filter(|p| p.cmdline.contains("containerd-shim-bulwark-v2"))
        .collect();
    assert_eq!(shims.len(), 1, "expected one shim: {shims:?}");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is the shim this test's
    // containerd started.
    assert_eq!(unsafe { libc::kill(shims[0].pid, libc::SIGKILL) }, 0);
    let status = wait_bounded(&mut run, CTR_LIMIT)?;
    assert!(!status.success(), "the task must exit non-zero when its shim dies: {status:?}");
    c.assert_clean()?;
    let left = bulwark_e2e::process::poll(Duration::from_secs(20), || net.leftovers().ok().filter(|l| l.is_empty()));
    if left.is_none() {
        return Err(format!("left in the pod netns: {:?}\n{}", net.leftovers(), c.diagnostics()));
    }
    Ok(())
}

#[test]
fn two_pod_interfaces_keep_their_names_macs_and_addresses() -> Result<(), String> {
    let mut net = PodNet::bridge(1500)?;
    net.add_net1()?;
    let (host1, pod1, mac1) = net.net1.clone().ok_or("net1 missing")?;
    let (port, server) = one_shot_server(host1)?;
    let c = Containerd::start(|_| {})?;
    let script =
        format!("ip -o link; ip -o -4 addr; echo ping | nc {host1} {port} > /tmp/r; head -n1 /tmp/r; echo DONE");
    let out = bulwark_e2e::process::run(
        &mut ctr_run_in_netns(&c, &net.netns_path.to_string_lossy(), "twonics", &script),
        CTR_LIMIT,
    )?;
    let served = server.join().map_err(|_| "server panicked".to_string())?;
    let ctx = format!("{out:?}\n{}", c.diagnostics());
    assert!(out.status.success(), "{ctx}");
    let line_of = |name: &str| {
        out.stdout
            .lines()
            .find(|l| l.contains(&format!(": {name}:")) && l.contains("link/ether"))
            .unwrap_or("")
            .to_string()
    };
    assert!(line_of("eth0").contains(&format!("link/ether {}", net.mac)), "eth0 has the wrong MAC\n{ctx}");
    assert!(line_of("net1").contains(&format!("link/ether {mac1}")), "net1 has the wrong MAC\n{ctx}");
    assert!(out.stdout.contains(&format!("inet {}/24", net.pod_ip)), "{ctx}");
    assert!(out.stdout.contains(&format!("inet {pod1}/24")), "{ctx}");
    let served = served.map_err(|e| format!("pod -> net1 peer: {e}\n{ctx}"))?;
    assert!(served.contains(&pod1.to_string()), "traffic to {host1} did not leave through net1: {served}");
    assert!(out.stdout.contains("pong-from-host"), "{ctx}");
    c.assert_clean()?;
    let left = bulwark_e2e::process::poll(Duration::from_secs(20), || net.leftovers().ok().filter(|l| l.is_empty()));
    if left.is_none() {
        return Err(format!("left in the pod netns: {:?}", net.leftovers()));
    }
    Ok(())
}

#[test]
fn the_host_netns_is_refused_and_the_host_is_untouched() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    // The host's own interfaces (other tests may add and remove bridges and veths meanwhile).
    let route = iproute("ip", &["-4", "route", "show", "default"])?.stdout;
    let uplink = route.split_whitespace().skip_while(|w| *w != "dev").nth(1).unwrap_or("lo").to_string();
    let host_qdiscs = || -> Result<String, String> {
        Ok(iproute("tc", &["qdisc", "show", "dev", "lo"])?.stdout
            + &iproute("tc", &["qdisc", "show", "dev", &uplink])?.stdout)
    };
    let qdiscs_before = host_qdiscs()?;
    // This test process lives in the host netns; its /proc path passes the path check.
    let host_ns = format!("/proc/{}/ns/net", std::process::id());
    let out =
        bulwark_e2e::process::run(&mut ctr_run_in_netns(&c, &host_ns, "hostnet", "echo should-not-run"), CTR_LIMIT)?;
    assert!(!out.status.success(), "ran attached to the host network: {out:?}");
    assert!(out.stderr.contains("host's own network namespace"), "unclear error: {}", out.stderr);
    let _ = c.ctr(&["container", "rm", "hostnet"]);
    c.assert_clean()?;
    let links = iproute("ip", &["-o", "link"])?.stdout;
    assert!(!links.contains("_bwk"), "a tap was made in the host netns: {links}");
    assert_eq!(host_qdiscs()?, qdiscs_before, "qdiscs of lo / {uplink} changed");
    Ok(())
}

/// Bytes each way in the bandwidth test: 1 MiB at 2 Mbit/s takes 4.2 s; unshaped it takes a
/// fraction of a second even under TCG (see the first test's 1 MiB transfers).
const SHAPED_BYTES: usize = 1 << 20;
const SHAPED_MBIT: u64 = 2;

/// What the sink saw: (bytes, time from the first byte to the end).
type SinkHandle = std::thread::JoinHandle<Result<(usize, Duration), String>>;

/// A server on `addr` that reads one connection to its end: (bytes, time from the first byte
/// to the end).
fn sink_server(addr: std::net::Ipv4Addr) -> Result<(u16, SinkHandle), String> {
    let listener = TcpListener::bind((addr, 0)).map_err(|e| format!("binding {addr}: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let h = std::thread::spawn(move || {
        let start = Instant::now();
        let (mut s, _) = loop {
            match listener.accept() {
                Ok(c) => break c,
                Err(_) if start.elapsed() < CTR_LIMIT => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("nobody sent to the sink: {e}")),
            }
        };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        let mut first = None;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    first.get_or_insert_with(Instant::now);
                    total += n;
                }
                Err(e) => return Err(format!("reading from the pod: {e} after {total} bytes")),
            }
        }
        Ok((total, first.map(|f| f.elapsed()).unwrap_or_default()))
    });
    Ok((port, h))
}

/// The qdiscs `tc` shows in the pod netns for `dev`.
fn qdiscs(net: &PodNet, dev: &str) -> String {
    iproute("tc", &["-n", &net.netns, "qdisc", "show", "dev", dev]).map(|o| o.stdout).unwrap_or_else(|e| e)
}

#[test]
fn a_tenant_bandwidth_ceiling_shapes_the_pod_both_ways() -> Result<(), String> {
    let net = PodNet::bridge(1500)?;
    let (up_port, sink) = sink_server(net.gateway)?;
    let (down_port, source) = one_shot_server(net.gateway)?;
    let c = Containerd::start(|s| s.extra = format!("[tenants.slow]\nnetwork_bandwidth_mbit = {SHAPED_MBIT}\n"))?;
    // Upload 1 MiB, then download the source's 1 MiB (timed in the guest), then stay up for
    // the qdisc checks.
    let script = format!(
        "head -c {SHAPED_BYTES} /dev/zero | nc {gw} {up_port}; \
         read t0 x </proc/uptime; echo ping | nc {gw} {down_port} | wc -c > /tmp/n; read t1 x </proc/uptime; \
         echo DOWN $(cat /tmp/n) $t0 $t1; echo DONE; sleep 600",
        gw = net.gateway
    );
    let mut child = Command::new("ctr")
        .arg("-a")
        .arg(&c.socket)
        .args(["-n", NAMESPACE, "run", "--rm", "--runtime", RUNTIME, "--annotation", "bulwark.io/tenant=slow"])
        .arg("--with-ns")
        .arg(format!("network:{}", net.netns_path.display()))
        .args([TEST_IMAGE, "shaped", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting ctr run: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut lines = Vec::new();
    let done = bulwark_e2e::process::poll(CTR_LIMIT, || {
        lines.extend(rx.try_iter());
        lines.iter().any(|l| l == "DONE").then_some(())
    });
    let (tap_q, eth_q) = (qdiscs(&net, "tap0_bwk"), qdiscs(&net, "eth0"));
    let _ = c.ctr(&["task", "kill", "--signal", "SIGKILL", "shaped"]);
    let _ = wait_bounded(&mut child, CTR_LIMIT);
    let ctx = format!("output {lines:?}\ntap0_bwk: {tap_q}\neth0: {eth_q}\n{}", c.diagnostics());
    done.ok_or_else(|| format!("the transfers did not finish\n{ctx}"))?;
    // The ceiling is on both sides: tc shows it as `tbf b17: root ... rate 2Mbit`.
    for (dev, q) in [("tap0_bwk", &tap_q), ("eth0", &eth_q)] {
        assert!(q.contains("tbf b17: root") && q.contains(&format!("rate {SHAPED_MBIT}Mbit")), "{dev}: {q}\n{ctx}");
    }
    // And it holds: neither transfer was faster than the ceiling allows (less the burst).
    let floor = Duration::from_secs_f64((SHAPED_BYTES - 64 * 1024) as f64 * 8.0 / (SHAPED_MBIT as f64 * 1e6) * 0.9);
    let (up_bytes, up_time) = sink.join().map_err(|_| "sink panicked".to_string())??;
    source.join().map_err(|_| "source panicked".to_string())??;
    let down = lines.iter().find_map(|l| l.strip_prefix("DOWN ")).ok_or_else(|| format!("no DOWN line\n{ctx}"))?;
    let w: Vec<f64> = down.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let (down_bytes, down_time) = match w[..] {
        [n, t0, t1] => (n as usize, Duration::from_secs_f64(t1 - t0)),
        _ => return Err(format!("bad DOWN line {down:?}\n{ctx}")),
    };
    eprintln!("upload {up_bytes} B in {up_time:?}, download {down_bytes} B in {down_time:?}, floor {floor:?}");
    assert_eq!(up_bytes, SHAPED_BYTES, "upload cut short\n{ctx}");
    assert_eq!(down_bytes, 15 + BULK, "download cut short\n{ctx}");
    assert!(up_time >= floor, "pod -> host took {up_time:?}: faster than {SHAPED_MBIT} Mbit/s allows\n{ctx}");
    assert!(down_time >= floor, "host -> pod took {down_time:?}: faster than {SHAPED_MBIT} Mbit/s allows\n{ctx}");
    c.assert_clean()?;
    let left = bulwark_e2e::process::poll(Duration::from_secs(20), || net.leftovers().ok().filter(|l| l.is_empty()));
    if left.is_none() {
        return Err(format!("left in the pod netns: {:?}", net.leftovers()));
    }
    Ok(())
}
