//! `scripts/demo`'s pod: a private containerd (Debian's 1.6, CRI plugin, CNI bridge) runs a
//! tenant pod with `runtime_handler: bulwark`, the way kubelet would: two containers in one
//! microVM, a web server and a client reaching it over 127.0.0.1. Prints what the tenant sees
//! (kernel, hostname, network), the host reaching the pod by its IP, an ExecSync, the pod's
//! stats, `bulwark ps` as an operator sees it, then stops and removes the pod and checks nothing
//! is left behind.

use std::time::{Duration, Instant};

use bulwark_e2e::cri::{http_get, ContainerdVersion, CriContainerd, HANDLER_BULWARK};
use bulwark_e2e::cri_client::{read_cri_log, ContainerSpec, CriClient};
use bulwark_e2e::TEST_IMAGE;

fn main() {
    if let Err(e) = demo() {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

/// Waits up to `limit` for a line of the container log that starts with `prefix`.
fn log_line(path: &std::path::Path, prefix: &str, limit: Duration) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some((_, l)) = read_cri_log(path).into_iter().find(|(_, l)| l.starts_with(prefix)) {
            return Ok(l);
        }
        if Instant::now() > deadline {
            return Err(format!("no line starting with {prefix:?} in {} within {limit:?}", path.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn demo() -> Result<(), String> {
    let c = CriContainerd::start(ContainerdVersion::V1)?;
    let cl = &c.client;
    let (name, version) = cl.version()?;
    println!("containerd: {name} {version} (CRI), CNI bridge {}/24 ({})", c.net.subnet, c.net.bridge);
    println!("host kernel: {}", std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim());

    let log_dir = c.pod_log_dir("demo")?;
    let config = CriClient::pod_config("demo", "tenant-pod", &log_dir);
    let t0 = Instant::now();
    let pod = cl.run_pod_sandbox(&config, HANDLER_BULWARK)?;
    let result = run(&c, &pod, &config, &log_dir, t0);
    let _ = cl.stop_pod(&pod);
    let _ = cl.remove_pod(&pod);
    result?;
    c.assert_clean(&[])?;
    println!("pod stopped and removed: no QEMU, virtiofsd, vhost-device-vsock, tap, mount or state left");
    Ok(())
}

fn run(
    c: &CriContainerd,
    pod: &str,
    config: &k8s_cri::v1::PodSandboxConfig,
    log_dir: &std::path::Path,
    t0: Instant,
) -> Result<(), String> {
    let cl = &c.client;
    let server = ContainerSpec::new(
        "web",
        TEST_IMAGE,
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo \"hello from pod $(hostname)\" > /www/index.html && exec httpd -f -p 8080 -h /www",
        ],
    );
    let client = ContainerSpec::new(
        "client",
        TEST_IMAGE,
        &[
            "sh",
            "-c",
            "echo \"kernel: $(uname -r)\"; echo \"hostname: $(hostname)\"; \
             echo \"eth0: $(ip -4 -o addr show eth0 | awk '{print $4}')\"; \
             i=0; until wget -q -O - http://127.0.0.1:8080/ 2>/dev/null | sed 's/^/over 127.0.0.1: /'; do \
               i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done; exec sleep 100000",
        ],
    );
    let mut ids = Vec::new();
    for spec in [&server, &client] {
        let id = cl.create_container(pod, config, spec)?;
        cl.start_container(&id)?;
        ids.push(id);
    }
    let client_log = log_dir.join("client.log");
    let first = log_line(&client_log, "kernel:", Duration::from_secs(240))?;
    println!("pod {} running in a microVM after {:.1} s", &pod[..12], t0.elapsed().as_secs_f64());
    println!("  {first}");
    for prefix in ["hostname:", "eth0:", "over 127.0.0.1:"] {
        println!("  {}", log_line(&client_log, prefix, Duration::from_secs(30))?);
    }
    let ip = cl.pod_ip(pod)?;
    let addr = format!("{ip}:8080").parse().map_err(|e| format!("pod IP {ip}: {e}"))?;
    println!("host -> pod IP {ip}:8080: {}", http_get(addr, Duration::from_secs(30))?.trim());

    let web = ids[0].clone();
    let r = cl.exec_sync(
        &web,
        &["sh", "-c", "echo \"exec in the VM: $(cat /proc/1/cmdline | tr '\\0' ' ')\"; cat /sys/fs/cgroup/memory.max"],
        30,
    )?;
    for l in r.stdout.lines() {
        println!("  {l}");
    }
    let st = cl.container_stats(&web)?;
    let mem = st.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()).map(|v| v.value).unwrap_or(0);
    let cpu = st.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds.as_ref()).map(|v| v.value).unwrap_or(0);
    println!("ContainerStats web: memory working set {} KiB, CPU {:.1} ms", mem / 1024, cpu as f64 / 1e6);

    // What an operator on the node sees: the installed `bulwark` CLI.
    let ps = std::process::Command::new(&c.node.cli)
        .arg("ps")
        .arg("--config")
        .arg(&c.node.shim_config)
        .output()
        .map_err(|e| format!("running {}: {e}", c.node.cli.display()))?;
    println!("bulwark ps on the node:");
    for l in String::from_utf8_lossy(&ps.stdout).lines() {
        println!("  {l}");
    }
    Ok(())
}
