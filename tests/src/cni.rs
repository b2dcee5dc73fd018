//! The CNI network of one CRI test instance: a /24 that collides with nothing on the machine
//! (checked against `ip -4 addr` and `ip -4 route`, and claimed with a lock file so parallel
//! tests, in this process or another, never share one), a bridge named after it, and the
//! bridge + host-local + portmap conflist containerd's CRI plugin reads. Dropping it deletes
//! the bridge (the bridge plugin never does) and releases the claim.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process;

/// Directory holding the CNI plugin binaries (Debian `containernetworking-plugins`).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// One claimed test network.
pub struct Network {
    /// e.g. 10.213.7.0 (always a /24).
    pub subnet: Ipv4Addr,
    /// The bridge's address, `<subnet>.1`: the pods' default gateway.
    pub gateway: Ipv4Addr,
    /// Bridge device name (at most 15 characters).
    pub bridge: String,
    /// The CNI network name in the conflist.
    pub name: String,
    _claim: File,
}

/// Candidate /24s, tried in order: 10.213.0-63.0 then 172.29.0-63.0.
fn candidates() -> impl Iterator<Item = (u8, u8, u8)> {
    (0..64u8).map(|n| (10, 213, n)).chain((0..64u8).map(|n| (172, 29, n)))
}

/// Every IPv4 prefix the machine has as an address or a (non-default) route.
fn host_prefixes() -> Result<Vec<(u32, u8)>, String> {
    let mut found = Vec::new();
    for args in [&["-4", "-o", "addr", "show"][..], &["-4", "route", "show", "table", "all"][..]] {
        let out = process::run(Command::new("ip").args(args), Duration::from_secs(10))
            .map_err(|e| format!("ip {}: {e} (apt-get install iproute2)", args.join(" ")))?;
        if !out.status.success() {
            return Err(format!("ip {} failed: {}", args.join(" "), out.stderr));
        }
        for word in out.stdout.split_whitespace() {
            if let Some(p) = parse_prefix(word) {
                found.push(p);
            }
        }
    }
    Ok(found)
}

/// `a.b.c.d/len` or a bare `a.b.c.d` (a /32) as (network bits, length); None for anything else.
fn parse_prefix(word: &str) -> Option<(u32, u8)> {
    let (addr, len) = match word.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().ok()?),
        None => (word, 32),
    };
    let ip: Ipv4Addr = addr.parse().ok()?;
    (len <= 32).then_some((u32::from(ip), len))
}

fn overlaps(a: (u32, u8), b: (u32, u8)) -> bool {
    let len = a.1.min(b.1);
    if len == 0 {
        // Default routes (0.0.0.0/0) cover everything and say nothing about collisions.
        return false;
    }
    let mask = u32::MAX << (32 - u32::from(len));
    (a.0 & mask) == (b.0 & mask)
}

impl Network {
    /// Claims the first candidate /24 that overlaps no address or route of the machine, whose
    /// bridge name is free, and that no other test holds.
    pub fn claim() -> Result<Network, String> {
        let taken = host_prefixes()?;
        for (a, b, c) in candidates() {
            let subnet = Ipv4Addr::new(a, b, c, 0);
            if taken.iter().any(|t| overlaps(*t, (u32::from(subnet), 24))) {
                continue;
            }
            let bridge = format!("bwkc{b}x{c}");
            if Path::new("/sys/class/net").join(&bridge).exists() {
                continue;
            }
            let claim_path = PathBuf::from(format!("/tmp/bwk-cri-net-{a}.{b}.{c}.lock"));
            let Ok(claim) = File::create(&claim_path) else { continue };
            // SAFETY: flock(2) on a descriptor this function owns; no memory is passed.
            let locked = unsafe { libc::flock(claim.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
            if !locked {
                continue;
            }
            return Ok(Network {
                subnet,
                gateway: Ipv4Addr::new(a, b, c, 1),
                bridge,
                name: format!("bwk-cri-{b}-{c}"),
                _claim: claim,
            });
        }
        Err(format!(
            "no free test subnet among 10.213.0-63.0/24 and 172.29.0-63.0/24 (all overlap the \
             machine's addresses/routes or are held by other tests): {taken:?}"
        ))
    }

    /// The conflist: bridge (gateway on the bridge, no masquerade: traffic stays on this
    /// bridge) with host-local IPAM keeping its state under `ipam_dir`, then portmap.
    /// containerd adds the loopback plugin for `lo` by itself.
    pub fn conflist(&self, ipam_dir: &Path) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": ipam_dir,
                        "ranges": [[{ "subnet": format!("{}/24", self.subnet), "gateway": self.gateway.to_string() }]],
                        "routes": [{ "dst": "0.0.0.0/0" }]
                    }
                },
                { "type": "portmap", "capabilities": { "portMappings": true } }
            ]
        })
        .to_string()
    }

    /// Host-side interfaces still attached to the bridge (pod veths).
    pub fn bridge_ports(&self) -> Vec<String> {
        crate::leftovers::entries(&Path::new("/sys/class/net").join(&self.bridge).join("brif"))
    }

    /// Whether the bridge device exists.
    pub fn bridge_exists(&self) -> bool {
        Path::new("/sys/class/net").join(&self.bridge).exists()
    }

    /// Deletes the bridge if it exists; error if it is still there afterwards.
    pub fn delete_bridge(&self) -> Result<(), String> {
        if self.bridge_exists() {
            let out =
                process::run(Command::new("ip").args(["link", "del", "dev", &self.bridge]), Duration::from_secs(10))?;
            if !out.status.success() {
                return Err(format!("ip link del {}: {}", self.bridge, out.stderr));
            }
        }
        if self.bridge_exists() {
            return Err(format!("bridge {} still exists after ip link del", self.bridge));
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = self.delete_bridge();
        // The lock file stays (empty): unlinking it could let two tests lock different inodes
        // of the same name. Closing `_claim` releases the lock.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_overlap() {
        assert_eq!(parse_prefix("10.213.5.0/24"), Some((u32::from(Ipv4Addr::new(10, 213, 5, 0)), 24)));
        assert_eq!(parse_prefix("192.0.2.2"), Some((u32::from(Ipv4Addr::new(192, 0, 2, 2)), 32)));
        assert_eq!(parse_prefix("dev"), None);
        assert_eq!(parse_prefix("1.2.3.4/33"), None);
        let s = (u32::from(Ipv4Addr::new(10, 213, 5, 0)), 24);
        assert!(overlaps(s, (u32::from(Ipv4Addr::new(10, 0, 0, 0)), 8)));
        assert!(overlaps(s, (u32::from(Ipv4Addr::new(10, 213, 5, 77)), 32)));
        assert!(!overlaps(s, (u32::from(Ipv4Addr::new(10, 213, 6, 0)), 24)));
        assert!(!overlaps(s, (0, 0)), "a default route is not a collision");
    }
}
