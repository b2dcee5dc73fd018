//! The resource verbs of a container: Stats (cgroup v2 metrics from the guest, stats.rs),
//! Update (OCI LinuxResources to the guest cgroup), Pause/Resume (guest freezer; the state
//! change and its event are the container's).

use containerd_shim::api;
use containerd_shim::protos::protobuf::MessageField;

use crate::container::Container;
use crate::error::{Error, Result};
use crate::task::service::Service;

/// Type URL prefix containerd uses for OCI runtime-spec types (`ctr task update`, CRI).
const OCI_RESOURCES_TYPE: &str = "opencontainers/runtime-spec/1/LinuxResources";

/// The JSON of an Any holding OCI LinuxResources, checked to parse (pure).
pub fn resources_json(any: Option<&containerd_shim::protos::protobuf::well_known_types::any::Any>) -> Result<Vec<u8>> {
    let any = any.ok_or_else(|| Error::InvalidArgument("Update without resources".into()))?;
    if !any.type_url.is_empty() && !any.type_url.ends_with(OCI_RESOURCES_TYPE) {
        return Err(Error::InvalidArgument(format!(
            "Update resources of type {:?}: only OCI LinuxResources ({OCI_RESOURCES_TYPE}) are supported",
            any.type_url.chars().take(200).collect::<String>()
        )));
    }
    if any.value.len() > bulwark_protocol::MAX_SPEC_JSON {
        return Err(Error::InvalidArgument(format!(
            "Update resources: {} bytes, more than the {} accepted",
            any.value.len(),
            bulwark_protocol::MAX_SPEC_JSON
        )));
    }
    serde_json::from_slice::<oci_spec::runtime::LinuxResources>(&any.value)
        .map_err(|e| Error::InvalidArgument(format!("Update resources are not OCI LinuxResources JSON: {e}")))?;
    Ok(any.value.clone())
}

/// Stats: the container's cgroup v2 metrics (the guest's raw files, parsed by stats.rs).
pub async fn stats(svc: &Service, req: api::StatsRequest) -> Result<api::StatsResponse> {
    let c = svc.container(&req.id)?;
    stats_of(&c).await
}

/// Stats of one container (the guest's reply is untrusted: stats.rs bounds it).
pub async fn stats_of(c: &Container) -> Result<api::StatsResponse> {
    c.live()?;
    let files = c.agent().stats_container(&c.id).await?;
    let any = crate::task::stats::metrics_any(&files)?;
    Ok(api::StatsResponse { stats: MessageField::some(any), ..Default::default() })
}

/// Update: OCI LinuxResources applied to the container's cgroup in the guest.
pub async fn update(svc: &Service, req: api::UpdateTaskRequest) -> Result<()> {
    let json = resources_json(req.resources.as_ref())?;
    let c = svc.container(&req.id)?;
    c.live()?;
    c.agent().update_container(&req.id, json).await?;
    tracing::info!("container {}: resources updated", req.id);
    Ok(())
}

/// Pause (`pause`) or Resume (the container's verb: /tasks/paused, /tasks/resumed).
pub async fn pause(svc: &Service, id: &str, pause: bool) -> Result<()> {
    svc.container(id)?.pause(pause).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::well_known_types::any::Any;

    fn any(url: &str, value: &[u8]) -> Any {
        Any { type_url: url.into(), value: value.to_vec(), ..Default::default() }
    }

    #[test]
    fn update_resources_are_checked() {
        let url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
        let ok = br#"{"memory":{"limit":33554432},"devices":[{"allow":false,"access":"rwm"}]}"#;
        assert_eq!(resources_json(Some(&any(url, ok))).unwrap(), ok.to_vec());
        assert!(resources_json(None).is_err());
        assert!(resources_json(Some(&any(url, b"{not json"))).is_err());
        assert!(resources_json(Some(&any("io.containerd.cgroups.v1.Something", ok))).is_err());
        let big = vec![b' '; bulwark_protocol::MAX_SPEC_JSON + 1];
        assert!(resources_json(Some(&any(url, &big))).is_err());
    }
}
