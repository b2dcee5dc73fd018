//! Part "relay" of `scripts/bench` (included by src/bin/bulwark-bench.rs): the host side of guest telemetry at full speed. The
//! shim's relay (the same code a sandbox runs: Hello with the boot's token, bounded frames,
//! rate limit, enrichment, the frames-file sink and the node socket sink) reads a guest stream
//! written by this process into the relay's socket, as vhost-device-vsock would, and forwards
//! to the node socket served by the Falco plugin's own listener, whose queue is drained here
//! with every frame decoded (as the plugin's parse step does). Each step offers a fixed rate
//! for a few seconds; a step is clean when every event offered came out of the plugin's
//! listener and no counter on the way (relay, sinks, plugin) lost one. Prints, per step, what
//! went in and out, then the highest clean rate and the unpaced maximum.
//! (A TCG guest cannot produce this many events, and the guest's collector is capped at
//! `guest_max_events_per_sec`; the guest side is measured by part "collector".)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_falco_plugin::listener;
use bulwark_protocol::telemetry::{decode_enriched, encode_frame, Event, EventType, GuestFrame, GuestFrameKind, Hello};
use bulwark_shim::config;
use bulwark_shim::telemetry::{FramesPaths, Identity, Relay};
use tokio::io::AsyncWriteExt;

/// Offered rates, events per second (0: unpaced, as fast as the relay reads).
const STEPS: [u64; 8] = [25_000, 50_000, 100_000, 150_000, 200_000, 300_000, 400_000, 0];
/// How long each rate is offered.
const STEP: Duration = Duration::from_secs(4);
/// How long the pipeline gets to deliver what was offered after a step.
const DRAIN: Duration = Duration::from_secs(5);

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A typical event: an openat of /etc/passwd by `cat /etc/passwd` in container c1, with the
/// process fields the collector fills (about 150 bytes framed).
fn event_frame(pid: u32) -> Result<Vec<u8>, String> {
    let mut e = Event::new();
    e.type_ = EventType::OPENAT.into();
    e.pid = pid;
    e.tid = pid;
    e.ppid = 1;
    e.comm = "cat".into();
    e.path = "/etc/passwd".into();
    e.container_id = "c1".into();
    e.ts_ns = 1_764_000_000_000_000_000;
    e.uid = 1000;
    e.loginuid = u32::MAX;
    e.cwd = "/home/app".into();
    e.exe_path = "/bin/busybox".into();
    e.argv = vec!["cat".into(), "/etc/passwd".into()];
    e.res = 3;
    let mut f = GuestFrame::new();
    f.kind = Some(GuestFrameKind::Event(e));
    encode_frame(&f).map_err(|e| e.to_string())
}

fn hello_frame(token: &[u8]) -> Result<Vec<u8>, String> {
    let mut h = Hello::new();
    h.version = bulwark_protocol::telemetry::TELEMETRY_VERSION;
    h.token = token.to_vec();
    let mut f = GuestFrame::new();
    f.kind = Some(GuestFrameKind::Hello(h));
    encode_frame(&f).map_err(|e| e.to_string())
}

/// The node socket end: the plugin's listener, its queue drained and decoded by a thread.
struct Plugin {
    delivered: Arc<AtomicU64>,
    undecodable: Arc<AtomicU64>,
    counters: Arc<listener::Counters>,
    stop: Arc<AtomicBool>,
}

impl Plugin {
    fn start(socket: &Path) -> Result<Plugin, String> {
        let l = listener::bind(socket).map_err(|e| format!("the plugin's listener: {e}"))?;
        let (tx, rx) = sync_channel(65_536);
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(listener::Counters::default());
        listener::spawn_acceptor(l, tx, counters.clone(), stop.clone(), 4)
            .map_err(|e| format!("the plugin's acceptor: {e}"))?;
        let (delivered, undecodable) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (d, u, s) = (delivered.clone(), undecodable.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((_, bytes)) = rx.recv_timeout(Duration::from_millis(100)) else { continue };
                match decode_enriched(&bytes) {
                    Ok(_) => d.fetch_add(1, Ordering::Relaxed),
                    Err(_) => u.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
        Ok(Plugin { delivered, undecodable, counters, stop })
    }

    fn lost(&self) -> u64 {
        let c = &self.counters;
        self.undecodable.load(Ordering::Relaxed)
            + c.queue_drops.load(Ordering::Relaxed)
            + c.garbage.load(Ordering::Relaxed)
            + c.oversize.load(Ordering::Relaxed)
            + c.truncated.load(Ordering::Relaxed)
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Offers `rate` events/s (0: unpaced) for STEP; returns how many were written.
async fn offer(guest: &mut tokio::net::UnixStream, frame: &[u8], rate: u64) -> Result<u64, String> {
    // Batches of 1 ms worth of events (at least one).
    let per_batch = if rate == 0 { 1000 } else { (rate / 1000).max(1) };
    let batch: Vec<u8> = frame.repeat(per_batch as usize);
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < STEP {
        guest.write_all(&batch).await.map_err(|e| format!("writing the guest stream: {e}"))?;
        sent += per_batch;
        if rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    Ok(sent)
}

pub fn bench_relay(_rounds: usize) -> Result<(), String> {
    let dir = Dir(std::env::temp_dir().join(format!("bulwark-bench-relay-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).map_err(|e| e.to_string())?;
    let node_socket = dir.0.join("telemetry.sock");
    let plugin = Plugin::start(&node_socket)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let cfg = config::Telemetry {
            node_socket: node_socket.clone(),
            // No rate limit in the way: the pipeline's own capacity is measured.
            max_events_per_sec: u32::MAX / 2,
            burst: u32::MAX / 2,
            node_name: "bench".into(),
            ..Default::default()
        };
        let identity = Identity::default();
        let ann = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        identity.set_pod(
            "bench",
            "sb1",
            &ann(&[("io.kubernetes.cri.sandbox-name", "web"), ("io.kubernetes.cri.sandbox-namespace", "team-a")]),
        );
        identity.add_container(
            "c1",
            &ann(&[("io.kubernetes.cri.container-name", "app"), ("io.kubernetes.cri.image-name", "busybox:1")]),
        );
        let guest_sock = dir.0.join("vsock.sock_1026");
        let listener = tokio::net::UnixListener::bind(&guest_sock).map_err(|e| e.to_string())?;
        let frames = FramesPaths { current: dir.0.join("telemetry.frames"), old: dir.0.join("telemetry.frames.1") };
        let mut relay = Relay::start(&cfg, "sb1", &frames, &identity, listener).map_err(|e| e.to_string())?;
        let token = relay.agent_config(&cfg).stream_token;
        let mut guest = tokio::net::UnixStream::connect(&guest_sock).await.map_err(|e| e.to_string())?;
        guest.write_all(&hello_frame(&token)?).await.map_err(|e| e.to_string())?;
        let frame = event_frame(4242)?;
        println!("(h) guest telemetry through the shim's relay to the Falco plugin's listener ({} B frames, {STEP:?} a step):", frame.len());
        let mut best_clean = 0.0f64;
        let mut unpaced = 0.0f64;
        for rate in STEPS {
            let losses = || (relay.counters().lost(), relay.node_dropped(), plugin.lost());
            let (in0, out0) = (relay.counters().received.load(Ordering::Relaxed), plugin.delivered.load(Ordering::Relaxed));
            let lost0 = losses();
            let started = Instant::now();
            let sent = offer(&mut guest, &frame, rate).await?;
            let offered_for = started.elapsed().as_secs_f64();
            // Let the pipeline deliver what it took in.
            let deadline = Instant::now() + DRAIN;
            while plugin.delivered.load(Ordering::Relaxed) - out0 < sent && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let delivered = plugin.delivered.load(Ordering::Relaxed) - out0;
            let received = relay.counters().received.load(Ordering::Relaxed) - in0;
            let l = losses();
            // Loss at each stage: the relay's (rate, garbage, any sink's queue), the node
            // socket sink's queue, the plugin's listener.
            let (relay_lost, node_lost, plugin_lost) = (l.0 - lost0.0, l.1 - lost0.1, l.2 - lost0.2);
            let lost = relay_lost + node_lost + plugin_lost;
            let through = delivered as f64 / offered_for;
            let clean = delivered == sent && lost == 0;
            let label = if rate == 0 { "unpaced".to_string() } else { format!("{rate:>7}/s") };
            println!(
                "    offered {label}: {sent:>8} sent, {received:>8} read by the relay, {delivered:>8} delivered \
                 ({through:>7.0}/s); lost: relay {relay_lost}, node socket queue {node_lost}, plugin {plugin_lost}{}",
                if clean { "" } else { "  <- not clean" }
            );
            if rate == 0 {
                unpaced = through;
            } else if clean {
                best_clean = best_clean.max(rate as f64);
            }
            if !clean && rate != 0 {
                // Let a backlog clear before the next step.
                tokio::time::sleep(DRAIN).await;
            }
        }
        println!("    highest offered rate delivered in full with no loss: {best_clean:.0}/s; unpaced: {unpaced:.0}/s");
        relay.stop();
        Ok::<(), String>(())
    })?;
    drop(plugin);
    Ok(())
}
