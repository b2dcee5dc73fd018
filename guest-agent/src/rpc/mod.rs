//! The `Agent` ttrpc service (`protocol/proto/agent.proto`). Each RPC is one call into the
//! file for its group: `containers.rs` (create, start, remove), `processes.rs` (wait, signal,
//! stdio, exec, resize), `stats.rs` (cgroup stats, updates, pause, processes, OOM events),
//! `sandbox.rs` (check, SetupSandbox). They stay thin: validate, look up the process
//! (process/table.rs), call the layers below, map errors to ttrpc codes (`errors.rs`). The
//! service's state is in `service.rs`.
use async_trait::async_trait;
use protocol::agent::*;
use protocol::agent_ttrpc::Agent;
use ttrpc::r#async::TtrpcContext;

mod containers;
mod errors;
mod processes;
mod sandbox;
mod service;
mod stats;
#[cfg(test)]
mod tests;

pub use service::AgentService;

#[async_trait]
impl Agent for AgentService {
    async fn check(&self, _ctx: &TtrpcContext, req: CheckRequest) -> ttrpc::Result<CheckResponse> {
        Ok(sandbox::check(req))
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        let pid = containers::create(self, &req).await?;
        Ok(CreateContainerResponse { pid, ..Default::default() })
    }

    async fn start_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        containers::start(self, req).await
    }

    async fn wait_process(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<WaitProcessResponse> {
        processes::wait(self, req).await
    }

    async fn signal_process(&self, _ctx: &TtrpcContext, req: SignalProcessRequest) -> ttrpc::Result<Empty> {
        processes::signal(self, req).await
    }

    async fn remove_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        containers::remove(self, req).await
    }

    async fn read_stdout(&self, _ctx: &TtrpcContext, req: ReadStreamRequest) -> ttrpc::Result<ReadStreamResponse> {
        processes::read(self, req, false).await
    }

    async fn read_stderr(&self, _ctx: &TtrpcContext, req: ReadStreamRequest) -> ttrpc::Result<ReadStreamResponse> {
        processes::read(self, req, true).await
    }

    async fn write_stdin(&self, _ctx: &TtrpcContext, req: WriteStreamRequest) -> ttrpc::Result<WriteStreamResponse> {
        processes::write_stdin(self, req).await
    }

    async fn setup_sandbox(&self, _ctx: &TtrpcContext, req: SetupSandboxRequest) -> ttrpc::Result<Empty> {
        sandbox::setup(self, req).await
    }

    async fn close_stdin(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<Empty> {
        processes::close_stdin(self, req).await
    }

    async fn stats_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<StatsResponse> {
        stats::stats(self, req)
    }

    async fn update_container(&self, _ctx: &TtrpcContext, req: UpdateContainerRequest) -> ttrpc::Result<Empty> {
        stats::update(self, req).await
    }

    async fn pause_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        stats::freeze(self, req, true).await
    }

    async fn resume_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        stats::freeze(self, req, false).await
    }

    async fn list_processes(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<ListProcessesResponse> {
        stats::list_processes(self, req)
    }

    async fn wait_oom_event(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<OomEvent> {
        Ok(stats::wait_oom(self).await)
    }

    async fn exec_process(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<ExecProcessResponse> {
        processes::exec(self, req).await
    }

    async fn remove_process(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<Empty> {
        processes::remove(self, req).await
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        processes::resize_pty(self, req).await
    }
}
