//! Errors of the layers below mapped to ttrpc status codes (each logged once, here).
use ttrpc::Code;

use crate::container::cgroups::CgroupError;
use crate::container::{ContainerError, ExecError};
use crate::network::NetworkError;
use crate::process::table::NotFound;

pub fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

pub fn container_err(e: ContainerError) -> ttrpc::Error {
    let code = match &e {
        ContainerError::InvalidId(_) | ContainerError::InvalidRootfsPath(_) | ContainerError::Spec(_) => {
            Code::INVALID_ARGUMENT
        }
        ContainerError::Rootfs { .. } => Code::FAILED_PRECONDITION,
        ContainerError::Busy { .. } => Code::UNAVAILABLE,
        _ => Code::INTERNAL,
    };
    tracing::error!("{e}");
    status(code, e.to_string())
}

pub fn cgroup_err(e: CgroupError) -> ttrpc::Error {
    let code = match &e {
        CgroupError::NotFound(_) => Code::NOT_FOUND,
        CgroupError::InvalidResources(_) => Code::INVALID_ARGUMENT,
        CgroupError::Libcontainer { .. } => Code::FAILED_PRECONDITION,
        _ => Code::INTERNAL,
    };
    tracing::error!("{e}");
    status(code, e.to_string())
}

pub fn network_err(e: NetworkError) -> ttrpc::Error {
    use NetworkError as N;
    let code = match &e {
        N::Invalid(_) => Code::INVALID_ARGUMENT,
        N::AlreadyDone => Code::FAILED_PRECONDITION,
        N::NoSuchNic(_) => Code::NOT_FOUND,
        _ => Code::INTERNAL,
    };
    tracing::error!("{e}");
    status(code, e.to_string())
}

pub fn join_err(e: tokio::task::JoinError) -> ttrpc::Error {
    tracing::error!("blocking task failed: {e}");
    status(Code::INTERNAL, format!("internal task failed: {e}"))
}

pub fn exec_err(e: ExecError) -> ttrpc::Error {
    if let ExecError::Container(c) = e {
        return container_err(c);
    }
    let code = match &e {
        ExecError::InvalidProcess(_) | ExecError::NotifySeccomp(_) => Code::INVALID_ARGUMENT,
        ExecError::NotRunning(_) | ExecError::Paused(_) => Code::FAILED_PRECONDITION,
        _ => Code::INTERNAL,
    };
    tracing::error!("{e}");
    status(code, e.to_string())
}

/// A process lookup that found nothing (not logged: callers probe).
pub fn not_found(e: NotFound) -> ttrpc::Error {
    status(Code::NOT_FOUND, e.to_string())
}

/// The code and message of a ttrpc error (for tests).
#[cfg(test)]
pub fn code_of(e: &ttrpc::Error) -> (Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not an RPC status: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::NotFound)
    }

    #[test]
    fn container_errors_map_to_codes() {
        let cases = [
            (ContainerError::InvalidId("x y".into()), Code::INVALID_ARGUMENT),
            (ContainerError::InvalidRootfsPath("..".into()), Code::INVALID_ARGUMENT),
            (ContainerError::Spec("bad".into()), Code::INVALID_ARGUMENT),
            (ContainerError::Rootfs { path: "/r".into(), reason: "gone".into() }, Code::FAILED_PRECONDITION),
            (ContainerError::Io { what: "writing", path: "/p".into(), source: io() }, Code::INTERNAL),
            (ContainerError::Helper("libcontainer exec of c1: not done within 25s".into()), Code::INTERNAL),
            (ContainerError::Busy { id: "c1".into(), holder: "exec" }, Code::UNAVAILABLE),
        ];
        for (e, want) in cases {
            let msg = e.to_string();
            assert_eq!(code_of(&container_err(e)), (want, msg));
        }
    }

    #[test]
    fn exec_errors_map_to_codes_and_container_errors_keep_theirs() {
        let cases = [
            (ExecError::InvalidProcess("no args".into()), Code::INVALID_ARGUMENT),
            (ExecError::NotifySeccomp("c1".into()), Code::INVALID_ARGUMENT),
            (ExecError::NotRunning("c1".into()), Code::FAILED_PRECONDITION),
            (ExecError::Paused("c1".into()), Code::FAILED_PRECONDITION),
            (ExecError::Join("panicked".into()), Code::INTERNAL),
            (ExecError::File { what: "writing", path: "/p".into(), source: io() }, Code::INTERNAL),
            (ExecError::Container(ContainerError::InvalidId("..".into())), Code::INVALID_ARGUMENT),
            (
                ExecError::Container(ContainerError::Rootfs { path: "/r".into(), reason: "x".into() }),
                Code::FAILED_PRECONDITION,
            ),
        ];
        for (e, want) in cases {
            let msg = e.to_string();
            assert_eq!(code_of(&exec_err(e)), (want, msg));
        }
    }

    #[test]
    fn cgroup_and_network_errors_map_to_codes() {
        let cgroup = [
            (CgroupError::NotFound("c1".into()), Code::NOT_FOUND),
            (CgroupError::InvalidResources("x".into()), Code::INVALID_ARGUMENT),
            (CgroupError::Libcontainer { op: "pause", id: "c1".into(), msg: "m".into() }, Code::FAILED_PRECONDITION),
            (CgroupError::BadCgroupPath("..".into()), Code::INTERNAL),
            (CgroupError::Apply { id: "c1".into(), msg: "m".into() }, Code::INTERNAL),
        ];
        for (e, want) in cgroup {
            assert_eq!(code_of(&cgroup_err(e)).0, want);
        }
        let network = [
            (NetworkError::Invalid("x".into()), Code::INVALID_ARGUMENT),
            (NetworkError::AlreadyDone, Code::FAILED_PRECONDITION),
            (NetworkError::NoSuchNic("02:00:00:00:00:01".into()), Code::NOT_FOUND),
            (NetworkError::Netlink { what: "x".into(), source: io() }, Code::INTERNAL),
        ];
        for (e, want) in network {
            assert_eq!(code_of(&network_err(e)).0, want);
        }
    }

    #[test]
    fn lookups_that_find_nothing_are_not_found() {
        let e = not_found(NotFound::Exec { id: "c1".into(), exec_id: "e1".into() });
        assert_eq!(code_of(&e), (Code::NOT_FOUND, "exec \"e1\" of container \"c1\" not found".into()));
    }
}
