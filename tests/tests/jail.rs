//! The VMM jail, seen from the host while a container runs: QEMU and vhost-device-vsock run
//! as unprivileged uids/gids, one each (QEMU's cannot enter or signal vhost-device-vsock),
//! with no capabilities (bounding set included), no_new_privs and
//! a seccomp filter, in a root of their own (a read-only tmpfs with the system's /usr, a few
//! device nodes, a proc of their own uid, the guest kernel for QEMU and its own `vm/`
//! directory for vhost-device-vsock: nothing of /etc, the homes, /var or any sandbox's state);
//! virtiofsd runs as root of a user namespace of its own (host ids: a block of 65536 of its own,
//! so its capabilities reach only the id-mapped share) in a mount view that shows only the
//! share and its socket directory, with no_new_privs and its seccomp filter; none of the three keeps
//! containerd's negative oom_score_adj or may dump core, and the unprivileged two have their
//! open files and the sandbox uid's processes bounded; each writes its output into a pipe the
//! shim copies into a capped log, not into a file. The container still runs, prints and exits normally.
//! And with `vm.allow_tcg_fallback = false`, a host without usable KVM refuses to boot.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use bulwark_e2e::containerd::{Containerd, CTR_LIMIT};
use bulwark_e2e::leftovers::{entries, vm_processes};
use bulwark_e2e::process::wait_bounded;

/// The value of `key:` in /proc/<pid>/status.
fn status_field(status: &str, key: &str) -> Result<String, String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| format!("no {key} in status:\n{status}"))
}

/// The four ids (real, effective, saved, fs) of a Uid:/Gid: line.
fn ids(status: &str, key: &str) -> Result<Vec<u32>, String> {
    status_field(status, key)?.split_whitespace().map(|x| x.parse().map_err(|e| format!("{key} {x}: {e}"))).collect()
}

fn pid_of(c: &Containerd, program: &str) -> Result<i32, String> {
    let found: Vec<_> =
        vm_processes(&c.dir.to_string_lossy()).into_iter().filter(|p| p.cmdline.contains(program)).collect();
    match found.as_slice() {
        [one] => Ok(one.pid),
        other => Err(format!("expected one {program} for the sandbox, found {other:?}")),
    }
}

fn read(path: String) -> Result<String, String> {
    std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))
}

/// What every process of the VM must show: no_new_privs, a seccomp filter, an
/// oom_score_adj that is not negative.
fn check_common(name: &str, pid: i32, status: &str) -> Result<(), String> {
    if status_field(status, "NoNewPrivs")? != "1" {
        return Err(format!("{name} (pid {pid}) runs without no_new_privs:\n{status}"));
    }
    if status_field(status, "Seccomp")? != "2" {
        return Err(format!("{name} (pid {pid}) runs without a seccomp filter:\n{status}"));
    }
    let oom: i32 = read(format!("/proc/{pid}/oom_score_adj"))?.trim().parse().map_err(|e| format!("{e}"))?;
    if oom < 0 {
        return Err(format!("{name} (pid {pid}) kept a negative oom_score_adj {oom}"));
    }
    check_output_piped(name, pid)
}

/// Its stdout and stderr are a pipe (the shim copies it into a capped log), not a file it
/// could grow without bound.
fn check_output_piped(name: &str, pid: i32) -> Result<(), String> {
    for fd in [1, 2] {
        let to = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).map_err(|e| format!("{name} fd {fd}: {e}"))?;
        if !to.to_string_lossy().starts_with("pipe:") {
            return Err(format!("{name} (pid {pid}) writes fd {fd} to {} instead of the shim's pipe", to.display()));
        }
    }
    Ok(())
}

/// QEMU and vhost-device-vsock: not root, no capabilities at all.
fn check_unprivileged(name: &str, pid: i32, status: &str) -> Result<u32, String> {
    let uids = ids(status, "Uid")?;
    let gids = ids(status, "Gid")?;
    if uids.contains(&0) || gids.contains(&0) {
        return Err(format!("{name} (pid {pid}) runs with uid/gid 0: {uids:?} {gids:?}"));
    }
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let v = status_field(status, cap)?;
        if u64::from_str_radix(&v, 16).map_err(|e| format!("{cap} {v}: {e}"))? != 0 {
            return Err(format!("{name} (pid {pid}) has {cap} {v}"));
        }
    }
    let groups = status_field(status, "Groups")?;
    if groups.split_whitespace().any(|g| g == "0") {
        return Err(format!("{name} (pid {pid}) is in group 0: {groups}"));
    }
    Ok(uids[0])
}

/// The soft and hard values of `name` in /proc/<pid>/limits.
fn limit_of(limits: &str, name: &str) -> Result<(String, String), String> {
    let line = limits.lines().find(|l| l.starts_with(name)).ok_or_else(|| format!("no {name} in\n{limits}"))?;
    let mut it = line[name.len()..].split_whitespace();
    match (it.next(), it.next()) {
        (Some(soft), Some(hard)) => Ok((soft.to_string(), hard.to_string())),
        _ => Err(format!("unreadable limits line {line:?}")),
    }
}

/// What `pid` sees at `dir` (through its own root, i.e. in its mount namespace).
fn seen_by(pid: i32, dir: &Path) -> Vec<String> {
    let mut v = entries(&Path::new(&format!("/proc/{pid}/root")).join(dir.strip_prefix("/").unwrap_or(dir)));
    v.sort();
    v
}

#[test]
fn qemu_and_its_helpers_run_jailed_and_the_container_still_works() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let rd = c.shim.runtime_dir.clone();
    // Another sandbox's state, as the host sees it: no VMM process may see it.
    let decoy = rd.join("other-ns").join("other-sandbox");
    std::fs::create_dir_all(&decoy).map_err(|e| format!("{e}"))?;
    std::fs::write(decoy.join("console.log"), "secret").map_err(|e| format!("{e}"))?;

    let (mut run, lines) =
        c.spawn_run_lines("jailed", &[], &["sh", "-c", "echo jailed-hello; sleep 25; echo jailed-bye"])?;
    c.wait_running("jailed")?;
    let first = lines.recv_timeout(CTR_LIMIT).map_err(|e| format!("no output: {e}\n{}", c.diagnostics()))?;
    assert_eq!(first, "jailed-hello");

    let sandbox = entries(&rd.join("bulwark-e2e"));
    assert_eq!(sandbox.len(), 1, "one sandbox state dir: {sandbox:?}");
    let sdir = rd.join("bulwark-e2e").join(&sandbox[0]);

    let mut uids = Vec::new();
    for name in ["qemu-system", "vhost-device-vsock"] {
        let pid = pid_of(&c, name)?;
        let status = read(format!("/proc/{pid}/status"))?;
        check_common(name, pid, &status)?;
        uids.push(check_unprivileged(name, pid, &status)?);
        // A root of its own: a tmpfs holding the system read-only and a few device nodes; none
        // of the host's configuration, homes, state or other sandboxes.
        let mountinfo = read(format!("/proc/{pid}/mountinfo"))?;
        let root_fs = mountinfo.lines().find(|l| l.split(' ').nth(4) == Some("/"));
        assert!(
            root_fs.is_some_and(|l| l.contains(" - tmpfs ")),
            "{name} (pid {pid}): root is not a tmpfs:\n{mountinfo}"
        );
        let top = seen_by(pid, Path::new("/"));
        for host_only in ["root", "home", "var", "boot", "srv", "sys", "mnt", "opt"] {
            assert!(!top.iter().any(|e| e == host_only), "{name} (pid {pid}) sees /{host_only}: {top:?}");
        }
        assert!(top.iter().any(|e| e == "usr") && top.iter().any(|e| e == "proc"), "{name} root: {top:?}");
        let etc = seen_by(pid, Path::new("/etc"));
        assert!(etc.iter().all(|e| e == "ld.so.cache"), "{name} sees /etc: {etc:?}");
        let dev = seen_by(pid, Path::new("/dev"));
        let devices = ["full", "kvm", "null", "random", "urandom", "zero"];
        assert!(dev.iter().all(|e| devices.contains(&e.as_str())), "{name} sees /dev: {dev:?}");
        // Its proc shows the processes of its own uid only (hidepid applies to the reader: read
        // it as that uid).
        let status = read(format!("/proc/{pid}/status"))?;
        let own_uid = ids(&status, "Uid")?[0];
        let out = std::process::Command::new("ls")
            .arg(format!("/proc/{pid}/root/proc"))
            .uid(own_uid)
            .gid(own_uid)
            .output()
            .map_err(|e| format!("ls as {own_uid}: {e}"))?;
        assert!(out.status.success(), "ls of {name}'s proc: {}", String::from_utf8_lossy(&out.stderr));
        let procs: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|e| e.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_string)
            .collect();
        assert!(!procs.is_empty(), "{name} sees no process in its proc");
        for other in &procs {
            let s = read(format!("/proc/{other}/status")).unwrap_or_default();
            assert!(s.is_empty() || ids(&s, "Uid")?[0] == own_uid, "{name} (pid {pid}) sees process {other}");
        }
        let host_view = entries(&rd);
        assert!(host_view.contains(&"other-ns".to_string()), "the decoy is there for the host: {host_view:?}");
        let view = seen_by(pid, &rd);
        assert!(!view.contains(&"other-ns".to_string()), "{name} sees other sandboxes' state: {view:?}");
        assert!(!view.iter().any(|e| e.starts_with("jail-uids") || e.starts_with("accel-probe")), "{view:?}");
        let own = seen_by(pid, &sdir);
        if name == "qemu-system" {
            assert!(view.is_empty(), "QEMU sees the runtime dir: {view:?}");
        } else {
            // only its own sockets directory
            assert_eq!(view, ["bulwark-e2e"], "{name} view of {}", rd.display());
            assert_eq!(own, ["vm"], "{name} view of its state dir {}", sdir.display());
        }
    }
    assert_ne!(uids[0], uids[1], "QEMU and vhost-device-vsock share a uid: each could trace or enter the other");
    // QEMU's uid cannot enter vhost-device-vsock's root (its vm/ sockets) nor signal it; the
    // same commands as vhost-device-vsock's own uid can (the check tells the two apart).
    let vsock_pid = pid_of(&c, "vhost-device-vsock")?;
    let as_uid = |uid: u32, script: &str| {
        std::process::Command::new("sh")
            .args(["-c", script])
            .uid(uid)
            .gid(uid)
            .output()
            .map(|o| o.status.success())
            .map_err(|e| format!("sh as {uid}: {e}"))
    };
    let reach = format!("ls /proc/{vsock_pid}/root/ >/dev/null && kill -0 {vsock_pid}");
    assert!(as_uid(uids[1], &reach)?, "vhost-device-vsock's own uid reaches it (the check works)");
    assert!(!as_uid(uids[0], &format!("ls /proc/{vsock_pid}/root/"))?, "QEMU's uid enters vhost-device-vsock's root");
    assert!(!as_uid(uids[0], &format!("kill -0 {vsock_pid}"))?, "QEMU's uid may signal vhost-device-vsock");
    // Resource limits, soft and hard alike: no core dumps (guest memory), bounded files and
    // processes of the sandbox uid.
    for (name, files) in [("qemu-system", "4096"), ("vhost-device-vsock", "1024")] {
        let pid = pid_of(&c, name)?;
        let limits = read(format!("/proc/{pid}/limits"))?;
        for (limit, value) in [("Max open files", files), ("Max processes", "1024"), ("Max core file size", "0")] {
            assert_eq!(limit_of(&limits, limit)?, (value.to_string(), value.to_string()), "{name} (pid {pid}) {limit}");
        }
    }

    // virtiofsd: root of a user namespace of its own whose ids are a block of 65536 host ids
    // (capabilities only there, over the id-mapped share), no_new_privs and its seccomp.
    // With --sandbox=namespace it forks: the parent only waits; the child serves.
    let fs: Vec<i32> = vm_processes(&c.dir.to_string_lossy())
        .into_iter()
        .filter(|p| p.cmdline.contains("virtiofsd"))
        .map(|p| p.pid)
        .collect();
    let server = fs
        .iter()
        .copied()
        .find(|p| {
            read(format!("/proc/{p}/status"))
                .is_ok_and(|s| ids(&s, "PPid").is_ok_and(|pp| fs.contains(&(pp[0] as i32))))
        })
        .ok_or_else(|| format!("no serving virtiofsd child among {fs:?}"))?;
    check_common("virtiofsd", server, &read(format!("/proc/{server}/status"))?)?;
    let limits = read(format!("/proc/{server}/limits"))?;
    assert_eq!(limit_of(&limits, "Max core file size")?, ("0".into(), "0".into()), "virtiofsd {server} may dump core");
    let files = limit_of(&limits, "Max open files")?;
    assert!(files.0 == files.1 && files.0 != "unlimited", "virtiofsd {server} open files {files:?}");
    let init_userns = std::fs::read_link("/proc/self/ns/user").map_err(|e| format!("{e}"))?;
    let mut fs_root = None;
    for &pid in &fs {
        let status = read(format!("/proc/{pid}/status"))?;
        assert_eq!(status_field(&status, "NoNewPrivs")?, "1", "virtiofsd {pid}");
        check_output_piped("virtiofsd", pid)?;
        let oom: i32 = read(format!("/proc/{pid}/oom_score_adj"))?.trim().parse().map_err(|e| format!("{e}"))?;
        assert!(oom >= 0, "virtiofsd {pid} oom_score_adj {oom}");
        let (u, g) = (ids(&status, "Uid")?, ids(&status, "Gid")?);
        assert!(u.iter().chain(&g).all(|&x| x == u[0]) && u[0] != 0, "virtiofsd {pid} runs as {u:?} {g:?}");
        assert!(!uids.contains(&u[0]), "virtiofsd {pid} shares the sandbox uid {u:?}");
        let groups = status_field(&status, "Groups")?;
        assert!(groups.is_empty(), "virtiofsd {pid} has groups {groups}");
        // Its capabilities are those of its own user namespace, none in the host's.
        let userns = std::fs::read_link(format!("/proc/{pid}/ns/user")).map_err(|e| format!("{e}"))?;
        assert_ne!(userns, init_userns, "virtiofsd {pid} is in the host's user namespace");
        let map = read(format!("/proc/{pid}/uid_map"))?;
        let map: Vec<&str> = map.split_whitespace().collect();
        assert_eq!(map, ["0", &u[0].to_string(), "65536"], "virtiofsd {pid} uid_map");
        let gmap = read(format!("/proc/{pid}/gid_map"))?;
        assert_eq!(gmap.split_whitespace().collect::<Vec<_>>(), map, "virtiofsd {pid} gid_map");
        fs_root = Some(u[0]);
    }
    // Its mount view: virtiofsd pivots into the share (the waiting parent shares the mount
    // namespace, so it is moved too): all either sees of the host is what the guest may see.
    let mut export = entries(&sdir.join("export"));
    export.sort();
    assert!(!export.is_empty(), "the share holds the container's tree");
    for &pid in &fs {
        assert_eq!(seen_by(pid, Path::new("/")), export, "virtiofsd {pid}'s root is not the share");
    }
    let fs_dir = std::fs::metadata(sdir.join("fs")).map_err(|e| format!("{e}"))?;
    assert_eq!((Some(fs_dir.uid()), fs_dir.mode() & 0o777), (fs_root, 0o700), "fs/ belongs to virtiofsd's uid");

    // The state dir stays root's; the helpers' directory is the sandbox uid's.
    let md = std::fs::metadata(&sdir).map_err(|e| format!("{e}"))?;
    assert_eq!((md.uid(), md.mode() & 0o777), (0, 0o700), "state dir owner and mode");
    let vm = std::fs::metadata(sdir.join("vm")).map_err(|e| format!("{e}"))?;
    assert_eq!(vm.uid(), uids[1], "vm/ belongs to vhost-device-vsock's uid");

    let st = wait_bounded(&mut run, CTR_LIMIT)?;
    assert!(st.success(), "the container must exit normally: {st:?}\n{}", c.diagnostics());
    let last: Vec<String> = lines.try_iter().collect();
    assert_eq!(last, ["jailed-bye"], "the rest of its output");
    std::fs::remove_dir_all(rd.join("other-ns")).map_err(|e| format!("{e}"))?;
    c.assert_clean()
}

#[test]
fn a_forbidden_tcg_fallback_fails_the_boot_with_a_clear_error() -> Result<(), String> {
    let c = Containerd::start(|s| {
        s.acceleration = "auto".into();
        s.extra = "allow_tcg_fallback = false\n".into();
    })?;
    let out = c.run_rm("notcg", &["echo", "booted"])?;
    let log = std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default();
    if out.status.success() {
        // KVM works on this host: no fallback happened.
        assert!(log.contains("acceleration: kvm"), "booted without KVM although TCG was forbidden:\n{log}");
        return c.assert_clean();
    }
    assert!(
        out.stderr.contains("allow_tcg_fallback") && out.stderr.contains("TCG"),
        "the error must name the setting and the risk: {out:?}"
    );
    assert!(log.contains("not a security boundary"), "no loud warning about the TCG fallback in the log");
    c.assert_clean()
}

/// A runtime directory below a directory others may not search (0700, as `mktemp -d` makes)
/// is refused before any helper starts, with the directory and the fix named (it used to end
/// in vhost-device-vsock's "Failed to bind a unix stream", deep in a log).
#[test]
fn a_runtime_dir_below_a_private_directory_is_refused_naming_the_fix() -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut private = std::path::PathBuf::new();
    let c = Containerd::start(|s| {
        private = s.runtime_dir.with_file_name("private");
        s.runtime_dir = private.join("r");
    })?;
    std::fs::create_dir_all(&c.shim.runtime_dir).map_err(|e| format!("{e}"))?;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).map_err(|e| format!("{e}"))?;
    let out = c.run_rm("privparent", &["echo", "booted"])?;
    assert!(!out.status.success(), "booted although the helpers cannot reach their directory: {out:?}");
    assert!(
        out.stderr.contains(&format!("{} (mode 0700)", private.display())) && out.stderr.contains("chmod o+x"),
        "the error must name the directory and the fix: {out:?}"
    );
    let log = std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default();
    assert!(!log.contains("started vhost-device-vsock"), "a helper was started anyway:\n{log}");
    let _ = c.ctr(&["container", "rm", "privparent"]);
    c.assert_clean()
}
