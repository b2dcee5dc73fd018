//! The sandboxes under a runtime directory, through the shim's own state directory module:
//! each one's directory, its record (`sandbox.json`), its recorded processes and whether they
//! still run. The probe VMs of `bulwark check` and of the shim's KVM probe (namespace `.probe`)
//! are not sandboxes of pods and are left out.

use std::path::{Path, PathBuf};

use bulwark_shim::sandbox::info::{self, SandboxInfo};
use bulwark_shim::sandbox::state_dir;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::procfs;

/// One process the shim recorded for a sandbox (hypervisor or helper).
#[derive(Debug, Clone, Serialize)]
pub struct Process {
    pub name: String,
    pub pid: i32,
    pub exe: PathBuf,
    /// The pid still runs that program.
    pub running: bool,
}

/// One sandbox's state directory and what it records.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The containerd namespace (None for a `<runtime_dir>/h-<hash>` directory).
    pub namespace: Option<String>,
    /// The directory's name: the sandbox id, or `h-<hash>` for a long one.
    pub name: String,
    pub dir: PathBuf,
    /// `sandbox.json`, or why it could not be read (not booted yet, an older shim).
    pub info: std::result::Result<SandboxInfo, String>,
    pub processes: Vec<Process>,
}

impl Sandbox {
    fn load(found: state_dir::Found) -> Sandbox {
        let processes = state_dir::read_pids(&found.dir)
            .into_iter()
            .map(|(name, pid, exe)| Process { running: procfs::runs(pid, &exe), name, pid, exe })
            .collect();
        Sandbox {
            info: info::read(&found.dir),
            namespace: found.namespace,
            name: found.name,
            dir: found.dir,
            processes,
        }
    }

    /// The sandbox id (from its record; else the directory's name).
    pub fn id(&self) -> &str {
        match &self.info {
            Ok(i) if !i.sandbox_id.is_empty() => &i.sandbox_id,
            _ => &self.name,
        }
    }

    /// The hypervisor's process.
    pub fn vm(&self) -> Option<&Process> {
        self.processes.iter().find(|p| p.name == "qemu")
    }

    /// Whether its VM runs.
    pub fn running(&self) -> bool {
        self.vm().is_some_and(|p| p.running)
    }

    /// Seconds since the VM booted (its record, else the hypervisor's start time).
    pub fn uptime(&self, now: u64) -> Option<u64> {
        let started = match &self.info {
            Ok(i) if i.started_unix > 0 => Some(i.started_unix),
            _ => self.vm().filter(|p| p.running).and_then(|p| procfs::start_unix(p.pid)),
        }?;
        Some(now.saturating_sub(started))
    }
}

/// The sandboxes under `runtime_dir`, sorted by namespace and name.
pub fn list(runtime_dir: &Path) -> Vec<Sandbox> {
    state_dir::list(runtime_dir)
        .into_iter()
        .filter(|f| !f.namespace.as_deref().is_some_and(|ns| ns.starts_with('.')))
        .map(Sandbox::load)
        .collect()
}

/// The sandbox named `name`: its id, its directory's name, or `<namespace>/<id>`.
pub fn find(runtime_dir: &Path, name: &str) -> Result<Sandbox> {
    let all = list(runtime_dir);
    let matches: Vec<Sandbox> = all
        .into_iter()
        .filter(|s| {
            s.name == name
                || s.id() == name
                || s.namespace.as_deref().is_some_and(|ns| format!("{ns}/{}", s.name) == name)
        })
        .collect();
    if matches.len() > 1 {
        return Err(Error::Ambiguous {
            name: name.to_string(),
            namespaces: matches.iter().filter_map(|s| s.namespace.clone()).collect::<Vec<_>>().join(", "),
        });
    }
    matches
        .into_iter()
        .next()
        .ok_or_else(|| Error::NoSuchSandbox { name: name.to_string(), runtime_dir: runtime_dir.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandboxes_are_found_by_id_dir_or_namespace() {
        let rd = std::env::temp_dir().join(format!("bulwark-cli-sandboxes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&rd);
        let a = state_dir::sandbox_dir(&rd, "k8s.io", "pod1");
        let b = state_dir::sandbox_dir(&rd, "default", "pod1");
        let probe = state_dir::sandbox_dir(&rd, ".probe", "123");
        let long = rd.join("h-0123");
        for d in [&a, &b, &probe, &long] {
            std::fs::create_dir_all(d).unwrap();
        }
        let me = std::env::current_exe().unwrap();
        std::fs::write(state_dir::pid_file(&a), format!("qemu {} {}\n", std::process::id(), me.display())).unwrap();
        info::write(
            &long,
            &SandboxInfo { sandbox_id: "a-very-long-id".into(), started_unix: 100, ..Default::default() },
        )
        .unwrap();

        let all = list(&rd);
        let names: Vec<_> = all.iter().map(|s| (s.namespace.as_deref(), s.id())).collect();
        assert_eq!(names, [(Some("default"), "pod1"), (None, "a-very-long-id"), (Some("k8s.io"), "pod1")]);
        assert!(matches!(find(&rd, "pod1"), Err(Error::Ambiguous { .. })));
        let s = find(&rd, "k8s.io/pod1").unwrap();
        assert_eq!(s.dir, a);
        assert!(s.running(), "the recorded pid runs the recorded program");
        assert!(s.info.is_err(), "no sandbox.json yet");
        assert!(s.uptime(crate::text::now_unix()).is_some(), "from the process's start time");
        let l = find(&rd, "a-very-long-id").unwrap();
        assert_eq!(l.name, "h-0123");
        assert_eq!(l.uptime(150), Some(50));
        assert!(!l.running());
        assert!(matches!(find(&rd, "nope"), Err(Error::NoSuchSandbox { .. })));
        std::fs::remove_dir_all(&rd).unwrap();
    }
}
