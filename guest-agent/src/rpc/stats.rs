//! Cgroup RPCs (container/cgroups.rs): StatsContainer, UpdateContainer, PauseContainer,
//! ResumeContainer, ListProcesses, WaitOomEvent.
use protocol::agent::{
    ContainerRequest, Empty, ListProcessesResponse, OomEvent, StatsResponse, UpdateContainerRequest,
};

use crate::rpc::errors::cgroup_err;
use crate::rpc::service::AgentService;

pub fn stats(svc: &AgentService, req: ContainerRequest) -> ttrpc::Result<StatsResponse> {
    let cgroup_files = svc.cgroups.stats(&req.container_id).map_err(cgroup_err)?;
    Ok(StatsResponse { cgroup_files, ..Default::default() })
}

pub async fn update(svc: &AgentService, req: UpdateContainerRequest) -> ttrpc::Result<Empty> {
    svc.cgroups.update(&req.container_id, &req.resources_json).await.map_err(cgroup_err).map(|_| Empty::default())
}

/// PauseContainer (`pause`) or ResumeContainer.
pub async fn freeze(svc: &AgentService, req: ContainerRequest, pause: bool) -> ttrpc::Result<Empty> {
    svc.cgroups.freeze(&svc.reaper, &req.container_id, pause).await.map_err(cgroup_err).map(|_| Empty::default())
}

pub fn list_processes(svc: &AgentService, req: ContainerRequest) -> ttrpc::Result<ListProcessesResponse> {
    let pids = svc.cgroups.processes(&req.container_id).map_err(cgroup_err)?;
    Ok(ListProcessesResponse { pids, ..Default::default() })
}

pub async fn wait_oom(svc: &AgentService) -> OomEvent {
    OomEvent { container_id: svc.cgroups.next_oom().await, ..Default::default() }
}
