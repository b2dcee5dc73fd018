//! The node's tenant policy and the pod annotations Bulwark reads at all.
//!
//! A tenant is named by the pod annotation `bulwark.io/tenant` (stamped by the cluster's
//! admission policy from a namespace label, and forwarded to the runtime by containerd's
//! `pod_annotations`), else by the pod's namespace (`io.kubernetes.cri.sandbox-namespace`,
//! set by containerd's CRI plugin from the pod's metadata). `config.toml` gives a default
//! policy (`[tenant]`) and per-tenant overrides (`[tenants.<name>]`): ceilings on a pod's VM
//! size, host cgroup bounds, whether exec into its pods is allowed, whether its containers may
//! run without a seccomp profile, and which host paths may be bind-mounted into its pods.
//!
//! Only the annotations in [`READ_ANNOTATIONS`] change anything; none of them selects a
//! binary, a host path, a kernel parameter or weaker isolation. Any other `bulwark.io/`
//! annotation is ignored with a warning ([`ignored_annotations`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The tenant a pod belongs to, as the cluster's admission policy stamps it.
pub const TENANT_ANNOTATION: &str = "bulwark.io/tenant";
/// The pod's namespace, as containerd's CRI plugin passes it.
pub const NAMESPACE_ANNOTATION: &str = "io.kubernetes.cri.sandbox-namespace";

/// Highest `network_bandwidth_mbit` accepted: 100 Gbit/s.
pub const MAX_BANDWIDTH_MBIT: u32 = 100_000;

/// Every annotation the shim reads. The sizing ones only size the VM (within the node's
/// bounds and the tenant's ceilings); the sandbox id only groups containers into pods; the
/// pod's name and uid are only recorded for operator tools (sandbox/info.rs).
pub const READ_ANNOTATIONS: &[&str] = &[
    "io.kubernetes.cri.sandbox-id",
    NAMESPACE_ANNOTATION,
    "io.kubernetes.cri.sandbox-name",
    "io.kubernetes.cri.sandbox-uid",
    "io.kubernetes.cri.sandbox-cpu-quota",
    "io.kubernetes.cri.sandbox-cpu-period",
    "io.kubernetes.cri.sandbox-memory",
    TENANT_ANNOTATION,
];

/// A pod's tenant: its name (`None`: no tenant, the default policy) and its policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tenant {
    pub name: Option<String>,
    pub policy: TenantPolicy,
}

/// What a tenant's pods may have (`[tenant]`, and each `[tenants.<name>]` after merging).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantPolicy {
    /// Most vCPUs a pod's VM may ask for (its CPU limit plus the RuntimeClass overhead).
    pub max_vcpus: u32,
    /// Most memory a pod's VM may ask for, in MiB.
    pub max_memory_mib: u32,
    /// `pids.max` of the pod's host cgroup (`None`: the node's `[cgroup] pids_max`).
    pub pids_max: Option<u64>,
    /// `io.weight` of the pod's host cgroup, 1..=10000 (`None`: the node's `[cgroup] io_weight`).
    pub io_weight: Option<u16>,
    /// Whether exec into the tenant's pods is allowed (kubectl exec, probes with exec).
    pub allow_exec: bool,
    /// Whether a container without a seccomp profile runs unconfined; otherwise the guest
    /// agent applies its built-in default profile.
    pub allow_unconfined_seccomp: bool,
    /// Host directories whose contents may be bind-mounted into the tenant's pods (compared
    /// after resolving symlinks). The default is what kubelet and containerd create for pods.
    pub host_paths: Vec<PathBuf>,
    /// Network bandwidth ceiling of each pod, in Mbit/s, each way (to and from the VM),
    /// applied with tc on the pod's tap and CNI interface (`None`: no ceiling).
    pub network_bandwidth_mbit: Option<u32>,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        TenantPolicy {
            max_vcpus: 8,
            max_memory_mib: 16384,
            pids_max: None,
            io_weight: None,
            allow_exec: true,
            allow_unconfined_seccomp: false,
            host_paths: vec![
                "/var/lib/kubelet/pods".into(),
                "/var/lib/containerd".into(),
                "/run/containerd".into(),
                "/var/run/containerd".into(),
            ],
            network_bandwidth_mbit: None,
        }
    }
}

/// `[tenants.<name>]`: only what differs from `[tenant]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantOverride {
    pub max_vcpus: Option<u32>,
    pub max_memory_mib: Option<u32>,
    pub pids_max: Option<u64>,
    pub io_weight: Option<u16>,
    pub allow_exec: Option<bool>,
    pub allow_unconfined_seccomp: Option<bool>,
    pub host_paths: Option<Vec<PathBuf>>,
    pub network_bandwidth_mbit: Option<u32>,
}

impl TenantPolicy {
    /// This policy with `over`'s keys replacing its own.
    pub fn merged(&self, over: &TenantOverride) -> TenantPolicy {
        TenantPolicy {
            max_vcpus: over.max_vcpus.unwrap_or(self.max_vcpus),
            max_memory_mib: over.max_memory_mib.unwrap_or(self.max_memory_mib),
            pids_max: over.pids_max.or(self.pids_max),
            io_weight: over.io_weight.or(self.io_weight),
            allow_exec: over.allow_exec.unwrap_or(self.allow_exec),
            allow_unconfined_seccomp: over.allow_unconfined_seccomp.unwrap_or(self.allow_unconfined_seccomp),
            host_paths: over.host_paths.clone().unwrap_or_else(|| self.host_paths.clone()),
            network_bandwidth_mbit: over.network_bandwidth_mbit.or(self.network_bandwidth_mbit),
        }
    }

    /// Checks values TOML cannot express; `key` names the section in errors.
    pub fn validate(&self, key: &str) -> Result<(), String> {
        if self.max_vcpus == 0 || self.max_memory_mib < 64 {
            return Err(format!("{key}: max_vcpus must be at least 1 and max_memory_mib at least 64"));
        }
        if let Some(w) = self.io_weight.filter(|w| !(1..=10000).contains(w)) {
            return Err(format!("{key}.io_weight = {w} must be in 1..=10000"));
        }
        if let Some(b) = self.network_bandwidth_mbit.filter(|b| !(1..=MAX_BANDWIDTH_MBIT).contains(b)) {
            return Err(format!("{key}.network_bandwidth_mbit = {b} must be in 1..={MAX_BANDWIDTH_MBIT}"));
        }
        if self.pids_max == Some(0) {
            return Err(format!("{key}.pids_max must be at least 1"));
        }
        if let Some(p) = self.host_paths.iter().find(|p| !p.is_absolute() || p.as_os_str().len() > 4096) {
            return Err(format!("{key}.host_paths: {p:?} is not an absolute path"));
        }
        Ok(())
    }

    /// Whether `source` (already resolved: no symlinks) is at or below an allowed host path.
    /// The allowed paths are resolved too when they exist, so `/var/run` and `/run` agree.
    pub fn host_path_allowed(&self, source: &Path) -> bool {
        self.host_paths.iter().any(|allowed| {
            let real = std::fs::canonicalize(allowed).unwrap_or_else(|_| allowed.clone());
            source.starts_with(&real) || source.starts_with(allowed)
        })
    }
}

/// A Kubernetes label value (the tenant names come from one): at most 63 characters of
/// `[A-Za-z0-9._-]`, starting and ending alphanumeric (pure).
pub fn valid_tenant_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// The tenant of a pod from its sandbox annotations: `bulwark.io/tenant`, else the pod's
/// namespace; `None` outside Kubernetes (e.g. `ctr run`) or when the value is not a valid
/// name (logged by the caller as the default policy applying).
pub fn tenant_of(annotations: &HashMap<String, String>) -> Option<String> {
    [TENANT_ANNOTATION, NAMESPACE_ANNOTATION]
        .iter()
        .find_map(|k| annotations.get(*k))
        .filter(|v| valid_tenant_name(v))
        .cloned()
}

/// The `bulwark.io/` annotations of a pod that are not read (each is ignored; the caller warns).
pub fn ignored_annotations(annotations: &HashMap<String, String>) -> Vec<String> {
    let mut v: Vec<String> = annotations
        .keys()
        .filter(|k| k.starts_with("bulwark.io/") && !READ_ANNOTATIONS.contains(&k.as_str()))
        .map(|k| k.chars().take(100).collect())
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_tenant_comes_from_the_annotation_then_the_namespace() {
        assert_eq!(tenant_of(&ann(&[(NAMESPACE_ANNOTATION, "team-a")])), Some("team-a".into()));
        assert_eq!(
            tenant_of(&ann(&[(NAMESPACE_ANNOTATION, "team-a"), (TENANT_ANNOTATION, "acme")])),
            Some("acme".into())
        );
        assert_eq!(tenant_of(&ann(&[])), None);
        for bad in ["", "-x", "x-", "../etc", "a b", &"x".repeat(64), "é"] {
            assert_eq!(tenant_of(&ann(&[(TENANT_ANNOTATION, bad)])), None, "{bad:?}");
        }
    }

    #[test]
    fn overrides_replace_only_their_keys() {
        let base = TenantPolicy::default();
        let over = TenantOverride { max_vcpus: Some(2), allow_exec: Some(false), ..Default::default() };
        let p = base.merged(&over);
        assert_eq!((p.max_vcpus, p.allow_exec), (2, false));
        assert_eq!((p.max_memory_mib, p.host_paths.clone()), (base.max_memory_mib, base.host_paths.clone()));
        assert!(p.validate("tenants.x").is_ok());
        let bad = base.merged(&TenantOverride { io_weight: Some(0), ..Default::default() });
        assert!(bad.validate("tenants.x").unwrap_err().contains("io_weight"));
        let rel = base.merged(&TenantOverride { host_paths: Some(vec!["relative".into()]), ..Default::default() });
        assert!(rel.validate("tenants.x").is_err());
    }

    #[test]
    fn the_bandwidth_ceiling_is_merged_and_bounded() {
        let base = TenantPolicy::default();
        assert_eq!(base.network_bandwidth_mbit, None, "no ceiling unless configured");
        let capped = base.merged(&TenantOverride { network_bandwidth_mbit: Some(50), ..Default::default() });
        assert_eq!(capped.network_bandwidth_mbit, Some(50));
        assert!(capped.validate("tenants.x").is_ok());
        let kept = capped.merged(&TenantOverride { max_vcpus: Some(2), ..Default::default() });
        assert_eq!(kept.network_bandwidth_mbit, Some(50), "an override without the key keeps the default's");
        for bad in [0, MAX_BANDWIDTH_MBIT + 1] {
            let p = base.merged(&TenantOverride { network_bandwidth_mbit: Some(bad), ..Default::default() });
            assert!(p.validate("tenants.x").unwrap_err().contains("network_bandwidth_mbit"), "{bad}");
        }
        let parsed: TenantOverride = toml::from_str("network_bandwidth_mbit = 20").unwrap();
        assert_eq!(parsed.network_bandwidth_mbit, Some(20));
    }

    #[test]
    fn host_paths_are_prefixes_of_resolved_paths() {
        let p = TenantPolicy { host_paths: vec!["/var/lib/kubelet/pods".into()], ..Default::default() };
        assert!(p.host_path_allowed(Path::new("/var/lib/kubelet/pods/uid/volumes/cm")));
        assert!(!p.host_path_allowed(Path::new("/var/lib/kubelet/podsX")));
        assert!(!p.host_path_allowed(Path::new("/etc")));
        assert!(!p.host_path_allowed(Path::new("/var/lib/kubelet")));
    }

    #[test]
    fn unknown_bulwark_annotations_are_reported_never_read() {
        let a = ann(&[
            ("bulwark.io/kernel", "/tmp/evil-vmlinux"),
            ("bulwark.io/tenant", "acme"),
            ("io.katacontainers.config.hypervisor.path", "/tmp/evil"),
        ]);
        assert_eq!(ignored_annotations(&a), ["bulwark.io/kernel"]);
    }
}
