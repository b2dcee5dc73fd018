//! What crosses the VM boundary between the host shim and `bulwark-agent`.
//!
//! - The agent API (`agent.proto`, compiled at build time to protobuf messages and an async
//!   ttrpc client/server): [`agent`] and [`agent_ttrpc`].
//! - The vsock layout: which ports exist, who listens, and what the first bytes are.
//! - The limits and the identifier rule both sides enforce ([`limits`]).
//! - The syscall telemetry stream: its messages (`telemetry.proto`) and its bounded framing
//!   ([`telemetry`]).
//!
//! The boot handshake, in order (it avoids a vhost-device-vsock 0.3 wedge, where the host must not `CONNECT` before the guest's vsock is up):
//! 1. The host listens on the hybrid-vsock socket `<uds>_<LOG_PORT>` before QEMU starts.
//! 2. The agent, once its ttrpc server listens on `AGENT_PORT`, connects to CID 2
//!    (the host) port `LOG_PORT` and writes one line: `READY <PROTOCOL_VERSION>\n`.
//!    After that line the connection carries the agent's log lines (`\n` separated,
//!    each at most `MAX_LOG_LINE` bytes; longer lines are cut by the host).
//! 3. The host then connects to the agent: `CONNECT <AGENT_PORT>\n` on `<uds>`, reads
//!    `OK <n>\n`, and speaks ttrpc. Its first call is `Check`.
//!
//! Everything the host reads from the guest is untrusted: the host bounds sizes and times.

/// Declares a module of code generated at build time (protobuf and ttrpc codegen) with the
/// lints that generated code trips allowed: one list for every generated module.
macro_rules! generated {
    ($(#[$doc:meta])* pub mod $name:ident { $($body:tt)* }) => {
        $(#[$doc])*
        #[allow(
            clippy::all,
            unused_mut,
            unused_imports,
            unused_results,
            non_camel_case_types,
            non_snake_case,
            non_upper_case_globals,
            missing_docs,
            dead_code,
            unknown_lints
        )]
        pub mod $name { $($body)* }
    };
}

generated! {
    /// The agent API's messages (generated from `proto/agent.proto`).
    pub mod agent {
        include!(concat!(env!("OUT_DIR"), "/agent.rs"));
    }
}

generated! {
    /// The async ttrpc client ([`agent_ttrpc::AgentClient`]) and server trait
    /// ([`agent_ttrpc::Agent`], registered with [`agent_ttrpc::create_agent`]).
    pub mod agent_ttrpc {
        use super::agent;
        include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
    }
}

pub use protobuf;
pub use ttrpc;

/// Incompatible changes to `agent.proto` or to the handshake bump this.
pub const PROTOCOL_VERSION: u32 = 2;

/// vsock port the agent's ttrpc server listens on, inside the guest.
pub const AGENT_PORT: u32 = 1024;
/// vsock port on the host (CID 2) the agent connects out to: readiness line, then logs.
pub const LOG_PORT: u32 = 1025;
/// vsock port on the host (CID 2) the guest's syscall collector connects out to: telemetry
/// frames ([`telemetry`]), a `Hello` first.
pub const TELEMETRY_PORT: u32 = 1026;
/// The host's vsock CID.
pub const HOST_CID: u32 = 2;
/// The guest's vsock CID (one VM per vhost-device-vsock instance, so a constant works).
pub const GUEST_CID: u32 = 3;

/// virtio-fs tag of the sandbox share (container rootfs and, later, volumes).
pub const SHARE_TAG: &str = "bulwark-share";

pub mod limits;
pub use limits::{validate_id, IdError, MAX_CGROUP_FILE, MAX_ID_LEN, MAX_LOG_LINE, MAX_READ_CHUNK, MAX_SPEC_JSON};
pub mod telemetry;
pub mod telemetry_json;

/// The first line the agent writes on the log connection.
pub fn ready_line() -> String {
    format!("READY {PROTOCOL_VERSION}\n")
}

/// Parses the readiness line from the guest (untrusted). Returns the agent's protocol version.
pub fn parse_ready_line(line: &str) -> Option<u32> {
    line.trim_end_matches('\n').strip_prefix("READY ")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips() {
        assert_eq!(parse_ready_line(&ready_line()), Some(PROTOCOL_VERSION));
    }

    #[test]
    fn garbage_ready_lines_are_rejected() {
        for bad in ["", "READY", "READY x\n", "HELLO 1\n", "READY -1\n", "READY 99999999999\n"] {
            assert_eq!(parse_ready_line(bad), None, "{bad:?}");
        }
    }
}
