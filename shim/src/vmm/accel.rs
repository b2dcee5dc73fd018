//! Acceleration choice: `auto | kvm | tcg`.
//!
//! `auto` never trusts the mere existence of /dev/kvm: on nested hosts KVM_CREATE_VM succeeds
//! but a real kernel under KVM spins forever. So `auto` = KVM_CREATE_VM works *and* a short
//! real boot of the configured kernel+initrd under KVM reaches the agent's READY line; else
//! TCG. The result is cached in `<runtime_dir>/accel-probe`, keyed by the host boot id and
//! the kernel's path and mtime, so the probe runs once per host boot (and kernel).
//! The boot probe is GIVEN to [`resolve`] as a [`KvmBootProbe`]: booting a guest is the
//! sandbox layer's job (sandbox/boot.rs supplies it), so this module does not call up.

use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::Config;

pub use crate::config::Acceleration;

/// What a VM actually runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// How long the KVM boot probe waits for READY. A working KVM boots in well under a second.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(8);
const CACHE_FILE: &str = "accel-probe";
const CACHE_VERSION: &str = "bulwark-accel-probe-v2";
/// A negative probe (no boot under KVM) is retried after this, doubling with each failure
/// in a row up to [`MAX_RETRY`]: one unlucky timeout does not pin a node to TCG until reboot.
const FIRST_RETRY: u64 = 600;
const MAX_RETRY: u64 = 24 * 3600;

/// Whether a real guest boots under KVM: `Ok` once the agent answered, else why not.
#[async_trait]
pub trait KvmBootProbe: Send + Sync {
    /// Boots the configured kernel+initrd under KVM within [`PROBE_TIMEOUT`].
    async fn probe(&self, cfg: &Config) -> Result<(), String>;
}

/// Chooses the acceleration for a new VM, logging (info) what and why. `probe` is only run
/// for `auto`, when KVM_CREATE_VM works and no cached result fits.
pub async fn resolve(cfg: &Config, probe: &dyn KvmBootProbe) -> Accel {
    match cfg.vm.acceleration {
        Acceleration::Kvm => {
            tracing::info!("acceleration: kvm (vm.acceleration = \"kvm\" in the config)");
            Accel::Kvm
        }
        Acceleration::Tcg => {
            tracing::info!("acceleration: tcg (vm.acceleration = \"tcg\" in the config)");
            Accel::Tcg
        }
        Acceleration::Auto => {
            let (accel, why) = auto(cfg, probe).await;
            tracing::info!("acceleration: {} (auto: {why})", accel.as_str());
            if accel == Accel::Tcg {
                tracing::warn!("{}", tcg_fallback_warning(cfg.vm.allow_tcg_fallback, &why));
            }
            accel
        }
    }
}

/// The loud warning of an `auto` that fell back to TCG (pure).
pub fn tcg_fallback_warning(allowed: bool, why: &str) -> String {
    format!(
        "SECURITY: acceleration = \"auto\" fell back to TCG ({why}). TCG emulates the guest in \
         QEMU's own process and is not a security boundary QEMU promises: a guest that finds a \
         bug in the emulator runs code as the (jailed) QEMU process. {}",
        if allowed {
            "Guests boot anyway (vm.allow_tcg_fallback = true); set it to false to refuse."
        } else {
            "vm.allow_tcg_fallback = false: the boot will be refused."
        }
    )
}

async fn auto(cfg: &Config, probe: &dyn KvmBootProbe) -> (Accel, String) {
    if let Err(e) = kvm_create_vm() {
        return (Accel::Tcg, format!("KVM unusable: {e}"));
    }
    let key = match cache_key(&cfg.paths.kernel) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!("accel probe cache disabled: {e}");
            None
        }
    };
    let cache = cfg.paths.runtime_dir.join(CACHE_FILE);
    // One probe at a time per host: shims starting together wait for the first one's result.
    let _lock = lock_probe(&cfg.paths.runtime_dir).await;
    let now = unix_now();
    let previous = std::fs::read_to_string(&cache).ok();
    if let Some(key) = &key {
        if let Some((accel, why)) = previous.as_deref().and_then(|t| parse_cache(t, key, now)) {
            return (accel, format!("cached probe result from {}: {why}", cache.display()));
        }
    }
    let failures_before = match (&key, previous.as_deref()) {
        (Some(k), Some(t)) => cached_failures(t, k),
        _ => 0,
    };
    let (accel, why) = match probe.probe(cfg).await {
        Ok(()) => (Accel::Kvm, "KVM_CREATE_VM works and the guest booted under KVM".to_string()),
        Err(e) => (Accel::Tcg, format!("KVM_CREATE_VM works but the guest did not boot under KVM: {e}")),
    };
    if let Some(key) = &key {
        let _ = std::fs::create_dir_all(&cfg.paths.runtime_dir);
        let tmp = cache.with_extension("tmp");
        let failures = if accel == Accel::Tcg { failures_before + 1 } else { 0 };
        let text = format_cache(key, accel, &why, failures, now);
        if std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &cache)).is_err() {
            tracing::warn!("could not write the accel probe cache {}", cache.display());
        }
    }
    (accel, why)
}

/// Takes `<runtime_dir>/accel-probe.lock` (flock, exclusive), waiting up to a minute.
/// `None` (no lock, probe anyway) if that fails.
async fn lock_probe(runtime_dir: &Path) -> Option<nix::fcntl::Flock<std::fs::File>> {
    let _ = std::fs::create_dir_all(runtime_dir);
    let path = runtime_dir.join("accel-probe.lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).ok()?;
    let job =
        tokio::task::spawn_blocking(move || nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).ok());
    match tokio::time::timeout(Duration::from_secs(60), job).await {
        Ok(Ok(lock)) => lock,
        _ => {
            tracing::warn!("could not lock {} within 60s; probing without it", path.display());
            None
        }
    }
}

/// Opens /dev/kvm and creates (then drops) a VM.
pub fn kvm_create_vm() -> Result<(), String> {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("opening /dev/kvm: {e}"))?;
    // _IO(KVMIO = 0xAE, 0x01)
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    // SAFETY: KVM_CREATE_VM takes an integer argument (machine type 0) and returns a new fd
    // or -1; no memory is passed to the kernel. The fd is owned and closed right here.
    let fd = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0 as libc::c_ulong) };
    if fd < 0 {
        return Err(format!("KVM_CREATE_VM: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by the kernel and is not used anywhere else.
    unsafe { libc::close(fd) };
    Ok(())
}

/// "<boot id> <kernel path> <kernel mtime ns>".
fn cache_key(kernel: &Path) -> Result<String, String> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map_err(|e| format!("reading /proc/sys/kernel/random/boot_id: {e}"))?;
    let md = std::fs::metadata(kernel).map_err(|e| format!("{}: {e}", kernel.display()))?;
    Ok(format!(
        "{} {} {}",
        boot_id.trim(),
        kernel.display(),
        md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128
    ))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// When a negative result written at `now` after `failures` failures in a row may be probed
/// again (pure).
fn retry_after(failures: u32, now: u64) -> u64 {
    let wait = FIRST_RETRY.saturating_mul(1u64 << failures.saturating_sub(1).min(20)).min(MAX_RETRY);
    now.saturating_add(wait)
}

/// The cache file's text: version, key, result, why, then the failures in a row and when a
/// negative result expires (pure).
fn format_cache(key: &str, accel: Accel, why: &str, failures: u32, now: u64) -> String {
    let why: String = why.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    format!("{CACHE_VERSION}\n{key}\n{}\n{why}\n{failures} {}\n", accel.as_str(), retry_after(failures, now))
}

/// The cache's fields if it is well-formed and for `key`: (result, why, failures, retry after).
fn read_cache(text: &str, key: &str) -> Option<(Accel, String, u32, u64)> {
    let mut lines = text.lines();
    if lines.next()? != CACHE_VERSION || lines.next()? != key {
        return None;
    }
    let accel = match lines.next()? {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        _ => return None,
    };
    let why = lines.next()?.to_string();
    let mut tail = lines.next()?.split(' ');
    let failures = tail.next()?.parse().ok()?;
    let retry = tail.next()?.parse().ok()?;
    Some((accel, why, failures, retry))
}

/// A cached result to use at `now`: a positive one always (for this boot and kernel), a
/// negative one only until it expires (pure).
fn parse_cache(text: &str, key: &str, now: u64) -> Option<(Accel, String)> {
    let (accel, why, _, retry) = read_cache(text, key)?;
    (accel == Accel::Kvm || now < retry).then_some((accel, why))
}

/// How many negative probes in a row the cache records for `key` (0 if none).
fn cached_failures(text: &str, key: &str) -> u32 {
    read_cache(text, key).map(|(_, _, f, _)| f).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_setting() {
        assert_eq!("auto".parse::<Acceleration>(), Ok(Acceleration::Auto));
        assert_eq!("kvm".parse::<Acceleration>(), Ok(Acceleration::Kvm));
        assert_eq!("tcg".parse::<Acceleration>(), Ok(Acceleration::Tcg));
        assert!("KVM".parse::<Acceleration>().is_err());
        assert!("".parse::<Acceleration>().is_err());
    }

    #[test]
    fn cache_round_trip_and_key_mismatch() {
        let t = format_cache("boot1 /k 5", Accel::Tcg, "no\nboot", 1, 1000);
        assert_eq!(parse_cache(&t, "boot1 /k 5", 1000), Some((Accel::Tcg, "no boot".into())));
        assert_eq!(parse_cache(&t, "boot2 /k 5", 1000), None);
        assert_eq!(parse_cache("garbage", "boot1 /k 5", 1000), None);
        assert_eq!(parse_cache(&format!("{CACHE_VERSION}\nk\nfast\n"), "k", 0), None);
        let t = format_cache("k", Accel::Kvm, "ok", 0, 1000);
        assert_eq!(parse_cache(&t, "k", u64::MAX).map(|x| x.0), Some(Accel::Kvm), "a positive result stays");
        // A negative result expires, later ones after longer waits, at most a day.
        let t = format_cache("k", Accel::Tcg, "timeout", 1, 1000);
        assert!(parse_cache(&t, "k", 1000 + FIRST_RETRY - 1).is_some());
        assert!(parse_cache(&t, "k", 1000 + FIRST_RETRY).is_none(), "the probe runs again");
        assert_eq!(cached_failures(&t, "k"), 1);
        assert_eq!(retry_after(2, 0), 2 * FIRST_RETRY);
        assert_eq!(retry_after(40, 0), MAX_RETRY);
    }

    /// Counts its calls; never boots anything.
    struct CountingProbe(std::sync::atomic::AtomicU32);

    #[async_trait]
    impl KvmBootProbe for CountingProbe {
        async fn probe(&self, _cfg: &Config) -> Result<(), String> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn the_fallback_warning_names_the_risk_and_the_switch() {
        let w = tcg_fallback_warning(true, "KVM unusable");
        assert!(w.contains("not a security boundary") && w.contains("vm.allow_tcg_fallback = true"), "{w}");
        assert!(tcg_fallback_warning(false, "x").contains("refused"));
    }

    #[tokio::test]
    async fn a_forced_setting_does_not_probe() {
        let probe = CountingProbe(Default::default());
        let mut cfg = Config::default();
        cfg.vm.acceleration = Acceleration::Tcg;
        assert_eq!(resolve(&cfg, &probe).await, Accel::Tcg);
        cfg.vm.acceleration = Acceleration::Kvm;
        assert_eq!(resolve(&cfg, &probe).await, Accel::Kvm);
        assert_eq!(probe.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
