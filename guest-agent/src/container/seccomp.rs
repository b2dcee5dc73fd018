//! The container's seccomp profile in the guest (pure: JSON in, JSON out).
//!
//! - A spec without `linux.seccomp` gets Bulwark's default profile (`guest-agent/seccomp/`,
//!   embedded), built for the capabilities in the spec's bounding set, unless the host allowed
//!   unconfined (`CreateContainerRequest.allow_unconfined_seccomp`; the tenant cannot ask).
//! - A profile the container brings is kept, with AF_VSOCK sockets denied (EPERM): the rules
//!   that could allow `socket(AF_VSOCK, ...)` lose that case, and so do the calls that create
//!   sockets in ways a filter cannot see (`socketcall`, io_uring's IORING_OP_SOCKET).
//! - Every `SCMP_CMP_MASKED_EQ` argument is rewritten for libcontainer, which reads the mask
//!   from `valueTwo` and the expected value from `value` (runc, containerd's and Docker's
//!   profiles, and ours: `value` is the mask).
use serde_json::{json, Map, Value};

use crate::container::ContainerError;

/// The default profile, versioned: a new version is a new file.
pub const DEFAULT_PROFILE_JSON: &str = include_str!("../../seccomp/default-v1.json");

/// `AF_VSOCK` (linux/socket.h).
pub const AF_VSOCK: u64 = 40;

/// Calls that create sockets without the family in a register a filter can read.
const SOCKET_BYPASSES: [&str; 4] = ["socketcall", "io_uring_setup", "io_uring_enter", "io_uring_register"];

/// Keys of the default profile file that are not OCI (the file's metadata and per-rule
/// conditions on capabilities).
const PROFILE_META: [&str; 3] = ["name", "version", "about"];
const RULE_META: [&str; 3] = ["comment", "ifAnyCapability", "unlessAnyCapability"];

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The default profile `name` `version` was applied.
    Default { name: String, version: u64 },
    /// The container's own profile, with the AF_VSOCK rules.
    Brought,
    /// No profile: the host allowed unconfined.
    Unconfined,
}

fn spec_err(m: String) -> ContainerError {
    ContainerError::Spec(m)
}

/// Sets or hardens `linux.seccomp` in a spec (a JSON object). Notes say what changed.
pub fn apply(
    spec: &mut Map<String, Value>,
    allow_unconfined: bool,
    notes: &mut Vec<String>,
) -> Result<Outcome, ContainerError> {
    let caps: Vec<String> = spec
        .get("process")
        .and_then(|p| p.pointer("/capabilities/bounding"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    if !spec.get("linux").is_some_and(Value::is_object) {
        spec.insert("linux".into(), json!({}));
    }
    let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) else {
        return Err(spec_err("linux is not an object".into()));
    };
    let brought = linux.get_mut("seccomp").filter(|s| !s.is_null());
    let outcome = match brought {
        Some(profile) => {
            harden(profile, notes)?;
            Outcome::Brought
        }
        None if allow_unconfined => {
            notes.push("no seccomp profile: the host allows unconfined containers".into());
            Outcome::Unconfined
        }
        None => {
            let (name, version, profile) = default_profile(&caps)?;
            notes.push(format!("no seccomp profile in the spec: applied {name} v{version}"));
            linux.insert("seccomp".into(), profile);
            Outcome::Default { name, version }
        }
    };
    if let Some(profile) = linux.get_mut("seccomp").filter(|s| !s.is_null()) {
        masked_eq_for_libcontainer(profile);
    }
    Ok(outcome)
}

/// The default profile for a container whose bounding set is `caps`, as OCI JSON (runc's
/// `SCMP_CMP_MASKED_EQ` convention, like a profile from the host). Returns its name and version.
pub fn default_profile(caps: &[String]) -> Result<(String, u64, Value), ContainerError> {
    let mut doc: Value =
        serde_json::from_str(DEFAULT_PROFILE_JSON).map_err(|e| spec_err(format!("built-in seccomp profile: {e}")))?;
    let obj = doc.as_object_mut().ok_or_else(|| spec_err("built-in seccomp profile: not an object".into()))?;
    let name = obj.get("name").and_then(Value::as_str).unwrap_or("bulwark-default").to_string();
    let version = obj.get("version").and_then(Value::as_u64).unwrap_or(0);
    for k in PROFILE_META {
        obj.remove(k);
    }
    let has_any = |list: Option<&Value>| {
        list.and_then(Value::as_array)
            .is_some_and(|l| l.iter().filter_map(Value::as_str).any(|c| caps.iter().any(|have| have == c)))
    };
    if let Some(rules) = obj.get_mut("syscalls").and_then(Value::as_array_mut) {
        rules.retain(|r| {
            let when = r.get("ifAnyCapability");
            let unless = r.get("unlessAnyCapability");
            (when.is_none() || has_any(when)) && !has_any(unless)
        });
        for r in rules.iter_mut().filter_map(Value::as_object_mut) {
            for k in RULE_META {
                r.remove(k);
            }
        }
    }
    Ok((name, version, doc))
}

fn is_allowing(action: Option<&str>) -> bool {
    // ERRNO, KILL*, TRAP deny; ALLOW, LOG, TRACE (ENOSYS without a tracer, the tracer's choice
    // otherwise) and NOTIFY (a supervisor's choice) may let the call through.
    !matches!(
        action,
        Some("SCMP_ACT_ERRNO" | "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" | "SCMP_ACT_KILL_PROCESS" | "SCMP_ACT_TRAP")
    )
}

/// Whether a rule's argument conditions already exclude `socket(AF_VSOCK, ...)`: some
/// condition on argument 0 is `== x` with x != AF_VSOCK, or `!= AF_VSOCK`. (libcontainer adds
/// several conditions on one argument as separate rules, so every condition on argument 0 must
/// exclude it.)
fn excludes_vsock(args: Option<&Value>) -> bool {
    let Some(args) = args.and_then(Value::as_array) else { return false };
    let on_family: Vec<&Value> = args.iter().filter(|a| a.get("index").and_then(Value::as_u64) == Some(0)).collect();
    !on_family.is_empty()
        && on_family.iter().all(|a| {
            let v = a.get("value").and_then(Value::as_u64);
            match a.get("op").and_then(Value::as_str) {
                Some("SCMP_CMP_EQ") => v.is_some_and(|v| v != AF_VSOCK),
                Some("SCMP_CMP_NE") => v == Some(AF_VSOCK),
                _ => false,
            }
        })
}

/// Denies AF_VSOCK sockets in a profile the container brought.
pub fn harden(profile: &mut Value, notes: &mut Vec<String>) -> Result<(), ContainerError> {
    let obj = profile.as_object_mut().ok_or_else(|| spec_err("linux.seccomp is not an object".into()))?;
    if !obj.get("syscalls").is_some_and(Value::is_array) {
        obj.insert("syscalls".into(), json!([]));
    }
    let Some(rules) = obj.get_mut("syscalls").and_then(Value::as_array_mut) else {
        return Err(spec_err("linux.seccomp.syscalls is not an array".into()));
    };
    let mut extra = Vec::new();
    for rule in rules.iter_mut() {
        let Some(r) = rule.as_object_mut() else { continue };
        if !is_allowing(r.get("action").and_then(Value::as_str)) {
            continue;
        }
        let Some(names) = r.get_mut("names").and_then(Value::as_array_mut) else { continue };
        let before = names.len();
        let mut had_socket = false;
        let mut dropped = Vec::new();
        names.retain(|n| match n.as_str() {
            Some("socket") => {
                had_socket = true;
                false
            }
            Some(s) if SOCKET_BYPASSES.contains(&s) => {
                dropped.push(s.to_string());
                false
            }
            _ => true,
        });
        if names.len() == before {
            continue;
        }
        for d in dropped {
            notes.push(format!("seccomp: {d} no longer allowed (it can create AF_VSOCK sockets)"));
        }
        if had_socket {
            let mut socket_rule = r.clone();
            socket_rule.insert("names".into(), json!(["socket"]));
            if excludes_vsock(r.get("args")) {
                extra.push(Value::Object(socket_rule));
            } else if r
                .get("args")
                .and_then(Value::as_array)
                .is_none_or(|a| a.iter().all(|c| c.get("index").and_then(Value::as_u64) != Some(0)))
            {
                let mut args = r.get("args").and_then(Value::as_array).cloned().unwrap_or_default();
                args.push(json!({"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}));
                socket_rule.insert("args".into(), Value::Array(args));
                notes.push("seccomp: socket allowed except for AF_VSOCK".into());
                extra.push(Value::Object(socket_rule));
            } else {
                notes.push("seccomp: dropped a socket rule whose family condition could match AF_VSOCK".into());
            }
        }
    }
    rules.retain(|r| r.get("names").and_then(Value::as_array).is_none_or(|n| !n.is_empty()));
    rules.extend(extra);
    rules.push(json!({"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM,
        "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_EQ"}]}));
    rules.push(json!({"names": SOCKET_BYPASSES, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM}));
    notes.push("seccomp: the container's profile kept, AF_VSOCK sockets denied".into());
    Ok(())
}

/// libcontainer builds `SCMP_CMP_MASKED_EQ` as mask = `valueTwo`, datum = `value`; runc (and
/// every profile written for it) as mask = `value`, datum = `valueTwo`. Swap them so the
/// profile means what its author wrote.
fn masked_eq_for_libcontainer(profile: &mut Value) {
    let Some(rules) = profile.get_mut("syscalls").and_then(Value::as_array_mut) else { return };
    for rule in rules {
        let Some(args) = rule.get_mut("args").and_then(Value::as_array_mut) else { continue };
        for a in args.iter_mut().filter_map(Value::as_object_mut) {
            if a.get("op").and_then(Value::as_str) != Some("SCMP_CMP_MASKED_EQ") {
                continue;
            }
            let mask = a.get("value").cloned().unwrap_or(json!(0));
            let datum = a.get("valueTwo").cloned().unwrap_or(json!(0));
            a.insert("value".into(), datum);
            a.insert("valueTwo".into(), mask);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction};

    fn caps(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    /// containerd's default capabilities (what `ctr run` and the CRI give).
    const DEFAULT_CAPS: [&str; 14] = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];

    fn rules_for<'a>(p: &'a LinuxSeccomp, name: &str) -> Vec<&'a oci_spec::runtime::LinuxSyscall> {
        p.syscalls()
            .as_ref()
            .map(|s| s.iter().filter(|r| r.names().iter().any(|n| n == name)).collect())
            .unwrap_or_default()
    }

    fn spec(seccomp: Option<Value>, bounding: &[&str]) -> Map<String, Value> {
        let mut s = json!({"ociVersion": "1.0.2", "root": {"path": "/r"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                        "capabilities": {"bounding": bounding}},
            "linux": {}});
        if let Some(p) = seccomp {
            s["linux"]["seccomp"] = p;
        }
        s.as_object().cloned().expect("object")
    }

    #[test]
    fn the_file_and_every_variant_parse_into_the_oci_type() {
        let raw: LinuxSeccomp = serde_json::from_str(DEFAULT_PROFILE_JSON).expect("file parses as OCI");
        assert_eq!(raw.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(raw.default_errno_ret(), Some(1));
        for c in [caps(&[]), caps(&DEFAULT_CAPS), caps(&["CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_BOOT"])] {
            let (name, version, v) = default_profile(&c).expect("build");
            assert_eq!((name.as_str(), version), ("bulwark-default", 1));
            let text = v.to_string();
            for meta in ["ifAnyCapability", "unlessAnyCapability", "comment", "\"about\""] {
                assert!(!text.contains(meta), "{meta} left in the OCI profile");
            }
            let _: LinuxSeccomp = serde_json::from_value(v).expect("OCI");
        }
    }

    #[test]
    fn every_name_is_known_to_libseccomp() {
        let (_, _, v) = default_profile(&caps(&["CAP_SYS_ADMIN"])).expect("build");
        let mut unknown = Vec::new();
        for r in v["syscalls"].as_array().expect("rules") {
            for n in r["names"].as_array().expect("names").iter().filter_map(Value::as_str) {
                if libseccomp::ScmpSyscall::from_name(n).is_err() {
                    unknown.push(n.to_string());
                }
            }
        }
        assert!(unknown.is_empty(), "names libseccomp cannot resolve: {unknown:?}");
    }

    #[test]
    fn capabilities_unlock_what_they_unlock_and_nothing_else() {
        let plain: LinuxSeccomp =
            serde_json::from_value(default_profile(&caps(&DEFAULT_CAPS)).expect("b").2).expect("oci");
        for denied in [
            "mount",
            "umount2",
            "keyctl",
            "add_key",
            "request_key",
            "ptrace",
            "bpf",
            "kexec_load",
            "init_module",
            "finit_module",
            "delete_module",
            "open_by_handle_at",
            "perf_event_open",
            "userfaultfd",
            "io_uring_setup",
            "reboot",
            "swapon",
            "swapoff",
            "setns",
            "pivot_root",
            "acct",
            "quotactl",
            "lookup_dcookie",
            "mbind",
            "set_mempolicy",
            "move_pages",
            "name_to_handle_at",
            "syslog",
            "settimeofday",
            "clock_settime",
            "iopl",
            "ioperm",
            "uselib",
            "fsopen",
            "fsmount",
            "move_mount",
            "open_tree",
        ] {
            assert!(rules_for(&plain, denied).is_empty(), "{denied} is allowed without capabilities");
        }
        // Conditional: clone/unshare without namespace flags, clone3 ENOSYS, socket not AF_VSOCK.
        let clone = rules_for(&plain, "clone");
        assert_eq!(clone.len(), 1);
        assert!(clone[0].args().as_ref().is_some_and(|a| a[0].value() == 0x7E02_0000));
        let unshare = rules_for(&plain, "unshare");
        assert!(unshare.len() == 1 && unshare[0].args().is_some());
        let clone3 = rules_for(&plain, "clone3");
        assert!(clone3.len() == 1 && clone3[0].errno_ret() == Some(38));
        let socket = rules_for(&plain, "socket");
        assert!(socket.len() == 1 && socket[0].args().as_ref().is_some_and(|a| a[0].value() == AF_VSOCK));
        assert!(!rules_for(&plain, "chroot").is_empty(), "CAP_SYS_CHROOT is in the default set");

        let admin: LinuxSeccomp =
            serde_json::from_value(default_profile(&caps(&["CAP_SYS_ADMIN"])).expect("b").2).expect("oci");
        for allowed in ["mount", "umount2", "setns", "bpf", "pivot_root", "syslog"] {
            assert!(!rules_for(&admin, allowed).is_empty(), "{allowed} with CAP_SYS_ADMIN");
        }
        let clone = rules_for(&admin, "clone");
        assert!(clone.len() == 1 && clone[0].args().is_none(), "clone unconditional with CAP_SYS_ADMIN");
        let clone3 = rules_for(&admin, "clone3");
        assert!(clone3.len() == 1 && clone3[0].action() == LinuxSeccompAction::ScmpActAllow);
        for still in ["keyctl", "ptrace", "reboot", "init_module", "userfaultfd"] {
            assert!(rules_for(&admin, still).is_empty(), "{still} with CAP_SYS_ADMIN only");
        }
        let ptrace: LinuxSeccomp =
            serde_json::from_value(default_profile(&caps(&["CAP_SYS_PTRACE"])).expect("b").2).expect("oci");
        assert!(!rules_for(&ptrace, "ptrace").is_empty());
    }

    #[test]
    fn default_only_without_a_profile_and_without_the_hosts_opt_out() {
        let mut notes = Vec::new();
        let mut s = spec(None, &DEFAULT_CAPS);
        assert_eq!(
            apply(&mut s, false, &mut notes).expect("apply"),
            Outcome::Default { name: "bulwark-default".into(), version: 1 }
        );
        assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert!(notes.iter().any(|n| n.contains("bulwark-default v1")), "{notes:?}");

        let mut s = spec(None, &DEFAULT_CAPS);
        assert_eq!(apply(&mut s, true, &mut notes).expect("apply"), Outcome::Unconfined);
        assert!(s["linux"].get("seccomp").is_none());

        // A spec without `linux` at all gets one.
        let mut s = spec(None, &[]);
        s.remove("linux");
        assert!(matches!(apply(&mut s, false, &mut notes).expect("apply"), Outcome::Default { .. }));
        assert!(s["linux"]["seccomp"].is_object());

        // A profile the container brings is kept, opt-out or not (the flag is about "none").
        let own =
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]});
        for flag in [false, true] {
            let mut s = spec(Some(own.clone()), &DEFAULT_CAPS);
            assert_eq!(apply(&mut s, flag, &mut notes).expect("apply"), Outcome::Brought);
            assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
            assert_eq!(s["linux"]["seccomp"]["syscalls"][0]["names"], json!(["mkdir"]));
        }
    }

    fn vsock_deny_rule(p: &Value) -> bool {
        p["syscalls"].as_array().expect("rules").iter().any(|r| {
            r["names"] == json!(["socket"])
                && r["action"] == "SCMP_ACT_ERRNO"
                && r["errnoRet"] == 1
                && r["args"] == json!([{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}])
        })
    }

    #[test]
    fn a_brought_profile_gets_the_vsock_rule_and_loses_its_bypasses() {
        let mut notes = Vec::new();
        // Allow-all: the deny rule is what stops AF_VSOCK.
        let mut p = json!({"defaultAction": "SCMP_ACT_ALLOW"});
        harden(&mut p, &mut notes).expect("harden");
        assert!(vsock_deny_rule(&p), "{p}");
        let _: LinuxSeccomp = serde_json::from_value(p).expect("oci");

        // An allowlist like RuntimeDefault: socket allowed unconditionally and io_uring too.
        let mut p = json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "syscalls": [
            {"names": ["read", "socket", "io_uring_setup", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 39, "op": "SCMP_CMP_GT"}]},
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97,
             "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"}]}
        ]});
        harden(&mut p, &mut notes).expect("harden");
        let rules = p["syscalls"].as_array().expect("rules").clone();
        assert_eq!(rules[0]["names"], json!(["read", "write"]));
        let allowing_socket: Vec<&Value> = rules
            .iter()
            .filter(|r| {
                r["action"] == "SCMP_ACT_ALLOW" && r["names"].as_array().is_some_and(|n| n.contains(&json!("socket")))
            })
            .collect();
        assert_eq!(allowing_socket.len(), 2, "{p}");
        // The unconditional one now excludes AF_VSOCK, AF_UNIX only is kept, `> 39` is dropped.
        assert_eq!(allowing_socket[0]["args"], json!([{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]));
        assert_eq!(allowing_socket[1]["args"], json!([{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]));
        assert!(rules.iter().any(|r| r["errnoRet"] == 97), "denying rules are kept");
        assert!(vsock_deny_rule(&p));
        assert!(rules.iter().all(|r| r["action"] != "SCMP_ACT_ALLOW"
            || !r["names"].as_array().is_some_and(|n| n.contains(&json!("io_uring_setup")))));
        let _: LinuxSeccomp = serde_json::from_value(p).expect("oci");
    }

    #[test]
    fn masked_eq_is_swapped_for_libcontainer() {
        let mut notes = Vec::new();
        let mut s = spec(None, &[]);
        apply(&mut s, false, &mut notes).expect("apply");
        let clone = s["linux"]["seccomp"]["syscalls"]
            .as_array()
            .expect("rules")
            .iter()
            .find(|r| r["names"] == json!(["clone"]))
            .cloned()
            .expect("clone rule");
        assert_eq!(clone["args"][0]["value"], 0);
        assert_eq!(clone["args"][0]["valueTwo"], 0x7E02_0000u64);
    }

    /// Installs a profile on a fresh thread (seccomp filters are per thread without TSYNC) and
    /// reports the errno of each call.
    fn errnos_under(profile: Value) -> Vec<(&'static str, i32)> {
        std::thread::spawn(move || {
            let p: LinuxSeccomp = serde_json::from_value(profile).expect("oci");
            // SAFETY: sets no_new_privs on this thread only (needed without CAP_SYS_ADMIN).
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            libcontainer::seccomp::initialize_seccomp(&p).expect("install");
            let errno =
                |r: libc::c_long| if r < 0 { std::io::Error::last_os_error().raw_os_error().unwrap_or(0) } else { 0 };
            let mut out = Vec::new();
            // SAFETY: socket(2) with constant arguments; the fd is closed below.
            let fd = unsafe { libc::socket(AF_VSOCK as i32, libc::SOCK_STREAM, 0) };
            out.push(("socket(AF_VSOCK)", errno(fd as libc::c_long)));
            // SAFETY: as above.
            let fd2 = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            out.push(("socket(AF_UNIX)", errno(fd2 as libc::c_long)));
            for f in [fd, fd2] {
                if f >= 0 {
                    // SAFETY: closing fds this thread opened.
                    unsafe { libc::close(f) };
                }
            }
            // SAFETY: unshare of a user namespace: refused here (a filter or a threaded
            // process); changes nothing if it were not.
            out.push(("unshare(CLONE_NEWUSER)", errno(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as libc::c_long)));
            // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0): reads an id.
            out.push(("keyctl", errno(unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) })));
            // SAFETY: clone3 with a NULL argument: EFAULT if it reached the kernel.
            out.push(("clone3", errno(unsafe { libc::syscall(libc::SYS_clone3, 0, 0) })));
            // SAFETY: getpid has no arguments.
            out.push(("getpid", errno(unsafe { libc::syscall(libc::SYS_getpid) })));
            out
        })
        .join()
        .expect("thread")
    }

    #[test]
    fn the_default_profile_denies_in_the_kernel() {
        let (_, _, mut p) = default_profile(&caps(&DEFAULT_CAPS)).expect("build");
        masked_eq_for_libcontainer(&mut p);
        let got = errnos_under(p);
        assert_eq!(
            got,
            [
                ("socket(AF_VSOCK)", libc::EPERM),
                ("socket(AF_UNIX)", 0),
                ("unshare(CLONE_NEWUSER)", libc::EPERM),
                ("keyctl", libc::EPERM),
                ("clone3", libc::ENOSYS),
                ("getpid", 0)
            ]
        );
    }

    #[test]
    fn a_hardened_allow_all_profile_denies_vsock_in_the_kernel() {
        let mut p = json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"]});
        harden(&mut p, &mut Vec::new()).expect("harden");
        let got = errnos_under(p);
        assert_eq!(got[0], ("socket(AF_VSOCK)", libc::EPERM));
        assert_eq!(got[1], ("socket(AF_UNIX)", 0));
    }
}
