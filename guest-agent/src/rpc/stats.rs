//! Cgroup RPCs (container/cgroups.rs): StatsContainer, UpdateContainer, PauseContainer,
//! ResumeContainer, ListProcesses, WaitOomEvent.
use protocol::agent::{
    ContainerRequest, Empty, ListProcessesResponse, OomEvent, StatsResponse, UpdateContainerRequest,
};

use crate::rpc::errors::{cgroup_err, container_err};
use crate::rpc::service::AgentService;

pub fn stats(svc: &AgentService, req: ContainerRequest) -> ttrpc::Result<StatsResponse> {
    let cgroup_files = svc.cgroups.stats(&req.container_id).map_err(cgroup_err)?;
    Ok(StatsResponse { cgroup_files, ..Default::default() })
}

pub async fn update(svc: &AgentService, req: UpdateContainerRequest) -> ttrpc::Result<Empty> {
    svc.cgroups.update(&req.container_id, &req.resources_json).await.map_err(cgroup_err).map(|_| Empty::default())
}

/// PauseContainer (`pause`) or ResumeContainer, under the container's lifecycle lock (the
/// same as ExecProcess: an exec is refused while the container is paused).
pub async fn freeze(svc: &AgentService, req: ContainerRequest, pause: bool) -> ttrpc::Result<Empty> {
    let id = &req.container_id;
    let mut lifecycle = svc.locks.lock(id, if pause { "pause" } else { "resume" }).await.map_err(container_err)?;
    svc.cgroups.freeze(&svc.runtime, id, pause).await.map_err(cgroup_err)?;
    lifecycle.paused = pause;
    Ok(Empty::default())
}

pub fn list_processes(svc: &AgentService, req: ContainerRequest) -> ttrpc::Result<ListProcessesResponse> {
    let pids = svc.cgroups.processes(&req.container_id).map_err(cgroup_err)?;
    Ok(ListProcessesResponse { pids, ..Default::default() })
}

pub async fn wait_oom(svc: &AgentService) -> OomEvent {
    OomEvent { container_id: svc.cgroups.next_oom().await, ..Default::default() }
}
