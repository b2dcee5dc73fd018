//! `bulwark ps`: one line per sandbox: id, pod, namespace, VM pid, vCPUs, memory, uptime,
//! acceleration, state; or the same as JSON.

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::node::Node;
use crate::sandboxes::{self, Sandbox};
use crate::text::{clean, duration, now_unix, or_dash, table};
use crate::NodeArgs;

/// One sandbox as `ps --json` shows it.
#[derive(Debug, Serialize)]
pub struct Row {
    pub sandbox_id: String,
    pub containerd_namespace: Option<String>,
    pub state_dir: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub tenant: Option<String>,
    pub vm_pid: Option<i32>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u32>,
    pub accel: Option<String>,
    pub uptime_secs: Option<u64>,
    /// "running" (the VM's process runs), "booting" (no VM recorded yet) or "stopped".
    pub state: &'static str,
}

pub fn row(s: &Sandbox, now: u64) -> Row {
    let info = s.info.as_ref().ok();
    Row {
        sandbox_id: s.id().to_string(),
        containerd_namespace: s.namespace.clone(),
        state_dir: s.dir.display().to_string(),
        pod_name: info.map(|i| i.pod_name.clone()).unwrap_or_default(),
        pod_namespace: info.map(|i| i.pod_namespace.clone()).unwrap_or_default(),
        pod_uid: info.map(|i| i.pod_uid.clone()).unwrap_or_default(),
        tenant: info.and_then(|i| i.tenant.clone()),
        vm_pid: s.vm().map(|p| p.pid),
        vcpus: info.map(|i| i.vcpus),
        memory_mib: info.map(|i| i.memory_mib),
        accel: info.map(|i| i.accel.clone()),
        uptime_secs: s.running().then(|| s.uptime(now)).flatten(),
        state: match s.vm() {
            None => "booting",
            Some(p) if p.running => "running",
            Some(_) => "stopped",
        },
    }
}

pub fn run(args: &NodeArgs, json: bool) -> Result<ExitCode> {
    let node = Node::load(args)?;
    let now = now_unix();
    let rows: Vec<Row> = sandboxes::list(node.runtime_dir()).iter().map(|s| row(s, now)).collect();
    let text = if json {
        serde_json::to_string_pretty(&rows).map_err(|e| Error::Output(e.to_string()))? + "\n"
    } else {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                vec![
                    clean(&r.sandbox_id, 20),
                    or_dash(&r.pod_name, 40),
                    or_dash(&r.pod_namespace, 30),
                    opt(r.vm_pid.map(|p| p.to_string())),
                    opt(r.vcpus.map(|v| v.to_string())),
                    opt(r.memory_mib.map(|m| format!("{m}Mi"))),
                    opt(r.uptime_secs.map(duration)),
                    opt(r.accel.as_deref().map(|a| clean(a, 8))),
                    r.state.to_string(),
                ]
            })
            .collect();
        table(&["SANDBOX", "POD", "NAMESPACE", "VM PID", "VCPUS", "MEMORY", "UPTIME", "ACCEL", "STATE"], &cells)
    };
    std::io::stdout().write_all(text.as_bytes()).map_err(|e| Error::Output(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}
