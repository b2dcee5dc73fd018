//! The tenant's network bandwidth ceiling, as token bucket (tbf) qdiscs in the pod netns:
//!   tc qdisc add dev <tap> root handle b17: tbf rate <R> burst <B> limit <L>   (to the VM)
//!   tc qdisc add dev <cni> root handle b17: tbf rate <R> burst <B> limit <L>   (from the VM)
//! Traffic to the VM arrives on the CNI interface and is redirected (tc.rs) to the tap's
//! egress, so the tap's root qdisc shapes it; traffic from the VM is redirected to the CNI
//! interface's egress, shaped by that interface's root qdisc. Shaping (a queue, then drops)
//! rather than policing keeps TCP well-behaved. The handle `b17:` marks the qdiscs as
//! Bulwark's: teardown removes a root qdisc only when it carries it.
//!
//! The netlink crate has no tbf types, so the options (`struct tc_tbf_qopt` and the burst)
//! are encoded here by pure functions, unit tested against the kernel's layout.

use std::io;

use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
use netlink_packet_route::RouteNetlinkMessage;

use bulwark_rtnl::Netlink;

/// The major number of Bulwark's root qdiscs (`b17:`).
pub const HANDLE_MAJOR: u16 = 0x0b17;
/// TCA_TBF_PARMS, TCA_TBF_RATE64 and TCA_TBF_BURST (linux/pkt_sched.h).
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
/// TC_LINKLAYER_ETHERNET: the kernel computes packet times itself (no rate table needed).
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// Packet scheduler ticks are 64 ns (PSCHED_SHIFT = 6).
const PSCHED_SHIFT: u32 = 6;
/// Smallest burst: one 64 KiB GSO packet from virtio-net passes whole (tbf would have to cut
/// larger packets into segments).
const MIN_BURST: u64 = 64 * 1024;
/// Most queueing delay at the full rate before packets are dropped.
const QUEUE_MILLIS: u64 = 50;

/// A token bucket: the rate, the burst the bucket holds and the queue behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub bytes_per_sec: u64,
    pub burst_bytes: u32,
    pub limit_bytes: u32,
}

impl RateLimit {
    /// The limit for a ceiling of `mbit` Mbit/s (10^6 bits) in each direction: a burst of
    /// 20 ms at the rate (at least 64 KiB), a queue of 50 ms more (pure).
    pub fn from_mbit(mbit: u32) -> RateLimit {
        let bytes_per_sec = u64::from(mbit) * 1_000_000 / 8;
        let burst = (bytes_per_sec / 50).max(MIN_BURST);
        let limit = burst + bytes_per_sec * QUEUE_MILLIS / 1000;
        let cap = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        RateLimit { bytes_per_sec, burst_bytes: cap(burst), limit_bytes: cap(limit) }
    }

    /// The bucket's size as scheduler ticks (the kernel's `buffer`: burst / rate) (pure).
    fn buffer_ticks(&self) -> u32 {
        let ns = u128::from(self.burst_bytes) * 1_000_000_000 / u128::from(self.bytes_per_sec.max(1));
        u32::try_from(ns >> PSCHED_SHIFT).unwrap_or(u32::MAX)
    }
}

/// `struct tc_ratespec` (12 bytes): cell_log, linklayer, overhead, cell_align, mpu, rate.
fn ratespec(bytes_per_sec: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.push(0); // cell_log
    b.push(TC_LINKLAYER_ETHERNET);
    b.extend_from_slice(&0u16.to_ne_bytes()); // overhead
    b.extend_from_slice(&0i16.to_ne_bytes()); // cell_align
    b.extend_from_slice(&0u16.to_ne_bytes()); // mpu
    b.extend_from_slice(&bytes_per_sec.to_ne_bytes());
    b
}

/// `struct tc_tbf_qopt` (36 bytes): rate, peakrate (none), limit, buffer, mtu (pure).
pub fn tbf_qopt(r: &RateLimit) -> Vec<u8> {
    let mut b = ratespec(u32::try_from(r.bytes_per_sec).unwrap_or(u32::MAX));
    b.extend_from_slice(&[0u8; 12]); // peakrate: none
    b.extend_from_slice(&r.limit_bytes.to_ne_bytes());
    b.extend_from_slice(&r.buffer_ticks().to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // mtu: only used with a peak rate
    b
}

/// `tc qdisc add dev <ifindex> root handle b17: tbf ...` (pure).
pub fn tbf_qdisc(ifindex: u32, r: &RateLimit) -> TcMessage {
    let mut m = root_qdisc(ifindex);
    m.attributes.push(TcAttribute::Kind("tbf".into()));
    let mut opts = vec![
        TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, tbf_qopt(r))),
        TcOption::Other(DefaultNla::new(TCA_TBF_BURST, r.burst_bytes.to_ne_bytes().to_vec())),
    ];
    if r.bytes_per_sec > u64::from(u32::MAX) {
        opts.push(TcOption::Other(DefaultNla::new(TCA_TBF_RATE64, r.bytes_per_sec.to_ne_bytes().to_vec())));
    }
    m.attributes.push(TcAttribute::Options(opts));
    m
}

/// The root qdisc of `ifindex` with Bulwark's handle, without kind or options (pure).
fn root_qdisc(ifindex: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = ifindex as i32;
    m.header.handle = TcHandle { major: HANDLE_MAJOR, minor: 0 };
    m.header.parent = TcHandle::ROOT;
    m
}

/// Puts the limit on `ifindex`'s egress. Fails if the interface has a root qdisc of its own
/// already (the ceiling is not silently skipped).
pub fn limit(nl: &mut Netlink, ifindex: u32, r: &RateLimit) -> io::Result<()> {
    nl.request(RouteNetlinkMessage::NewQueueDiscipline(tbf_qdisc(ifindex, r)), NLM_F_CREATE | NLM_F_EXCL).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EEXIST) {
            " (the interface already has a root qdisc that is not Bulwark's)"
        } else {
            ""
        };
        io::Error::new(e.kind(), format!("adding the bandwidth limit (tbf) to interface {ifindex}: {e}{hint}"))
    })
}

/// Removes Bulwark's root qdisc of `ifindex` (the interface's default comes back). Another
/// root qdisc (another handle: the kernel answers EINVAL), none, or no interface is not an
/// error: there is nothing of ours to remove.
pub fn unlimit(nl: &mut Netlink, ifindex: u32) -> io::Result<()> {
    match nl.request(RouteNetlinkMessage::DelQueueDiscipline(root_qdisc(ifindex)), 0) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::EINVAL)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, Nla};

    #[test]
    fn rates_bursts_and_queues_from_mbit() {
        let r = RateLimit::from_mbit(10);
        assert_eq!(r.bytes_per_sec, 1_250_000);
        assert_eq!(r.burst_bytes, 64 * 1024, "20 ms of 10 Mbit/s is 25 kB: the 64 KiB floor applies");
        assert_eq!(r.limit_bytes, 64 * 1024 + 62_500, "the burst plus 50 ms at the rate");
        let r = RateLimit::from_mbit(1000);
        assert_eq!((r.bytes_per_sec, r.burst_bytes), (125_000_000, 2_500_000));
        assert_eq!(r.limit_bytes, 2_500_000 + 6_250_000);
        let r = RateLimit::from_mbit(100_000);
        assert_eq!(r.bytes_per_sec, 12_500_000_000, "above u32: carried by TCA_TBF_RATE64");
        assert_eq!((r.burst_bytes, r.limit_bytes), (250_000_000, 875_000_000), "still within u32");
    }

    #[test]
    fn the_bucket_in_ticks() {
        // 64 KiB at 1.25 MB/s is 52.4288 ms = 819_200 ticks of 64 ns.
        assert_eq!(RateLimit::from_mbit(10).buffer_ticks(), 819_200);
    }

    #[test]
    fn qopt_layout_is_the_kernels() {
        let r = RateLimit { bytes_per_sec: 1_250_000, burst_bytes: 65_536, limit_bytes: 128_036 };
        let b = tbf_qopt(&r);
        assert_eq!(b.len(), 36, "sizeof(struct tc_tbf_qopt)");
        assert_eq!(b[1], TC_LINKLAYER_ETHERNET);
        assert_eq!(b[8..12], 1_250_000u32.to_ne_bytes(), "rate.rate");
        assert!(b[12..24].iter().all(|x| *x == 0), "no peak rate");
        assert_eq!(b[24..28], 128_036u32.to_ne_bytes(), "limit");
        assert_eq!(b[28..32], 819_200u32.to_ne_bytes(), "buffer");
        assert_eq!(b[32..36], [0; 4], "mtu");
        let fast = tbf_qopt(&RateLimit::from_mbit(100_000));
        assert_eq!(fast[8..12], u32::MAX.to_ne_bytes(), "the 32-bit rate saturates; RATE64 has the real one");
    }

    #[test]
    fn the_qdisc_message() {
        let r = RateLimit::from_mbit(10);
        let m = tbf_qdisc(7, &r);
        assert_eq!(m.header.index, 7);
        assert_eq!(u32::from(m.header.handle), 0x0b17_0000);
        assert_eq!(u32::from(m.header.parent), 0xffff_ffff, "TC_H_ROOT");
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        assert!(buf.windows(4).any(|w| w == b"tbf\0"), "kind tbf");
        // TCA_OPTIONS nests TCA_TBF_PARMS (40 bytes: 4 of header, 36 of qopt) and
        // TCA_TBF_BURST (8 bytes: the burst as u32).
        let parms: Vec<u8> = [40u16.to_ne_bytes(), TCA_TBF_PARMS.to_ne_bytes()].concat();
        let pos = buf.windows(4).position(|w| w == parms.as_slice()).expect("TCA_TBF_PARMS");
        assert_eq!(buf[pos + 4..pos + 40], tbf_qopt(&r)[..]);
        let burst: Vec<u8> =
            [8u16.to_ne_bytes().to_vec(), TCA_TBF_BURST.to_ne_bytes().to_vec(), 65_536u32.to_ne_bytes().to_vec()]
                .concat();
        assert!(buf.windows(8).any(|w| w == burst.as_slice()), "TCA_TBF_BURST");
        assert!(!tbf_qdisc(7, &r).attributes.iter().any(|a| matches!(a, TcAttribute::Options(o) if o.len() > 2)));
        let fast = tbf_qdisc(7, &RateLimit::from_mbit(100_000));
        let has_rate64 = fast.attributes.iter().any(|a| matches!(a, TcAttribute::Options(o) if o.len() == 3));
        assert!(has_rate64, "TCA_TBF_RATE64 above 4 GB/s");
    }

    /// Bulwark's root qdiscs of `ifindex` as (kind, rate in bytes/s) from a netlink dump.
    fn our_qdiscs(nl: &mut Netlink, ifindex: u32) -> Vec<(String, u32)> {
        let dump = nl.dump(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default())).expect("qdisc dump");
        dump.into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewQueueDiscipline(q)
                    if q.header.index == ifindex as i32 && q.header.handle.major == HANDLE_MAJOR =>
                {
                    let kind = q.attributes.iter().find_map(|a| match a {
                        TcAttribute::Kind(k) => Some(k.clone()),
                        _ => None,
                    })?;
                    // netlink-packet-route keeps an unknown kind's TCA_OPTIONS whole: walk
                    // its nested attributes for TCA_TBF_PARMS (rate.rate at bytes 8..12).
                    let rate = q.attributes.iter().find_map(|a| match a {
                        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
                            TcOption::Other(nla) => {
                                let mut v = vec![0u8; nla.value_len()];
                                nla.emit_value(&mut v);
                                let mut off = 0;
                                while off + 4 <= v.len() {
                                    let len = usize::from(u16::from_ne_bytes([v[off], v[off + 1]]));
                                    let kind = u16::from_ne_bytes([v[off + 2], v[off + 3]]);
                                    if kind == TCA_TBF_PARMS && off + 4 + 12 <= v.len() {
                                        return Some(u32::from_ne_bytes(v[off + 12..off + 16].try_into().ok()?));
                                    }
                                    off += len.max(4).next_multiple_of(4);
                                }
                                None
                            }
                            _ => None,
                        }),
                        _ => None,
                    });
                    Some((kind, rate.unwrap_or(0)))
                }
                _ => None,
            })
            .collect()
    }

    /// The real kernel takes the message: in a fresh network namespace (of a test thread),
    /// the loopback device gets the tbf qdisc with our handle and rate, a second one is
    /// refused, removal restores the default, removing again is a no-op.
    #[test]
    fn the_kernel_takes_the_tbf_qdisc() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root (scripts/test runs as root)");
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) in a test thread");
            let mut nl = Netlink::open().expect("rtnetlink");
            let lo = 1;
            let r = RateLimit::from_mbit(10);
            limit(&mut nl, lo, &r).expect("tbf on lo");
            assert_eq!(our_qdiscs(&mut nl, lo), [("tbf".to_string(), 1_250_000)]);
            let again = limit(&mut nl, lo, &r).expect_err("a second root qdisc");
            assert!(again.to_string().contains("already has a root qdisc"), "{again}");
            unlimit(&mut nl, lo).expect("removal");
            assert!(our_qdiscs(&mut nl, lo).is_empty());
            unlimit(&mut nl, lo).expect("removing what is not there");
        })
        .join()
        .expect("the netns thread");
    }

    #[test]
    fn removal_names_only_our_handle() {
        let m = root_qdisc(3);
        assert_eq!(
            (m.header.index, u32::from(m.header.handle), u32::from(m.header.parent)),
            (3, 0x0b17_0000, 0xffff_ffff)
        );
        assert!(m.attributes.is_empty());
    }
}
