//! The process table: what parse learned of each guest process, keyed by (sandbox id, pid) so
//! pids of different VMs never collide. Bounded: past `max` entries the oldest-seen eighth is
//! evicted.

use std::collections::HashMap;

use bulwark_protocol::telemetry::{Enriched, EventType};

/// Deepest ancestor `proc.aname[n]` walks to.
pub const MAX_ANCESTRY: u64 = 16;
/// CLONE_THREAD: a clone that makes a thread, not a process.
const CLONE_THREAD: u64 = 0x10000;

/// One guest process as last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proc {
    pub comm: String,
    pub exe_path: String,
    /// argv[1..]
    pub args: Vec<String>,
    pub exe: String,
    pub ppid: u32,
    pub tty: u32,
    pub cwd: String,
    seen: u64,
}

impl Proc {
    /// Falco's `proc.cmdline`: the name, then the arguments.
    pub fn cmdline(&self) -> String {
        let mut s = self.comm.clone();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

#[derive(Debug)]
pub struct ProcTable {
    map: HashMap<(String, u32), Proc>,
    max: usize,
    seq: u64,
    exited: Option<(String, u32)>,
}

impl ProcTable {
    pub fn new(max: usize) -> Self {
        ProcTable { map: HashMap::new(), max: max.max(8), seq: 0, exited: None }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, sandbox: &str, pid: u32) -> Option<&Proc> {
        self.map.get(&(sandbox.to_string(), pid))
    }

    /// The n-th ancestor of `pid` (0: itself, 1: parent), at most [`MAX_ANCESTRY`] up.
    pub fn ancestor(&self, sandbox: &str, pid: u32, n: u64) -> Option<&Proc> {
        if n > MAX_ANCESTRY {
            return None;
        }
        let mut cur = self.get(sandbox, pid)?;
        for _ in 0..n {
            if cur.ppid == 0 {
                return None;
            }
            cur = self.get(sandbox, cur.ppid)?;
        }
        Some(cur)
    }

    /// Updates the table with one event (before its fields are extracted).
    pub fn observe(&mut self, m: &Enriched) {
        if let Some(key) = self.exited.take() {
            self.map.remove(&key);
        }
        let Some(e) = m.event.as_ref() else { return };
        if e.pid == 0 {
            return;
        }
        self.seq += 1;
        let seq = self.seq;
        let key = (m.sandbox_id.clone(), e.pid);
        if !self.map.contains_key(&key) {
            self.make_room();
        }
        let p = self.map.entry(key.clone()).or_default();
        p.seen = seq;
        if !e.comm.is_empty() {
            p.comm = e.comm.clone();
        }
        if !e.exe_path.is_empty() {
            p.exe_path = e.exe_path.clone();
        }
        if !e.cwd.is_empty() {
            p.cwd = e.cwd.clone();
        }
        if e.ppid != 0 {
            p.ppid = e.ppid;
        }
        p.tty = e.tty;
        let ty = e.type_.enum_value().ok();
        let exec = matches!(ty, Some(EventType::EXECVE | EventType::EXECVEAT)) && e.res == 0;
        if !e.argv.is_empty() || exec {
            p.exe = e.argv.first().cloned().unwrap_or_default();
            p.args = e.argv.iter().skip(1).cloned().collect();
        }
        match ty {
            Some(EventType::FORK | EventType::VFORK | EventType::CLONE | EventType::CLONE3)
                if e.res > 0 && e.res <= u32::MAX as i64 && e.flags & CLONE_THREAD == 0 =>
            {
                let mut child = p.clone();
                child.ppid = e.pid;
                let child_key = (m.sandbox_id.clone(), e.res as u32);
                if !self.map.contains_key(&child_key) {
                    self.make_room();
                }
                self.map.insert(child_key, child);
            }
            Some(EventType::EXIT) => self.exited = Some(key),
            _ => {}
        }
    }

    fn make_room(&mut self) {
        if self.map.len() < self.max {
            return;
        }
        let mut seen: Vec<u64> = self.map.values().map(|p| p.seen).collect();
        seen.sort_unstable();
        let cut = seen[(seen.len() / 8).min(seen.len() - 1)];
        self.map.retain(|_, p| p.seen > cut);
    }
}
