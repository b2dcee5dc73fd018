//! Sandbox RPCs: Check (protocol and agent versions, kernel release) and SetupSandbox (the
//! pod's hostname and network, network.rs).
use protocol::agent::{CheckRequest, CheckResponse, Empty, SetupSandboxRequest};

use crate::network;
use crate::rpc::errors::{join_err, network_err};

pub fn check(req: CheckRequest) -> CheckResponse {
    if req.shim_protocol_version != protocol::PROTOCOL_VERSION {
        tracing::warn!("shim speaks protocol {}, agent {}", req.shim_protocol_version, protocol::PROTOCOL_VERSION);
    }
    let kernel_release =
        nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    CheckResponse {
        agent_protocol_version: protocol::PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release,
        ..Default::default()
    }
}

pub async fn setup(req: SetupSandboxRequest) -> ttrpc::Result<Empty> {
    let plan = network::plan(&req).map_err(network_err)?;
    tokio::task::spawn_blocking(move || network::apply(&plan)).await.map_err(join_err)?.map_err(network_err)?;
    Ok(Empty::default())
}
