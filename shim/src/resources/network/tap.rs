//! Tap devices for the VM: opened on /dev/net/tun with TUNSETIFF in the calling thread's
//! network namespace. Not persistent: the device exists while an fd of it is open, so it
//! goes away with QEMU even if the shim crashes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use bulwark_rtnl::valid_ifname;

/// TUNSETIFF = _IOW('T', 202, int).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUN_DEVICE: &str = "/dev/net/tun";

/// Creates tap device `name` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, what QEMU's virtio-net
/// backend expects) and returns its fd (close-on-exec).
pub fn create(name: &str) -> io::Result<OwnedFd> {
    if !valid_ifname(name) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid tap name {name:?}")));
    }
    let file: File =
        OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(TUN_DEVICE).map_err(|e| {
            io::Error::new(e.kind(), format!("opening {TUN_DEVICE}: {e} (is the tun module available?)"))
        })?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads a struct ifreq we own and that outlives the call; the fd is open.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut ifr as *mut libc::ifreq) };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("creating tap {name} (TUNSETIFF): {e}")));
    }
    Ok(OwnedFd::from(file))
}
