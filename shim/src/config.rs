//! The node configuration: `/etc/bulwark/config.toml` (override the path with `BULWARK_CONFIG`).
//!
//! Every key, its meaning and its default (the defaults work on a stock Debian node once
//! the guest image is installed):
//!
//! ```toml
//! [paths]
//! qemu = "/usr/bin/qemu-system-x86_64"        # the hypervisor binary
//! virtiofsd = "/usr/libexec/virtiofsd"        # serves the sandbox share (container rootfs)
//! vhost_device_vsock = "/usr/bin/vhost-device-vsock"  # vsock backend (hybrid vsock)
//! kernel = "/usr/share/bulwark/vmlinux"       # guest kernel (uncompressed ELF, PVH entry)
//! initrd = "/usr/share/bulwark/initramfs.cpio" # guest initramfs with bulwark-agent as /init
//! runtime_dir = "/run/bulwark"                # per-sandbox state: sockets, console log, pids
//!
//! [vm]
//! vcpus = 1                 # vCPUs of a VM whose pod sets no CPU limit (1..=64)
//! memory_mib = 512          # guest RAM in MiB of a VM whose pod sets no memory limit (64..=262144)
//! min_vcpus = 1             # bounds for VMs sized from the pod's limits (sizing.rs)
//! max_vcpus = 8
//! min_memory_mib = 128
//! max_memory_mib = 16384
//! acceleration = "auto"     # auto | kvm | tcg (auto probes KVM once per host boot)
//! boot_timeout_secs = 60    # how long to wait for the agent's READY line (1..=3600)
//! kernel_params = ""        # extra guest kernel parameters, set by the operator only
//! allow_tcg_fallback = true # with acceleration = "auto": false makes a host without usable
//!                           # KVM fail every boot instead of running guests under TCG (TCG
//!                           # is emulation, not a boundary QEMU supports as one; see docs/jail.md)
//!
//! [jail]                    # how QEMU and its helpers are confined on the host (docs/jail.md)
//! uid_base = 2000000000     # each sandbox's QEMU and vhost-device-vsock run as two uids (and
//! uid_count = 65536         # the same gids) of uid_base..uid_base+uid_count, used by nothing else
//! unprivileged_virtiofsd = true # virtiofsd runs in a user namespace whose ids 0..65535 are a
//!                           # block of 65536 host ids of its own, and serves id-mapped mounts
//!                           # (false: it runs as root; for filesystems without idmapped mounts)
//! idmap_base = 2147483648   # those blocks: idmap_base + k * 65536 for k < idmap_count, used by
//! idmap_count = 1024        # nothing else (at most idmap_count sandboxes run at once)
//! oom_score_adj = 0         # of QEMU, virtiofsd and vhost-device-vsock (0..=1000; the shim
//!                           # itself inherits containerd's -999)
//!
//! [tenant]                  # the policy of every tenant not listed under [tenants] (policy.rs)
//! max_vcpus = 8             # most vCPUs a pod's VM may ask for (more: the pod is refused)
//! max_memory_mib = 16384    # most memory a pod's VM may ask for
//! # pids_max = 512          # pids.max of the pod's host cgroup (default: [cgroup] pids_max)
//! # io_weight = 50          # io.weight of the pod's host cgroup (default: [cgroup] io_weight)
//! allow_exec = true         # exec into the tenant's pods
//! # network_bandwidth_mbit = 100  # egress ceiling of each pod's NICs, Mbit/s (tc tbf on the
//!                           # host tap; 1..=100000; default: none)
//! allow_unconfined_seccomp = false  # false: containers without a profile get the default one
//! host_paths = ["/var/lib/kubelet/pods", "/var/lib/containerd", "/run/containerd", "/var/run/containerd"]
//!                           # host directories whose contents may be bind-mounted into pods
//!
//! [tenants.team-a]          # one tenant (the pod's bulwark.io/tenant annotation, else its
//! max_vcpus = 2             # namespace): only the keys that differ from [tenant]
//! allow_exec = false
//!
//! [cgroup]                  # the host cgroup v2 of each sandbox (jail/cgroup.rs, docs/host-cgroup.md)
//! required = false          # true: refuse pods when no usable cgroup v2 (else: logged, run without)
//! overhead_memory_mib = 256 # host memory of QEMU + helpers beyond the pod's memory (memory.max)
//! overhead_cpu_millis = 250 # CPU of QEMU + helpers beyond the pod's CPU limit (cpu.max), millicores
//! pids_max = 1024           # pids.max of the sandbox cgroup (QEMU threads, helpers, the shim)
//! io_weight = 100           # io.weight (1..=10000)
//! move_shim = true          # the shim's own process goes into the sandbox cgroup too
//!
//! [telemetry]               # guest syscall telemetry (telemetry/, docs/telemetry.md)
//! enabled = true            # the guest's eBPF collector runs in every sandbox
//! syscalls = []             # event types to collect ("execve", "openat", ...); [] = all
//! guest_max_events_per_sec = 20000  # the collector's own send rate (0 = the agent's default)
//! max_events_per_sec = 20000  # what the shim takes per sandbox; beyond: dropped, counted
//! burst = 40000             # events above the rate accepted at once
//! node_socket = "/run/bulwark/telemetry.sock"  # the Falco plugin's socket ("" = none)
//! node_buffer_bytes = 8388608  # frames held while the node socket is down (then: dropped)
//! json_file = ""            # also append JSON lines here (another pipeline; "" = none)
//! json_file_max_bytes = 67108864  # the JSON file is not written past this (rotate it)
//! frames_file_max_bytes = 4194304 # per sandbox telemetry.frames (`bulwark events`), x2 with .1
//! node_name = ""            # the node's name in events ("" = the host name)
//! ```
//!
//! The RuntimeClass `overhead` (which kubelet adds to the pod's resources, and so to the pod
//! cgroup that is the parent of the sandbox cgroup) should cover the guest's kernel and agent
//! plus `overhead_memory_mib` and `overhead_cpu_millis`.
//!
//! Unknown keys are errors naming the key: a typo must not silently fall back to a default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::policy::{TenantOverride, TenantPolicy};

/// `vm.acceleration`: what the VMM backend runs guests with (vmm/accel.rs resolves `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Acceleration {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for Acceleration {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Acceleration::Auto),
            "kvm" => Ok(Acceleration::Kvm),
            "tcg" => Ok(Acceleration::Tcg),
            other => Err(format!("unknown acceleration {other:?}: use auto, kvm or tcg")),
        }
    }
}

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/bulwark/config.toml";
/// Environment variable that overrides [`DEFAULT_CONFIG_PATH`] (used by tests).
pub const CONFIG_ENV: &str = "BULWARK_CONFIG";
/// Longest runtime_dir accepted: sandbox sockets live below it and unix socket paths are
/// limited to 107 bytes.
pub const MAX_RUNTIME_DIR_LEN: usize = 60;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub paths: Paths,
    pub vm: Vm,
    /// The default tenant policy.
    pub tenant: TenantPolicy,
    /// Per-tenant overrides of [`Config::tenant`], by tenant name.
    pub tenants: std::collections::BTreeMap<String, TenantOverride>,
    pub cgroup: Cgroup,
    pub jail: Jail,
    pub telemetry: Telemetry,
}

/// `[telemetry]`: the guest syscall collector and the shim's relay of its events
/// (telemetry/).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    pub enabled: bool,
    pub syscalls: Vec<String>,
    pub guest_max_events_per_sec: u32,
    pub max_events_per_sec: u32,
    pub burst: u32,
    pub node_socket: PathBuf,
    pub node_buffer_bytes: usize,
    pub json_file: PathBuf,
    pub json_file_max_bytes: u64,
    pub frames_file_max_bytes: u64,
    pub node_name: String,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            enabled: true,
            syscalls: Vec::new(),
            guest_max_events_per_sec: 20_000,
            max_events_per_sec: 20_000,
            burst: 40_000,
            node_socket: "/run/bulwark/telemetry.sock".into(),
            node_buffer_bytes: 8 << 20,
            json_file: PathBuf::new(),
            json_file_max_bytes: 64 << 20,
            frames_file_max_bytes: 4 << 20,
            node_name: String::new(),
        }
    }
}

impl Telemetry {
    /// Checks the section (the syscall names against the protocol's event types).
    fn validate(&self) -> std::result::Result<(), String> {
        for name in &self.syscalls {
            if bulwark_protocol::telemetry::event_type_by_name(name).is_none() {
                return Err(format!(
                    "telemetry.syscalls: unknown event type {name:?} (known: {})",
                    bulwark_protocol::telemetry::event_type_names().join(", ")
                ));
            }
        }
        for (key, p) in [("telemetry.node_socket", &self.node_socket), ("telemetry.json_file", &self.json_file)] {
            if !p.as_os_str().is_empty() && !p.is_absolute() {
                return Err(format!("{key} = {p:?} must be an absolute path (or \"\" for none)"));
            }
        }
        if self.node_socket.as_os_str().len() > 107 {
            return Err(format!(
                "telemetry.node_socket = {:?} is longer than a unix socket path may be (107 bytes)",
                self.node_socket
            ));
        }
        if self.max_events_per_sec == 0 || self.burst == 0 {
            return Err("telemetry.max_events_per_sec and telemetry.burst must be at least 1".to_string());
        }
        if !(64 << 10..=1 << 30).contains(&self.node_buffer_bytes) {
            return Err(format!(
                "telemetry.node_buffer_bytes = {} must be between 64 KiB and 1 GiB",
                self.node_buffer_bytes
            ));
        }
        if !(64 << 10..=1 << 30).contains(&self.frames_file_max_bytes) {
            return Err(format!(
                "telemetry.frames_file_max_bytes = {} must be between 64 KiB and 1 GiB",
                self.frames_file_max_bytes
            ));
        }
        if self.node_name.len() > bulwark_protocol::limits::MAX_TELEMETRY_NAME
            || self.node_name.chars().any(char::is_control)
        {
            return Err("telemetry.node_name must be at most 256 bytes without control characters".to_string());
        }
        Ok(())
    }
}

/// `[cgroup]`: the host cgroup v2 of each sandbox (jail/cgroup.rs).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Cgroup {
    pub required: bool,
    pub overhead_memory_mib: u64,
    pub overhead_cpu_millis: u64,
    pub pids_max: u64,
    pub io_weight: u16,
    pub move_shim: bool,
}

impl Default for Cgroup {
    fn default() -> Self {
        Cgroup {
            required: false,
            overhead_memory_mib: 256,
            overhead_cpu_millis: 250,
            pids_max: 1024,
            io_weight: 100,
            move_shim: true,
        }
    }
}

/// Host ids per block of `[jail] idmap_base` (a user namespace's 0..65535; jail/idmap.rs).
pub const IDMAP_BLOCK: u32 = 65_536;

/// `[jail]`: the host confinement of each sandbox's VMM processes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Jail {
    pub uid_base: u32,
    pub uid_count: u32,
    pub unprivileged_virtiofsd: bool,
    pub idmap_base: u32,
    pub idmap_count: u32,
    pub oom_score_adj: i32,
}

impl Default for Jail {
    fn default() -> Self {
        Jail {
            uid_base: 2_000_000_000,
            uid_count: 65_536,
            unprivileged_virtiofsd: true,
            idmap_base: 2_147_483_648,
            idmap_count: 1024,
            oom_score_adj: 0,
        }
    }
}

/// `[paths]`: binaries, guest image and state directory.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    pub qemu: PathBuf,
    pub virtiofsd: PathBuf,
    pub vhost_device_vsock: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub runtime_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            virtiofsd: "/usr/libexec/virtiofsd".into(),
            vhost_device_vsock: "/usr/bin/vhost-device-vsock".into(),
            kernel: "/usr/share/bulwark/vmlinux".into(),
            initrd: "/usr/share/bulwark/initramfs.cpio".into(),
            runtime_dir: "/run/bulwark".into(),
        }
    }
}

/// `[vm]`: shape of each sandbox VM.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Vm {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub min_vcpus: u32,
    pub max_vcpus: u32,
    pub min_memory_mib: u32,
    pub max_memory_mib: u32,
    pub acceleration: Acceleration,
    pub boot_timeout_secs: u64,
    pub kernel_params: String,
    pub allow_tcg_fallback: bool,
}

impl Default for Vm {
    fn default() -> Self {
        Vm {
            vcpus: 1,
            memory_mib: 512,
            min_vcpus: 1,
            max_vcpus: 8,
            min_memory_mib: 128,
            max_memory_mib: 16384,
            acceleration: Acceleration::Auto,
            boot_timeout_secs: 60,
            kernel_params: String::new(),
            allow_tcg_fallback: true,
        }
    }
}

impl Config {
    /// The path the configuration is read from: `$BULWARK_CONFIG` or the default.
    pub fn path() -> PathBuf {
        match std::env::var_os(CONFIG_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_CONFIG_PATH),
        }
    }

    /// Loads and validates the configuration. A missing file at the *default* path means
    /// "all defaults"; a missing file named by `BULWARK_CONFIG` is an error.
    pub fn load() -> Result<Config> {
        let path = Self::path();
        let explicit = std::env::var_os(CONFIG_ENV).is_some_and(|p| !p.is_empty());
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                let cfg = Config::default();
                cfg.validate(&path)?;
                Ok(cfg)
            }
            Err(e) => Err(Error::Config {
                path,
                msg: format!("cannot read it: {e} (set {CONFIG_ENV} to another file or create it)"),
            }),
        }
    }

    /// Parses and validates configuration text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            msg: format!(
                "{}{}",
                e.message().trim().replace('\n', "; "),
                e.span()
                    .map(|s| format!(
                        " (line {})",
                        1 + text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count()
                    ))
                    .unwrap_or_default()
            ),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks values that TOML types cannot express.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let err = |msg: String| Error::Config { path: path.to_path_buf(), msg };
        let p = &self.paths;
        for (key, value) in [
            ("paths.qemu", &p.qemu),
            ("paths.virtiofsd", &p.virtiofsd),
            ("paths.vhost_device_vsock", &p.vhost_device_vsock),
            ("paths.kernel", &p.kernel),
            ("paths.initrd", &p.initrd),
            ("paths.runtime_dir", &p.runtime_dir),
        ] {
            if !value.is_absolute() {
                return Err(err(format!("{key} = {value:?} must be an absolute path")));
            }
        }
        let rd = p.runtime_dir.as_os_str().len();
        if rd > MAX_RUNTIME_DIR_LEN {
            return Err(err(format!(
                "paths.runtime_dir = {:?} is {rd} bytes long; at most {MAX_RUNTIME_DIR_LEN} \
                 (unix socket paths below it are limited to 107 bytes)",
                p.runtime_dir
            )));
        }
        let vm = &self.vm;
        if !(1..=64).contains(&vm.vcpus) {
            return Err(err(format!("vm.vcpus = {} must be between 1 and 64", vm.vcpus)));
        }
        if !(64..=262_144).contains(&vm.memory_mib) {
            return Err(err(format!("vm.memory_mib = {} must be between 64 and 262144", vm.memory_mib)));
        }
        for (key, v) in [("vm.min_vcpus", vm.min_vcpus), ("vm.max_vcpus", vm.max_vcpus)] {
            if !(1..=64).contains(&v) {
                return Err(err(format!("{key} = {v} must be between 1 and 64")));
            }
        }
        for (key, v) in [("vm.min_memory_mib", vm.min_memory_mib), ("vm.max_memory_mib", vm.max_memory_mib)] {
            if !(64..=262_144).contains(&v) {
                return Err(err(format!("{key} = {v} must be between 64 and 262144")));
            }
        }
        if vm.min_vcpus > vm.max_vcpus || vm.min_memory_mib > vm.max_memory_mib {
            return Err(err("vm.min_vcpus/min_memory_mib must not exceed vm.max_vcpus/max_memory_mib".to_string()));
        }
        if !(1..=3600).contains(&vm.boot_timeout_secs) {
            return Err(err(format!("vm.boot_timeout_secs = {} must be between 1 and 3600", vm.boot_timeout_secs)));
        }
        let cg = &self.cgroup;
        if cg.overhead_memory_mib > 65_536 {
            return Err(err(format!("cgroup.overhead_memory_mib = {} must be at most 65536", cg.overhead_memory_mib)));
        }
        if cg.overhead_cpu_millis > 64_000 {
            return Err(err(format!("cgroup.overhead_cpu_millis = {} must be at most 64000", cg.overhead_cpu_millis)));
        }
        if !(16..=4_194_304).contains(&cg.pids_max) {
            return Err(err(format!("cgroup.pids_max = {} must be between 16 and 4194304", cg.pids_max)));
        }
        if !(1..=10_000).contains(&cg.io_weight) {
            return Err(err(format!("cgroup.io_weight = {} must be between 1 and 10000", cg.io_weight)));
        }
        if vm.kernel_params.len() > 1024 || vm.kernel_params.chars().any(|c| c.is_control() || c == '"') {
            return Err(err(
                "vm.kernel_params must be at most 1024 bytes of printable characters without '\"'".to_string()
            ));
        }
        self.telemetry.validate().map_err(err)?;
        self.tenant.validate("tenant").map_err(err)?;
        for (name, over) in &self.tenants {
            if !crate::policy::valid_tenant_name(name) {
                return Err(err(format!("[tenants.{name:?}]: not a valid tenant name (a Kubernetes label value)")));
            }
            self.tenant.merged(over).validate(&format!("tenants.{name}")).map_err(err)?;
        }
        let j = &self.jail;
        if j.uid_base == 0 || j.uid_count < 2 || u64::from(j.uid_base) + u64::from(j.uid_count) > u64::from(u32::MAX) {
            return Err(err(format!(
                "jail.uid_base = {} and jail.uid_count = {} must give a range of at least 2 non-root ids below \
                 2^32-1 (each sandbox takes two)",
                j.uid_base, j.uid_count
            )));
        }
        let block = u64::from(IDMAP_BLOCK);
        let (ib, ie) = (u64::from(j.idmap_base), u64::from(j.idmap_base) + u64::from(j.idmap_count) * block);
        let (ub, ue) = (u64::from(j.uid_base), u64::from(j.uid_base) + u64::from(j.uid_count));
        if j.idmap_base < IDMAP_BLOCK || j.idmap_count == 0 || ie > u64::from(u32::MAX) || (ib < ue && ub < ie) {
            return Err(err(format!(
                "jail.idmap_base = {} and jail.idmap_count = {} must give a non-empty range of blocks of {block} \
                 ids from {block} (above the system's own users) to below 2^32-1 that does not overlap jail.uid_base..+uid_count",
                j.idmap_base, j.idmap_count
            )));
        }
        if !(0..=1000).contains(&j.oom_score_adj) {
            return Err(err(format!("jail.oom_score_adj = {} must be between 0 and 1000", j.oom_score_adj)));
        }
        Ok(())
    }

    /// The policy of `tenant` (`None`: a pod outside Kubernetes, or an unknown tenant: the
    /// default policy).
    pub fn tenant_policy(&self, tenant: Option<&str>) -> TenantPolicy {
        match tenant.and_then(|t| self.tenants.get(t)) {
            Some(over) => self.tenant.merged(over),
            None => self.tenant.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/test/config.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.vm.memory_mib, 512);
        assert_eq!(cfg.paths.runtime_dir, PathBuf::from("/run/bulwark"));
    }

    #[test]
    fn full_file_parses() {
        let cfg = parse(
            r#"
            [paths]
            qemu = "/opt/qemu"
            virtiofsd = "/opt/virtiofsd"
            vhost_device_vsock = "/opt/vdv"
            kernel = "/opt/vmlinux"
            initrd = "/opt/initrd"
            runtime_dir = "/tmp/bw"
            [vm]
            vcpus = 2
            memory_mib = 256
            acceleration = "tcg"
            boot_timeout_secs = 5
            kernel_params = "loglevel=7"
            allow_tcg_fallback = false
            [jail]
            uid_base = 500000
            uid_count = 10
            unprivileged_virtiofsd = false
            oom_score_adj = 100
            [cgroup]
            required = true
            overhead_memory_mib = 64
            overhead_cpu_millis = 100
            pids_max = 512
            io_weight = 200
            move_shim = false
            [telemetry]
            enabled = false
            syscalls = ["execve", "openat", "connect"]
            guest_max_events_per_sec = 1000
            max_events_per_sec = 2000
            burst = 3000
            node_socket = ""
            node_buffer_bytes = 65536
            json_file = "/var/log/bulwark/events.jsonl"
            json_file_max_bytes = 1000000
            frames_file_max_bytes = 65536
            node_name = "node-7"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.paths.qemu, PathBuf::from("/opt/qemu"));
        assert_eq!(cfg.vm.vcpus, 2);
        assert_eq!(cfg.vm.acceleration, Acceleration::Tcg);
        assert_eq!(cfg.vm.kernel_params, "loglevel=7");
        assert_eq!(
            cfg.cgroup,
            Cgroup {
                required: true,
                overhead_memory_mib: 64,
                overhead_cpu_millis: 100,
                pids_max: 512,
                io_weight: 200,
                move_shim: false
            }
        );
        assert!(!cfg.vm.allow_tcg_fallback);
        assert_eq!(
            cfg.telemetry,
            Telemetry {
                enabled: false,
                syscalls: vec!["execve".into(), "openat".into(), "connect".into()],
                guest_max_events_per_sec: 1000,
                max_events_per_sec: 2000,
                burst: 3000,
                node_socket: PathBuf::new(),
                node_buffer_bytes: 65536,
                json_file: "/var/log/bulwark/events.jsonl".into(),
                json_file_max_bytes: 1_000_000,
                frames_file_max_bytes: 65536,
                node_name: "node-7".into(),
            }
        );
        assert_eq!(
            cfg.jail,
            Jail {
                uid_base: 500_000,
                uid_count: 10,
                oom_score_adj: 100,
                unprivileged_virtiofsd: false,
                ..Jail::default()
            }
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse("[vm]\nmemroy_mib = 5\n").unwrap_err().to_string();
        assert!(e.contains("memroy_mib"), "{e}");
        let e = parse("[pathz]\n").unwrap_err().to_string();
        assert!(e.contains("pathz"), "{e}");
    }

    #[test]
    fn bad_values_are_rejected() {
        for (text, needle) in [
            ("[vm]\nvcpus = 0\n", "vm.vcpus"),
            ("[vm]\nmemory_mib = 1\n", "vm.memory_mib"),
            ("[vm]\nboot_timeout_secs = 0\n", "boot_timeout_secs"),
            ("[vm]\nmin_vcpus = 4\nmax_vcpus = 2\n", "must not exceed"),
            ("[vm]\nmax_memory_mib = 10\n", "vm.max_memory_mib"),
            ("[vm]\nacceleration = \"fast\"\n", "fast"),
            ("[vm]\nkernel_params = \"a\\nb\"\n", "kernel_params"),
            ("[paths]\nkernel = \"relative/vmlinux\"\n", "paths.kernel"),
            (
                "[paths]\nruntime_dir = \"/a/very/long/runtime/directory/that/leaves/no/room/for/sockets\"\n",
                "runtime_dir",
            ),
            ("[vm]\nvcpus = \"two\"\n", "line 2"),
            ("[cgroup]\npids_max = 1\n", "cgroup.pids_max"),
            ("[cgroup]\nio_weight = 0\n", "cgroup.io_weight"),
            ("[cgroup]\noverhead_memory_mib = 9999999\n", "cgroup.overhead_memory_mib"),
            ("[cgroup]\nrequird = true\n", "requird"),
            ("[jail]\nuid_base = 0\n", "jail.uid_base"),
            ("[jail]\nuid_count = 0\n", "jail.uid_count"),
            ("[jail]\nuid_count = 1\n", "each sandbox takes two"),
            ("[jail]\nuid_base = 4294967000\n", "jail.uid_base"),
            ("[jail]\noom_score_adj = -1\n", "jail.oom_score_adj"),
            ("[jail]\nidmap_count = 0\n", "jail.idmap_base"),
            ("[jail]\nidmap_base = 1\n", "jail.idmap_base"),
            ("[jail]\nidmap_base = 4294000000\n", "jail.idmap_base"),
            ("[jail]\nidmap_base = 2000000000\n", "jail.idmap_base"),
            ("[jail]\nuid = 5\n", "uid"),
            ("[telemetry]\nsyscalls = [\"execve\", \"opne\"]\n", "unknown event type \"opne\""),
            ("[telemetry]\nnode_socket = \"relative.sock\"\n", "telemetry.node_socket"),
            ("[telemetry]\njson_file = \"x.jsonl\"\n", "telemetry.json_file"),
            ("[telemetry]\nmax_events_per_sec = 0\n", "telemetry.max_events_per_sec"),
            ("[telemetry]\nnode_buffer_bytes = 1\n", "telemetry.node_buffer_bytes"),
            ("[telemetry]\nframes_file_max_bytes = 1\n", "telemetry.frames_file_max_bytes"),
            ("[telemetry]\nnode_name = \"a\\nb\"\n", "telemetry.node_name"),
            ("[telemetry]\nenable = true\n", "enable"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?} -> {e}");
        }
    }
}
