//! Pod networking, host side. The sandbox container's OCI spec names the pod's network
//! namespace (made by CNI). In it, each CNI interface gets a tap device `tap<N>_bwk` with the
//! same MTU, joined to it by tc ingress redirects both ways (tc.rs, the "tcfilter" model: any
//! CNI plugin, bandwidth shaping and network policy keep working on the host side). The tap
//! fds go to QEMU as virtio-net devices carrying the CNI interface's MAC; the guest agent is
//! told the hostname, addresses and routes (SetupSandbox). Teardown removes the qdiscs and
//! the taps; no fd of the pod netns is kept at any time except by QEMU's taps.
//!
//! A tenant with a bandwidth ceiling gets tbf qdiscs on the tap and the CNI interface
//! (bandwidth.rs), both directions, before the VM starts.
//!
//! Modules: netns.rs (path validation, running code in the netns), links.rs (reading what
//! CNI set up), tap.rs (tap devices), tc.rs (the redirects), bandwidth.rs (the ceiling).

pub mod bandwidth;
pub mod error;
pub mod links;
pub mod netns;
pub mod tap;
pub mod tc;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use bulwark_protocol::agent::{IpAddress, NetworkInterface, Route as PbRoute, SetupSandboxRequest};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::Error;
use bandwidth::RateLimit;
use bulwark_rtnl::Netlink;
use links::{format_mac, Interface};

pub use error::NetworkError;
pub use links::TAP_SUFFIX;

impl From<NetworkError> for Error {
    fn from(e: NetworkError) -> Self {
        match e {
            NetworkError::InvalidNetnsPath { .. } | NetworkError::HostNetns(_) => Error::InvalidArgument(e.to_string()),
            NetworkError::NetnsOpen { .. } | NetworkError::NoInterface(_) => Error::FailedPrecondition(e.to_string()),
            other => Error::Boot(format!("pod network: {other}")),
        }
    }
}

/// What the sandbox spec says about the pod: its network namespace (None: the VM gets no
/// NIC) and hostname; and the tenant's bandwidth ceiling for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodConfig {
    pub netns: Option<PathBuf>,
    pub hostname: String,
    /// Applied both ways on every pod interface (None: no ceiling).
    pub bandwidth: Option<RateLimit>,
}

impl PodConfig {
    /// Reads and validates the pod settings of a sandbox container's spec (pure).
    pub fn from_spec(spec: &Spec) -> Result<PodConfig, NetworkError> {
        let netns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|nss| nss.iter().find(|n| n.typ() == LinuxNamespaceType::Network))
            .and_then(|n| n.path().as_ref())
            .map(|p| netns::validate_path(&p.to_string_lossy()))
            .transpose()?;
        Ok(PodConfig { netns, hostname: spec.hostname().clone().unwrap_or_default(), bandwidth: None })
    }

    /// This configuration with the tenant's bandwidth ceiling in Mbit/s (pure).
    pub fn with_bandwidth_mbit(self, mbit: Option<u32>) -> PodConfig {
        PodConfig { bandwidth: mbit.map(RateLimit::from_mbit), ..self }
    }
}

/// One pod interface and the tap that stands for it.
#[derive(Debug)]
pub struct Nic {
    pub cni: Interface,
    pub tap_name: String,
    /// Open until QEMU has its own copy (then [`HostNetwork::release_taps`] closes it).
    pub tap_fd: Option<OwnedFd>,
}

/// The host side of a pod network, attached.
#[derive(Debug)]
pub struct HostNetwork {
    pub netns: PathBuf,
    pub nics: Vec<Nic>,
    pub routes: Vec<links::Route>,
}

/// A NIC for QEMU: the tap fd (valid while the HostNetwork holds it) and the guest MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNic {
    pub tap_fd: RawFd,
    pub mac: String,
}

fn nl_err(path: &Path, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError + '_ {
    let what = what.into();
    move |source| NetworkError::Netlink { path: path.to_path_buf(), what, source }
}

fn set_link(nl: &mut Netlink, index: u32, mtu: Option<u32>, up: bool) -> std::io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    if up {
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
    }
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    nl.request(RouteNetlinkMessage::SetLink(m), 0)
}

fn link_index(nl: &mut Netlink, name: &str) -> std::io::Result<Option<u32>> {
    let found = nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?.into_iter().find_map(|r| match r {
        RouteNetlinkMessage::NewLink(l) => {
            l.attributes.iter().any(|a| matches!(a, LinkAttribute::IfName(n) if n == name)).then_some(l.header.index)
        }
        _ => None,
    });
    Ok(found)
}

fn delete_link(nl: &mut Netlink, index: u32) -> std::io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    match nl.request(RouteNetlinkMessage::DelLink(m), 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        r => r,
    }
}

/// Removes what `attach` made for the given (CNI index, tap name) pairs (inside the netns).
fn undo(nl: &mut Netlink, pairs: &[(u32, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (cni_index, tap_name) in pairs {
        if let Err(e) = tc::disconnect(nl, *cni_index) {
            problems.push(format!("removing the ingress qdisc of interface {cni_index}: {e}"));
        }
        if let Err(e) = bandwidth::unlimit(nl, *cni_index) {
            problems.push(format!("removing the bandwidth limit of interface {cni_index}: {e}"));
        }
        match link_index(nl, tap_name) {
            Ok(Some(i)) => {
                if let Err(e) = tc::disconnect(nl, i).and_then(|_| delete_link(nl, i)) {
                    problems.push(format!("removing tap {tap_name}: {e}"));
                }
            }
            Ok(None) => {}
            Err(e) => problems.push(format!("looking up {tap_name}: {e}")),
        }
    }
    problems
}

/// Inside the netns: read the CNI interfaces, make and link the taps, limit their bandwidth.
/// On error, undoes its own work before returning.
fn attach_here(path: &Path, ceiling: Option<RateLimit>) -> Result<HostNetwork, NetworkError> {
    let mut nl = Netlink::open().map_err(nl_err(path, "opening an rtnetlink socket"))?;
    let (ifaces, routes) = links::read(&mut nl).map_err(nl_err(path, "reading interfaces, addresses and routes"))?;
    if ifaces.is_empty() {
        return Err(NetworkError::NoInterface(path.to_path_buf()));
    }
    let mut nics: Vec<Nic> = Vec::new();
    let mut made: Vec<(u32, String)> = Vec::new();
    let result = (|| {
        for (n, cni) in ifaces.into_iter().enumerate() {
            let tap_name = format!("tap{n}{TAP_SUFFIX}");
            let fd = tap::create(&tap_name).map_err(nl_err(path, format!("creating tap {tap_name}")))?;
            made.push((cni.index, tap_name.clone()));
            let tap_index = link_index(&mut nl, &tap_name)
                .map_err(nl_err(path, format!("looking up {tap_name}")))?
                .ok_or_else(|| NetworkError::Netlink {
                    path: path.to_path_buf(),
                    what: format!("tap {tap_name} vanished after creation"),
                    source: std::io::Error::from_raw_os_error(libc::ENODEV),
                })?;
            let mtu = (cni.mtu > 0).then_some(cni.mtu);
            set_link(&mut nl, tap_index, mtu, true).map_err(nl_err(path, format!("setting {tap_name} mtu and up")))?;
            if let Some(r) = &ceiling {
                for (index, name) in [(tap_index, tap_name.as_str()), (cni.index, cni.name.as_str())] {
                    bandwidth::limit(&mut nl, index, r)
                        .map_err(nl_err(path, format!("limiting {name} to the tenant's bandwidth")))?;
                }
                tracing::info!(
                    "pod network {}: {} and {tap_name} limited to {} bytes/s each way (burst {}, queue {} bytes)",
                    path.display(),
                    cni.name,
                    r.bytes_per_sec,
                    r.burst_bytes,
                    r.limit_bytes
                );
            }
            tc::connect(&mut nl, cni.index, tap_index)
                .map_err(nl_err(path, format!("redirecting {} <-> {tap_name}", cni.name)))?;
            tracing::info!(
                "pod network {}: {} ({}, mtu {}) <-> {tap_name} (tc redirect)",
                path.display(),
                cni.name,
                format_mac(&cni.mac),
                cni.mtu
            );
            nics.push(Nic { cni, tap_name, tap_fd: Some(fd) });
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(HostNetwork { netns: path.to_path_buf(), nics, routes }),
        Err(e) => {
            drop(nics); // closes the tap fds: the taps go away
            for p in undo(&mut nl, &made) {
                tracing::warn!("cleaning up after a failed pod network setup: {p}");
            }
            Err(e)
        }
    }
}

/// Attaches the pod network at `netns`: taps + tc redirects for every CNI interface, and the
/// bandwidth `ceiling` on both sides of each when there is one.
pub async fn attach(netns: &Path, ceiling: Option<RateLimit>) -> Result<HostNetwork, NetworkError> {
    let path = netns.to_path_buf();
    netns::run_in(netns, move || attach_here(&path, ceiling)).await
}

impl HostNetwork {
    /// The NICs QEMU gets, in order.
    pub fn vm_nics(&self) -> Vec<VmNic> {
        self.nics
            .iter()
            .filter_map(|n| n.tap_fd.as_ref().map(|fd| VmNic { tap_fd: fd.as_raw_fd(), mac: format_mac(&n.cni.mac) }))
            .collect()
    }

    /// Closes the shim's tap fds (once QEMU holds its own): from then on the taps live as
    /// long as QEMU.
    pub fn release_taps(&mut self) {
        for n in &mut self.nics {
            n.tap_fd = None;
        }
    }

    /// The SetupSandbox request for the guest agent (pure).
    pub fn setup_request(&self, hostname: &str) -> SetupSandboxRequest {
        setup_request(hostname, &self.nics.iter().map(|n| n.cni.clone()).collect::<Vec<_>>(), &self.routes)
    }

    fn pairs(&self) -> Vec<(u32, String)> {
        self.nics.iter().map(|n| (n.cni.index, n.tap_name.clone())).collect()
    }

    /// Records what to undo in `<dir>/network`, for `delete` after a crashed shim.
    pub fn save(&self, dir: &Path) {
        let path = dir.join(STATE_FILE);
        if let Err(e) = std::fs::write(&path, render_state(&self.netns, &self.pairs())) {
            tracing::warn!("writing {}: {e}", path.display());
        }
    }

    /// Removes the tc qdiscs and taps in the netns. The netns may be gone already (CNI DEL
    /// ran first): then there is nothing to do.
    pub async fn detach(mut self) {
        self.release_taps();
        let pairs = self.pairs();
        let path = self.netns.clone();
        let res = netns::run_in(&self.netns, move || undo_in(&path, &pairs)).await;
        report_detach(&self.netns, res);
    }
}

/// File in the sandbox state dir naming the netns and the (CNI index, tap) pairs.
pub const STATE_FILE: &str = "network";
const MAX_STATE_FILE: u64 = 64 * 1024;

fn undo_in(path: &Path, pairs: &[(u32, String)]) -> Result<Vec<String>, NetworkError> {
    let mut nl = Netlink::open().map_err(nl_err(path, "opening an rtnetlink socket"))?;
    Ok(undo(&mut nl, pairs))
}

fn report_detach(netns: &Path, res: Result<Vec<String>, NetworkError>) {
    match res {
        Ok(problems) if problems.is_empty() => tracing::info!("pod network {} detached", netns.display()),
        Ok(problems) => {
            for p in problems {
                tracing::warn!("detaching pod network {}: {p}", netns.display());
            }
        }
        Err(NetworkError::NetnsOpen { .. }) => {
            tracing::info!("pod network {} is gone already; nothing to detach", netns.display())
        }
        Err(e) => tracing::warn!("detaching pod network: {e}"),
    }
}

/// "netns <path>\nlink <cni index> <tap name>\n..." (pure).
pub fn render_state(netns: &Path, pairs: &[(u32, String)]) -> String {
    let mut s = format!("netns {}\n", netns.display());
    for (i, t) in pairs {
        s.push_str(&format!("link {i} {t}\n"));
    }
    s
}

/// Parses [`render_state`] output; the file is ours but may be truncated or stale, so the
/// path is validated again and only names of our own taps are accepted (pure).
pub fn parse_state(text: &str) -> Option<(PathBuf, Vec<(u32, String)>)> {
    let mut netns = None;
    let mut pairs = Vec::new();
    for line in text.lines().take(2 * links::MAX_INTERFACES + 1) {
        let mut w = line.split(' ');
        match (w.next(), w.next(), w.next(), w.next()) {
            (Some("netns"), Some(p), None, None) => netns = netns::validate_path(p).ok(),
            (Some("link"), Some(i), Some(t), None) => {
                let ours = t
                    .strip_prefix("tap")
                    .and_then(|r| r.strip_suffix(TAP_SUFFIX))
                    .is_some_and(|n| !n.is_empty() && n.len() <= 2 && n.bytes().all(|b| b.is_ascii_digit()));
                if let (Ok(i), true) = (i.parse::<u32>(), ours) {
                    pairs.push((i, t.to_string()));
                }
            }
            _ => {}
        }
    }
    Some((netns?, pairs))
}

/// `delete` after a crashed shim (QEMU is dead, so the taps are gone with it): removes the
/// tc qdiscs and any tap left, as recorded in `<dir>/network`. Blocking.
pub fn cleanup_saved(dir: &Path) {
    use std::io::Read;
    let path = dir.join(STATE_FILE);
    let mut text = String::new();
    match std::fs::File::open(&path) {
        Ok(f) => {
            if let Err(e) = f.take(MAX_STATE_FILE).read_to_string(&mut text) {
                tracing::warn!("reading {}: {e}", path.display());
                return;
            }
        }
        Err(_) => return,
    }
    let Some((netns, pairs)) = parse_state(&text) else {
        tracing::warn!("{} is not a valid network state file; not touching any netns", path.display());
        return;
    };
    let p = netns.clone();
    report_detach(&netns, netns::run_in_blocking(&netns, move || undo_in(&p, &pairs)));
}

/// The SetupSandbox request: interfaces by MAC with the CNI name, MTU and addresses; routes
/// with the device named by the guest-side interface name (pure).
pub fn setup_request(hostname: &str, ifaces: &[Interface], routes: &[links::Route]) -> SetupSandboxRequest {
    let interfaces = ifaces
        .iter()
        .map(|i| NetworkInterface {
            mac: format_mac(&i.mac),
            name: i.name.clone(),
            mtu: i.mtu,
            addresses: i
                .addresses
                .iter()
                .map(|(ip, len)| IpAddress {
                    address: ip.to_string(),
                    prefix_len: u32::from(*len),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let routes = routes
        .iter()
        .filter_map(|r| {
            let dev = ifaces.iter().find(|i| i.index == r.oif)?;
            Some(PbRoute {
                destination: r.destination.map(|(ip, len)| format!("{ip}/{len}")).unwrap_or_default(),
                gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                device: dev.name.clone(),
                ..Default::default()
            })
        })
        .collect();
    SetupSandboxRequest { hostname: hostname.to_string(), interfaces, routes, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn spec_with(ns_path: Option<&str>, hostname: Option<&str>) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}]}
        });
        if let Some(p) = ns_path {
            v["linux"]["namespaces"][1]["path"] = p.into();
        }
        if let Some(h) = hostname {
            v["hostname"] = h.into();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pod_config_from_spec() {
        let c = PodConfig::from_spec(&spec_with(Some("/var/run/netns/cni-1"), Some("web-0"))).unwrap();
        assert_eq!(c.netns, Some(PathBuf::from("/var/run/netns/cni-1")));
        assert_eq!(c.hostname, "web-0");
        let c = PodConfig::from_spec(&spec_with(None, None)).unwrap();
        assert_eq!(c, PodConfig::default());
        assert!(PodConfig::from_spec(&spec_with(Some("/var/run/netns/../x"), None)).is_err());
        assert!(PodConfig::from_spec(&spec_with(Some("relative"), None)).is_err());
    }

    #[test]
    fn state_file_round_trip() {
        let pairs = vec![(3, "tap0_bwk".to_string()), (4, "tap1_bwk".to_string())];
        let text = render_state(Path::new("/var/run/netns/cni-1"), &pairs);
        assert_eq!(parse_state(&text), Some((PathBuf::from("/var/run/netns/cni-1"), pairs)));
        assert_eq!(parse_state("link 3 tap0_bwk\n"), None, "no netns line");
        assert_eq!(parse_state("netns /etc/../passwd\nlink 3 tap0_bwk\n"), None);
        let (_, p) = parse_state("netns /run/netns/x\nlink 3 eth0\nlink x tap0_bwk\nlink 5 tap9_bwk\n").unwrap();
        assert_eq!(p, vec![(5, "tap9_bwk".to_string())], "only our taps with numeric indexes");
    }

    #[test]
    fn setup_request_building() {
        let eth0 = Interface {
            index: 3,
            name: "eth0".into(),
            mac: [0x0a, 0x58, 0x0a, 0x58, 0x00, 0x05],
            mtu: 1450,
            loopback: false,
            ethernet: true,
            addresses: vec![
                (IpAddr::V4(Ipv4Addr::new(10, 88, 0, 5)), 16),
                (IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5)), 64),
            ],
        };
        let routes = vec![
            links::Route { destination: None, gateway: Some(IpAddr::V4(Ipv4Addr::new(10, 88, 0, 1))), oif: 3 },
            links::Route { destination: Some((IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8)), gateway: None, oif: 3 },
            links::Route { destination: None, gateway: None, oif: 99 },
        ];
        let r = setup_request("pod-a", &[eth0], &routes);
        assert_eq!(r.hostname, "pod-a");
        assert_eq!(r.interfaces.len(), 1);
        let i = &r.interfaces[0];
        assert_eq!((i.mac.as_str(), i.name.as_str(), i.mtu), ("0a:58:0a:58:00:05", "eth0", 1450));
        assert_eq!(i.addresses[0].address, "10.88.0.5");
        assert_eq!(i.addresses[1].address, "fd00::5");
        assert_eq!(i.addresses[1].prefix_len, 64);
        assert_eq!(r.routes.len(), 2, "a route through an unknown interface is dropped");
        assert_eq!((r.routes[0].destination.as_str(), r.routes[0].gateway.as_str()), ("", "10.88.0.1"));
        assert_eq!((r.routes[1].destination.as_str(), r.routes[1].device.as_str()), ("10.0.0.0/8", "eth0"));
    }
}
