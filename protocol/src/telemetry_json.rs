//! One enriched telemetry event as a JSON object: the shape of the relay's JSON-lines file
//! (for pipelines other than Falco) and of `bulwark events --json`. Field names are stable;
//! empty strings, zero numbers and absent parts are left out so lines stay short.

use serde_json::{json, Map, Value};

use crate::telemetry::{event_type_name, Enriched, Event, SocketTuple};

/// `m` as a JSON object (pure; every string was checked against the limits by the decoder).
pub fn enriched_to_json(m: &Enriched) -> Value {
    let mut o = Map::new();
    put_u64(&mut o, "host_ts_ns", m.host_ts_ns);
    for (k, v) in [
        ("node", &m.node_name),
        ("sandbox_id", &m.sandbox_id),
        ("pod", &m.pod_name),
        ("namespace", &m.pod_namespace),
        ("pod_uid", &m.pod_uid),
        ("container_id", &m.container_id),
        ("container", &m.container_name),
        ("image", &m.image),
    ] {
        put_str(&mut o, k, v);
    }
    put_u64(&mut o, "drops", m.drops);
    if let Some(e) = m.event.as_ref() {
        o.insert("event".into(), event_to_json(e));
    }
    Value::Object(o)
}

/// The guest's part of an event.
pub fn event_to_json(e: &Event) -> Value {
    let mut o = Map::new();
    put_u64(&mut o, "ts_ns", e.ts_ns);
    let ty =
        e.type_.enum_value().ok().and_then(event_type_name).unwrap_or_else(|| format!("unknown({})", e.type_.value()));
    o.insert("type".into(), json!(ty));
    o.insert("res".into(), json!(e.res));
    for (k, v) in [("pid", e.pid), ("tid", e.tid), ("ppid", e.ppid), ("uid", e.uid), ("gid", e.gid)] {
        o.insert(k.into(), json!(v));
    }
    for (k, v) in [
        ("loginuid", e.loginuid),
        ("tty", e.tty),
        ("mode", e.mode),
        ("target_pid", e.target_pid),
        ("target_id", e.target_id),
    ] {
        put_u64(&mut o, k, v.into());
    }
    for (k, v) in [
        ("comm", &e.comm),
        ("cwd", &e.cwd),
        ("exe", &e.exe_path),
        ("path", &e.path),
        ("path2", &e.path2),
        ("container_id", &e.container_id),
        ("user", &e.user_name),
        ("name", &e.name),
    ] {
        put_str(&mut o, k, v);
    }
    if !e.argv.is_empty() {
        o.insert("argv".into(), json!(e.argv));
    }
    for (k, v) in [
        ("flags", e.flags),
        ("ptrace_request", e.ptrace_request),
        ("cap_permitted", e.cap_permitted),
        ("cap_effective", e.cap_effective),
        ("cap_inheritable", e.cap_inheritable),
    ] {
        put_u64(&mut o, k, v);
    }
    if e.fd_type.value() != 0 {
        o.insert("fd_type".into(), json!(format!("{:?}", e.fd_type.enum_value_or_default()).to_ascii_lowercase()));
    }
    if e.fd != 0 || e.newfd != 0 {
        o.insert("fd".into(), json!(e.fd));
        o.insert("newfd".into(), json!(e.newfd));
    }
    if e.exe_from_memfd {
        o.insert("exe_from_memfd".into(), json!(true));
    }
    if e.exe_on_upper_layer {
        o.insert("exe_on_upper_layer".into(), json!(true));
    }
    if let Some(s) = e.socket.as_ref() {
        o.insert("socket".into(), socket_to_json(s));
    }
    Value::Object(o)
}

fn socket_to_json(s: &SocketTuple) -> Value {
    let mut o = Map::new();
    o.insert("family".into(), json!(format!("{:?}", s.family.enum_value_or_default()).to_ascii_lowercase()));
    o.insert("proto".into(), json!(format!("{:?}", s.proto.enum_value_or_default()).to_ascii_lowercase()));
    if let Some(a) = ip_text(&s.local_addr) {
        o.insert("local".into(), json!(a));
        o.insert("local_port".into(), json!(s.local_port));
    }
    if let Some(a) = ip_text(&s.remote_addr) {
        o.insert("remote".into(), json!(a));
        o.insert("remote_port".into(), json!(s.remote_port));
    }
    put_str(&mut o, "unix_path", &s.unix_path);
    Value::Object(o)
}

/// An IPv4/IPv6 address in text form (`None` for an absent or malformed address).
pub fn ip_text(a: &[u8]) -> Option<String> {
    match a.len() {
        4 => Some(std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()),
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(a);
            Some(std::net::Ipv6Addr::from(b).to_string())
        }
        _ => None,
    }
}

fn put_str(o: &mut Map<String, Value>, k: &str, v: &str) {
    if !v.is_empty() {
        o.insert(k.into(), json!(v));
    }
}

fn put_u64(o: &mut Map<String, Value>, k: &str, v: u64) {
    if v != 0 {
        o.insert(k.into(), json!(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{EventType, L4Proto, SocketFamily};

    #[test]
    fn an_enriched_connect_event() {
        let mut e = Event::new();
        e.type_ = EventType::CONNECT.into();
        e.res = -111;
        e.pid = 42;
        e.comm = "nc".into();
        e.argv = vec!["nc".into(), "10.0.0.1".into()];
        let mut s = SocketTuple::new();
        s.family = SocketFamily::INET.into();
        s.proto = L4Proto::TCP.into();
        s.remote_addr = vec![10, 0, 0, 1];
        s.remote_port = 8080;
        e.socket = Some(s).into();
        let mut m = Enriched::new();
        m.event = Some(e).into();
        m.pod_name = "web".into();
        m.pod_namespace = "team-a".into();
        m.container_name = "app".into();
        let v = enriched_to_json(&m);
        assert_eq!(v["pod"], "web");
        assert_eq!(v["namespace"], "team-a");
        assert_eq!(v["container"], "app");
        assert!(v.get("image").is_none(), "empty strings are left out: {v}");
        let ev = &v["event"];
        assert_eq!(ev["type"], "connect");
        assert_eq!(ev["res"], -111);
        assert_eq!(ev["argv"][1], "10.0.0.1");
        assert_eq!(ev["socket"]["remote"], "10.0.0.1");
        assert_eq!(ev["socket"]["remote_port"], 8080);
        assert_eq!(ev["socket"]["family"], "inet");
        assert!(ev["socket"].get("local").is_none());
    }

    #[test]
    fn odd_values_do_not_break_it() {
        let mut e = Event::new();
        e.type_ = protobuf::EnumOrUnknown::from_i32(9999);
        let mut s = SocketTuple::new();
        s.remote_addr = vec![1, 2, 3];
        e.socket = Some(s).into();
        let v = event_to_json(&e);
        assert_eq!(v["type"], "unknown(9999)");
        assert!(v["socket"].get("remote").is_none());
        assert_eq!(ip_text(&[0; 16]).as_deref(), Some("::"));
    }
}
