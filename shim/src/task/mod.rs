//! containerd's Task API (task v2 over ttrpc), as dispatch only: each method finds the
//! container, then the process (empty exec id: the init process), and calls its verb — one
//! file per group of verbs: create.rs, start.rs, kill.rs, delete.rs (and Shutdown), exec.rs
//! (Exec, ResizePty, CloseIO), state.rs (State, Wait, Pids, Connect), resources.rs (Stats,
//! Update, Pause, Resume; metrics parsing in stats.rs). What they share is service.rs.
//!
//! Events: the container layer sends every event into one channel; events.rs's single
//! forwarder publishes them to containerd in that order.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};

use crate::container::EventTx;
use crate::error::unimplemented;
use crate::task::service::Service;

mod create;
mod delete;
mod events;
mod exec;
mod kill;
mod resources;
mod service;
mod start;
mod state;
pub(crate) mod stats;
#[cfg(test)]
mod tests;

/// Runs a verb that changes host state (mounts, processes, leases, the VM) to its end in a
/// task of its own: ttrpc drops a handler when the request's deadline passes, and a Create or
/// Delete dropped halfway would leave what it made with no owner. containerd then sees the
/// deadline error, and the state is whole: a retry finds it, a Delete removes it.
async fn to_the_end<T: Send + 'static>(
    verb: &str,
    work: impl std::future::Future<Output = crate::error::Result<T>> + Send + 'static,
) -> crate::error::Result<T> {
    tokio::spawn(work).await.map_err(|e| crate::error::Error::Internal(format!("{verb}: {e}")))?
}

/// The task service; cheap to clone.
#[derive(Clone)]
pub struct TaskService {
    svc: Arc<Service>,
}

impl TaskService {
    /// The service, with its event channel and the forwarder publishing it to containerd.
    pub fn new(namespace: String, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        let (tx, rx) = EventTx::channel();
        let forwarded = events::spawn_forwarder(rx, publisher, namespace.clone());
        TaskService { svc: Arc::new(Service::new(namespace, tx, Some(forwarded), exit)) }
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        tracing::info!("Create {} (bundle {})", req.id, req.bundle);
        let svc = self.svc.clone();
        Ok(to_the_end("Create", async move { create::create(&svc, req).await }).await?)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        tracing::info!("Start {} {}", req.id, req.exec_id);
        let svc = self.svc.clone();
        Ok(to_the_end("Start", async move { start::start(&svc, req).await }).await?)
    }

    async fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        Ok(state::state(&self.svc, req)?)
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        Ok(state::wait(&self.svc, req).await?)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        tracing::info!("Kill {} {} signal {} all {}", req.id, req.exec_id, req.signal, req.all);
        kill::kill(&self.svc, req).await?;
        Ok(api::Empty::default())
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        tracing::info!("Delete {} {}", req.id, req.exec_id);
        let svc = self.svc.clone();
        Ok(to_the_end("Delete", async move { delete::delete(&svc, req).await }).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        Ok(state::pids(&self.svc, req).await?)
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        tracing::info!("CloseIO {} {} stdin {}", req.id, req.exec_id, req.stdin);
        exec::close_io(&self.svc, req).await?;
        Ok(api::Empty::default())
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        Ok(state::connect(&self.svc, req))
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        let svc = self.svc.clone();
        to_the_end("Shutdown", async move {
            delete::shutdown(&svc).await;
            Ok(())
        })
        .await?;
        Ok(api::Empty::default())
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        tracing::info!("Pause {}", req.id);
        resources::pause(&self.svc, &req.id, true).await?;
        Ok(api::Empty::default())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        tracing::info!("Resume {}", req.id);
        resources::pause(&self.svc, &req.id, false).await?;
        Ok(api::Empty::default())
    }

    async fn checkpoint(&self, _ctx: &TtrpcContext, _req: api::CheckpointTaskRequest) -> TtrpcResult<api::Empty> {
        Err(unimplemented("Checkpoint"))
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        tracing::info!("Exec {} {} (terminal {})", req.id, req.exec_id, req.terminal);
        exec::exec(&self.svc, req)?;
        Ok(api::Empty::default())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        tracing::debug!("ResizePty {} {} {}x{}", req.id, req.exec_id, req.width, req.height);
        exec::resize_pty(&self.svc, req).await?;
        Ok(api::Empty::default())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        tracing::info!("Update {}", req.id);
        resources::update(&self.svc, req).await?;
        Ok(api::Empty::default())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        Ok(resources::stats(&self.svc, req).await?)
    }
}
