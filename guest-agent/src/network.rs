//! SetupSandbox: the pod's hostname and network inside the VM. The request (from the host,
//! validated here all the same: counts, names, addresses) is turned into a plan (pure), then
//! applied over rtnetlink: hostname, `lo` up, each NIC found by MAC, renamed to the pod-side
//! CNI name, MTU set, addresses added (IPv4 and IPv6, no DAD), up, then routes (on-link ones
//! before those through a gateway).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use protocol::agent::SetupSandboxRequest;

use bulwark_rtnl::{valid_ifname, Netlink};

pub const MAX_INTERFACES: usize = 8;
pub const MAX_ADDRESSES: usize = 32;
pub const MAX_ROUTES: usize = 64;
const MAX_HOSTNAME: usize = 64;

/// Errors of SetupSandbox.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid SetupSandbox request: {0}")]
    Invalid(String),
    #[error("the sandbox is set up already (SetupSandbox is accepted once)")]
    AlreadyDone,
    #[error("setting the hostname to {0:?}: {1}")]
    Hostname(String, nix::Error),
    #[error("no network interface with MAC {0} in the VM (is virtio_net loaded?)")]
    NoSuchNic(String),
    #[error("{what}: {source}")]
    Netlink { what: String, source: std::io::Error },
}

/// One NIC to configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicPlan {
    pub mac: [u8; 6],
    pub name: String,
    pub mtu: Option<u32>,
    pub addresses: Vec<(IpAddr, u8)>,
}

/// One route to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// None: default route.
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub device: String,
    pub ipv6: bool,
}

/// The validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub hostname: Option<String>,
    pub nics: Vec<NicPlan>,
    pub routes: Vec<RoutePlan>,
}

fn invalid(msg: impl Into<String>) -> NetworkError {
    NetworkError::Invalid(msg.into())
}

/// Shortened, printable form of an untrusted string for error messages.
fn show(s: &str) -> String {
    s.chars().take(80).map(|c| if c.is_control() { '?' } else { c }).collect()
}

fn valid_hostname(h: &str) -> bool {
    h.len() <= MAX_HOSTNAME
        && h.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// "aa:bb:cc:dd:ee:ff" (pure).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

fn max_prefix(ip: &IpAddr) -> u32 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// "10.0.0.0/8", "fd00::/64" (pure).
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    (len <= max_prefix(&ip)).then_some((ip, len as u8))
}

/// Validates the request into a plan (pure).
pub fn plan(req: &SetupSandboxRequest) -> Result<Plan, NetworkError> {
    let hostname = match req.hostname.as_str() {
        "" => None,
        h if valid_hostname(h) => Some(h.to_string()),
        h => return Err(invalid(format!("hostname {:?} is not a valid host name", show(h)))),
    };
    if req.interfaces.len() > MAX_INTERFACES {
        return Err(invalid(format!("{} interfaces (at most {MAX_INTERFACES})", req.interfaces.len())));
    }
    let mut nics: Vec<NicPlan> = Vec::new();
    for i in &req.interfaces {
        let mac =
            parse_mac(&i.mac).ok_or_else(|| invalid(format!("MAC {:?} is not aa:bb:cc:dd:ee:ff", show(&i.mac))))?;
        if !valid_ifname(&i.name) || i.name == "lo" {
            return Err(invalid(format!("interface name {:?} is not usable", show(&i.name))));
        }
        if nics.iter().any(|n| n.mac == mac || n.name == i.name) {
            return Err(invalid(format!("interface {} / {} given twice", show(&i.name), show(&i.mac))));
        }
        let mtu = match i.mtu {
            0 => None,
            m if (68..=65535).contains(&m) => Some(m),
            m => return Err(invalid(format!("MTU {m} of {} out of range 68..65535", show(&i.name)))),
        };
        if i.addresses.len() > MAX_ADDRESSES {
            return Err(invalid(format!(
                "{} addresses on {} (at most {MAX_ADDRESSES})",
                i.addresses.len(),
                show(&i.name)
            )));
        }
        let mut addresses = Vec::new();
        for a in &i.addresses {
            let ip: IpAddr = a
                .address
                .parse()
                .map_err(|_| invalid(format!("address {:?} is not an IP address", show(&a.address))))?;
            if a.prefix_len > max_prefix(&ip) {
                return Err(invalid(format!("prefix length {} too long for {ip}", a.prefix_len)));
            }
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                return Err(invalid(format!("address {ip} cannot be assigned to an interface")));
            }
            addresses.push((ip, a.prefix_len as u8));
        }
        nics.push(NicPlan { mac, name: i.name.clone(), mtu, addresses });
    }
    if req.routes.len() > MAX_ROUTES {
        return Err(invalid(format!("{} routes (at most {MAX_ROUTES})", req.routes.len())));
    }
    let mut routes = Vec::new();
    for r in &req.routes {
        let destination = match r.destination.as_str() {
            "" => None,
            d => Some(parse_cidr(d).ok_or_else(|| invalid(format!("route destination {:?} is not a CIDR", show(d))))?),
        };
        let gateway = match r.gateway.as_str() {
            "" => None,
            g => Some(g.parse::<IpAddr>().map_err(|_| invalid(format!("gateway {:?} is not an IP address", show(g))))?),
        };
        if !nics.iter().any(|n| n.name == r.device) {
            return Err(invalid(format!("route device {:?} is not one of the interfaces", show(&r.device))));
        }
        let ipv6 = match (destination, gateway) {
            (Some((d, _)), Some(g)) if d.is_ipv6() != g.is_ipv6() => {
                return Err(invalid(format!("route to {d} via {g} mixes IPv4 and IPv6")))
            }
            (Some((d, _)), _) => d.is_ipv6(),
            (None, Some(g)) => g.is_ipv6(),
            (None, None) => return Err(invalid("a default route needs a gateway")),
        };
        routes.push(RoutePlan { destination, gateway, device: r.device.clone(), ipv6 });
    }
    // On-link routes first: a gateway may be reachable only through one of them.
    routes.sort_by_key(|r| r.gateway.is_some());
    Ok(Plan { hostname, nics, routes })
}

static DONE: AtomicBool = AtomicBool::new(false);

fn nl(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

fn exists_ok(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// (index, name, mac) of every link.
fn links(nl_sock: &mut Netlink) -> std::io::Result<Vec<(u32, String, Vec<u8>)>> {
    let mut out = Vec::new();
    for m in nl_sock.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))? {
        if let RouteNetlinkMessage::NewLink(l) = m {
            let mut name = String::new();
            let mut mac = Vec::new();
            for a in &l.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = n.clone(),
                    LinkAttribute::Address(a) => mac = a.clone(),
                    _ => {}
                }
            }
            out.push((l.header.index, name, mac));
        }
    }
    Ok(out)
}

fn set_link(nl_sock: &mut Netlink, index: u32, up: bool, attrs: Vec<LinkAttribute>) -> std::io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.change_mask = LinkFlags::Up;
    if up {
        m.header.flags = LinkFlags::Up;
    }
    m.attributes = attrs;
    nl_sock.request(RouteNetlinkMessage::SetLink(m), 0)
}

fn v4_broadcast(ip: Ipv4Addr, prefix: u8) -> Option<Ipv4Addr> {
    if prefix >= 31 {
        return None;
    }
    let mask = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
    Some(Ipv4Addr::from(u32::from(ip) | mask))
}

fn add_address(nl_sock: &mut Netlink, index: u32, ip: IpAddr, prefix: u8) -> std::io::Result<()> {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = prefix;
    m.header.scope = AddressScope::Universe;
    match ip {
        IpAddr::V4(v4) => {
            m.header.family = AddressFamily::Inet;
            m.attributes.push(AddressAttribute::Local(ip));
            m.attributes.push(AddressAttribute::Address(ip));
            if let Some(b) = v4_broadcast(v4, prefix) {
                m.attributes.push(AddressAttribute::Broadcast(b));
            }
        }
        IpAddr::V6(_) => {
            m.header.family = AddressFamily::Inet6;
            // No duplicate address detection: the address is usable at once (the pod owns it).
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes.push(AddressAttribute::Address(ip));
        }
    }
    exists_ok(nl_sock.request(RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_EXCL))
}

fn route_addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn add_route(nl_sock: &mut Netlink, r: &RoutePlan, oif: u32) -> std::io::Result<()> {
    let mut m = RouteMessage::default();
    m.header.address_family = if r.ipv6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.kind = RouteType::Unicast;
    m.header.scope = if r.gateway.is_some() { RouteScope::Universe } else { RouteScope::Link };
    if let Some((dst, len)) = r.destination {
        m.header.destination_prefix_length = len;
        m.attributes.push(RouteAttribute::Destination(route_addr(dst)));
    }
    if let Some(g) = r.gateway {
        m.attributes.push(RouteAttribute::Gateway(route_addr(g)));
    }
    m.attributes.push(RouteAttribute::Oif(oif));
    exists_ok(nl_sock.request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL))
}

fn mac_str(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Applies the plan (blocking: call from the blocking pool). Accepted once per VM.
pub fn apply(plan: &Plan) -> Result<(), NetworkError> {
    if DONE.load(Ordering::SeqCst) {
        return Err(NetworkError::AlreadyDone);
    }
    if let Some(h) = &plan.hostname {
        nix::unistd::sethostname(h).map_err(|e| NetworkError::Hostname(h.clone(), e))?;
    }
    let mut sock = Netlink::open().map_err(nl("opening an rtnetlink socket"))?;
    let all = links(&mut sock).map_err(nl("listing network interfaces"))?;
    if let Some((lo, _, _)) = all.iter().find(|(_, n, _)| n == "lo") {
        set_link(&mut sock, *lo, true, vec![]).map_err(nl("bringing lo up"))?;
    }
    // Find every NIC first; a name wanted by one NIC may be held by another of them (the
    // guest numbers its NICs in probe order), so those are renamed in two steps.
    let mut found = Vec::new();
    for nic in &plan.nics {
        let (index, current, _) = all
            .iter()
            .find(|(_, _, m)| m.as_slice() == nic.mac)
            .ok_or_else(|| NetworkError::NoSuchNic(mac_str(&nic.mac)))?;
        found.push((nic, *index, current.clone()));
    }
    for (nic, _, _) in &found {
        let holder = all.iter().find(|(_, n, _)| *n == nic.name);
        if let Some((i, _, _)) = holder {
            if !found.iter().any(|(_, idx, _)| idx == i) {
                return Err(invalid(format!("interface name {} is taken by another interface in the VM", nic.name)));
            }
        }
    }
    for (n, (nic, index, current)) in found.iter_mut().enumerate() {
        if *current != nic.name {
            let temp = format!("bwktmp{n}");
            // Renaming needs the link down.
            set_link(&mut sock, *index, false, vec![LinkAttribute::IfName(temp.clone())])
                .map_err(nl(format!("renaming {current} to {temp}")))?;
            *current = temp;
        }
    }
    let mut indexes = Vec::new();
    for (nic, index, current) in &found {
        let mac = mac_str(&nic.mac);
        let mut attrs = Vec::new();
        if *current != nic.name {
            attrs.push(LinkAttribute::IfName(nic.name.clone()));
        }
        if let Some(mtu) = nic.mtu {
            attrs.push(LinkAttribute::Mtu(mtu));
        }
        set_link(&mut sock, *index, false, attrs)
            .map_err(nl(format!("renaming {current} ({mac}) to {} and setting its MTU", nic.name)))?;
        for (ip, prefix) in &nic.addresses {
            add_address(&mut sock, *index, *ip, *prefix)
                .map_err(nl(format!("adding {ip}/{prefix} to {}", nic.name)))?;
        }
        set_link(&mut sock, *index, true, vec![]).map_err(nl(format!("bringing {} up", nic.name)))?;
        indexes.push((nic.name.clone(), *index));
        tracing::info!(nic = %nic.name, mac = %mac, mtu = ?nic.mtu, addresses = ?nic.addresses, "network interface configured");
    }
    for r in &plan.routes {
        let oif = indexes
            .iter()
            .find(|(n, _)| *n == r.device)
            .map(|(_, i)| *i)
            .ok_or_else(|| invalid(format!("route device {} is not configured", r.device)))?;
        add_route(&mut sock, r, oif)
            .map_err(nl(format!("adding route {:?} via {:?} dev {}", r.destination, r.gateway, r.device)))?;
    }
    DONE.store(true, Ordering::SeqCst);
    tracing::info!(hostname = ?plan.hostname, nics = plan.nics.len(), routes = plan.routes.len(), "sandbox set up");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::agent::{IpAddress, NetworkInterface, Route};

    fn req() -> SetupSandboxRequest {
        SetupSandboxRequest {
            hostname: "web-0".into(),
            interfaces: vec![NetworkInterface {
                mac: "0a:58:0A:58:00:05".into(),
                name: "eth0".into(),
                mtu: 1450,
                addresses: vec![
                    IpAddress { address: "10.88.0.5".into(), prefix_len: 16, ..Default::default() },
                    IpAddress { address: "fd00::5".into(), prefix_len: 64, ..Default::default() },
                ],
                ..Default::default()
            }],
            routes: vec![
                Route {
                    destination: "".into(),
                    gateway: "10.88.0.1".into(),
                    device: "eth0".into(),
                    ..Default::default()
                },
                Route {
                    destination: "10.99.0.0/16".into(),
                    gateway: "".into(),
                    device: "eth0".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn valid_request_plans() {
        let p = plan(&req()).unwrap();
        assert_eq!(p.hostname.as_deref(), Some("web-0"));
        assert_eq!(p.nics[0].mac, [0x0a, 0x58, 0x0a, 0x58, 0x00, 0x05]);
        assert_eq!(p.nics[0].mtu, Some(1450));
        assert_eq!(p.nics[0].addresses.len(), 2);
        // on-link route sorted before the gateway route
        assert_eq!(p.routes[0].destination, parse_cidr("10.99.0.0/16"));
        assert!(p.routes[1].gateway.is_some() && !p.routes[1].ipv6);
        let mut r = req();
        r.hostname.clear();
        r.interfaces[0].mtu = 0;
        let p = plan(&r).unwrap();
        assert_eq!((p.hostname, p.nics[0].mtu), (None, None));
    }

    #[test]
    fn bad_requests_are_refused() {
        type Mutation = Box<dyn Fn(&mut SetupSandboxRequest)>;
        let cases: Vec<Mutation> = vec![
            Box::new(|r| r.hostname = "a/b".into()),
            Box::new(|r| r.hostname = "x".repeat(65)),
            Box::new(|r| r.hostname = "a..b".into()),
            Box::new(|r| r.interfaces[0].mac = "0a:58:0a:58:00".into()),
            Box::new(|r| r.interfaces[0].mac = "0a:58:0a:58:00:zz".into()),
            Box::new(|r| r.interfaces[0].name = "lo".into()),
            Box::new(|r| r.interfaces[0].name = "a-very-long-interface".into()),
            Box::new(|r| r.interfaces[0].name = "../x".into()),
            Box::new(|r| r.interfaces[0].mtu = 10),
            Box::new(|r| r.interfaces[0].addresses[0].address = "10.88.0".into()),
            Box::new(|r| r.interfaces[0].addresses[0].prefix_len = 33),
            Box::new(|r| r.interfaces[0].addresses[0].address = "127.0.0.1".into()),
            Box::new(|r| r.routes[0].device = "eth1".into()),
            Box::new(|r| r.routes[1].gateway = "fd00::1".into()),
            Box::new(|r| r.routes[0].gateway = "".into()),
            Box::new(|r| r.routes[1].destination = "10.99.0.0/40".into()),
            Box::new(|r| r.routes[1].destination = "10.99.0.0".into()),
            Box::new(|r| {
                let i = r.interfaces[0].clone();
                r.interfaces.push(i)
            }),
            Box::new(|r| {
                let i = r.interfaces[0].clone();
                r.interfaces = vec![i; MAX_INTERFACES + 1]
            }),
            Box::new(|r| {
                let a = r.routes[0].clone();
                r.routes = vec![a; MAX_ROUTES + 1]
            }),
        ];
        for (n, mutate) in cases.iter().enumerate() {
            let mut r = req();
            mutate(&mut r);
            assert!(plan(&r).is_err(), "case {n} accepted: {r:?}");
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(v4_broadcast(Ipv4Addr::new(10, 88, 0, 5), 16), Some(Ipv4Addr::new(10, 88, 255, 255)));
        assert_eq!(v4_broadcast(Ipv4Addr::new(10, 88, 0, 5), 0), Some(Ipv4Addr::new(255, 255, 255, 255)));
        assert_eq!(v4_broadcast(Ipv4Addr::new(10, 88, 0, 5), 32), None);
        assert_eq!(parse_cidr("fd00::/64"), Some(("fd00::".parse().unwrap(), 64)));
        assert_eq!(parse_cidr("fd00::/129"), None);
        assert_eq!(mac_str(&[0xaa, 0, 1, 2, 3, 0xff]), "aa:00:01:02:03:ff");
    }
}
