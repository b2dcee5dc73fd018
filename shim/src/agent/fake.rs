//! A scripted in-memory [`AgentApi`] for unit tests: containers and execs with exit channels,
//! a call log, per-method failures (an error, or a call that never answers), a settable stats
//! reply, and a VM death that ends every pending long poll, as the real client's do.
#![allow(dead_code)] // a test kit: not every test uses every knob

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use bulwark_protocol::agent::{CheckResponse, SetupSandboxRequest};
use bulwark_protocol::PROTOCOL_VERSION;
use tokio::sync::watch;

use super::{AgentApi, NewContainer, Stream};
use crate::error::{Error, Result};

/// What a method does instead of answering normally.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The agent answered with an error status (a refusal).
    Refused(String),
    /// The call timed out or the connection broke (what the real client reports as
    /// AgentUnreachable).
    Unreachable,
    /// Never answers (the caller's own bound, or the VM's death, must end the wait).
    Hang,
}

/// A process in the fake guest.
struct Proc {
    exit: watch::Sender<Option<i32>>,
    output: Mutex<Vec<u8>>,
}

/// The fake guest agent.
pub struct FakeAgent {
    calls: Mutex<Vec<String>>,
    failures: Mutex<HashMap<&'static str, Failure>>,
    procs: Mutex<HashMap<(String, String), std::sync::Arc<Proc>>>,
    stats: Mutex<HashMap<String, Vec<u8>>>,
    /// Whether a SIGKILL/SIGTERM makes the process exit (128 + signal), as a real guest does.
    pub exit_on_signal: std::sync::atomic::AtomicBool,
    vm_dead: watch::Sender<bool>,
    next_pid: AtomicU32,
}

impl Default for FakeAgent {
    fn default() -> Self {
        FakeAgent {
            calls: Mutex::new(Vec::new()),
            failures: Mutex::new(HashMap::new()),
            procs: Mutex::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
            exit_on_signal: std::sync::atomic::AtomicBool::new(true),
            vm_dead: watch::channel(false).0,
            next_pid: AtomicU32::new(100),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeAgent {
    /// Every call so far, as "<method> <container>[/<exec>][ <detail>]".
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// Makes `method` (the trait method's name) fail from now on; `None` restores it.
    pub fn set_failure(&self, method: &'static str, f: Option<Failure>) {
        let mut m = lock(&self.failures);
        match f {
            Some(f) => m.insert(method, f),
            None => m.remove(method),
        };
    }

    /// The reply of the next StatsContainer calls.
    pub fn set_stats(&self, files: HashMap<String, Vec<u8>>) {
        *lock(&self.stats) = files;
    }

    /// Output the process prints (read by the next `read` of stdout).
    pub fn print(&self, id: &str, exec_id: &str, data: &[u8]) {
        if let Some(p) = self.proc(id, exec_id) {
            lock(&p.output).extend_from_slice(data);
        }
    }

    /// Makes a process exit with `code` (as the guest would report it).
    pub fn exit(&self, id: &str, exec_id: &str, code: i32) {
        if let Some(p) = self.proc(id, exec_id) {
            p.exit.send_replace(Some(code));
        }
    }

    /// The VM dies: every pending and later call fails as the real client's do.
    pub fn kill_vm(&self) {
        self.vm_dead.send_replace(true);
    }

    fn proc(&self, id: &str, exec_id: &str) -> Option<std::sync::Arc<Proc>> {
        lock(&self.procs).get(&(id.to_string(), exec_id.to_string())).cloned()
    }

    fn add_proc(&self, id: &str, exec_id: &str) -> u32 {
        let p = Proc { exit: watch::channel(None).0, output: Mutex::new(Vec::new()) };
        lock(&self.procs).insert((id.to_string(), exec_id.to_string()), std::sync::Arc::new(p));
        self.next_pid.fetch_add(1, Ordering::SeqCst)
    }

    fn vm_died(&self) -> Error {
        Error::Agent("the VM exited (signal: 9 (SIGKILL))".into())
    }

    /// Logs the call, then applies an injected failure or the VM's death.
    async fn enter(&self, method: &'static str, what: String) -> Result<()> {
        lock(&self.calls).push(format!("{method} {what}").trim_end().to_string());
        if *self.vm_dead.borrow() {
            return Err(self.vm_died());
        }
        let f = lock(&self.failures).get(method).cloned();
        match f {
            None => Ok(()),
            Some(Failure::Refused(m)) => Err(Error::Agent(format!("{method}: {m}"))),
            Some(Failure::Unreachable) => {
                Err(Error::AgentUnreachable(format!("{method}: the guest agent did not answer within 30s")))
            }
            Some(Failure::Hang) => {
                let mut dead = self.vm_dead.subscribe();
                let _ = dead.wait_for(|d| *d).await;
                Err(self.vm_died())
            }
        }
    }

    fn not_found(id: &str, exec_id: &str) -> Error {
        Error::NotFound(format!("process {id}/{exec_id} not found in the guest"))
    }

    /// Waits for the process's exit or the VM's death.
    async fn wait_exit(&self, id: &str, exec_id: &str) -> Result<i32> {
        let p = self.proc(id, exec_id).ok_or_else(|| Self::not_found(id, exec_id))?;
        let mut rx = p.exit.subscribe();
        let mut dead = self.vm_dead.subscribe();
        tokio::select! {
            r = rx.wait_for(|e| e.is_some()) => match r {
                Ok(e) => Ok(e.unwrap_or(255)),
                Err(_) => Err(self.vm_died()),
            },
            _ = dead.wait_for(|d| *d) => Err(self.vm_died()),
        }
    }
}

fn label(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        id.to_string()
    } else {
        format!("{id}/{exec_id}")
    }
}

#[async_trait]
impl AgentApi for FakeAgent {
    async fn check(&self) -> Result<CheckResponse> {
        self.enter("check", String::new()).await?;
        Ok(CheckResponse {
            agent_protocol_version: PROTOCOL_VERSION,
            agent_version: "fake".into(),
            ..Default::default()
        })
    }

    async fn setup_sandbox(&self, req: &SetupSandboxRequest) -> Result<()> {
        self.enter("setup_sandbox", req.hostname.clone()).await
    }

    async fn create_container(&self, c: NewContainer) -> Result<u32> {
        let what = if c.allow_unconfined_seccomp { format!("{} unconfined-seccomp", c.id) } else { c.id.clone() };
        self.enter("create_container", what).await?;
        Ok(self.add_proc(&c.id, ""))
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        self.enter("start_container", id.to_string()).await?;
        self.proc(id, "").map(|_| ()).ok_or_else(|| Self::not_found(id, ""))
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        self.enter("remove_container", id.to_string()).await?;
        lock(&self.procs).retain(|(c, _), _| c != id);
        Ok(())
    }

    async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        _json: Vec<u8>,
        _stdin: bool,
        _terminal: bool,
    ) -> Result<u32> {
        self.enter("exec_process", label(id, exec_id)).await?;
        if self.proc(id, "").is_none() {
            return Err(Self::not_found(id, ""));
        }
        Ok(self.add_proc(id, exec_id))
    }

    async fn wait_process(&self, id: &str, exec_id: &str) -> Result<i32> {
        self.enter("wait_process", label(id, exec_id)).await?;
        self.wait_exit(id, exec_id).await
    }

    async fn signal_process(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        self.enter("signal_process", format!("{} {signal}{}", label(id, exec_id), if all { " all" } else { "" }))
            .await?;
        let p = self.proc(id, exec_id).ok_or_else(|| Self::not_found(id, exec_id))?;
        let deadly = signal == libc::SIGKILL as u32 || signal == libc::SIGTERM as u32;
        if deadly && self.exit_on_signal.load(Ordering::SeqCst) {
            p.exit.send_if_modified(|e| {
                if e.is_none() {
                    *e = Some(128 + signal as i32);
                    true
                } else {
                    false
                }
            });
            if exec_id.is_empty() {
                // The container's PID namespace ends: its execs die with it.
                for ((c, x), q) in lock(&self.procs).iter() {
                    if c == id && !x.is_empty() && q.exit.borrow().is_none() {
                        q.exit.send_replace(Some(137));
                    }
                }
            }
        }
        Ok(())
    }

    async fn remove_process(&self, id: &str, exec_id: &str) -> Result<()> {
        self.enter("remove_process", label(id, exec_id)).await?;
        lock(&self.procs).remove(&(id.to_string(), exec_id.to_string()));
        Ok(())
    }

    async fn read(&self, id: &str, exec_id: &str, stream: Stream) -> Result<Vec<u8>> {
        // Not logged: the copiers poll it.
        if *self.vm_dead.borrow() {
            return Err(self.vm_died());
        }
        let p = self.proc(id, exec_id).ok_or_else(|| Self::not_found(id, exec_id))?;
        if stream == Stream::Stdout {
            let data = std::mem::take(&mut *lock(&p.output));
            if !data.is_empty() {
                return Ok(data);
            }
        }
        // End of stream once the process exited (its pipes closed).
        self.wait_exit(id, exec_id).await?;
        if stream == Stream::Stdout {
            return Ok(std::mem::take(&mut *lock(&p.output)));
        }
        Ok(Vec::new())
    }

    async fn write_stdin(&self, id: &str, exec_id: &str, data: Vec<u8>) -> Result<usize> {
        self.enter("write_stdin", label(id, exec_id)).await?;
        Ok(data.len())
    }

    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        self.enter("close_stdin", label(id, exec_id)).await
    }

    async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        self.enter("resize_pty", format!("{} {width}x{height}", label(id, exec_id))).await
    }

    async fn stats_container(&self, id: &str) -> Result<HashMap<String, Vec<u8>>> {
        self.enter("stats_container", id.to_string()).await?;
        Ok(lock(&self.stats).clone())
    }

    async fn update_container(&self, id: &str, _resources_json: Vec<u8>) -> Result<()> {
        self.enter("update_container", id.to_string()).await
    }

    async fn pause_container(&self, id: &str) -> Result<()> {
        self.enter("pause_container", id.to_string()).await
    }

    async fn resume_container(&self, id: &str) -> Result<()> {
        self.enter("resume_container", id.to_string()).await
    }

    async fn list_processes(&self, id: &str) -> Result<Vec<u32>> {
        self.enter("list_processes", id.to_string()).await?;
        Ok(vec![1])
    }

    async fn wait_oom_event(&self) -> Result<String> {
        if *self.vm_dead.borrow() {
            return Err(self.vm_died());
        }
        let mut dead = self.vm_dead.subscribe();
        let _ = dead.wait_for(|d| *d).await;
        Err(self.vm_died())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_fake_behaves_like_a_guest() {
        let a = std::sync::Arc::new(FakeAgent::default());
        let pid = a.create_container(NewContainer { id: "c".into(), ..Default::default() }).await.expect("create");
        assert!(pid > 0);
        a.exec_process("c", "e", Vec::new(), false, false).await.expect("exec");
        a.print("c", "", b"hi");
        assert_eq!(a.read("c", "", Stream::Stdout).await.expect("read"), b"hi");
        a.signal_process("c", "", libc::SIGKILL as u32, false).await.expect("kill");
        assert_eq!(a.wait_process("c", "").await.expect("wait"), 137);
        assert_eq!(a.wait_process("c", "e").await.expect("exec dies with its container"), 137);
        assert!(a.read("c", "", Stream::Stdout).await.expect("eof").is_empty());
        a.set_failure("start_container", Some(Failure::Unreachable));
        assert!(matches!(a.start_container("c").await, Err(Error::AgentUnreachable(_))));
        a.set_failure("start_container", Some(Failure::Refused("no".into())));
        assert!(matches!(a.start_container("c").await, Err(Error::Agent(_))));
        a.set_failure("start_container", Some(Failure::Hang));
        let a2 = a.clone();
        let hung = tokio::spawn(async move { a2.start_container("c").await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!hung.is_finished(), "a hung call does not answer");
        a.kill_vm();
        assert!(matches!(hung.await.expect("join"), Err(Error::Agent(_))), "the VM's death ends a hung call");
        assert!(a.check().await.is_err(), "nothing answers after the VM died");
        assert_eq!(a.calls()[0], "create_container c");
    }
}
