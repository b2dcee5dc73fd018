//! One enriched syscall event as one line for a person: time, pod, container, process,
//! syscall, what it was about (path, address, target), result. Every string came from the
//! guest or the pod spec: all of it goes through `text::clean` and is bounded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bulwark_protocol::telemetry::{errno_name, Enriched, Event, EventType, SocketFamily, SocketTuple};

use crate::text::{clean, utc};

/// Longest path or argument list shown.
const MAX_SHOWN: usize = 200;

/// `res=0`, `res=-13(EACCES)`.
fn result(res: i64) -> String {
    match (res < 0).then(|| errno_name(res.saturating_neg())).flatten() {
        Some(name) => format!("res={res}({name})"),
        None => format!("res={res}"),
    }
}

fn addr(bytes: &[u8], port: u32) -> Option<String> {
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(bytes);
            IpAddr::V6(Ipv6Addr::from(a))
        }
        _ => return None,
    };
    Some(match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    })
}

fn socket(s: &SocketTuple) -> String {
    match s.family.enum_value() {
        Ok(SocketFamily::UNIX) => format!("unix:{}", clean(&s.unix_path, MAX_SHOWN)),
        _ => {
            let remote = addr(&s.remote_addr, s.remote_port).unwrap_or_else(|| "?".into());
            match addr(&s.local_addr, s.local_port) {
                Some(local) => format!("{local}->{remote}"),
                None => remote,
            }
        }
    }
}

/// What the syscall was about.
fn object(t: Option<EventType>, e: &Event) -> String {
    let path = || clean(&e.path, MAX_SHOWN);
    match t {
        Some(EventType::EXECVE | EventType::EXECVEAT) => {
            let argv: Vec<String> = e.argv.iter().take(32).map(|a| clean(a, 64)).collect();
            format!("path={} argv=[{}]", path(), clean(&argv.join(" "), MAX_SHOWN))
        }
        Some(EventType::RENAME | EventType::RENAMEAT | EventType::RENAMEAT2 | EventType::MOUNT) => {
            format!("path={} -> {}", path(), clean(&e.path2, MAX_SHOWN))
        }
        Some(EventType::CONNECT | EventType::ACCEPT | EventType::ACCEPT4) => match e.socket.as_ref() {
            Some(s) => format!("addr={}", socket(s)),
            None => "addr=?".into(),
        },
        Some(EventType::CHMOD | EventType::FCHMODAT | EventType::FCHMOD) => {
            format!("path={} mode={:o}", path(), e.mode)
        }
        Some(EventType::SETUID | EventType::SETGID | EventType::SETREUID | EventType::SETRESUID) => {
            format!("to={}", e.target_id)
        }
        Some(EventType::PTRACE) => format!("request={} target={}", e.ptrace_request, e.target_pid),
        Some(EventType::MEMFD_CREATE | EventType::BPF) => format!("name={}", clean(&e.name, 64)),
        Some(EventType::DUP | EventType::DUP2 | EventType::DUP3) => format!("fd={} -> {}", e.fd, e.newfd),
        _ if !e.path.is_empty() => format!("path={}", path()),
        _ => String::new(),
    }
}

/// One line: `<time> <pod> <container> <process> <syscall> <object> <result>`.
pub fn line(m: &Enriched) -> String {
    let Some(e) = m.event.as_ref() else { return "(event without content)".into() };
    // The host's receive time (the guest's own clock is guest-controlled).
    let time = if m.host_ts_ns > 0 { utc(m.host_ts_ns) } else { format!("{} (guest clock)", utc(e.ts_ns)) };
    let pod = if m.pod_name.is_empty() {
        format!("sandbox={}", clean(&m.sandbox_id, 64))
    } else {
        format!("pod={}/{}", clean(&m.pod_namespace, 64), clean(&m.pod_name, 64))
    };
    let container = match (m.container_name.is_empty(), m.container_id.is_empty()) {
        (false, _) => clean(&m.container_name, 64),
        (true, false) => clean(&m.container_id.chars().take(12).collect::<String>(), 12),
        (true, true) => "-".into(),
    };
    let t = e.type_.enum_value().ok();
    let syscall = match t {
        Some(t) => format!("{t:?}").to_lowercase(),
        None => format!("syscall#{}", e.type_.value()),
    };
    let object = object(t, e);
    let mut s =
        format!("{time} {pod} container={container} proc={}[{}] uid={} {syscall}", clean(&e.comm, 16), e.pid, e.uid);
    if !object.is_empty() {
        s.push(' ');
        s.push_str(&object);
    }
    s.push(' ');
    s.push_str(&result(e.res));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t: EventType) -> Enriched {
        let mut e = Event::new();
        e.type_ = t.into();
        e.pid = 42;
        e.uid = 1000;
        e.comm = "curl".into();
        let mut m = Enriched::new();
        m.event = Some(e).into();
        m.pod_name = "web-0".into();
        m.pod_namespace = "team-a".into();
        m.container_name = "app".into();
        m.host_ts_ns = 1_700_000_000_123_000_000;
        m
    }

    #[test]
    fn lines_name_time_pod_container_process_syscall_object_result() {
        let mut m = event(EventType::CONNECT);
        let s = m.event.as_mut().unwrap().socket.mut_or_insert_default();
        s.family = SocketFamily::INET.into();
        s.remote_addr = vec![10, 0, 0, 1];
        s.remote_port = 443;
        m.event.as_mut().unwrap().res = -111;
        assert_eq!(
            line(&m),
            "2023-11-14T22:13:20.123Z pod=team-a/web-0 container=app proc=curl[42] uid=1000 connect \
             addr=10.0.0.1:443 res=-111(ECONNREFUSED)"
        );
        let mut m = event(EventType::OPENAT);
        m.event.as_mut().unwrap().path = "/etc/shadow\u{1b}[2J".into();
        m.event.as_mut().unwrap().res = 3;
        assert!(line(&m).ends_with("openat path=/etc/shadow\\u{1b}[2J res=3"), "{}", line(&m));
        let mut m = event(EventType::EXECVE);
        m.event.as_mut().unwrap().path = "/bin/sh".into();
        m.event.as_mut().unwrap().argv = vec!["sh".into(), "-c".into(), "id".into()];
        m.pod_name.clear();
        m.sandbox_id = "sb1".into();
        m.host_ts_ns = 0;
        let l = line(&m);
        assert!(l.contains("(guest clock) sandbox=sb1") && l.contains("execve path=/bin/sh argv=[sh -c id]"), "{l}");
        let mut m = event(EventType::EXECVE);
        m.event.as_mut().unwrap().type_ = bulwark_protocol::protobuf::EnumOrUnknown::from_i32(999);
        assert!(line(&m).contains(" syscall#999 "), "{}", line(&m));
    }

    #[test]
    fn results_are_named_and_any_guest_value_is_shown() {
        assert_eq!(result(0), "res=0");
        assert_eq!(result(-13), "res=-13(EACCES)");
        assert_eq!(result(-4095), "res=-4095");
        // A guest's i64::MIN has no negation: shown as it is, no overflow.
        assert_eq!(result(i64::MIN), format!("res={}", i64::MIN));
    }
}
