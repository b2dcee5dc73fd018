//! The QEMU command line (pure, unit tested; the benchmark reuses it): `qemu-system-x86_64
//! -M microvm` with a vhost-user vsock device, an optional vhost-user-fs device and tap NICs.

use std::path::{Path, PathBuf};

use crate::resources::network::VmNic;
use crate::vmm::Accel;

/// Everything on one QEMU command line. The backend (mod.rs) fills it from the sandbox's
/// [`crate::vmm::VmConfig`] and its own helpers' sockets.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub accel: Accel,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Operator-supplied extra kernel parameters (config `vm.kernel_params`).
    pub extra_kernel_params: String,
    /// vhost-user socket of the vsock backend (vhost-device-vsock).
    pub vsock_socket: PathBuf,
    /// vhost-user socket of virtiofsd, when the VM gets the share.
    pub fs_socket: Option<PathBuf>,
    /// Guest serial console is written here.
    pub console_log: PathBuf,
    /// QEMU's own stdout/stderr go here.
    pub log: PathBuf,
    /// Pod NICs: open tap fds (owned by the sandbox's network) and the guest MACs.
    pub nics: Vec<VmNic>,
    /// Inherited fds that replace the paths above (a jailed QEMU opens nothing in the
    /// state directory): a connected socket to vhost-device-vsock, to virtiofsd, and the
    /// console log open for appending.
    pub fds: PassedFds,
    /// QEMU's own seccomp filter ([`SANDBOX`]).
    pub sandbox: bool,
    /// `-name`: the sandbox's state directory, so that its QEMU can be told apart in `ps`
    /// (its command line names no other path of the sandbox once it gets fds).
    pub name: Option<String>,
}

/// Fds QEMU inherits instead of opening paths (see [`VmSpec::fds`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassedFds {
    pub vsock: Option<i32>,
    pub fs: Option<i32>,
    pub console: Option<i32>,
}

/// QEMU's seccomp sandbox: its filter on, and the optional deny groups all on: obsolete
/// syscalls, set*uid/gid and friends, fork/exec, and scheduler/affinity/resource calls.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Kernel parameters that make the Debian cloud kernel boot fast under microvm/TCG (each
/// skips a probe, self-test or delay that a microVM does not need).
pub const BASE_KERNEL_PARAMS: &str = "console=ttyS0 reboot=t panic=-1 quiet mitigations=off \
nokaslr i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd cryptomgr.notests \
random.trust_cpu=on no_timer_check";

/// Escapes a value for QEMU's `key=value,key=value` option syntax (',' doubles).
fn opt(value: &Path) -> String {
    value.to_string_lossy().replace(',', ",,")
}

/// The guest kernel command line.
pub fn kernel_cmdline(tsc_khz: Option<u64>, extra: &str) -> String {
    let mut s = String::from(BASE_KERNEL_PARAMS);
    if let Some(khz) = tsc_khz {
        // microvm has no PIT/HPET to calibrate the TSC against: tell the kernel.
        s.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
    }
    let extra = extra.trim();
    if !extra.is_empty() {
        s.push(' ');
        s.push_str(extra);
    }
    s
}

/// The full QEMU argument list for `spec` (pure).
pub fn build_args(spec: &VmSpec, tsc_khz: Option<u64>) -> Vec<String> {
    let mem = spec.memory_mib;
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|x| x.to_string()));
    push(&["-M", "microvm,x-option-roms=off,memory-backend=mem"]);
    match spec.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
    }
    push(&["-smp", &spec.vcpus.to_string(), "-m", &format!("{mem}M")]);
    push(&["-object", &format!("memory-backend-memfd,id=mem,size={mem}M,share=on")]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    push(&["-kernel", &spec.kernel.to_string_lossy(), "-initrd", &spec.initrd.to_string_lossy()]);
    push(&["-append", &kernel_cmdline(tsc_khz, &spec.extra_kernel_params)]);
    if let Some(name) = &spec.name {
        push(&["-name", &name.replace(',', ",,")]);
    }
    if spec.sandbox {
        push(&["-sandbox", SANDBOX]);
    }
    match spec.fds.console {
        Some(fd) => {
            // the fd joins fd set 1; QEMU opens "/dev/fdset/1" by dup'ing it
            push(&["-add-fd", &format!("fd={fd},set=1,opaque=console")]);
            // append=on: QEMU would otherwise truncate the fd (ftruncate fails on the pipe).
            push(&["-chardev", "file,id=console,path=/dev/fdset/1,append=on"]);
        }
        None => push(&["-chardev", &format!("file,id=console,path={}", opt(&spec.console_log))]),
    }
    push(&["-serial", "chardev:console"]);
    let socket = |id: &str, path: &Path, fd: Option<i32>| match fd {
        Some(fd) => format!("socket,id={id},fd={fd}"),
        None => format!("socket,id={id},path={}", opt(path)),
    };
    push(&["-chardev", &socket("vsock", &spec.vsock_socket, spec.fds.vsock)]);
    push(&["-device", "vhost-user-vsock-device,chardev=vsock"]);
    if let Some(fs) = &spec.fs_socket {
        push(&["-chardev", &socket("fs", fs, spec.fds.fs)]);
        push(&["-device", &format!("vhost-user-fs-device,chardev=fs,tag={}", bulwark_protocol::SHARE_TAG)]);
    }
    for (n, nic) in spec.nics.iter().enumerate() {
        // vhost=off: no /dev/vhost-net on every host; the fd is inherited (spawn_with_fds).
        push(&["-netdev", &format!("tap,id=net{n},fd={},vhost=off", nic.tap_fd)]);
        push(&["-device", &format!("virtio-net-device,netdev=net{n},mac={}", nic.mac)]);
    }
    a
}

/// Host TSC frequency in kHz from /proc/cpuinfo's first "cpu MHz" line (pure).
pub fn parse_cpu_khz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    if !(1.0..=100_000.0).contains(&mhz) {
        return None;
    }
    Some((mhz * 1000.0).round() as u64)
}

/// The host's TSC frequency in kHz, from /proc/cpuinfo.
pub fn host_tsc_khz() -> Option<u64> {
    parse_cpu_khz(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(accel: Accel, fs: bool) -> VmSpec {
        VmSpec {
            vcpus: 2,
            memory_mib: 256,
            accel,
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd".into(),
            extra_kernel_params: " loglevel=7 ".into(),
            vsock_socket: "/run/b/x/vhost-vsock.sock".into(),
            fs_socket: fs.then(|| PathBuf::from("/run/b/x/virtiofsd.sock")),
            console_log: "/run/b/a,b/console.log".into(),
            log: "/run/b/x/qemu.log".into(),
            nics: vec![],
            fds: PassedFds::default(),
            sandbox: false,
            name: None,
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
    }

    #[test]
    fn tcg_args() {
        let a = build_args(&spec(Accel::Tcg, true), Some(2_095_078));
        assert_eq!(after(&a, "-accel"), ["tcg"]);
        assert_eq!(after(&a, "-cpu"), ["max"]);
        assert_eq!(after(&a, "-smp"), ["2"]);
        assert_eq!(after(&a, "-m"), ["256M"]);
        assert_eq!(after(&a, "-object"), ["memory-backend-memfd,id=mem,size=256M,share=on"]);
        assert_eq!(after(&a, "-M"), ["microvm,x-option-roms=off,memory-backend=mem"]);
        let append = after(&a, "-append")[0];
        assert!(append.starts_with("console=ttyS0 "));
        assert!(append.contains("tsc_early_khz=2095078 tsc=reliable"));
        assert!(append.ends_with(" loglevel=7"));
        let devs = after(&a, "-device");
        assert!(devs.contains(&"vhost-user-vsock-device,chardev=vsock"));
        assert!(devs.contains(&"vhost-user-fs-device,chardev=fs,tag=bulwark-share"));
        // commas in paths are escaped for QEMU's option parser
        assert!(after(&a, "-chardev").contains(&"file,id=console,path=/run/b/a,,b/console.log"));
        assert!(a.iter().any(|x| x == "-no-reboot"));
    }

    #[test]
    fn kvm_args_without_share() {
        let a = build_args(&spec(Accel::Kvm, false), None);
        assert_eq!(after(&a, "-accel"), ["kvm"]);
        assert_eq!(after(&a, "-cpu"), ["host"]);
        assert!(!after(&a, "-append")[0].contains("tsc_early_khz"));
        assert!(!a.iter().any(|x| x.contains("vhost-user-fs")));
    }

    #[test]
    fn jailed_args_pass_fds_and_turn_the_sandbox_on() {
        let mut s = spec(Accel::Tcg, true);
        assert!(!build_args(&s, None).iter().any(|x| x == "-sandbox" || x == "-add-fd"));
        s.sandbox = true;
        s.fds = PassedFds { vsock: Some(10), fs: Some(11), console: Some(12) };
        let a = build_args(&s, None);
        assert!(!a.iter().any(|x| x == "-name"));
        s.name = Some("/run/b/a,b".into());
        assert_eq!(after(&build_args(&s, None), "-name"), ["/run/b/a,,b"]);
        assert_eq!(after(&a, "-sandbox"), ["on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]);
        assert_eq!(after(&a, "-add-fd"), ["fd=12,set=1,opaque=console"]);
        let chardevs = after(&a, "-chardev");
        assert_eq!(
            chardevs,
            ["file,id=console,path=/dev/fdset/1,append=on", "socket,id=vsock,fd=10", "socket,id=fs,fd=11"],
            "no path of the state directory is left"
        );
        assert!(!a.iter().any(|x| x.contains("/run/b/")), "{a:?}");
        assert!(!a.iter().any(|x| x.contains("/run/b/")), "{a:?}");
    }

    #[test]
    fn nic_args() {
        let mut s = spec(Accel::Tcg, true);
        s.nics = vec![VmNic { tap_fd: 17, mac: "0a:58:0a:00:00:05".into() }];
        let a = build_args(&s, None);
        assert_eq!(after(&a, "-netdev"), ["tap,id=net0,fd=17,vhost=off"]);
        assert!(after(&a, "-device").contains(&"virtio-net-device,netdev=net0,mac=0a:58:0a:00:00:05"));
        assert!(!build_args(&spec(Accel::Tcg, true), None).iter().any(|x| x == "-netdev"));
    }

    #[test]
    fn cpuinfo_parsing() {
        assert_eq!(parse_cpu_khz("processor\t: 0\ncpu MHz\t\t: 2095.078\n"), Some(2_095_078));
        assert_eq!(parse_cpu_khz("cpu MHz : 3000\n"), Some(3_000_000));
        assert_eq!(parse_cpu_khz("cpu MHz : fast\n"), None);
        assert_eq!(parse_cpu_khz("cpu MHz : -5\n"), None);
        assert_eq!(parse_cpu_khz(""), None);
    }
}
