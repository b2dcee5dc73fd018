//! What CNI configured in the pod netns: its interfaces (name, MAC, MTU, addresses) and the
//! routes through them. Read with netlink dumps; the selection rules are pure functions.

use std::io;
use std::net::IpAddr;

use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

/// Name suffix of the taps Bulwark creates (`tap0_bwk`, ...).
pub const TAP_SUFFIX: &str = "_bwk";
use bulwark_rtnl::Netlink;

/// At most this many pod interfaces are passed to the VM.
pub const MAX_INTERFACES: usize = 8;
/// At most this many addresses per interface and routes in all are passed on.
pub const MAX_ADDRESSES: usize = 32;
pub const MAX_ROUTES: usize = 64;

/// One network interface of the pod netns, as CNI set it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub loopback: bool,
    pub ethernet: bool,
    /// Global (non link-local) addresses with their prefix length.
    pub addresses: Vec<(IpAddr, u8)>,
}

/// One route of the main table through a pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// None: the default route.
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
}

/// "aa:bb:cc:dd:ee:ff" (pure).
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn link_from(m: &LinkMessage) -> Option<Interface> {
    let mut name = None;
    let mut mac = None;
    let mut mtu = 0;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut b = [0u8; 6];
                b.copy_from_slice(a);
                mac = Some(b);
            }
            LinkAttribute::Mtu(v) => mtu = *v,
            _ => {}
        }
    }
    Some(Interface {
        index: m.header.index,
        name: name?,
        mac: mac.unwrap_or([0; 6]),
        mtu,
        loopback: m.header.flags.contains(LinkFlags::Loopback),
        ethernet: m.header.link_layer_type == LinkLayerType::Ether,
        addresses: Vec::new(),
    })
}

fn address_from(m: &AddressMessage) -> Option<(u32, IpAddr, u8)> {
    if m.header.scope != AddressScope::Universe {
        return None; // link-local and host addresses: the guest makes its own
    }
    // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS otherwise.
    let mut addr = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => addr = Some(*ip),
            AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
            _ => {}
        }
    }
    Some((m.header.index, addr?, m.header.prefix_len))
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_from(m: &RouteMessage) -> Option<Route> {
    let h = &m.header;
    let mut table = u32::from(h.table);
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = ip_of(d),
            RouteAttribute::Gateway(g) => gateway = ip_of(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || h.kind != RouteType::Unicast {
        return None;
    }
    // The guest kernel creates the subnet routes of its own addresses.
    if h.protocol == RouteProtocol::Kernel {
        return None;
    }
    let destination = match dst {
        Some(ip) if h.destination_prefix_length > 0 => Some((ip, h.destination_prefix_length)),
        _ => None,
    };
    if let Some((IpAddr::V6(v6), _)) = destination {
        let seg = v6.segments()[0];
        if seg & 0xffc0 == 0xfe80 || seg & 0xff00 == 0xff00 {
            return None; // link-local / multicast: the guest kernel has its own
        }
    }
    Some(Route { destination, gateway, oif: oif? })
}

/// The interfaces to give the VM: everything but loopback and our own taps, Ethernet only
/// (pure). Sorted by index so the guest sees them in a stable order.
pub fn pod_interfaces(all: Vec<Interface>) -> Vec<Interface> {
    let mut v: Vec<Interface> = all
        .into_iter()
        .filter(|i| !i.loopback && i.name != "lo" && !i.name.ends_with(TAP_SUFFIX) && i.ethernet && i.mac != [0; 6])
        .collect();
    v.sort_by_key(|i| i.index);
    v
}

/// The pod netns as CNI left it: chosen interfaces with addresses, and their routes.
pub fn read(nl: &mut Netlink) -> io::Result<(Vec<Interface>, Vec<Route>)> {
    let mut links = Vec::new();
    for m in nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))? {
        if let RouteNetlinkMessage::NewLink(l) = m {
            links.extend(link_from(&l));
        }
    }
    let mut ifaces = pod_interfaces(links);
    ifaces.truncate(MAX_INTERFACES);
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = AddressMessage::default();
        req.header.family = family;
        for m in nl.dump(RouteNetlinkMessage::GetAddress(req))? {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                if let Some((idx, ip, prefix)) = address_from(&a) {
                    if let Some(i) = ifaces.iter_mut().find(|i| i.index == idx) {
                        if i.addresses.len() < MAX_ADDRESSES {
                            i.addresses.push((ip, prefix));
                        }
                    }
                }
            }
        }
    }
    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        for m in nl.dump(RouteNetlinkMessage::GetRoute(req))? {
            if let RouteNetlinkMessage::NewRoute(r) = m {
                if let Some(r) = route_from(&r) {
                    if ifaces.iter().any(|i| i.index == r.oif) && routes.len() < MAX_ROUTES {
                        routes.push(r);
                    }
                }
            }
        }
    }
    Ok((ifaces, routes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn iface(index: u32, name: &str) -> Interface {
        Interface {
            index,
            name: name.into(),
            mac: [0x0a, 0x58, 10, 0, 0, index as u8],
            mtu: 1500,
            loopback: false,
            ethernet: true,
            addresses: vec![],
        }
    }

    #[test]
    fn interface_selection() {
        let mut lo = iface(1, "lo");
        lo.loopback = true;
        lo.mac = [0; 6];
        let mut tunnel = iface(5, "ipip0");
        tunnel.ethernet = false;
        let v = pod_interfaces(vec![iface(4, "net1"), lo, iface(3, "eth0"), iface(6, "tap0_bwk"), tunnel]);
        let names: Vec<_> = v.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "net1"]);
        assert_eq!(format_mac(&v[0].mac), "0a:58:0a:00:00:03");
    }

    fn route_msg(proto: RouteProtocol, dst: Option<(IpAddr, u8)>, gw: Option<IpAddr>) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.kind = RouteType::Unicast;
        m.header.protocol = proto;
        let addr = |ip: IpAddr| match ip {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        };
        if let Some((ip, len)) = dst {
            m.header.destination_prefix_length = len;
            m.attributes.push(RouteAttribute::Destination(addr(ip)));
        }
        if let Some(g) = gw {
            m.attributes.push(RouteAttribute::Gateway(addr(g)));
        }
        m.attributes.push(RouteAttribute::Oif(3));
        m
    }

    #[test]
    fn address_selection() {
        let mut m = AddressMessage::default();
        m.header.index = 3;
        m.header.prefix_len = 24;
        let ip = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 5));
        m.attributes.push(AddressAttribute::Address(ip));
        assert_eq!(address_from(&m), Some((3, ip, 24)));
        // IFA_LOCAL wins (point-to-point peers put the peer in IFA_ADDRESS)
        let local = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 6));
        m.attributes.push(AddressAttribute::Local(local));
        assert_eq!(address_from(&m), Some((3, local, 24)));
        m.header.scope = AddressScope::Link;
        assert_eq!(address_from(&m), None, "link-local addresses are the guest's own");
    }

    #[test]
    fn route_selection() {
        let gw = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 1));
        let r = route_from(&route_msg(RouteProtocol::Boot, None, Some(gw))).unwrap();
        assert_eq!(r, Route { destination: None, gateway: Some(gw), oif: 3 });
        let net = (IpAddr::V4(Ipv4Addr::new(10, 88, 0, 0)), 16);
        assert!(route_from(&route_msg(RouteProtocol::Kernel, Some(net), None)).is_none());
        let r = route_from(&route_msg(RouteProtocol::Static, Some(net), None)).unwrap();
        assert_eq!(r.destination, Some(net));
        let ll = (IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 64);
        assert!(route_from(&route_msg(RouteProtocol::Boot, Some(ll), None)).is_none());
        let mut local = route_msg(RouteProtocol::Boot, None, Some(gw));
        local.header.table = 255;
        assert!(route_from(&local).is_none());
    }
}
