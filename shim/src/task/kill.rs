//! Kill of a container's init process or of an exec (runc-shim's rules are the container's:
//! container/lifecycle.rs).

use containerd_shim::api;

use crate::error::Result;
use crate::task::service::Service;

pub async fn kill(svc: &Service, req: api::KillRequest) -> Result<()> {
    let (c, p) = svc.process(&req.id, &req.exec_id)?;
    c.kill(&p, req.signal, req.all).await
}
