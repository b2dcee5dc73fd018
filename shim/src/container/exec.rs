//! Adding an exec to a container (containerd's Exec): checks its id and its OCI process JSON,
//! records it as a [`Process`] of kind exec and sends /tasks/exec-added. Everything after
//! that (Start, Kill, Delete, ...) is the same lifecycle as the init process's (lifecycle.rs).

use std::sync::Arc;

use crate::container::process::{Process, Status, Stdio};
use crate::container::spec::validate_id;
use crate::container::Container;
use crate::error::{Error, Result};

/// Largest OCI process JSON accepted in an Exec request.
pub const MAX_PROCESS_JSON: usize = 1024 * 1024;
/// Most execs one container may have at a time (containerd deletes them after use).
pub const MAX_EXECS: usize = 1024;

/// Checks the OCI process JSON of an Exec request (pure): size, JSON, a `process` object with
/// arguments. The guest agent checks it again.
pub fn check_process_json(json: &[u8]) -> Result<()> {
    if json.len() > MAX_PROCESS_JSON {
        return Err(Error::InvalidArgument(format!(
            "exec process spec is {} bytes, more than the {MAX_PROCESS_JSON} accepted",
            json.len()
        )));
    }
    let p: oci_spec::runtime::Process = serde_json::from_slice(json)
        .map_err(|e| Error::InvalidArgument(format!("exec process spec is not an OCI process: {e}")))?;
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::InvalidArgument("exec process spec has no args: nothing to run".into()));
    }
    Ok(())
}

impl Container {
    /// Exec: records the process (not created in the guest before Start) and sends
    /// /tasks/exec-added.
    pub fn add_exec(&self, exec_id: &str, stdio: Stdio, process_json: Vec<u8>) -> Result<Arc<Process>> {
        validate_id(exec_id)?;
        if self.init.state().status == Status::Stopped {
            return Err(Error::FailedPrecondition(format!("container {} has stopped: cannot exec in it", self.id)));
        }
        check_process_json(&process_json)?;
        let mut map = self.execs();
        if map.contains_key(exec_id) {
            return Err(Error::AlreadyExists(format!("exec {exec_id} of container {} already exists", self.id)));
        }
        if map.len() >= MAX_EXECS {
            return Err(Error::FailedPrecondition(format!(
                "container {} has {MAX_EXECS} exec processes already: delete finished ones first",
                self.id
            )));
        }
        let p = Arc::new(Process::exec(exec_id.to_string(), stdio, process_json));
        map.insert(exec_id.to_string(), p.clone());
        // Under the map's lock: nobody can start it before the event is in the channel.
        self.events().exec_added(&self.id, exec_id);
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_json_checks() {
        assert!(check_process_json(br#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}"#).is_ok());
        for bad in [&br#"{"args":[],"cwd":"/","user":{"uid":0,"gid":0}}"#[..], b"", b"nope", b"[1]"] {
            let e = check_process_json(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        }
        let huge = vec![b' '; MAX_PROCESS_JSON + 1];
        assert!(check_process_json(&huge).unwrap_err().to_string().contains("more than"));
    }
}
