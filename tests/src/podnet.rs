//! A pod network made the way CNI's bridge plugin makes one, for tests without CRI: a network
//! namespace `bwk-t<pid>-<n>`, a test bridge on the host with a gateway address in a subnet
//! that collides with nothing on the machine, and a veth pair whose pod end is `eth0` in the
//! netns with an address and a default route via the bridge. Everything is removed in Drop.
//! Commands are `ip`/`tc` from iproute2 with arguments the test builds itself.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::process::{self, Output};

const LIMIT: Duration = Duration::from_secs(30);
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Runs `ip`/`tc` (or another iproute2 tool) and fails with its stderr.
pub fn iproute(tool: &str, args: &[&str]) -> Result<Output, String> {
    let out =
        process::run(Command::new(tool).args(args), LIMIT).map_err(|e| format!("{e} (apt-get install iproute2)"))?;
    if !out.status.success() {
        return Err(format!("{tool} {}: {}", args.join(" "), out.stderr.trim()));
    }
    Ok(out)
}

/// (network, prefix) of every IPv4 route and address on the machine (all tables).
fn used_ipv4_networks() -> Result<Vec<(u32, u32)>, String> {
    let mut text = iproute("ip", &["-4", "route", "show", "table", "all"])?.stdout;
    text.push_str(&iproute("ip", &["-4", "-o", "addr"])?.stdout);
    let mut nets = Vec::new();
    for word in text.split_whitespace() {
        let (ip, len) = match word.split_once('/') {
            Some((ip, len)) => (ip, len.parse::<u32>().unwrap_or(32)),
            None => (word, 32),
        };
        if let Ok(ip) = ip.parse::<Ipv4Addr>() {
            if len <= 32 {
                nets.push((u32::from(ip), len));
            }
        }
    }
    Ok(nets)
}

fn overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

/// A /24 in 10.200.0.0/13 that overlaps no route or address of the machine.
fn pick_subnet(seed: u32) -> Result<Ipv4Addr, String> {
    let used = used_ipv4_networks()?;
    for i in 0..2048u32 {
        let k = (seed + i * 7919) % 2048;
        let net = Ipv4Addr::new(10, 200 + (k / 256) as u8, (k % 256) as u8, 0);
        let cand = (u32::from(net), 24);
        if !used.iter().any(|u| overlaps(*u, cand)) {
            return Ok(net);
        }
    }
    Err("no free /24 in 10.200.0.0/13 for the test bridge".into())
}

/// The test pod network.
pub struct PodNet {
    /// Name under /var/run/netns.
    pub netns: String,
    pub netns_path: PathBuf,
    pub bridge: String,
    pub gateway: Ipv4Addr,
    pub pod_ip: Ipv4Addr,
    pub gateway6: String,
    pub pod_ip6: String,
    /// The pod interface's MAC and MTU (as CNI would leave them).
    pub mac: String,
    pub mtu: u32,
    /// A second pod interface `net1` (see [`PodNet::add_net1`]): host-side address, pod
    /// address, pod MAC.
    pub net1: Option<(Ipv4Addr, Ipv4Addr, String)>,
    host_veth: String,
    host_veth1: String,
}

impl PodNet {
    /// A netns with only `lo` (no CNI interface): for the error path.
    pub fn empty_netns() -> Result<PodNet, String> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let netns = format!("bwk-t{pid}-{n}");
        iproute("ip", &["netns", "add", &netns])?;
        Ok(PodNet {
            netns_path: PathBuf::from(format!("/var/run/netns/{netns}")),
            netns,
            bridge: String::new(),
            gateway: Ipv4Addr::UNSPECIFIED,
            pod_ip: Ipv4Addr::UNSPECIFIED,
            gateway6: String::new(),
            pod_ip6: String::new(),
            mac: String::new(),
            mtu: 0,
            net1: None,
            host_veth: String::new(),
            host_veth1: String::new(),
        })
    }

    /// The full bridge setup, MTU `mtu` on the veth pair.
    pub fn bridge(mtu: u32) -> Result<PodNet, String> {
        let mut p = PodNet::empty_netns()?;
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{}", (pid as usize * 16 + n) % 10_000_000);
        p.bridge = format!("bwkb{tag}");
        p.host_veth = format!("bwkh{tag}");
        let pod_veth = format!("bwkp{tag}");
        let net = pick_subnet(pid.wrapping_add(n as u32))?;
        let o = net.octets();
        p.gateway = Ipv4Addr::new(o[0], o[1], o[2], 1);
        p.pod_ip = Ipv4Addr::new(o[0], o[1], o[2], 2);
        let v6 = format!("fdb7:{:x}:{:x}", pid & 0xffff, n & 0xffff);
        p.gateway6 = format!("{v6}::1");
        p.pod_ip6 = format!("{v6}::2");
        let ns = p.netns.clone();
        let mtu_s = mtu.to_string();
        let gw = format!("{}/24", p.gateway);
        let pod = format!("{}/24", p.pod_ip);
        let gw6 = format!("{}/64", p.gateway6);
        let pod6 = format!("{}/64", p.pod_ip6);
        iproute("ip", &["link", "add", &p.bridge, "type", "bridge"])?;
        iproute("ip", &["addr", "add", &gw, "dev", &p.bridge])?;
        iproute("ip", &["-6", "addr", "add", &gw6, "dev", &p.bridge, "nodad"])?;
        iproute("ip", &["link", "set", &p.bridge, "up"])?;
        iproute(
            "ip",
            &["link", "add", &p.host_veth, "mtu", &mtu_s, "type", "veth", "peer", "name", &pod_veth, "mtu", &mtu_s],
        )?;
        iproute("ip", &["link", "set", &p.host_veth, "master", &p.bridge, "up"])?;
        iproute("ip", &["link", "set", &pod_veth, "netns", &ns])?;
        iproute("ip", &["-n", &ns, "link", "set", &pod_veth, "name", "eth0"])?;
        iproute("ip", &["-n", &ns, "addr", "add", &pod, "dev", "eth0"])?;
        iproute("ip", &["-n", &ns, "-6", "addr", "add", &pod6, "dev", "eth0", "nodad"])?;
        iproute("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        iproute("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        iproute("ip", &["-n", &ns, "route", "add", "default", "via", &p.gateway.to_string()])?;
        iproute("ip", &["-n", &ns, "-6", "route", "add", "default", "via", &p.gateway6])?;
        let link = iproute("ip", &["-n", &ns, "-o", "link", "show", "eth0"])?.stdout;
        p.mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .ok_or_else(|| format!("no MAC in {link:?}"))?
            .to_string();
        p.mtu = mtu;
        Ok(p)
    }

    /// Adds a second interface `net1` (like a Multus extra network): a veth pair whose host
    /// end has `<subnet>.1/24` and whose pod end has `<subnet>.2/24`, in another free /24.
    pub fn add_net1(&mut self) -> Result<(), String> {
        let tag = self.bridge.trim_start_matches("bwkb").to_string();
        self.host_veth1 = format!("bwkq{tag}");
        let pod_veth = format!("bwkr{tag}");
        let net = pick_subnet(std::process::id().wrapping_add(977))?;
        let o = net.octets();
        let (host_ip, pod_ip) = (Ipv4Addr::new(o[0], o[1], o[2], 1), Ipv4Addr::new(o[0], o[1], o[2], 2));
        let ns = self.netns.clone();
        iproute("ip", &["link", "add", &self.host_veth1, "type", "veth", "peer", "name", &pod_veth])?;
        iproute("ip", &["addr", "add", &format!("{host_ip}/24"), "dev", &self.host_veth1])?;
        iproute("ip", &["link", "set", &self.host_veth1, "up"])?;
        iproute("ip", &["link", "set", &pod_veth, "netns", &ns])?;
        iproute("ip", &["-n", &ns, "link", "set", &pod_veth, "name", "net1"])?;
        iproute("ip", &["-n", &ns, "addr", "add", &format!("{pod_ip}/24"), "dev", "net1"])?;
        iproute("ip", &["-n", &ns, "link", "set", "net1", "up"])?;
        let link = iproute("ip", &["-n", &ns, "-o", "link", "show", "net1"])?.stdout;
        let mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .ok_or_else(|| format!("no MAC in {link:?}"))?
            .to_string();
        self.net1 = Some((host_ip, pod_ip, mac));
        Ok(())
    }

    /// What Bulwark may have left in the netns: taps, ingress qdiscs, its bandwidth qdiscs
    /// (handle `b17:`), and processes or fds holding the netns.
    pub fn leftovers(&self) -> Result<Vec<String>, String> {
        let mut found = Vec::new();
        let links = iproute("ip", &["-n", &self.netns, "-o", "link"])?.stdout;
        for l in links.lines().filter(|l| l.contains("_bwk")) {
            found.push(format!("tap left in {}: {l}", self.netns));
        }
        let qdiscs = iproute("tc", &["-n", &self.netns, "qdisc", "show"])?.stdout;
        for q in qdiscs.lines().filter(|q| q.contains("ingress") || q.contains(" b17: ")) {
            found.push(format!("qdisc left in {}: {q}", self.netns));
        }
        found.extend(holders(&self.netns_path));
        Ok(found)
    }
}

/// Processes (other than this one) whose threads are in, or whose fds refer to, the netns at
/// `path`.
pub fn holders(path: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(path) else { return vec![] };
    let needle = format!("net:[{}]", md.ino());
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return found };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let mut links = Vec::new();
        if let Ok(tasks) = std::fs::read_dir(p.path().join("task")) {
            links.extend(tasks.flatten().map(|t| t.path().join("ns/net")));
        }
        if let Ok(fds) = std::fs::read_dir(p.path().join("fd")) {
            links.extend(fds.flatten().map(|f| f.path()));
        }
        if links.iter().any(|l| std::fs::read_link(l).map(|t| t.to_string_lossy() == needle).unwrap_or(false)) {
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            found.push(format!("process {pid} holds the netns: {}", String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    found
}

impl Drop for PodNet {
    fn drop(&mut self) {
        // Deleting the netns removes the pod veth end and, with it, the host end.
        let _ = iproute("ip", &["netns", "del", &self.netns]);
        for v in [&self.host_veth1] {
            if !v.is_empty() {
                let _ = iproute("ip", &["link", "del", v]);
            }
        }
        if !self.host_veth.is_empty() {
            let _ = iproute("ip", &["link", "del", &self.host_veth]);
        }
        if !self.bridge.is_empty() {
            let _ = iproute("ip", &["link", "del", &self.bridge]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_rule() {
        let n = |a: [u8; 4], l| (u32::from(Ipv4Addr::from(a)), l);
        assert!(overlaps(n([10, 200, 1, 0], 24), n([10, 200, 1, 7], 32)));
        assert!(overlaps(n([10, 0, 0, 0], 8), n([10, 200, 1, 0], 24)));
        assert!(overlaps(n([0, 0, 0, 0], 0), n([10, 200, 1, 0], 24)));
        assert!(!overlaps(n([10, 200, 2, 0], 24), n([10, 200, 1, 0], 24)));
        assert!(!overlaps(n([192, 0, 2, 0], 24), n([10, 200, 1, 0], 24)));
    }
}
