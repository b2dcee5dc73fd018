//! The "tcfilter" link between a CNI interface and its tap: an ingress qdisc on each and a
//! u32 match-everything filter whose action is `mirred egress redirect` to the other, i.e.
//!   tc qdisc add dev A ingress
//!   tc filter add dev A parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev B
//! (and B → A). u32, not matchall: cls_matchall is often a module that is not loaded.
//! Messages are built by pure functions (unit tested) and sent over rtnetlink.

use std::io;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector,
    TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use bulwark_rtnl::Netlink;

/// ETH_P_ALL in network byte order, as `tc ... protocol all` sends it.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();
/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: TcHandle = TcHandle { major: 0xffff, minor: 0 };
/// TCA_ACT_TAB: the first (only) action of the list.
const FIRST_ACTION: u16 = 1;

/// `tc qdisc add dev <ifindex> ingress` (pure).
pub fn ingress_qdisc(ifindex: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = ifindex as i32;
    m.header.handle = INGRESS_HANDLE;
    m.header.parent = TcHandle::INGRESS;
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m
}

/// `tc filter add dev <from> parent ffff: protocol all u32 match u8 0 0
/// action mirred egress redirect dev <to>` (pure).
pub fn redirect_filter(from: u32, to: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = from as i32;
    m.header.parent = INGRESS_HANDLE;
    // tcm_info = priority << 16 | protocol; priority 0 lets the kernel pick one.
    m.header.info = u32::from(ETH_P_ALL_BE);

    let mut key = TcU32Key::default();
    key.mask = 0;
    key.val = 0;
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![key];

    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.tab = FIRST_ACTION;
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror))]),
    ];

    m.attributes.push(TcAttribute::Kind("u32".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(sel)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    m
}

/// Links `a` and `b` both ways. An ingress qdisc that already exists is reused.
pub fn connect(nl: &mut Netlink, a: u32, b: u32) -> io::Result<()> {
    for (from, to) in [(a, b), (b, a)] {
        match nl.request(RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(from)), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                tracing::warn!("interface {from} already has an ingress qdisc; adding the redirect to it")
            }
            Err(e) => {
                return Err(io::Error::new(e.kind(), format!("adding the ingress qdisc to interface {from}: {e}")))
            }
        }
        nl.request(RouteNetlinkMessage::NewTrafficFilter(redirect_filter(from, to)), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| io::Error::new(e.kind(), format!("adding the redirect filter {from} -> {to}: {e}")))?;
    }
    Ok(())
}

/// Removes the ingress qdisc (and with it the filters) of `ifindex`. A missing qdisc or
/// interface is not an error.
pub fn disconnect(nl: &mut Netlink, ifindex: u32) -> io::Result<()> {
    match nl.request(RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(ifindex)), 0) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::EINVAL)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    #[test]
    fn qdisc_message() {
        let m = ingress_qdisc(7);
        assert_eq!(m.header.index, 7);
        assert_eq!(u32::from(m.header.handle), 0xffff_0000);
        assert_eq!(u32::from(m.header.parent), 0xffff_fff1);
        assert_eq!(m.attributes, vec![TcAttribute::Kind("ingress".into())]);
    }

    #[test]
    fn redirect_message_encodes_like_tc() {
        let m = redirect_filter(3, 9);
        assert_eq!(m.header.index, 3);
        assert_eq!(u32::from(m.header.parent), 0xffff_0000);
        // protocol all (0x0003 big-endian) in the low 16 bits, priority 0.
        assert_eq!(m.header.info.to_ne_bytes()[..2], [0x00, 0x03]);
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        // The mirred parameters (struct tc_mirred) end with eaction=1 (TCA_EGRESS_REDIR)
        // and ifindex=9; action TC_ACT_STOLEN=4 is in the generic part.
        let needle: Vec<u8> = [1i32.to_ne_bytes(), 9u32.to_ne_bytes()].concat();
        assert!(buf.windows(8).any(|w| w == needle.as_slice()), "{buf:?}");
        assert!(buf.windows(3).any(|w| w == b"u32"));
        assert!(buf.windows(6).any(|w| w == b"mirred"));
    }
}
