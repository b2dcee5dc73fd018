//! The systemd cgroup driver: a sandbox's host cgroup as a transient scope that systemd makes
//! over D-Bus, as runc does (`StartTransientUnit` on `org.freedesktop.systemd1.Manager`), so
//! that systemd knows the cgroup it would otherwise find in its tree unannounced.
//!
//! The scope is started with the shim's own pid (a scope cannot start empty), `Delegate=yes`
//! (the subtree below it is ours: the `vmm` and `shim` leaves), the pod's slice, and the
//! limits as unit properties (systemd writes them and keeps them across reloads; the shim
//! writes the same values through cgroupfs too, as runc does). When the sandbox ends, the
//! shim leaves the scope first (stopping a scope signals what is in it), then stops it.
//!
//! The request is built by pure functions ([`properties`], [`start_request`]), unit tested;
//! the calls go over a blocking zbus connection (the system bus, or any connection in tests).

use zbus::blocking::Connection;
use zbus::zvariant::{OwnedObjectPath, Value};

use bulwark_host_cgroup::Limits;

const DESTINATION: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// The error systemd answers when a unit of that name exists already.
const UNIT_EXISTS: &str = "org.freedesktop.systemd1.UnitExists";
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

/// Errors talking to systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("connecting to the system D-Bus: {0}")]
    Connect(Box<zbus::Error>),
    #[error("systemd {method} {unit}: {source}")]
    Call { method: &'static str, unit: String, source: Box<zbus::Error> },
    #[error("systemd {method} {unit}: unexpected reply: {source}")]
    Reply { method: &'static str, unit: String, source: Box<zbus::Error> },
    #[error("systemd started {unit} but its cgroup {dir} did not appear within 5 s")]
    Missing { unit: String, dir: std::path::PathBuf },
}

/// One property of the unit, typed as systemd expects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prop {
    /// `s`
    Str(String),
    /// `b`
    Bool(bool),
    /// `t`
    U64(u64),
    /// `au`
    Pids(Vec<u32>),
}

impl Prop {
    fn value(&self) -> Value<'_> {
        match self {
            Prop::Str(s) => Value::from(s.as_str()),
            Prop::Bool(b) => Value::from(*b),
            Prop::U64(v) => Value::from(*v),
            Prop::Pids(p) => Value::from(p.clone()),
        }
    }
}

/// The scope to start: its unit name (`cri-containerd-<id>.scope`), its slice, the process
/// it starts with, the limits it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub unit: String,
    pub slice: String,
    pub pid: u32,
    pub limits: Limits,
    pub description: String,
}

/// The unit's properties (pure): what runc sets for a container's scope, with the sandbox's
/// limits. `CPUQuotaPerSecUSec` is the quota scaled to a second; the period goes as
/// `CPUQuotaPeriodUSec`.
pub fn properties(s: &Scope) -> Vec<(&'static str, Prop)> {
    let l = &s.limits;
    let mut p = vec![
        ("Description", Prop::Str(s.description.clone())),
        ("Slice", Prop::Str(s.slice.clone())),
        ("PIDs", Prop::Pids(vec![s.pid])),
        ("Delegate", Prop::Bool(true)),
        ("DefaultDependencies", Prop::Bool(false)),
        ("MemoryAccounting", Prop::Bool(true)),
        ("CPUAccounting", Prop::Bool(true)),
        ("TasksAccounting", Prop::Bool(true)),
        ("IOAccounting", Prop::Bool(true)),
        ("MemoryMax", Prop::U64(l.memory_max)),
        ("MemoryHigh", Prop::U64(l.memory_high)),
        ("TasksMax", Prop::U64(l.pids_max)),
        ("IOWeight", Prop::U64(u64::from(l.io_weight))),
    ];
    if let Some((quota, period)) = l.cpu_max {
        p.push(("CPUQuotaPerSecUSec", Prop::U64(quota.saturating_mul(1_000_000) / period.max(1))));
        p.push(("CPUQuotaPeriodUSec", Prop::U64(period)));
    }
    if let Some(w) = l.cpu_weight {
        p.push(("CPUWeight", Prop::U64(w)));
    }
    p
}

/// The body of `StartTransientUnit(name s, mode s, properties a(sv), aux a(sa(sv)))` (pure).
/// Mode `fail`: a queued job for the unit makes it fail rather than replace anything.
#[allow(clippy::type_complexity)]
pub fn start_request<'a>(
    unit: &'a str,
    props: &'a [(&'static str, Prop)],
) -> (&'a str, &'static str, Vec<(&'static str, Value<'a>)>, Vec<(&'static str, Vec<(&'static str, Value<'a>)>)>) {
    (unit, "fail", props.iter().map(|(k, v)| (*k, v.value())).collect(), Vec::new())
}

/// The system bus, where systemd listens.
pub fn system_bus() -> Result<Connection, SystemdError> {
    Connection::system().map_err(|e| SystemdError::Connect(Box::new(e)))
}

fn method_error_name(e: &zbus::Error) -> Option<&str> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.as_str()),
        _ => None,
    }
}

fn call_start(conn: &Connection, s: &Scope, props: &[(&'static str, Prop)]) -> Result<String, SystemdError> {
    let body = start_request(&s.unit, props);
    let reply = conn
        .call_method(Some(DESTINATION), PATH, Some(MANAGER), "StartTransientUnit", &body)
        .map_err(|e| SystemdError::Call { method: "StartTransientUnit", unit: s.unit.clone(), source: Box::new(e) })?;
    let job: OwnedObjectPath = reply.body().deserialize().map_err(|e| SystemdError::Reply {
        method: "StartTransientUnit",
        unit: s.unit.clone(),
        source: Box::new(e),
    })?;
    Ok(job.as_str().to_string())
}

/// Starts the scope; returns systemd's job path. A leftover unit of the same name (a crashed
/// shim's) is stopped and the start tried once more.
pub fn start(conn: &Connection, s: &Scope) -> Result<String, SystemdError> {
    let props = properties(s);
    match call_start(conn, s, &props) {
        Err(SystemdError::Call { source, .. }) if method_error_name(&source) == Some(UNIT_EXISTS) => {
            tracing::warn!("systemd scope {} exists already (a leftover): stopping it and starting anew", s.unit);
            stop(conn, &s.unit)?;
            call_start(conn, s, &props)
        }
        r => r,
    }
}

/// Stops the scope (`StopUnit(name, "replace")`): systemd signals what is left in it and
/// removes its cgroup. A unit that is gone already is not an error.
pub fn stop(conn: &Connection, unit: &str) -> Result<(), SystemdError> {
    match conn.call_method(Some(DESTINATION), PATH, Some(MANAGER), "StopUnit", &(unit, "replace")) {
        Ok(_) => Ok(()),
        Err(e) if method_error_name(&e) == Some(NO_SUCH_UNIT) => Ok(()),
        Err(e) => Err(SystemdError::Call { method: "StopUnit", unit: unit.to_string(), source: Box::new(e) }),
    }
}

/// A stand-in systemd for tests (here and jail/cgroup.rs).
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::sync::mpsc;

    /// `StartTransientUnit`'s body as received.
    pub type StartBody = (
        String,
        String,
        Vec<(String, zbus::zvariant::OwnedValue)>,
        Vec<(String, Vec<(String, zbus::zvariant::OwnedValue)>)>,
    );

    /// A stand-in for systemd on a peer-to-peer D-Bus connection: answers each method call
    /// with `answer(member, call)` and reports (member, body signature, first string arg).
    pub fn fake_systemd(
        answer: impl Fn(&str, &zbus::Message) -> zbus::Message + Send + 'static,
    ) -> (Connection, mpsc::Receiver<(String, String, String)>) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let guid = zbus::Guid::generate();
            let server = zbus::blocking::connection::Builder::async_io_unix_stream(a)
                .server(guid)
                .unwrap()
                .p2p()
                .build_message_iterator()
                .unwrap();
            let conn = zbus::blocking::Connection::from(&server);
            for msg in server.flatten() {
                let h = msg.header();
                let Some(member) = h.member().map(|m| m.to_string()) else { continue };
                let first: String = msg
                    .body()
                    .deserialize::<(String, String)>()
                    .map(|b| b.0)
                    .unwrap_or_else(|_| msg.body().deserialize::<StartBody>().map(|b| b.0).unwrap_or_default());
                let _ = tx.send((member.clone(), msg.body().signature().to_string_no_parens(), first));
                let reply = answer(&member, &msg);
                if conn.send(&reply).is_err() {
                    break;
                }
            }
        });
        let client = zbus::blocking::connection::Builder::async_io_unix_stream(b).p2p().build().unwrap();
        (client, rx)
    }

    pub fn job_reply(call: &zbus::Message) -> zbus::Message {
        let job = OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/7").unwrap();
        zbus::Message::method_return(&call.header()).unwrap().build(&(job,)).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{fake_systemd, job_reply};
    use super::*;

    fn scope() -> Scope {
        Scope {
            unit: "cri-containerd-sb1.scope".into(),
            slice: "kubepods-burstable-pod1.slice".into(),
            pid: 4242,
            limits: Limits {
                cpu_max: Some((150_000, 100_000)),
                cpu_weight: Some(39),
                memory_max: 512 << 20,
                memory_high: 480 << 20,
                pids_max: 1024,
                io_weight: 100,
            },
            description: "bulwark sandbox sb1".into(),
        }
    }

    #[test]
    fn the_properties_runc_sets_with_the_sandbox_limits() {
        let p = properties(&scope());
        let get = |k: &str| p.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("Slice"), Some(Prop::Str("kubepods-burstable-pod1.slice".into())));
        assert_eq!(get("PIDs"), Some(Prop::Pids(vec![4242])));
        assert_eq!(get("Delegate"), Some(Prop::Bool(true)));
        assert_eq!(get("MemoryMax"), Some(Prop::U64(512 << 20)));
        assert_eq!(get("MemoryHigh"), Some(Prop::U64(480 << 20)));
        assert_eq!(get("TasksMax"), Some(Prop::U64(1024)));
        assert_eq!(get("CPUQuotaPerSecUSec"), Some(Prop::U64(1_500_000)), "1.5 CPUs");
        assert_eq!(get("CPUQuotaPeriodUSec"), Some(Prop::U64(100_000)));
        assert_eq!(get("CPUWeight"), Some(Prop::U64(39)));
        assert_eq!(get("IOWeight"), Some(Prop::U64(100)));
        let mut no_cpu = scope();
        no_cpu.limits.cpu_max = None;
        no_cpu.limits.cpu_weight = None;
        let p = properties(&no_cpu);
        assert!(!p.iter().any(|(k, _)| k.starts_with("CPUQuota") || *k == "CPUWeight"), "{p:?}");
    }

    #[test]
    fn the_request_has_systemds_signature() {
        let props = properties(&scope());
        let body = start_request("cri-containerd-sb1.scope", &props);
        let msg = zbus::Message::method_call(PATH, "StartTransientUnit")
            .unwrap()
            .destination(DESTINATION)
            .unwrap()
            .interface(MANAGER)
            .unwrap()
            .build(&body)
            .unwrap();
        assert_eq!(msg.body().signature().to_string_no_parens(), "ssa(sv)a(sa(sv))");
        let (name, mode, got, aux): super::fake::StartBody = msg.body().deserialize().unwrap();
        assert_eq!((name.as_str(), mode.as_str(), aux.len()), ("cri-containerd-sb1.scope", "fail", 0));
        let find = |k: &str| got.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(u64::try_from(find("MemoryMax")).unwrap(), 512 << 20);
        assert_eq!(<Vec<u32>>::try_from(find("PIDs")).unwrap(), vec![4242]);
        assert!(bool::try_from(find("Delegate")).unwrap());
        assert_eq!(find("Slice").downcast_ref::<&str>().unwrap(), "kubepods-burstable-pod1.slice");
    }

    #[test]
    fn start_and_stop_over_dbus() {
        let (conn, seen) = fake_systemd(|_, call| job_reply(call));
        assert_eq!(start(&conn, &scope()).unwrap(), "/org/freedesktop/systemd1/job/7");
        stop(&conn, "cri-containerd-sb1.scope").unwrap();
        let calls: Vec<_> = seen.try_iter().collect();
        assert_eq!(
            calls,
            [
                ("StartTransientUnit".into(), "ssa(sv)a(sa(sv))".into(), "cri-containerd-sb1.scope".into()),
                ("StopUnit".into(), "ss".into(), "cri-containerd-sb1.scope".into()),
            ]
        );
    }

    #[test]
    fn a_leftover_unit_is_stopped_and_the_start_retried_once() {
        let starts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let n = starts.clone();
        let (conn, seen) = fake_systemd(move |member, call| {
            if member == "StartTransientUnit" && n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                zbus::Message::error(&call.header(), UNIT_EXISTS).unwrap().build(&("Unit exists",)).unwrap()
            } else {
                job_reply(call)
            }
        });
        start(&conn, &scope()).unwrap();
        let members: Vec<String> = seen.try_iter().map(|c| c.0).collect();
        assert_eq!(members, ["StartTransientUnit", "StopUnit", "StartTransientUnit"]);
    }

    #[test]
    fn other_errors_are_reported_with_the_unit() {
        let (conn, _) = fake_systemd(|_, call| {
            zbus::Message::error(&call.header(), "org.freedesktop.DBus.Error.AccessDenied")
                .unwrap()
                .build(&("no",))
                .unwrap()
        });
        let e = start(&conn, &scope()).unwrap_err().to_string();
        assert!(
            e.contains("StartTransientUnit") && e.contains("cri-containerd-sb1.scope") && e.contains("AccessDenied"),
            "{e}"
        );
        let (conn, _) = fake_systemd(|_, call| {
            zbus::Message::error(&call.header(), NO_SUCH_UNIT).unwrap().build(&("gone",)).unwrap()
        });
        stop(&conn, "x.scope").unwrap();
    }
}
