//! Process RPCs, for a container's init process (empty exec id) or one of its execs:
//! WaitProcess, SignalProcess, ReadStdout/ReadStderr, WriteStdin, CloseStdin, ExecProcess,
//! RemoveProcess, ResizePty.
use std::sync::Arc;

use nix::sys::signal::Signal;
use protocol::agent::{
    Empty, ExecProcessRequest, ExecProcessResponse, ProcessRequest, ReadStreamRequest, ReadStreamResponse,
    ResizePtyRequest, SignalProcessRequest, WaitProcessResponse, WriteStreamRequest, WriteStreamResponse,
};
use ttrpc::Code;

use crate::container::exec::{self, ExecArgs};
use crate::container::ExecError;
use crate::process::pty::set_window_size;
use crate::rpc::errors::{container_err, exec_err, join_err, not_found, status};
use crate::rpc::service::AgentService;

/// How many bytes one ReadStdout/ReadStderr returns at most: `max_len`, 0 meaning the protocol's
/// chunk size, never more than that.
pub fn read_limit(max_len: u32) -> usize {
    (match max_len {
        0 => protocol::MAX_READ_CHUNK,
        n => n.min(protocol::MAX_READ_CHUNK),
    }) as usize
}

/// The signal number of a SignalProcess request: 0 (a liveness probe) or a valid signal.
pub fn parse_signal(signal: u32) -> ttrpc::Result<i32> {
    let signo = i32::try_from(signal).map_err(|_| status(Code::INVALID_ARGUMENT, "signal out of range"))?;
    if signo != 0 {
        Signal::try_from(signo).map_err(|_| status(Code::INVALID_ARGUMENT, format!("invalid signal {signo}")))?;
    }
    Ok(signo)
}

pub async fn wait(svc: &AgentService, req: ProcessRequest) -> ttrpc::Result<WaitProcessResponse> {
    let e = svc.processes.get(&req.container_id, &req.exec_id).await.map_err(not_found)?;
    let mut exit = e.exit.clone();
    let code = exit
        .wait_for(|s| s.is_some())
        .await
        .map(|s| s.unwrap_or(-1))
        .map_err(|_| status(Code::INTERNAL, "exit status channel closed"))?;
    svc.cgroups.check_oom(&req.container_id);
    Ok(WaitProcessResponse { exit_status: code, ..Default::default() })
}

pub async fn signal(svc: &AgentService, req: SignalProcessRequest) -> ttrpc::Result<Empty> {
    let e = svc.processes.get(&req.container_id, &req.exec_id).await.map_err(not_found)?;
    let signo = parse_signal(req.signal)?;
    let reaper = svc.reaper.clone();
    let runtime = svc.runtime.clone();
    let id = req.container_id.clone();
    let all = req.all;
    let res = tokio::task::spawn_blocking(move || -> ttrpc::Result<()> {
        if all {
            // Through the container's cgroup, in a helper process: no agent lock held.
            return runtime.kill_all(&id, signo).map_err(container_err);
        }
        // Under the reaper lock the pid cannot be reaped (and reused) while we signal it;
        // kill(2) does not block, so the lock is held only for a moment.
        let _g = reaper.lock();
        if e.exit.borrow().is_some() {
            return Err(status(Code::NOT_FOUND, format!("process of container {id:?} has already exited")));
        }
        runtime.signal(e.pid, signo).map_err(|err| status(Code::INTERNAL, format!("kill({}, {signo}): {err}", e.pid)))
    })
    .await
    .map_err(join_err)?;
    if res.is_ok() {
        tracing::info!(container = %req.container_id, exec = %req.exec_id, signal = signo, all, "signalled");
    }
    res.map(|_| Empty::default())
}

pub async fn read(svc: &AgentService, req: ReadStreamRequest, stderr: bool) -> ttrpc::Result<ReadStreamResponse> {
    let e = svc.processes.get(&req.container_id, &req.exec_id).await.map_err(not_found)?;
    let max = read_limit(req.max_len);
    let stream = if stderr { &e.stderr } else { &e.stdout };
    let data = stream.read(max).await;
    Ok(ReadStreamResponse { data, ..Default::default() })
}

pub async fn write_stdin(svc: &AgentService, req: WriteStreamRequest) -> ttrpc::Result<WriteStreamResponse> {
    let e = svc.processes.get(&req.container_id, &req.exec_id).await.map_err(not_found)?;
    let len = e.stdin.write(&req.data).await.map_err(|err| status(Code::FAILED_PRECONDITION, err.to_string()))?;
    Ok(WriteStreamResponse { len: len as u32, ..Default::default() })
}

pub async fn close_stdin(svc: &AgentService, req: ProcessRequest) -> ttrpc::Result<Empty> {
    let e = svc.processes.get(&req.container_id, &req.exec_id).await.map_err(not_found)?;
    e.stdin.close().await;
    Ok(Empty::default())
}

pub async fn exec(svc: &AgentService, req: ExecProcessRequest) -> ttrpc::Result<ExecProcessResponse> {
    let (id, exec_id) = (req.container_id.clone(), req.exec_id.clone());
    let init = svc.processes.get(&id, "").await.map_err(not_found)?;
    if svc.processes.has_exec(&id, &exec_id).await {
        return Err(status(Code::ALREADY_EXISTS, format!("exec {exec_id:?} of container {id:?} already exists")));
    }
    let args = ExecArgs {
        id: &id,
        exec_id: &exec_id,
        process_json: &req.process_json,
        with_stdin: req.stdin,
        terminal: req.terminal,
    };
    // One order for exec and Pause/Resume: the container's lifecycle lock, so an exec never
    // starts into a container being frozen (its child would block joining the frozen cgroup).
    let lifecycle = svc.locks.lock(&id, "exec").await.map_err(container_err)?;
    if lifecycle.paused {
        return Err(exec_err(ExecError::Paused(id)));
    }
    let process = exec::start(svc.runtime.clone(), svc.reaper.clone(), &init, args).await.map_err(exec_err)?;
    drop(lifecycle);
    let pid = process.pid;
    let entry = Arc::new(process);
    let previous = svc.processes.insert_exec(id.clone(), exec_id.clone(), entry).await;
    if let Some(p) = previous {
        // A concurrent ExecProcess with the same ids won the race; both run, keep the last.
        p.close().await;
    }
    tracing::info!(container = %id, exec = %exec_id, pid, terminal = req.terminal, "exec started");
    Ok(ExecProcessResponse { pid: pid as u32, ..Default::default() })
}

pub async fn remove(svc: &AgentService, req: ProcessRequest) -> ttrpc::Result<Empty> {
    if req.exec_id.is_empty() {
        return Err(status(
            Code::INVALID_ARGUMENT,
            "RemoveProcess takes an exec id; use RemoveContainer for the init process",
        ));
    }
    let e = svc.processes.get(&req.container_id, &req.exec_id).await.map_err(not_found)?;
    if !e.has_exited() {
        return Err(status(
            Code::FAILED_PRECONDITION,
            format!("exec {:?} of container {:?} is still running: signal it first", req.exec_id, req.container_id),
        ));
    }
    e.close().await;
    svc.processes.remove_exec(&req.container_id, &req.exec_id).await;
    tracing::info!(container = %req.container_id, exec = %req.exec_id, "exec removed");
    Ok(Empty::default())
}

pub async fn resize_pty(svc: &AgentService, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
    let e = svc.processes.get(&req.container_id, &req.exec_id).await.map_err(not_found)?;
    match &e.pty {
        Some(master) => {
            set_window_size(master, req.width, req.height).map_err(|err| status(Code::INTERNAL, err.to_string()))?
        }
        None => {
            tracing::debug!(container = %req.container_id, exec = %req.exec_id, "ResizePty without a terminal: ignored")
        }
    }
    Ok(Empty::default())
}
