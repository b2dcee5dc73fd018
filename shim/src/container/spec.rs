//! A container's identity and configuration: containerd's id rule, `<bundle>/config.json`
//! (oci-spec, bounded) and the pod sandbox the container belongs to.
//! Nothing host-specific goes to the guest except the JSON spec and the relative rootfs path.

use std::path::Path;

use crate::error::{Error, Result};
use oci_spec::runtime::Spec;

/// Largest config.json accepted.
const MAX_SPEC_BYTES: u64 = 4 * 1024 * 1024;
/// CRI annotation naming the pod sandbox a container belongs to.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// containerd's identifier rule (the one both sides of the VM boundary enforce: protocol/).
pub fn validate_id(id: &str) -> Result<()> {
    bulwark_protocol::validate_id(id).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// Reads and validates `<bundle>/config.json`. Returns the parsed spec and the raw JSON
/// (what the guest agent receives).
pub fn load_spec(bundle: &Path) -> Result<(Spec, Vec<u8>)> {
    let path = bundle.join("config.json");
    let md = std::fs::metadata(&path).map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
    if md.len() > MAX_SPEC_BYTES {
        return Err(Error::InvalidArgument(format!(
            "{}: {} bytes, larger than the {MAX_SPEC_BYTES} bytes accepted",
            path.display(),
            md.len()
        )));
    }
    let raw = std::fs::read(&path).map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
    let spec: Spec = serde_json::from_slice(&raw)
        .map_err(|e| Error::InvalidArgument(format!("{} is not a valid OCI runtime spec: {e}", path.display())))?;
    if spec.process().is_none() {
        return Err(Error::InvalidArgument(format!("{}: no \"process\": nothing to run", path.display())));
    }
    Ok((spec, raw))
}

/// With an id-mapped share (virtiofsd in a user namespace that maps ids 0..`limit`), a process
/// whose uid, gid or an extra gid is outside it could create or own no file in its rootfs or
/// volumes: refused up front with the reason, rather than failing file by file.
pub fn check_ids_mapped(user: &oci_spec::runtime::User, limit: u32, what: &str) -> Result<()> {
    let extra = user.additional_gids().clone().unwrap_or_default();
    let ids = [("uid", user.uid()), ("gid", user.gid())].into_iter().chain(extra.iter().map(|&g| ("extra gid", g)));
    for (kind, id) in ids {
        if id >= limit {
            return Err(Error::InvalidArgument(format!(
                "{what} runs with {kind} {id}: this node serves pod files through an id-mapped share whose ids \
                 are 0..{limit} (virtiofsd runs unprivileged); use an id below {limit}, or set \
                 jail.unprivileged_virtiofsd = false in the node config"
            )));
        }
    }
    Ok(())
}

/// The sandbox a container belongs to: the CRI sandbox annotation if present, else itself.
pub fn sandbox_id_of(spec: &Spec, container_id: &str) -> Result<String> {
    match spec.annotations().as_ref().and_then(|a| a.get(SANDBOX_ID_ANNOTATION)) {
        Some(sid) => {
            validate_id(sid)?;
            Ok(sid.clone())
        }
        None => Ok(container_id.to_string()),
    }
}

/// Reads the sandbox id from a bundle, without failing: used by `start`/`delete`.
pub fn sandbox_id_from_bundle(bundle: &Path, container_id: &str) -> String {
    load_spec(bundle)
        .ok()
        .and_then(|(s, _)| sandbox_id_of(&s, container_id).ok())
        .unwrap_or_else(|| container_id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A uid, gid or extra gid outside the id-mapped range is refused, naming the process and
    /// the setting.
    #[test]
    fn ids_outside_the_mapped_range_are_refused() {
        let user = |v: serde_json::Value| -> oci_spec::runtime::User { serde_json::from_value(v).unwrap() };
        assert!(check_ids_mapped(&user(serde_json::json!({"uid": 1000, "gid": 65535})), 65536, "c").is_ok());
        for bad in [
            serde_json::json!({"uid": 65536, "gid": 0}),
            serde_json::json!({"uid": 0, "gid": 1000680000}),
            serde_json::json!({"uid": 0, "gid": 0, "additionalGids": [5, 70000]}),
        ] {
            let e = check_ids_mapped(&user(bad.clone()), 65536, "container c").unwrap_err().to_string();
            assert!(e.contains("container c") && e.contains("unprivileged_virtiofsd"), "{bad}: {e}");
        }
    }

    /// The rule itself is protocol::limits' (tested there); here: it is the one applied, and a
    /// refusal is containerd's INVALID_ARGUMENT.
    #[test]
    fn ids_follow_the_shared_rule() {
        assert!(validate_id("abc-def.g_h").is_ok());
        for bad in ["../x", "a--b", &"a".repeat(77)] {
            assert!(matches!(validate_id(bad), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
    }

    #[test]
    fn spec_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("bulwark-spec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = load_spec(&dir).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        std::fs::write(dir.join("config.json"), b"{not json").unwrap();
        let e = load_spec(&dir).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("not a valid OCI runtime spec"), "{e}");
        std::fs::write(dir.join("config.json"), br#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0}},"root":{"path":"rootfs"},"annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#).unwrap();
        let (spec, raw) = load_spec(&dir).unwrap();
        assert!(!raw.is_empty());
        assert_eq!(sandbox_id_of(&spec, "c1").unwrap(), "pod1");
        assert_eq!(sandbox_id_from_bundle(&dir, "c1"), "pod1");
        std::fs::write(dir.join("config.json"), br#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0}},"annotations":{"io.kubernetes.cri.sandbox-id":"../etc"}}"#).unwrap();
        let (spec, _) = load_spec(&dir).unwrap();
        assert!(sandbox_id_of(&spec, "c1").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
