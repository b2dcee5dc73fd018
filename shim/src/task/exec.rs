//! Exec (add an exec process to a container), ResizePty and CloseIO (any process: empty exec
//! id is the init process). The verbs are the container's (container/exec.rs,
//! container/lifecycle.rs).

use containerd_shim::api;

use crate::container::Stdio;
use crate::error::{Error, Result};
use crate::task::service::Service;

pub fn exec(svc: &Service, req: api::ExecProcessRequest) -> Result<()> {
    let c = svc.container(&req.id)?;
    let tenant = svc.tenant(&c.sandbox_id);
    if !tenant.policy.allow_exec {
        let who = tenant.name.as_deref().map(|t| format!("tenant {t:?}")).unwrap_or_else(|| "this pod".into());
        return Err(Error::FailedPrecondition(format!(
            "exec into the pods of {who} is not allowed by the node's tenant policy (allow_exec = false)"
        )));
    }
    let json = req.spec.as_ref().map(|a| a.value.clone()).unwrap_or_default();
    // The same ids as a container's (the agent checks the rest of the process spec).
    if svc.sandbox(&c.sandbox_id).is_some_and(|s| s.idmap().is_some()) {
        if let Ok(p) = serde_json::from_slice::<oci_spec::runtime::Process>(&json) {
            crate::container::check_ids_mapped(p.user(), crate::jail::idmap::BLOCK, &format!("exec {}", req.exec_id))?;
        }
    }
    let stdio = Stdio { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal };
    c.add_exec(&req.exec_id, stdio, json)?;
    Ok(())
}

pub async fn resize_pty(svc: &Service, req: api::ResizePtyRequest) -> Result<()> {
    let (c, p) = svc.process(&req.id, &req.exec_id)?;
    c.resize_pty(&p, req.width, req.height).await
}

/// CloseIO: only stdin can be closed; without `stdin` it does nothing (not even a lookup of
/// the exec).
pub async fn close_io(svc: &Service, req: api::CloseIORequest) -> Result<()> {
    let c = svc.container(&req.id)?;
    if req.stdin {
        let p = c.process(&req.exec_id)?;
        c.close_io(&p).await?;
    }
    Ok(())
}
