//! The relay end to end on the host side: a fake guest (a unix socket client) sends frames,
//! the relay writes enriched events to the sandbox's frames file and the node socket.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulwark_protocol::limits::MAX_TELEMETRY_FRAME;
use bulwark_protocol::telemetry::{
    decode_enriched, encode_frame, Enriched, Event, EventType, FrameDecoder, GuestFrame, GuestFrameKind, Hello,
    TELEMETRY_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

use super::*;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn guest_frame(kind: GuestFrameKind) -> Vec<u8> {
    let mut f = GuestFrame::new();
    f.kind = Some(kind);
    encode_frame(&f).unwrap()
}

fn hello(token: &[u8]) -> Vec<u8> {
    let mut h = Hello::new();
    h.version = TELEMETRY_VERSION;
    h.token = token.to_vec();
    guest_frame(GuestFrameKind::Hello(h))
}

fn open_event(pid: u32, container: &str, path: &str) -> Vec<u8> {
    let mut e = Event::new();
    e.type_ = EventType::OPENAT.into();
    e.pid = pid;
    e.comm = "cat".into();
    e.path = path.into();
    e.container_id = container.into();
    guest_frame(GuestFrameKind::Event(e))
}

fn read_frames(path: &Path) -> Vec<Enriched> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut d = FrameDecoder::new(MAX_TELEMETRY_FRAME);
    let mut input = &bytes[..];
    let mut out = vec![];
    while let Ok(Some(f)) = d.decode(&mut input) {
        out.push(decode_enriched(&f).unwrap());
    }
    out
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn setup(what: &str, cfg: config::Telemetry) -> (Dir, PathBuf, Identity, Relay) {
    let dir = Dir(crate::host::fake::temp_dir(what));
    let guest_sock = dir.0.join("vsock.sock_1026");
    let listener = UnixListener::bind(&guest_sock).unwrap();
    let identity = Identity::default();
    let annotations: HashMap<String, String> = [
        ("io.kubernetes.cri.sandbox-name", "web"),
        ("io.kubernetes.cri.sandbox-namespace", "team-a"),
        ("io.kubernetes.cri.sandbox-uid", "uid-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cfg = config::Telemetry { node_name: "node-1".into(), ..cfg };
    identity.set_pod(&node_name(&cfg), "sb1", &annotations);
    identity.add_container(
        "c1",
        &[("io.kubernetes.cri.container-name", "app"), ("io.kubernetes.cri.image-name", "busybox:1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let frames = FramesPaths { current: dir.0.join("telemetry.frames"), old: dir.0.join("telemetry.frames.1") };
    let relay = Relay::start(&cfg, "sb1", &frames, &identity, listener).unwrap();
    (dir, guest_sock, identity, relay)
}

#[tokio::test]
async fn guest_events_are_enriched_by_the_shim_and_reach_node_socket_and_file() {
    let node_dir = Dir(crate::host::fake::temp_dir("node"));
    let node_sock = node_dir.0.join("telemetry.sock");
    let node = UnixListener::bind(&node_sock).unwrap();
    let (dir, guest_sock, _identity, mut relay) =
        setup("relay", config::Telemetry { node_socket: node_sock.clone(), ..Default::default() });

    let mut guest = UnixStream::connect(&guest_sock).await.unwrap();
    guest.write_all(&hello(relay.token())).await.unwrap();
    guest.write_all(&open_event(10, "c1", "/etc/shadow")).await.unwrap();
    // A container id this sandbox does not have: the claim is not passed on.
    guest.write_all(&open_event(11, "other-pods-container", "/x")).await.unwrap();
    // Garbage inside a valid frame: skipped, counted, the stream goes on.
    guest.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
    guest.write_all(&open_event(12, "c1", "/etc/passwd")).await.unwrap();

    let frames = dir.0.join("telemetry.frames");
    wait_for("3 events in the frames file", || read_frames(&frames).len() == 3).await;
    let got = read_frames(&frames);
    let first = &got[0];
    assert_eq!(
        (first.node_name.as_str(), first.pod_name.as_str(), first.pod_namespace.as_str(), first.pod_uid.as_str()),
        ("node-1", "web", "team-a", "uid-1")
    );
    assert_eq!(
        (first.container_name.as_str(), first.image.as_str(), first.sandbox_id.as_str()),
        ("app", "busybox:1", "sb1")
    );
    assert_eq!(first.event.path, "/etc/shadow");
    assert_eq!((got[1].container_id.as_str(), got[1].container_name.as_str()), ("", ""));
    assert_eq!(got[2].event.path, "/etc/passwd");
    assert_eq!(got[2].drops, 1, "the garbage frame counts as lost");

    let (mut plugin, _) = tokio::time::timeout(Duration::from_secs(10), node.accept()).await.unwrap().unwrap();
    let mut d = FrameDecoder::new(MAX_TELEMETRY_FRAME);
    let mut seen = vec![];
    let mut buf = [0u8; 8192];
    while seen.len() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read(&mut plugin, &mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        let mut input = &buf[..n];
        while let Some(f) = d.decode(&mut input).unwrap() {
            seen.push(decode_enriched(&f).unwrap().event.pid);
        }
    }
    assert_eq!(seen, vec![10, 11, 12]);
    assert_eq!(relay.counters().garbage.load(Ordering::Relaxed), 1);
    relay.stop();
}

#[tokio::test]
async fn hostile_streams_are_cut_and_the_relay_keeps_serving() {
    let (dir, guest_sock, _identity, mut relay) =
        setup("relay-hostile", config::Telemetry { node_socket: PathBuf::new(), ..Default::default() });
    // No Hello: cut.
    let mut g = UnixStream::connect(&guest_sock).await.unwrap();
    g.write_all(&open_event(1, "c1", "/a")).await.unwrap();
    wait_for("the stream without Hello to be cut", || relay.counters().bad_streams.load(Ordering::Relaxed) == 1).await;
    // A Hello without this boot's token (a tenant process posing as the collector): cut
    // before any of its events is read.
    let mut g = UnixStream::connect(&guest_sock).await.unwrap();
    g.write_all(&hello(b"guessed")).await.unwrap();
    g.write_all(&open_event(2, "c1", "/spoofed")).await.unwrap();
    wait_for("the stream with a wrong token to be cut", || relay.counters().bad_streams.load(Ordering::Relaxed) == 2)
        .await;
    // An oversize declared length: cut before anything is allocated for it.
    let mut g = UnixStream::connect(&guest_sock).await.unwrap();
    g.write_all(&hello(relay.token())).await.unwrap();
    g.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
    wait_for("the oversize stream to be cut", || relay.counters().bad_streams.load(Ordering::Relaxed) == 3).await;
    // Cut inside a frame.
    let mut g = UnixStream::connect(&guest_sock).await.unwrap();
    g.write_all(&hello(relay.token())).await.unwrap();
    g.write_all(&[0, 0, 1, 0, 1, 2]).await.unwrap();
    drop(g);
    wait_for("the truncated stream to be counted", || relay.counters().bad_streams.load(Ordering::Relaxed) == 4).await;
    // And a well-behaved connection after all that is served.
    let mut g = UnixStream::connect(&guest_sock).await.unwrap();
    g.write_all(&hello(relay.token())).await.unwrap();
    g.write_all(&open_event(5, "c1", "/ok")).await.unwrap();
    let frames = dir.0.join("telemetry.frames");
    wait_for("the good event", || read_frames(&frames).iter().any(|m| m.event.path == "/ok")).await;
    assert!(read_frames(&frames).iter().all(|m| m.event.path == "/ok"));
    relay.stop();
}

#[tokio::test]
async fn a_flood_at_ten_times_the_rate_is_dropped_and_counted() {
    let (_dir, guest_sock, _identity, mut relay) = setup(
        "relay-flood",
        config::Telemetry { node_socket: PathBuf::new(), max_events_per_sec: 1000, burst: 1000, ..Default::default() },
    );
    let mut g = UnixStream::connect(&guest_sock).await.unwrap();
    g.write_all(&hello(relay.token())).await.unwrap();
    let one = open_event(1, "c1", "/flood");
    let mut batch = Vec::new();
    for _ in 0..1000 {
        batch.extend_from_slice(&one);
    }
    // 20 000 events in (well under) 2 seconds: at least 10x the rate.
    let started = Instant::now();
    for _ in 0..20 {
        g.write_all(&batch).await.unwrap();
    }
    wait_for("every event to be read", || relay.counters().received.load(Ordering::Relaxed) == 20_000).await;
    let secs = started.elapsed().as_secs_f64();
    let forwarded = relay.counters().forwarded.load(Ordering::Relaxed);
    let allowed = 1000.0 + 1000.0 * secs + 1.0;
    assert!((forwarded as f64) <= allowed, "{forwarded} forwarded in {secs:.2}s; at most {allowed:.0} allowed");
    assert_eq!(relay.counters().rate_dropped.load(Ordering::Relaxed), 20_000 - forwarded);
    relay.stop();
}

/// The first frame of `stream` is read to its end by the relay: true if the relay closed it.
async fn closed_by_relay(stream: &mut UnixStream, within: Duration) -> bool {
    let mut b = [0u8; 16];
    matches!(tokio::time::timeout(within, tokio::io::AsyncReadExt::read(stream, &mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test]
async fn squatters_cannot_keep_the_collector_out_nor_speak_for_it() {
    let (dir, guest_sock, _identity, mut relay) =
        setup("relay-squat", config::Telemetry { node_socket: PathBuf::new(), ..Default::default() });
    let frames = dir.0.join("telemetry.frames");
    // A tenant process holds every waiting slot with connections that never say Hello...
    let mut squatters = vec![];
    for _ in 0..stream::MAX_PENDING {
        squatters.push(UnixStream::connect(&guest_sock).await.unwrap());
    }
    wait_for("the squatters to be accepted", || {
        relay.counters().connections.load(Ordering::Relaxed) == stream::MAX_PENDING as u64
    })
    .await;
    // ...one more is closed at once...
    let mut extra = UnixStream::connect(&guest_sock).await.unwrap();
    assert!(closed_by_relay(&mut extra, Duration::from_secs(1)).await, "a connection over the pending limit");
    // ...and the silent ones are closed after HELLO_TIMEOUT.
    let started = Instant::now();
    for s in squatters.iter_mut() {
        assert!(closed_by_relay(s, stream::HELLO_TIMEOUT * 3).await, "a silent connection was kept");
    }
    assert!(started.elapsed() >= stream::HELLO_TIMEOUT / 2, "closed before their time: {:?}", started.elapsed());
    // The collector then gets in and is served.
    let mut collector = UnixStream::connect(&guest_sock).await.unwrap();
    collector.write_all(&hello(relay.token())).await.unwrap();
    collector.write_all(&open_event(1, "c1", "/collector")).await.unwrap();
    wait_for("the collector's event", || read_frames(&frames).iter().any(|m| m.event.path == "/collector")).await;
    // While it streams, a connection without the token is refused and takes nothing over:
    // the collector's next event still arrives, the impostor's never does.
    let mut impostor = UnixStream::connect(&guest_sock).await.unwrap();
    impostor.write_all(&hello(&relay.token()[..31])).await.unwrap();
    impostor.write_all(&open_event(66, "c1", "/impostor")).await.unwrap();
    assert!(closed_by_relay(&mut impostor, Duration::from_secs(5)).await, "the impostor was kept");
    collector.write_all(&open_event(2, "c1", "/collector-2")).await.unwrap();
    wait_for("the collector's second event", || read_frames(&frames).iter().any(|m| m.event.path == "/collector-2"))
        .await;
    assert!(read_frames(&frames).iter().all(|m| m.event.pid != 66), "an impostor's event was relayed");
    relay.stop();
}

#[tokio::test]
async fn a_reconnected_collector_replaces_its_older_stream() {
    let (dir, guest_sock, _identity, mut relay) =
        setup("relay-reconnect", config::Telemetry { node_socket: PathBuf::new(), ..Default::default() });
    let frames = dir.0.join("telemetry.frames");
    let mut old = UnixStream::connect(&guest_sock).await.unwrap();
    old.write_all(&hello(relay.token())).await.unwrap();
    old.write_all(&open_event(1, "c1", "/old")).await.unwrap();
    wait_for("the first stream's event", || read_frames(&frames).iter().any(|m| m.event.path == "/old")).await;
    // The collector's connection broke on its side without the host noticing: it connects
    // again, and what it sends in the same write as its Hello is not lost.
    let mut new = UnixStream::connect(&guest_sock).await.unwrap();
    let mut both = hello(relay.token());
    both.extend(open_event(2, "c1", "/new"));
    new.write_all(&both).await.unwrap();
    wait_for("the new stream's event", || read_frames(&frames).iter().any(|m| m.event.path == "/new")).await;
    assert!(closed_by_relay(&mut old, Duration::from_secs(5)).await, "the older stream was kept open");
    relay.stop();
}
