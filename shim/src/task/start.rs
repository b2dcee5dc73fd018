//! Start of a container's init process or of an exec (the verb is the container's:
//! container/lifecycle.rs). The pid returned is the task pid containerd sees (QEMU's).

use containerd_shim::api;

use crate::error::Result;
use crate::task::service::Service;

pub async fn start(svc: &Service, req: api::StartRequest) -> Result<api::StartResponse> {
    let (c, p) = svc.process(&req.id, &req.exec_id)?;
    let pid = c.start(&p).await?;
    Ok(api::StartResponse { pid, ..Default::default() })
}
