//! Agent calls for container resources: cgroup stats files, resource updates, freeze/thaw,
//! the process list and the OOM event long poll. Replies are untrusted: sizes are bounded
//! here (file count and size, pid count, id length).

use std::collections::HashMap;

use bulwark_protocol::agent::{ContainerRequest, Empty, UpdateContainerRequest};
use bulwark_protocol::{MAX_CGROUP_FILE, MAX_SPEC_JSON};

use super::{ctx_long, ctx_short, Agent, CALL_TIMEOUT};
use crate::error::{Error, Result};

/// Files kept from a StatsContainer reply.
const MAX_STATS_FILES: usize = 32;
/// Pids kept from a ListProcesses reply.
pub const MAX_PIDS: usize = 65_536;
/// Longest container id accepted in an OOM event (containerd ids are at most 76 bytes).
const MAX_ID_LEN: usize = 128;

fn req(id: &str) -> ContainerRequest {
    ContainerRequest { container_id: id.to_string(), ..Default::default() }
}

impl Agent {
    /// The raw cgroup v2 files of the container (at most MAX_STATS_FILES, each cut to
    /// MAX_CGROUP_FILE bytes).
    pub async fn stats_container(&self, id: &str) -> Result<HashMap<String, Vec<u8>>> {
        let r = self
            .bounded("StatsContainer", Some(CALL_TIMEOUT), self.client.stats_container(ctx_short(), &req(id)))
            .await?;
        Ok(r.cgroup_files
            .into_iter()
            .filter(|(k, _)| k.len() <= 64)
            .take(MAX_STATS_FILES)
            .map(|(k, mut v)| {
                v.truncate(MAX_CGROUP_FILE);
                (k, v)
            })
            .collect())
    }

    /// Applies OCI `linux.resources` JSON to the container's cgroup.
    pub async fn update_container(&self, id: &str, resources_json: Vec<u8>) -> Result<()> {
        if resources_json.len() > MAX_SPEC_JSON {
            return Err(Error::InvalidArgument(format!(
                "resources of {id}: {} bytes, more than the {MAX_SPEC_JSON} accepted",
                resources_json.len()
            )));
        }
        let r = UpdateContainerRequest { container_id: id.to_string(), resources_json, ..Default::default() };
        self.bounded("UpdateContainer", Some(CALL_TIMEOUT), self.client.update_container(ctx_short(), &r)).await?;
        Ok(())
    }

    pub async fn pause_container(&self, id: &str) -> Result<()> {
        self.bounded("PauseContainer", Some(CALL_TIMEOUT), self.client.pause_container(ctx_short(), &req(id))).await?;
        Ok(())
    }

    pub async fn resume_container(&self, id: &str) -> Result<()> {
        self.bounded("ResumeContainer", Some(CALL_TIMEOUT), self.client.resume_container(ctx_short(), &req(id)))
            .await?;
        Ok(())
    }

    /// Guest pids of the container's processes (at most MAX_PIDS).
    pub async fn list_processes(&self, id: &str) -> Result<Vec<u32>> {
        let mut r = self
            .bounded("ListProcesses", Some(CALL_TIMEOUT), self.client.list_processes(ctx_short(), &req(id)))
            .await?;
        r.pids.truncate(MAX_PIDS);
        Ok(r.pids)
    }

    /// Long poll: the id of the next container the guest OOM-killed in (ends with an error
    /// when the VM dies). Overlong ids are refused.
    pub async fn wait_oom_event(&self) -> Result<String> {
        let r = self.bounded("WaitOomEvent", None, self.client.wait_oom_event(ctx_long(), &Empty::default())).await?;
        if r.container_id.len() > MAX_ID_LEN {
            return Err(Error::Agent(format!("WaitOomEvent: container id of {} bytes", r.container_id.len())));
        }
        Ok(r.container_id)
    }
}
