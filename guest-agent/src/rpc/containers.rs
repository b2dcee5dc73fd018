//! Container RPCs: CreateContainer, StartContainer, RemoveContainer. The spec is rewritten
//! (container/spec.rs, container/pod.rs) and the runtime called off the async runtime, under
//! the container's lifecycle lock (container/locks.rs) only; the init process goes into the
//! process table under an empty exec id. The syscall collector watches a container from its
//! creation to its removal.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use protocol::agent::{ContainerRequest, CreateContainerRequest, Empty};
use ttrpc::Code;

use crate::container::bundle::{remove_bundle, resolve_in_share, resolve_rootfs, write_bundle};
use crate::container::{pod, spec, validate_id, ContainerError};
use crate::process::StdioSetup;
use crate::rpc::errors::{container_err, join_err, not_found, status};
use crate::rpc::service::AgentService;

/// How long RemoveContainer waits for a SIGKILLed container to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The pod's sandbox container: the request's, or the container itself when it is empty.
pub fn sandbox_id_of(req: &CreateContainerRequest) -> &str {
    if req.sandbox_id.is_empty() {
        req.container_id.as_str()
    } else {
        req.sandbox_id.as_str()
    }
}

/// The spec's `process.terminal`, which must match the request's `terminal` (libcontainer
/// wants a console socket exactly when the spec asks for a terminal).
pub fn check_terminal(spec: &serde_json::Value, requested: bool) -> ttrpc::Result<bool> {
    let terminal = spec.pointer("/process/terminal").and_then(serde_json::Value::as_bool).unwrap_or(false);
    if terminal != requested {
        return Err(status(
            Code::INVALID_ARGUMENT,
            format!("terminal={requested} in the request but process.terminal={terminal} in the spec"),
        ));
    }
    Ok(terminal)
}

/// Rewrites the spec for the guest and the pod (container/pod.rs) and sets up what the pod
/// shares.
async fn pod_spec(
    svc: &AgentService,
    req: &CreateContainerRequest,
    share: &Path,
    rootfs: &Path,
) -> ttrpc::Result<serde_json::Value> {
    let id = &req.container_id;
    let sandbox_id = sandbox_id_of(req);
    validate_id(sandbox_id).map_err(container_err)?;
    let sandbox_pid = if sandbox_id == id { None } else { svc.processes.running_init_pid(sandbox_id).await };
    let shm_dir = pod::ensure_shm(sandbox_id).map_err(container_err)?;
    let shared: Vec<(u32, String)> = req.shared_mounts.iter().map(|m| (m.mount_index, m.share_path.clone())).collect();
    let view = pod::PodView {
        container_id: id,
        sandbox_id,
        sandbox_pid,
        resolve_shared: Box::new(move |rel: &str| resolve_in_share(share, rel)),
        shared_mounts: &shared,
        shm_dir: &shm_dir,
    };
    let guest =
        spec::rewrite_spec(id, &req.oci_spec_json, rootfs, &view, &|p: &Path| p.exists(), req.allow_unconfined_seccomp)
            .map_err(container_err)?;
    for n in guest.notes {
        tracing::info!(container = %id, "spec: {n}");
    }
    pod::apply_sysctls(&guest.vm_sysctls).map_err(container_err)?;
    Ok(guest.spec)
}

/// CreateContainer: returns the init pid.
pub async fn create(svc: &AgentService, req: &CreateContainerRequest) -> ttrpc::Result<u32> {
    let id = req.container_id.clone();
    validate_id(&id).map_err(container_err)?;
    if svc.processes.has_container(&id).await {
        return Err(status(Code::ALREADY_EXISTS, format!("container {id:?} already exists")));
    }
    let share = svc.share.ensure_mounted().await.map_err(|e| {
        tracing::error!("{e}");
        status(Code::FAILED_PRECONDITION, e.to_string())
    })?;
    let rootfs = resolve_rootfs(share, &req.rootfs_path).map_err(container_err)?;
    let spec = pod_spec(svc, req, share, &rootfs).await?;
    let terminal = check_terminal(&spec, req.terminal)?;
    let lifecycle = svc.locks.lock(&id, "create").await.map_err(container_err)?;
    let bundle = write_bundle(&id, &spec).map_err(container_err)?;
    let (setup, child_stdio) =
        StdioSetup::new(terminal, req.stdin).map_err(|e| status(Code::INTERNAL, e.to_string()))?;

    let reaper = svc.reaper.clone();
    let runtime = svc.runtime.clone();
    let no_pivot = svc.no_pivot;
    let (cid, cbundle) = (id.clone(), bundle.clone());
    let created = tokio::task::spawn_blocking(move || {
        let (pid, exit) = runtime.create(&cid, &cbundle, child_stdio, no_pivot, &reaper)?;
        let io = setup.receive().map_err(|e| ContainerError::Spec(format!("container terminal: {e}")))?;
        Ok::<_, ContainerError>((pid, exit, io))
    })
    .await
    .map_err(join_err)?;
    let (pid, exit, io) = match created {
        Ok(v) => v,
        Err(e) => {
            let runtime = svc.runtime.clone();
            let cid = id.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = runtime.delete(&cid) {
                    tracing::warn!("cleaning up after the failed create: {e}");
                }
            })
            .await;
            remove_bundle(&id);
            drop(lifecycle);
            return Err(container_err(e));
        }
    };
    drop(lifecycle);

    let entry = Arc::new(io.into_process(&id, pid, exit, req.stdin));
    svc.processes.insert_container(id.clone(), entry).await;
    svc.cgroups.track(&id);
    if let Some(dir) = svc.cgroups.dir_of(&id) {
        svc.telemetry.watch(&id, &dir);
    }
    tracing::info!(container = %id, pid, "container created");
    Ok(pid as u32)
}

pub async fn start(svc: &AgentService, req: ContainerRequest) -> ttrpc::Result<Empty> {
    let id = req.container_id;
    svc.processes.get(&id, "").await.map_err(not_found)?;
    let _lifecycle = svc.locks.lock(&id, "start").await.map_err(container_err)?;
    let runtime = svc.runtime.clone();
    let cid = id.clone();
    tokio::task::spawn_blocking(move || runtime.start(&cid)).await.map_err(join_err)?.map_err(container_err)?;
    tracing::info!(container = %id, "container started");
    Ok(Empty::default())
}

pub async fn remove(svc: &AgentService, req: ContainerRequest) -> ttrpc::Result<Empty> {
    let id = req.container_id;
    let e = svc.processes.get(&id, "").await.map_err(not_found)?;
    if e.exit.borrow().is_none() {
        let reaper = svc.reaper.clone();
        let runtime = svc.runtime.clone();
        let (cid, init) = (id.clone(), e.clone());
        // No lock across kill_all (a cgroup-wide kill, in a helper); the reaper lock only
        // around the kill(2) of the init pid.
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(err) = runtime.kill_all(&cid, libc::SIGKILL) {
                tracing::warn!("{err}; killing the init process only");
                let _g = reaper.lock();
                if init.exit.borrow().is_none() {
                    let _ = runtime.signal(init.pid, libc::SIGKILL);
                }
            }
        })
        .await;
        let mut exit = e.exit.clone();
        if tokio::time::timeout(KILL_WAIT, exit.wait_for(|s| s.is_some())).await.is_err() {
            tracing::warn!(container = %id, "init process still not reaped {KILL_WAIT:?} after SIGKILL");
        }
    }
    let lifecycle = svc.locks.lock(&id, "delete").await.map_err(container_err)?;
    svc.telemetry.unwatch(&id);
    svc.cgroups.untrack(&id);
    let runtime = svc.runtime.clone();
    let cid = id.clone();
    let deleted = tokio::task::spawn_blocking(move || runtime.delete(&cid)).await.map_err(join_err)?;
    drop(lifecycle);
    svc.locks.forget(&id);
    // Forget the container even if libcontainer failed, so the id can be reused; report it.
    e.close().await;
    svc.processes.forget_execs_of(&id).await;
    svc.processes.remove_container(&id).await;
    remove_bundle(&id);
    // The pod's guest state goes with its sandbox container (the last one CRI removes).
    pod::release(&id);
    deleted.map_err(container_err)?;
    tracing::info!(container = %id, "container removed");
    Ok(Empty::default())
}
