//! The syscall telemetry stream (`proto/telemetry.proto`): its messages, its framing and the
//! bounded decoder every reader uses.
//!
//! A frame is a `u32` big-endian length followed by that many bytes of one protobuf message,
//! at most [`MAX_TELEMETRY_FRAME`] bytes. The guest's collector sends [`GuestFrame`]s on the
//! hybrid-vsock port [`crate::TELEMETRY_PORT`] (first a [`Hello`] with [`TELEMETRY_VERSION`]);
//! the shim sends [`Enriched`] frames to the node socket served by the Falco plugin.
//!
//! Both readers treat the stream as hostile: [`FrameDecoder`] refuses a declared length over
//! the cap before reading or allocating anything for it (the stream cannot be resynced, so the
//! reader ends it), and [`decode_guest_frame`] / [`decode_enriched`] refuse messages that do
//! not parse or break the per-field limits of [`crate::limits`] (such a frame is counted and
//! skipped: framing is intact).

use protobuf::{Enum, Message};

use crate::limits::{
    MAX_ARGV_BYTES, MAX_ARGV_ENTRIES, MAX_TELEMETRY_FRAME, MAX_TELEMETRY_IMAGE, MAX_TELEMETRY_NAME, MAX_TELEMETRY_PATH,
};

generated! {
    /// The telemetry messages (generated from `proto/telemetry.proto`).
    pub mod messages {
        include!(concat!(env!("OUT_DIR"), "/telemetry.rs"));
    }
}

pub use messages::guest_frame::Kind as GuestFrameKind;
pub use messages::{Drops, Enriched, Event, EventType, FdType, GuestFrame, Hello, L4Proto, SocketFamily, SocketTuple};

/// Incompatible changes to `telemetry.proto` or to the framing bump this.
pub const TELEMETRY_VERSION: u32 = 1;

/// Length of a frame's header (the big-endian `u32` length).
pub const FRAME_HEADER: usize = 4;

/// Why a stream of frames cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The peer declared a frame larger than the cap: the stream is dropped.
    #[error("telemetry frame of {len} bytes refused (at most {max})")]
    Oversize { len: usize, max: usize },
    /// The stream ended inside a frame.
    #[error("telemetry stream ended inside a frame ({have} of {want} bytes)")]
    Truncated { have: usize, want: usize },
    /// The decoder already refused this stream.
    #[error("telemetry stream already refused")]
    Refused,
}

/// Why one frame's message was refused (the stream itself can go on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("telemetry message does not parse: {0}")]
    Parse(String),
    #[error("telemetry message breaks a limit: {0}")]
    Limit(&'static str),
    #[error("telemetry message has no content")]
    Empty,
    #[error("telemetry message of {len} bytes is over the frame limit")]
    TooLarge { len: usize },
}

/// Splits a byte stream into frames (pure: no I/O). Never holds more than one frame, and never
/// allocates more than the declared length of the frame being read, which is at most `max`.
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    header: [u8; FRAME_HEADER],
    header_len: usize,
    body_len: Option<usize>,
    body: Vec<u8>,
    refused: bool,
}

impl FrameDecoder {
    /// A decoder refusing frames over `max` bytes (capped at [`MAX_TELEMETRY_FRAME`]).
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            max: max.min(MAX_TELEMETRY_FRAME),
            header: [0; FRAME_HEADER],
            header_len: 0,
            body_len: None,
            body: Vec::new(),
            refused: false,
        }
    }

    /// Takes bytes from the front of `input` until one frame is complete (returned, `input`
    /// advanced past it) or `input` is used up (`Ok(None)`). Call again with the rest.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        if self.refused {
            return Err(FrameError::Refused);
        }
        if self.body_len.is_none() {
            let take = (FRAME_HEADER - self.header_len).min(input.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&input[..take]);
            self.header_len += take;
            *input = &input[take..];
            if self.header_len < FRAME_HEADER {
                return Ok(None);
            }
            let len = u32::from_be_bytes(self.header) as usize;
            if len > self.max {
                self.refused = true;
                return Err(FrameError::Oversize { len, max: self.max });
            }
            self.body_len = Some(len);
            self.body = Vec::new();
        }
        let want = self.body_len.unwrap_or(0);
        let take = (want - self.body.len()).min(input.len());
        if take > 0 {
            let need = self.body.len() + take;
            if self.body.capacity() < need {
                // Grow geometrically but never past the declared length (<= max).
                let target = (need.saturating_mul(2)).min(want).max(need);
                self.body.reserve_exact(target - self.body.len());
            }
            self.body.extend_from_slice(&input[..take]);
            *input = &input[take..];
        }
        if self.body.len() < want {
            return Ok(None);
        }
        self.header_len = 0;
        self.body_len = None;
        Ok(Some(std::mem::take(&mut self.body)))
    }

    /// At the end of the stream: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.refused {
            return Err(FrameError::Refused);
        }
        match self.body_len {
            Some(want) => {
                Err(FrameError::Truncated { have: FRAME_HEADER + self.body.len(), want: FRAME_HEADER + want })
            }
            None if self.header_len > 0 => Err(FrameError::Truncated { have: self.header_len, want: FRAME_HEADER }),
            None => Ok(()),
        }
    }

    /// Bytes held for the frame being read (header and body).
    pub fn buffered(&self) -> usize {
        self.header_len + self.body.capacity()
    }
}

/// The name of a Linux errno (x86_64 numbers) a syscall result may carry, for the ones
/// telemetry readers show by name; `None` for others. Pass the errno itself (a positive
/// number: negate a negative result with `saturating_neg`, results come from the guest).
pub fn errno_name(errno: i64) -> Option<&'static str> {
    Some(match errno {
        1 => "EPERM",
        2 => "ENOENT",
        3 => "ESRCH",
        4 => "EINTR",
        5 => "EIO",
        9 => "EBADF",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        20 => "ENOTDIR",
        21 => "EISDIR",
        22 => "EINVAL",
        24 => "EMFILE",
        28 => "ENOSPC",
        30 => "EROFS",
        38 => "ENOSYS",
        95 => "EOPNOTSUPP",
        97 => "EAFNOSUPPORT",
        101 => "ENETUNREACH",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        113 => "EHOSTUNREACH",
        115 => "EINPROGRESS",
        _ => return None,
    })
}

/// The lower-case name of an event type as configured (`"execve"`, `"openat"`, ...); `None`
/// for the unspecified value.
pub fn event_type_name(t: EventType) -> Option<String> {
    (t != EventType::EVENT_TYPE_UNSPECIFIED).then(|| format!("{t:?}").to_ascii_lowercase())
}

/// The event type a configured lower-case name stands for (`None`: no such type).
pub fn event_type_by_name(name: &str) -> Option<EventType> {
    EventType::VALUES.iter().copied().find(|t| event_type_name(*t).as_deref() == Some(name))
}

/// Every configurable event type name, in the protocol's order.
pub fn event_type_names() -> Vec<String> {
    EventType::VALUES.iter().filter_map(|t| event_type_name(*t)).collect()
}

/// One message as a frame (length + bytes); refuses a message over [`MAX_TELEMETRY_FRAME`].
pub fn encode_frame(msg: &impl Message) -> Result<Vec<u8>, MessageError> {
    let body = msg.write_to_bytes().map_err(|e| MessageError::Parse(e.to_string()))?;
    if body.len() > MAX_TELEMETRY_FRAME {
        return Err(MessageError::TooLarge { len: body.len() });
    }
    let mut out = Vec::with_capacity(FRAME_HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// A frame from the guest, parsed and checked against the limits.
pub fn decode_guest_frame(frame: &[u8]) -> Result<GuestFrame, MessageError> {
    let msg = GuestFrame::parse_from_bytes(frame).map_err(|e| MessageError::Parse(e.to_string()))?;
    match &msg.kind {
        None => return Err(MessageError::Empty),
        Some(GuestFrameKind::Event(e)) => check_event(e)?,
        Some(GuestFrameKind::Hello(h)) => check_len(&h.sandbox_id, MAX_TELEMETRY_NAME, "hello sandbox id")?,
        Some(GuestFrameKind::Drops(_)) => {}
    }
    Ok(msg)
}

/// A frame from the shim (node socket), parsed and checked against the limits.
pub fn decode_enriched(frame: &[u8]) -> Result<Enriched, MessageError> {
    let msg = Enriched::parse_from_bytes(frame).map_err(|e| MessageError::Parse(e.to_string()))?;
    check_enriched(&msg)?;
    Ok(msg)
}

fn check_len(s: &str, max: usize, what: &'static str) -> Result<(), MessageError> {
    if s.len() > max {
        return Err(MessageError::Limit(what));
    }
    Ok(())
}

/// The per-field limits of one event.
pub fn check_event(e: &Event) -> Result<(), MessageError> {
    if e.argv.len() > MAX_ARGV_ENTRIES {
        return Err(MessageError::Limit("argv entries"));
    }
    if e.argv.iter().map(|a| a.len()).sum::<usize>() > MAX_ARGV_BYTES {
        return Err(MessageError::Limit("argv bytes"));
    }
    for (s, what) in [(&e.cwd, "cwd"), (&e.exe_path, "exe path"), (&e.path, "path"), (&e.path2, "path2")] {
        check_len(s, MAX_TELEMETRY_PATH, what)?;
    }
    if let Some(sock) = e.socket.as_ref() {
        check_len(&sock.unix_path, MAX_TELEMETRY_PATH, "unix socket path")?;
        for a in [&sock.local_addr, &sock.remote_addr] {
            if !matches!(a.len(), 0 | 4 | 16) {
                return Err(MessageError::Limit("socket address length"));
            }
        }
        if sock.local_port > u16::MAX as u32 || sock.remote_port > u16::MAX as u32 {
            return Err(MessageError::Limit("socket port"));
        }
    }
    for (s, what) in
        [(&e.comm, "comm"), (&e.user_name, "user name"), (&e.name, "name"), (&e.container_id, "container id")]
    {
        check_len(s, MAX_TELEMETRY_NAME, what)?;
    }
    Ok(())
}

/// The limits of one enriched event (its event's, and the pod identity's).
pub fn check_enriched(m: &Enriched) -> Result<(), MessageError> {
    match m.event.as_ref() {
        Some(e) => check_event(e)?,
        None => return Err(MessageError::Empty),
    }
    for (s, what) in [
        (&m.node_name, "node name"),
        (&m.pod_name, "pod name"),
        (&m.pod_namespace, "pod namespace"),
        (&m.pod_uid, "pod uid"),
        (&m.container_id, "container id"),
        (&m.container_name, "container name"),
        (&m.sandbox_id, "sandbox id"),
    ] {
        check_len(s, MAX_TELEMETRY_NAME, what)?;
    }
    check_len(&m.image, MAX_TELEMETRY_IMAGE, "image")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        let mut e = Event::new();
        e.type_ = EventType::EXECVE.into();
        e.pid = 42;
        e.comm = "bash".into();
        e.argv = vec!["bash".into(), "-i".into()];
        e
    }

    fn frame_of(e: Event) -> Vec<u8> {
        let mut g = GuestFrame::new();
        g.set_event(e);
        encode_frame(&g).unwrap()
    }

    #[test]
    fn event_type_names_round_trip() {
        assert_eq!(event_type_by_name("execve"), Some(EventType::EXECVE));
        assert_eq!(event_type_by_name("finit_module"), Some(EventType::FINIT_MODULE));
        for bad in ["EXECVE", "", "event_type_unspecified", "exec ve", "nosuch"] {
            assert_eq!(event_type_by_name(bad), None, "{bad}");
        }
        let names = event_type_names();
        assert_eq!(names.len(), EventType::VALUES.len() - 1);
        assert!(names.iter().all(|n| event_type_by_name(n).is_some()));
    }

    #[test]
    fn frames_round_trip_split_anywhere() {
        let mut stream = frame_of(event());
        let mut h = GuestFrame::new();
        h.set_hello(Hello { version: TELEMETRY_VERSION, sandbox_id: "sb1".into(), ..Default::default() });
        stream.extend(encode_frame(&h).unwrap());
        for split in 0..stream.len() {
            let mut d = FrameDecoder::new(MAX_TELEMETRY_FRAME);
            let mut frames = Vec::new();
            for mut part in [&stream[..split], &stream[split..]] {
                while let Some(f) = d.decode(&mut part).unwrap() {
                    frames.push(f);
                }
                assert!(part.is_empty());
            }
            d.finish().unwrap();
            assert_eq!(frames.len(), 2, "split at {split}");
            let GuestFrame { kind: Some(GuestFrameKind::Event(e)), .. } = decode_guest_frame(&frames[0]).unwrap()
            else {
                panic!("not an event")
            };
            assert_eq!(e, event());
            assert!(matches!(decode_guest_frame(&frames[1]).unwrap().kind, Some(GuestFrameKind::Hello(_))));
        }
    }

    #[test]
    fn truncated_streams_are_reported() {
        let stream = frame_of(event());
        for cut in 1..stream.len() {
            let mut d = FrameDecoder::new(MAX_TELEMETRY_FRAME);
            let mut part = &stream[..cut];
            assert_eq!(d.decode(&mut part).unwrap(), None);
            assert!(matches!(d.finish(), Err(FrameError::Truncated { .. })), "cut at {cut}");
        }
        assert_eq!(FrameDecoder::new(16).finish(), Ok(()));
    }

    #[test]
    fn oversize_frames_are_refused_before_any_allocation() {
        let mut d = FrameDecoder::new(1024);
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        assert_eq!(d.decode(&mut input), Err(FrameError::Oversize { len: u32::MAX as usize, max: 1024 }));
        assert_eq!(d.buffered(), FRAME_HEADER);
        assert_eq!(d.decode(&mut input), Err(FrameError::Refused));
        // The cap itself is capped.
        let mut d = FrameDecoder::new(usize::MAX);
        let mut input: &[u8] = &((MAX_TELEMETRY_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(d.decode(&mut input), Err(FrameError::Oversize { .. })));
        // A frame exactly at the cap is fine, and the buffer never exceeds its declared length.
        let mut d = FrameDecoder::new(1024);
        let mut stream = 1024u32.to_be_bytes().to_vec();
        stream.extend(vec![7u8; 1024]);
        let mut got = None;
        for chunk in stream.chunks(3) {
            let mut c = chunk;
            while let Some(f) = d.decode(&mut c).unwrap() {
                got = Some(f);
            }
            assert!(d.buffered() <= FRAME_HEADER + 1024);
        }
        assert_eq!(got.map(|f| f.len()), Some(1024));
    }

    #[test]
    fn garbage_messages_are_refused_and_framing_goes_on() {
        for garbage in [&b"\xff\xff\xff"[..], b"\x12\x05ab", b"", b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80"] {
            assert!(decode_guest_frame(garbage).is_err(), "{garbage:?}");
            assert!(decode_enriched(garbage).is_err(), "{garbage:?}");
        }
        // Invalid UTF-8 in a string field.
        let mut e = event();
        e.comm = "x".into();
        let mut bytes = frame_of(e)[FRAME_HEADER..].to_vec();
        let pos = bytes.iter().position(|&b| b == b'x').unwrap();
        bytes[pos] = 0xff;
        assert!(matches!(decode_guest_frame(&bytes), Err(MessageError::Parse(_))));
    }

    #[test]
    fn limits_are_enforced() {
        let mut e = event();
        e.argv = vec!["a".into(); MAX_ARGV_ENTRIES + 1];
        assert_eq!(check_event(&e), Err(MessageError::Limit("argv entries")));
        e.argv = vec!["a".repeat(MAX_ARGV_BYTES / 2 + 1); 2];
        assert_eq!(check_event(&e), Err(MessageError::Limit("argv bytes")));
        let mut e = event();
        e.path = "/".repeat(MAX_TELEMETRY_PATH + 1);
        assert_eq!(check_event(&e), Err(MessageError::Limit("path")));
        let mut e = event();
        e.socket.mut_or_insert_default().remote_addr = vec![1, 2, 3];
        assert_eq!(check_event(&e), Err(MessageError::Limit("socket address length")));
        let mut m = Enriched::new();
        assert_eq!(check_enriched(&m), Err(MessageError::Empty));
        m.event = Some(event()).into();
        m.image = "i".repeat(MAX_TELEMETRY_IMAGE + 1);
        assert_eq!(check_enriched(&m), Err(MessageError::Limit("image")));
        m.image = "nginx:1".into();
        let bytes = m.write_to_bytes().unwrap();
        assert_eq!(decode_enriched(&bytes).unwrap(), m);
    }

    #[test]
    fn the_largest_legal_event_fits_a_frame() {
        let mut m = Enriched::new();
        let mut e = event();
        e.argv = vec!["a".repeat(MAX_ARGV_BYTES / MAX_ARGV_ENTRIES); MAX_ARGV_ENTRIES];
        for p in [&mut e.cwd, &mut e.exe_path, &mut e.path, &mut e.path2] {
            *p = "p".repeat(MAX_TELEMETRY_PATH);
        }
        e.socket.mut_or_insert_default().unix_path = "u".repeat(MAX_TELEMETRY_PATH);
        for s in [&mut e.comm, &mut e.user_name, &mut e.name, &mut e.container_id] {
            *s = "n".repeat(MAX_TELEMETRY_NAME);
        }
        m.event = Some(e).into();
        for s in [
            &mut m.node_name,
            &mut m.pod_name,
            &mut m.pod_namespace,
            &mut m.pod_uid,
            &mut m.container_id,
            &mut m.container_name,
            &mut m.sandbox_id,
        ] {
            *s = "n".repeat(MAX_TELEMETRY_NAME);
        }
        m.image = "i".repeat(MAX_TELEMETRY_IMAGE);
        check_enriched(&m).unwrap();
        encode_frame(&m).unwrap();
    }
}
