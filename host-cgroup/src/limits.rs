//! The limits of a sandbox cgroup, from the pod's resources (what kubelet scheduled: the sum
//! of the containers' limits plus the RuntimeClass overhead, passed by containerd as the
//! sandbox annotations) plus the node's configured per-pod VMM overhead:
//!
//! - `cpu.max` = `quota + overhead_cpu_millis * period / 1000` per `period` (no CPU limit on
//!   the pod: `max`);
//! - `cpu.weight` from the pod's CPU shares with the standard conversion
//!   `1 + (shares - 2) * 9999 / 262142` (shares clamped to 2..=262144; none: left at 100);
//! - `memory.max` = pod memory (or, without a pod memory limit, the VM's RAM) + overhead
//!   memory; `memory.high` = `memory.max` minus 1/16 (page aligned), where reclaim starts;
//! - `pids.max` and `io.weight` = configured bounds.

/// The pod's resources as the CRI passed them (None: not set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodResources {
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub memory_bytes: Option<u64>,
}

/// The node's per-pod overhead and bounds (config `[cgroup]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overhead {
    /// Host memory of the VMM and helpers beyond the guest's RAM (page tables, QEMU, virtiofsd).
    pub memory_bytes: u64,
    /// CPU of the VMM and helpers beyond the vCPUs, in millicores.
    pub cpu_millis: u64,
    /// `pids.max` of the sandbox cgroup (QEMU threads, virtiofsd's pool, the helpers).
    pub pids_max: u64,
    /// `io.weight` default (1..=10000).
    pub io_weight: u16,
}

/// What is written into the sandbox cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// (quota, period) in µs; None: `max`.
    pub cpu_max: Option<(u64, u64)>,
    pub cpu_weight: Option<u64>,
    pub memory_max: u64,
    pub memory_high: u64,
    pub pids_max: u64,
    pub io_weight: u16,
}

/// The kernel's bounds for a CFS period (µs).
const MIN_PERIOD: u64 = 1_000;
const MAX_PERIOD: u64 = 1_000_000;
const DEFAULT_PERIOD: u64 = 100_000;
const PAGE: u64 = 4096;

/// The standard cgroup v1 shares → v2 weight conversion (runc, crun, kubelet).
pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// Computes the limits (pure). `vm_memory_bytes` is the guest's RAM: the memory basis when the
/// pod has no memory limit.
pub fn compute(pod: &PodResources, vm_memory_bytes: u64, o: &Overhead) -> Limits {
    let cpu_max = match (pod.cpu_quota_us, pod.cpu_period_us) {
        (Some(q), Some(p)) if q > 0 && p > 0 => {
            let period = p.clamp(MIN_PERIOD, MAX_PERIOD);
            let extra = o.cpu_millis.saturating_mul(period) / 1000;
            Some((q.saturating_add(extra).max(MIN_PERIOD), period))
        }
        _ => None,
    };
    let basis = pod.memory_bytes.filter(|&m| m > 0).unwrap_or(vm_memory_bytes);
    let memory_max =
        basis.saturating_add(o.memory_bytes).checked_next_multiple_of(PAGE).unwrap_or(u64::MAX / PAGE * PAGE);
    let memory_high = ((memory_max - memory_max / 16) / PAGE * PAGE).max(PAGE.min(memory_max));
    Limits {
        cpu_max,
        cpu_weight: pod.cpu_shares.map(shares_to_weight),
        memory_max,
        memory_high,
        pids_max: o.pids_max.max(1),
        io_weight: o.io_weight.clamp(1, 10_000),
    }
}

impl Limits {
    /// The control files and their values, in the order they are written.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("memory.high", self.memory_high.to_string()),
            ("memory.max", self.memory_max.to_string()),
            ("pids.max", self.pids_max.to_string()),
        ];
        v.push((
            "cpu.max",
            match self.cpu_max {
                Some((q, p)) => format!("{q} {p}"),
                None => format!("max {DEFAULT_PERIOD}"),
            },
        ));
        if let Some(w) = self.cpu_weight {
            v.push(("cpu.weight", w.to_string()));
        }
        v.push(("io.weight", format!("default {}", self.io_weight)));
        v
    }
}

impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: Vec<String> = self.files().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        write!(f, "{}", files.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn overhead() -> Overhead {
        Overhead { memory_bytes: 128 * MIB, cpu_millis: 250, pids_max: 1024, io_weight: 100 }
    }

    #[test]
    fn shares_weight_conversion() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
        assert_eq!(shares_to_weight(u64::MAX), 10_000);
    }

    #[test]
    fn pod_limits_plus_overhead() {
        let pod = PodResources {
            cpu_quota_us: Some(150_000),
            cpu_period_us: Some(100_000),
            cpu_shares: Some(1536),
            memory_bytes: Some(256 * MIB),
        };
        let l = compute(&pod, 512 * MIB, &overhead());
        assert_eq!(l.cpu_max, Some((175_000, 100_000)));
        assert_eq!(l.cpu_weight, Some(59));
        assert_eq!(l.memory_max, 384 * MIB);
        assert_eq!(l.memory_high, 360 * MIB);
        assert_eq!(l.pids_max, 1024);
        assert_eq!(
            l.to_string(),
            format!(
                "memory.high={} memory.max={} pids.max=1024 cpu.max=175000 100000 cpu.weight=59 io.weight=default 100",
                360 * MIB,
                384 * MIB
            )
        );
    }

    #[test]
    fn no_pod_limits() {
        let l = compute(&PodResources::default(), 512 * MIB, &overhead());
        assert_eq!(l.cpu_max, None);
        assert_eq!(l.cpu_weight, None);
        assert_eq!(l.memory_max, 640 * MIB);
        assert!(l.files().contains(&("cpu.max", "max 100000".to_string())));
        assert!(!l.files().iter().any(|(k, _)| *k == "cpu.weight"));
    }

    #[test]
    fn odd_values_are_bounded() {
        let pod = PodResources {
            cpu_quota_us: Some(u64::MAX),
            cpu_period_us: Some(10),
            cpu_shares: None,
            memory_bytes: Some(u64::MAX - 5),
        };
        let l = compute(&pod, 0, &Overhead { memory_bytes: 1, cpu_millis: 0, pids_max: 0, io_weight: 0 });
        assert_eq!(l.cpu_max, Some((u64::MAX, 1_000)));
        assert_eq!(l.memory_max % PAGE, 0);
        assert!(l.memory_high <= l.memory_max);
        assert_eq!(l.pids_max, 1);
        assert_eq!(l.io_weight, 1);
        // A tiny memory limit is page aligned, high below max.
        let l = compute(
            &PodResources { memory_bytes: Some(1), ..Default::default() },
            0,
            &Overhead { memory_bytes: 0, ..overhead() },
        );
        assert_eq!((l.memory_max, l.memory_high), (4096, 4096));
    }
}
