//! The Task service's resource methods: Stats (cgroup v2 metrics from the guest), Update
//! (OCI LinuxResources to the guest cgroup), Pause/Resume (guest freezer, TaskPaused and
//! TaskResumed, PAUSED in State), Pids (guest pids) and the sandbox's OOM watcher (TaskOOM).

use std::sync::Arc;

use containerd_shim::api;
use containerd_shim::protos::events::task::{TaskOOM, TaskPaused, TaskResumed};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::types::task::ProcessInfo;

use super::{lock, Inner};
use crate::agent::AgentApi;
use crate::container::process::Status;
use crate::error::{Error, Result};
use crate::sandbox::Sandbox;

/// How long the exit path waits for the cgroup's OOM count.
const OOM_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

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

impl Inner {
    /// A container that has a process in the guest (created, running or paused).
    fn live(&self, id: &str) -> Result<(Arc<crate::container::Container>, Arc<dyn AgentApi>)> {
        let c = self.container(id)?;
        if c.state().status == Status::Stopped {
            return Err(Error::FailedPrecondition(format!("container {id} has stopped")));
        }
        let agent = self.agent_of(&c)?;
        Ok((c, agent))
    }

    pub(super) async fn stats(&self, req: api::StatsRequest) -> Result<api::StatsResponse> {
        let (_, agent) = self.live(&req.id)?;
        let files = agent.stats_container(&req.id).await?;
        let any = crate::task::stats::metrics_any(&files)?;
        Ok(api::StatsResponse { stats: MessageField::some(any), ..Default::default() })
    }

    pub(super) async fn update(&self, req: api::UpdateTaskRequest) -> Result<()> {
        let json = resources_json(req.resources.as_ref())?;
        let (_, agent) = self.live(&req.id)?;
        agent.update_container(&req.id, json).await?;
        tracing::info!("container {}: resources updated", req.id);
        Ok(())
    }

    /// Pause (`pause`) or resume the container, then publish TaskPaused / TaskResumed.
    pub(super) async fn pause_resume(&self, id: &str, pause: bool) -> Result<()> {
        let (c, agent) = self.live(id)?;
        let _gate = c.start_gate.lock().await;
        let (from, what) = if pause { (Status::Running, "running") } else { (Status::Paused, "paused") };
        if c.state().status != from {
            return Err(Error::FailedPrecondition(format!("container {id} is not {what}")));
        }
        if pause {
            agent.pause_container(id).await?;
            c.set_paused(true);
            self.publish("/tasks/paused", Box::new(TaskPaused { container_id: id.to_string(), ..Default::default() }))
                .await;
        } else {
            agent.resume_container(id).await?;
            c.set_paused(false);
            self.publish(
                "/tasks/resumed",
                Box::new(TaskResumed { container_id: id.to_string(), ..Default::default() }),
            )
            .await;
        }
        tracing::info!("container {id} {}", if pause { "paused" } else { "resumed" });
        Ok(())
    }

    /// The container's processes with their guest pids.
    pub(super) async fn pids(&self, req: api::PidsRequest) -> Result<api::PidsResponse> {
        let (_, agent) = self.live(&req.id)?;
        let pids = agent.list_processes(&req.id).await?;
        let processes = pids.into_iter().map(|pid| ProcessInfo { pid, ..Default::default() }).collect();
        Ok(api::PidsResponse { processes, ..Default::default() })
    }

    /// Before TaskExit: publishes /tasks/oom for OOM kills in the container's cgroup that the
    /// watcher has not delivered yet (it races with the exit). Bounded by OOM_CHECK_TIMEOUT;
    /// a VM that died or an agent that does not answer just skips the check.
    pub(super) async fn publish_oom_before_exit(&self, c: &crate::container::Container, agent: &dyn AgentApi) {
        let files = match tokio::time::timeout(OOM_CHECK_TIMEOUT, agent.stats_container(&c.id)).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::debug!("container {}: no OOM check at exit: {e}", c.id);
                return;
            }
            Err(_) => {
                tracing::warn!("container {}: OOM check at exit timed out after {OOM_CHECK_TIMEOUT:?}", c.id);
                return;
            }
        };
        let total = crate::task::stats::parse_metrics(&files).memory_events.oom_kill;
        for _ in 0..c.oom.on_total(total) {
            self.publish("/tasks/oom", Box::new(TaskOOM { container_id: c.id.clone(), ..Default::default() })).await;
        }
    }

    /// Starts the OOM watcher of a freshly booted sandbox: `/tasks/oom` for every OOM kill
    /// the guest reports in a container this shim knows; other ids are logged and dropped.
    pub(super) fn watch_oom(self: &Arc<Self>, sandbox: &Arc<Sandbox>, agent: Arc<dyn AgentApi>) {
        let inner = Arc::downgrade(self);
        let sid = sandbox.id.clone();
        crate::sandbox::oom::spawn(sandbox, agent, move |container_id: String| {
            let inner = inner.clone();
            let sid = sid.clone();
            async move {
                let Some(inner) = inner.upgrade() else { return };
                let known = lock(&inner.containers).get(&container_id).filter(|c| c.sandbox_id == sid).cloned();
                let Some(c) = known else {
                    tracing::warn!("sandbox {sid}: OOM event for unknown container {container_id:?} ignored");
                    return;
                };
                if c.oom.on_event() {
                    inner.publish("/tasks/oom", Box::new(TaskOOM { container_id, ..Default::default() })).await;
                }
            }
        });
    }
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
