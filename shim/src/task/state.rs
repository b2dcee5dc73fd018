//! The read-only verbs: State and Wait of any process, Pids (guest pids of a container) and
//! Connect (the shim's pid and the task pid, QEMU's).

use containerd_shim::api;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::types::task::ProcessInfo;

use crate::error::Result;
use crate::task::service::Service;

pub fn state(svc: &Service, req: api::StateRequest) -> Result<api::StateResponse> {
    let (c, p) = svc.process(&req.id, &req.exec_id)?;
    Ok(c.state(&p))
}

pub async fn wait(svc: &Service, req: api::WaitRequest) -> Result<api::WaitResponse> {
    let (c, p) = svc.process(&req.id, &req.exec_id)?;
    let exit = c.wait(&p).await;
    Ok(api::WaitResponse { exit_status: exit.status, exited_at: MessageField::some(exit.at), ..Default::default() })
}

/// The container's processes with their guest pids.
pub async fn pids(svc: &Service, req: api::PidsRequest) -> Result<api::PidsResponse> {
    let c = svc.container(&req.id)?;
    c.live()?;
    let pids = c.agent().list_processes(&req.id).await?;
    let processes = pids.into_iter().map(|pid| ProcessInfo { pid, ..Default::default() }).collect();
    Ok(api::PidsResponse { processes, ..Default::default() })
}

pub fn connect(svc: &Service, req: api::ConnectRequest) -> api::ConnectResponse {
    let task_pid = svc.container(&req.id).map(|c| c.pid()).unwrap_or(0);
    api::ConnectResponse {
        shim_pid: std::process::id(),
        task_pid,
        version: format!("bulwark {}", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    }
}
