//! The agent API of a test mode: the real service behind a wrapper that lies, stops
//! answering, crashes the guest after the first container started, or answers with replies
//! as large as ttrpc carries. Calls a mode does not touch go to the real service unchanged.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use protocol::agent::*;
use protocol::agent_ttrpc::Agent;
use ttrpc::r#async::TtrpcContext;

use super::floods;
use super::mode::{first_start, Mode};
use crate::rpc::AgentService;

/// How long after the first start the crash modes wait (so the StartContainer reply and its
/// log line reach the host first).
const CRASH_DELAY: Duration = Duration::from_secs(2);
/// ttrpc refuses messages over 4 MiB: the huge replies stay just under it.
const HUGE_PIDS: u32 = 1_250_000;
const HUGE_STATS_FILES: usize = 58;
const HUGE_STRING: usize = 3 << 20;

/// The real service and the mode's state.
pub struct Hostile {
    mode: Mode,
    inner: Arc<AgentService>,
    /// `mute`: set once the first container started; every call then hangs.
    muted: AtomicBool,
}

impl Hostile {
    pub fn wrap(mode: Mode, inner: Arc<AgentService>) -> Arc<dyn Agent + Send + Sync> {
        Arc::new(Hostile { mode, inner, muted: AtomicBool::new(false) })
    }

    /// Where every call starts: a muted agent never answers.
    async fn gate(&self) {
        if self.muted.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    /// After a StartContainer succeeded: the first time, the "after start" modes act.
    fn started(&self) {
        if !first_start::mark() {
            return;
        }
        match self.mode {
            Mode::PanicAfterStart => crash_later("crashing the guest kernel (sysrq c)", || {
                let r = std::fs::OpenOptions::new()
                    .write(true)
                    .open("/proc/sysrq-trigger")
                    .and_then(|mut f| f.write_all(b"c"));
                tracing::error!("test mode panic-after-start: sysrq-trigger did not crash the kernel: {r:?}");
            }),
            Mode::KillAgentAfterStart => crash_later("the agent exits", || std::process::exit(70)),
            Mode::Mute => {
                tracing::warn!("test mode mute: no agent call is answered from now on");
                self.muted.store(true, Ordering::SeqCst);
            }
            Mode::VsockFlood => floods::vsock_flood(),
            _ => {}
        }
    }
}

/// Runs `crash` on a thread `CRASH_DELAY` from now, after logging `what`.
fn crash_later(what: &'static str, crash: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        std::thread::sleep(CRASH_DELAY);
        tracing::error!("test mode: {what}");
        // The console line has been written (one write per line); give the host a moment.
        std::thread::sleep(Duration::from_millis(200));
        crash();
    });
}

/// A cgroup file's worth of text that overflows every counter.
fn huge_stats() -> HashMap<String, Vec<u8>> {
    let chunk = protocol::MAX_CGROUP_FILE;
    let mut files = HashMap::new();
    let counters = "usage_usec 99999999999999999999999999\nnr_throttled -1\n".repeat(chunk / 48 + 1);
    for name in ["cpu.stat", "memory.stat", "memory.events"] {
        files.insert(name.to_string(), counters.as_bytes()[..chunk].to_vec());
    }
    for name in ["memory.current", "memory.max", "pids.current", "pids.max"] {
        files.insert(name.to_string(), vec![b'9'; chunk]);
    }
    let mut i = 0;
    while files.len() < HUGE_STATS_FILES {
        files.insert(format!("junk.{i:04}"), vec![0xff; chunk]);
        i += 1;
    }
    files
}

/// Text no one should log as is: bidi overrides, escapes, NULs, line separators.
fn huge_string() -> String {
    "\u{202e}\x1b[2J\0\u{2028}A".repeat(HUGE_STRING / 12)
}

/// The calls every mode passes through (after the mute gate), then the ones modes change.
macro_rules! hostile_agent {
    (unchanged { $($name:ident($req:ty) -> $resp:ty;)* } changed { $($changed:tt)* }) => {
        #[async_trait]
        impl Agent for Hostile {
            $(
                async fn $name(&self, ctx: &TtrpcContext, req: $req) -> ttrpc::Result<$resp> {
                    self.gate().await;
                    self.inner.$name(ctx, req).await
                }
            )*
            $($changed)*
        }
    };
}

hostile_agent! {
    unchanged {
    create_container(CreateContainerRequest) -> CreateContainerResponse;
    remove_container(ContainerRequest) -> Empty;
    read_stdout(ReadStreamRequest) -> ReadStreamResponse;
    read_stderr(ReadStreamRequest) -> ReadStreamResponse;
    write_stdin(WriteStreamRequest) -> WriteStreamResponse;
    close_stdin(ProcessRequest) -> Empty;
    exec_process(ExecProcessRequest) -> ExecProcessResponse;
    remove_process(ProcessRequest) -> Empty;
    resize_pty(ResizePtyRequest) -> Empty;
    update_container(UpdateContainerRequest) -> Empty;
    pause_container(ContainerRequest) -> Empty;
    resume_container(ContainerRequest) -> Empty;
    }
    changed {
        async fn setup_sandbox(&self, ctx: &TtrpcContext, req: SetupSandboxRequest) -> ttrpc::Result<Empty> {
            self.gate().await;
            // A hostile guest owns its agent's memory: its floods on the telemetry port carry
            // the boot's stream token, so the host's checks after the Hello are what they test.
            if let Some(t) = req.telemetry.as_ref() {
                floods::remember_stream_token(&t.stream_token);
            }
            self.inner.setup_sandbox(ctx, req).await
        }

        async fn check(&self, ctx: &TtrpcContext, req: CheckRequest) -> ttrpc::Result<CheckResponse> {
            self.gate().await;
            let mut r = self.inner.check(ctx, req).await?;
            if self.mode == Mode::HugeReplies && first_start::started() {
                r.kernel_release = huge_string();
            }
            Ok(r)
        }

        async fn start_container(&self, ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
            self.gate().await;
            let r = self.inner.start_container(ctx, req).await?;
            self.started();
            Ok(r)
        }

        async fn wait_process(&self, ctx: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<WaitProcessResponse> {
            self.gate().await;
            if self.mode == Mode::Liar {
                // Never reports an exit.
                std::future::pending::<()>().await;
            }
            self.inner.wait_process(ctx, req).await
        }

        async fn signal_process(&self, ctx: &TtrpcContext, req: SignalProcessRequest) -> ttrpc::Result<Empty> {
            self.gate().await;
            if self.mode == Mode::Liar {
                tracing::warn!(
                    container = %req.container_id, exec = %req.exec_id, signal = req.signal,
                    "test mode liar: SignalProcess acknowledged, not delivered"
                );
                return Ok(Empty::default());
            }
            self.inner.signal_process(ctx, req).await
        }

        async fn stats_container(&self, ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<StatsResponse> {
            self.gate().await;
            if self.mode == Mode::HugeReplies {
                return Ok(StatsResponse { cgroup_files: huge_stats(), ..Default::default() });
            }
            self.inner.stats_container(ctx, req).await
        }

        async fn list_processes(&self, ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<ListProcessesResponse> {
            self.gate().await;
            if self.mode == Mode::HugeReplies {
                // Three-byte varints: about 3.75 MB packed.
                let pids = (0..HUGE_PIDS).map(|i| 1_000_000 + i % 1_000_000).collect();
                return Ok(ListProcessesResponse { pids, ..Default::default() });
            }
            self.inner.list_processes(ctx, req).await
        }

        async fn wait_oom_event(&self, ctx: &TtrpcContext, req: Empty) -> ttrpc::Result<OomEvent> {
            self.gate().await;
            if self.mode == Mode::HugeReplies {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(OomEvent { container_id: huge_string(), ..Default::default() });
            }
            self.inner.wait_oom_event(ctx, req).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;

    /// The huge replies must stay under ttrpc's 4 MiB message cap (or the host would only
    /// see a refused reply, not a huge one) and above 3 MiB.
    #[test]
    fn huge_replies_are_just_under_the_ttrpc_cap() {
        let cap = 4 << 20;
        let pids = ListProcessesResponse {
            pids: (0..HUGE_PIDS).map(|i| 1_000_000 + i % 1_000_000).collect(),
            ..Default::default()
        };
        let stats = StatsResponse { cgroup_files: huge_stats(), ..Default::default() };
        let check = CheckResponse { kernel_release: huge_string(), ..Default::default() };
        for (what, len) in
            [("pids", pids.compute_size()), ("stats", stats.compute_size()), ("check", check.compute_size())]
        {
            assert!(len < cap - 64 && len > 3 << 20, "{what}: {len} bytes");
        }
    }
}
