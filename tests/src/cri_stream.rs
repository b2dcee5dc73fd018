//! A minimal client for the CRI streaming server (containerd's, built on kubelet's streaming
//! library) speaking the websocket channel protocol `v4.channel.k8s.io`: every binary message
//! starts with a channel byte (0 stdin, 1 stdout, 2 stderr, 3 error/status JSON, 4 resize
//! JSON `{"Width":w,"Height":h}`). Enough for interactive exec with a TTY and a resize, and for
//! attach with stdin. Every wait is bounded.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The subprotocol asked for (supported by containerd 1.6 and 2.x).
pub const PROTOCOL: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

/// Everything received so far.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub stdout: String,
    pub stderr: String,
    /// The status JSON sent on the error channel when the process ended (v4: a metav1.Status).
    pub status: String,
    /// The server closed the stream.
    pub closed: bool,
}

impl Received {
    /// The exit code the status reports: 0 for `"status":"Success"`, the `ExitCode` cause for
    /// a non-zero exit, None before the end or when the status cannot be read.
    pub fn exit_code(&self) -> Option<i32> {
        let v: serde_json::Value = serde_json::from_str(&self.status).ok()?;
        if v.get("status").and_then(|s| s.as_str()) == Some("Success") {
            return Some(0);
        }
        v.pointer("/details/causes")?
            .as_array()?
            .iter()
            .find(|c| c.get("reason").and_then(|r| r.as_str()) == Some("ExitCode"))?
            .get("message")?
            .as_str()?
            .parse()
            .ok()
    }
}

/// One open streaming session (an exec or an attach).
pub struct Session {
    rt: tokio::runtime::Handle,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub received: Received,
}

impl Session {
    /// Opens the streaming URL CRI Exec/Attach returned (http://host:port/exec/<token>).
    pub fn open(rt: &tokio::runtime::Runtime, url: &str) -> Result<Session, String> {
        let ws_url = url
            .strip_prefix("http://")
            .map(|rest| format!("ws://{rest}"))
            .ok_or_else(|| format!("streaming URL {url:?} is not http:// (TLS streaming is not used by the tests)"))?;
        let mut request =
            ws_url.as_str().into_client_request().map_err(|e| format!("websocket request for {ws_url}: {e}"))?;
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
        let ws = rt.block_on(async {
            let (ws, response) =
                tokio::time::timeout(Duration::from_secs(30), tokio_tungstenite::connect_async(request))
                    .await
                    .map_err(|_| format!("websocket handshake with {ws_url} timed out"))?
                    .map_err(|e| format!("websocket handshake with {ws_url}: {e}"))?;
            let proto = response.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).unwrap_or("");
            if proto != PROTOCOL {
                return Err(format!("streaming server chose subprotocol {proto:?}, expected {PROTOCOL}"));
            }
            Ok(ws)
        })?;
        Ok(Session { rt: rt.handle().clone(), ws, received: Received::default() })
    }

    fn send(&mut self, channel: u8, data: &[u8]) -> Result<(), String> {
        let mut frame = Vec::with_capacity(data.len() + 1);
        frame.push(channel);
        frame.extend_from_slice(data);
        let ws = &mut self.ws;
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), ws.send(Message::binary(frame)))
                .await
                .map_err(|_| format!("sending on channel {channel} timed out"))?
                .map_err(|e| format!("sending on channel {channel}: {e}"))
        })
    }

    /// Writes `data` to the process's stdin.
    pub fn stdin(&mut self, data: &str) -> Result<(), String> {
        self.send(STDIN, data.as_bytes())
    }

    /// Sends a terminal resize.
    pub fn resize(&mut self, width: u16, height: u16) -> Result<(), String> {
        self.send(RESIZE, format!("{{\"Width\":{width},\"Height\":{height}}}").as_bytes())
    }

    /// Reads until `done` holds for what was received, the stream ends, or `limit` passes
    /// (an error naming `what` and showing what came so far).
    pub fn read_until(
        &mut self,
        what: &str,
        limit: Duration,
        done: impl Fn(&Received) -> bool,
    ) -> Result<&Received, String> {
        let start = Instant::now();
        while !done(&self.received) {
            if self.received.closed {
                return Err(format!("stream closed before {what}; received {:?}", self.received));
            }
            let left = limit.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(format!("no {what} within {limit:?}; received {:?}", self.received));
            }
            let ws = &mut self.ws;
            let next = self.rt.block_on(async { tokio::time::timeout(left, ws.next()).await });
            match next {
                Err(_) => continue,
                Ok(None) => self.received.closed = true,
                Ok(Some(Err(e))) => {
                    self.received.closed = true;
                    self.received.status.push_str(&format!("[websocket error: {e}]"));
                }
                Ok(Some(Ok(msg))) => self.take(msg),
            }
        }
        Ok(&self.received)
    }

    fn take(&mut self, msg: Message) {
        match msg {
            Message::Binary(data) => {
                let Some((&channel, payload)) = data.split_first() else { return };
                let text = String::from_utf8_lossy(payload);
                match channel {
                    STDOUT => self.received.stdout.push_str(&text),
                    STDERR => self.received.stderr.push_str(&text),
                    ERROR => self.received.status.push_str(&text),
                    _ => {}
                }
            }
            Message::Close(_) => self.received.closed = true,
            _ => {}
        }
    }

    /// Reads until the process's status arrives or the stream closes.
    pub fn wait_end(&mut self, limit: Duration) -> Result<&Received, String> {
        self.read_until("the end of the stream", limit, |r| !r.status.is_empty() || r.closed)
    }

    /// Closes the websocket (bounded).
    pub fn close(mut self) {
        let ws = &mut self.ws;
        let _ = self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_read_from_the_v4_status() {
        let ok = Received { status: r#"{"metadata":{},"status":"Success"}"#.into(), ..Default::default() };
        assert_eq!(ok.exit_code(), Some(0));
        let failed = Received {
            status: r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#.into(),
            ..Default::default()
        };
        assert_eq!(failed.exit_code(), Some(3));
        assert_eq!(Received::default().exit_code(), None);
    }
}
