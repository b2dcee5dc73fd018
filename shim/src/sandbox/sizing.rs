//! VM sizing: how many vCPUs and how much memory a pod's VM gets.
//!
//! The rule (documented in shim/README.md):
//! - CRI passes the pod's resources (the sum of its containers' limits plus the
//!   RuntimeClass overhead, as kubelet computes them for `LinuxPodSandboxConfig.resources`)
//!   to the sandbox container as annotations: `io.kubernetes.cri.sandbox-cpu-quota` /
//!   `-cpu-period` and `io.kubernetes.cri.sandbox-memory` (bytes).
//! - vCPUs = ceil(quota / period), memory = ceil(bytes / MiB), each clamped to
//!   `[vm.min_*, vm.max_*]` from the node config.
//! - Without a value (no limits set, or a containerd that does not pass these
//!   annotations), `vm.vcpus` / `vm.memory_mib` apply.
//!
//! The VM is sized once, at boot: containers added later are limited by their own cgroups
//! inside the VM.
//!
//! Annotations come from the tenant's pod spec: they are parsed strictly, and only these
//! keys are read.

use std::collections::HashMap;

use crate::config::Vm;
use crate::jail::cgroup::PodResources;

pub const CPU_QUOTA_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const CPU_PERIOD_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-period";
pub const MEMORY_ANNOTATION: &str = "io.kubernetes.cri.sandbox-memory";
pub const CPU_SHARES_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-shares";

const MIB: u64 = 1024 * 1024;

/// The VM's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// A positive integer annotation; anything else (absent, 0, negative, garbage) is `None`.
fn positive(annotations: &HashMap<String, String>, key: &str) -> Option<u64> {
    let v = annotations.get(key)?;
    if v.len() > 20 {
        return None;
    }
    match v.trim().parse::<i64>() {
        Ok(n) if n > 0 => Some(n as u64),
        _ => None,
    }
}

/// What the pod asks for, before any bound: (vCPUs, MiB), each `None` without a value (pure).
pub fn requested(annotations: &HashMap<String, String>) -> (Option<u32>, Option<u32>) {
    let vcpus = match (positive(annotations, CPU_QUOTA_ANNOTATION), positive(annotations, CPU_PERIOD_ANNOTATION)) {
        (Some(q), Some(p)) => Some(q.div_ceil(p).min(u32::MAX as u64) as u32),
        _ => None,
    };
    let memory = positive(annotations, MEMORY_ANNOTATION).map(|b| b.div_ceil(MIB).min(u32::MAX as u64) as u32);
    (vcpus, memory)
}

/// The pod's resources from the same annotations, for the host cgroup's limits
/// (jail/cgroup.rs); the same strict parsing.
pub fn pod_resources(annotations: &HashMap<String, String>) -> PodResources {
    PodResources {
        cpu_quota_us: positive(annotations, CPU_QUOTA_ANNOTATION),
        cpu_period_us: positive(annotations, CPU_PERIOD_ANNOTATION),
        cpu_shares: positive(annotations, CPU_SHARES_ANNOTATION),
        memory_bytes: positive(annotations, MEMORY_ANNOTATION),
    }
}

/// Sizes the VM of a pod from its sandbox annotations and the node config (pure). Returns
/// the size and a line saying how it was chosen, for the log.
pub fn size_vm(vm: &Vm, annotations: &HashMap<String, String>) -> (VmSize, String) {
    let (want_vcpus, want_mib) = requested(annotations);
    let vcpus = match want_vcpus {
        Some(want) => (want.clamp(vm.min_vcpus, vm.max_vcpus), format!("{want} from the pod's CPU limit")),
        None => (vm.vcpus, "default".to_string()),
    };
    let memory = match want_mib {
        Some(want) => {
            (want.clamp(vm.min_memory_mib, vm.max_memory_mib), format!("{want} MiB from the pod's memory limit"))
        }
        None => (vm.memory_mib, "default".to_string()),
    };
    let size = VmSize { vcpus: vcpus.0, memory_mib: memory.0 };
    let why = format!(
        "VM size: {} vCPU ({}; bounds {}..={}), {} MiB ({}; bounds {}..={})",
        size.vcpus,
        vcpus.1,
        vm.min_vcpus,
        vm.max_vcpus,
        size.memory_mib,
        memory.1,
        vm.min_memory_mib,
        vm.max_memory_mib
    );
    (size, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn vm() -> Vm {
        Vm {
            vcpus: 1,
            memory_mib: 512,
            min_vcpus: 1,
            max_vcpus: 4,
            min_memory_mib: 128,
            max_memory_mib: 4096,
            ..Vm::default()
        }
    }

    #[test]
    fn defaults_without_annotations() {
        let (s, why) = size_vm(&vm(), &HashMap::new());
        assert_eq!(s, VmSize { vcpus: 1, memory_mib: 512 });
        assert!(why.contains("default"), "{why}");
    }

    #[test]
    fn pod_limits_round_up_and_clamp() {
        let a = ann(&[
            (CPU_QUOTA_ANNOTATION, "150000"),
            (CPU_PERIOD_ANNOTATION, "100000"),
            (MEMORY_ANNOTATION, "314572801"),
        ]);
        assert_eq!(size_vm(&vm(), &a).0, VmSize { vcpus: 2, memory_mib: 301 });
        let a = ann(&[
            (CPU_QUOTA_ANNOTATION, "9000000"),
            (CPU_PERIOD_ANNOTATION, "100000"),
            (MEMORY_ANNOTATION, "1048576"),
        ]);
        assert_eq!(size_vm(&vm(), &a).0, VmSize { vcpus: 4, memory_mib: 128 });
    }

    #[test]
    fn hostile_annotations_fall_back_to_defaults() {
        for (q, p, m) in [
            ("-1", "100000", "-5"),
            ("0", "0", "0"),
            ("1e9", "x", "12GiB"),
            ("99999999999999999999999", "1", "99999999999999999999999"),
            ("", "", ""),
        ] {
            let a = ann(&[(CPU_QUOTA_ANNOTATION, q), (CPU_PERIOD_ANNOTATION, p), (MEMORY_ANNOTATION, m)]);
            assert_eq!(size_vm(&vm(), &a).0, VmSize { vcpus: 1, memory_mib: 512 }, "{q} {p} {m}");
        }
        let a = ann(&[
            (CPU_QUOTA_ANNOTATION, "9223372036854775807"),
            (CPU_PERIOD_ANNOTATION, "1"),
            (MEMORY_ANNOTATION, "9223372036854775807"),
        ]);
        assert_eq!(size_vm(&vm(), &a).0, VmSize { vcpus: 4, memory_mib: 4096 });
    }

    #[test]
    fn pod_resources_for_the_host_cgroup() {
        let a = ann(&[
            (CPU_QUOTA_ANNOTATION, "150000"),
            (CPU_PERIOD_ANNOTATION, "100000"),
            (CPU_SHARES_ANNOTATION, "1536"),
            (MEMORY_ANNOTATION, "-1"),
        ]);
        assert_eq!(
            pod_resources(&a),
            PodResources {
                cpu_quota_us: Some(150_000),
                cpu_period_us: Some(100_000),
                cpu_shares: Some(1536),
                memory_bytes: None
            }
        );
    }
}
