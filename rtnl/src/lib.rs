//! A blocking rtnetlink socket: one request at a time, acknowledged (`request`) or dumped
//! (`dump`). Shared by the shim (tap and tc plumbing inside the pod's network namespace) and
//! the guest agent (the VM's NIC setup).
//!
//! The socket belongs to the network namespace of the thread that opened it: the shim opens
//! it inside the pod netns and drops it before that thread ends (an open socket keeps its
//! namespace alive).

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Receive buffer; the kernel sends dump parts of at most ~32 KiB.
const RECV_BUF: usize = 64 * 1024;
/// Upper bound on the messages of one dump (a pod netns has a handful of links and routes).
const MAX_DUMP_MESSAGES: usize = 10_000;

/// One rtnetlink socket.
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { sock, seq: 0, buf: vec![0; RECV_BUF] })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut out = vec![0; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock.send(&out, 0)?;
        Ok(self.seq)
    }

    /// Reads replies to `seq`, handing each inner message to `each`, until the ACK (or DONE
    /// for dumps). A kernel error becomes an `io::Error` with its errno.
    fn receive(&mut self, seq: u32, mut each: impl FnMut(RouteNetlinkMessage)) -> io::Result<()> {
        let mut count = 0usize;
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0usize;
            while off < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad netlink reply: {e}")))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "netlink reply of length 0"));
                }
                // Messages are 4-byte aligned inside one datagram.
                off += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue;
                }
                let multipart = msg.header.flags & NLM_F_MULTIPART != 0;
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(_) => Err(e.to_io()),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::InnerMessage(m) => {
                        count += 1;
                        if count > MAX_DUMP_MESSAGES {
                            return Err(io::Error::other(format!(
                                "netlink dump longer than {MAX_DUMP_MESSAGES} messages"
                            )));
                        }
                        each(m);
                        if !multipart {
                            return Ok(());
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends a request that changes something (`extra_flags`: NLM_F_CREATE, NLM_F_EXCL, ...)
    /// and waits for the kernel's acknowledgement.
    pub fn request(&mut self, msg: RouteNetlinkMessage, extra_flags: u16) -> io::Result<()> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | extra_flags)?;
        self.receive(seq, |_| {})
    }

    /// Sends a dump request (RTM_GET*) and collects the replies.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut out = Vec::new();
        self.receive(seq, |m| out.push(m))?;
        Ok(out)
    }
}

/// Longest interface name the kernel accepts, without the trailing NUL (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Whether `name` is usable as a Linux interface name: 1..15 bytes, printable, no '/', ':'
/// or whitespace, not "." or ".." (pure).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

#[cfg(test)]
mod tests {
    use super::valid_ifname;

    #[test]
    fn interface_names() {
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("tap0_bwk"));
        assert!(valid_ifname(&"a".repeat(15)));
        assert!(!valid_ifname(&"a".repeat(16)));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname(".."));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname("eth0:1"));
    }
}
