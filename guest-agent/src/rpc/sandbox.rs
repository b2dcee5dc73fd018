//! Sandbox RPCs: Check (protocol and agent versions, kernel release) and SetupSandbox (the
//! pod's hostname and network, network.rs; the syscall collector, telemetry/).
use std::time::Duration;

use protocol::agent::{CheckRequest, CheckResponse, Empty, SetupSandboxRequest};
use ttrpc::Code;

use crate::network;
use crate::rpc::errors::{join_err, network_err, status};
use crate::rpc::service::AgentService;
use crate::telemetry;

/// How long SetupSandbox waits for the collector to attach, so the pod's first containers are
/// observed from their start (under half the shim's 30 s call limit; TCG loads slowly).
const COLLECTOR_ATTACH_WAIT: Duration = Duration::from_secs(12);

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

/// The collector's settings from the request; None when it stays off.
pub fn telemetry_settings(req: &SetupSandboxRequest) -> ttrpc::Result<Option<telemetry::Settings>> {
    match req.telemetry.as_ref() {
        None => Ok(None),
        Some(cfg) => telemetry::parse(cfg).map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string())),
    }
}

pub async fn setup(svc: &AgentService, req: SetupSandboxRequest) -> ttrpc::Result<Empty> {
    let telemetry = telemetry_settings(&req)?;
    let plan = network::plan(&req).map_err(network_err)?;
    tokio::task::spawn_blocking(move || network::apply(&plan)).await.map_err(join_err)?.map_err(network_err)?;
    if let Some(settings) = telemetry {
        // Loading happens in the collector's own thread; the wait for it is bounded and its
        // outcome only logged. The guest does not know the sandbox id here; the Hello's is
        // informational and the shim uses its own.
        let token = req.telemetry.as_ref().map(|t| t.stream_token.clone()).unwrap_or_default();
        svc.telemetry.start(settings, "", token);
        let t = svc.telemetry.clone();
        let attached = tokio::task::spawn_blocking(move || t.wait_attached(COLLECTOR_ATTACH_WAIT)).await;
        if let Ok(None) = attached {
            tracing::warn!(
                "telemetry: the collector is still loading after {COLLECTOR_ATTACH_WAIT:?}; containers start                  before it observes them"
            );
        }
    }
    Ok(Empty::default())
}
