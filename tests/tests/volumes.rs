//! Host bind mounts reach a container in the VM the way the kubelet uses them: a
//! configMap-style directory (read-only, updated on the host by kubelet's atomic `..data`
//! symlink swap) shows the update inside within 10 s; a read-only file (like /etc/hosts)
//! is readable and not writable; a read-write file takes the container's writes; nothing
//! stays mounted afterwards. Owners cross the id-mapped share (virtiofsd in its user namespace)
//! unchanged both ways.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use bulwark_e2e::containerd::Containerd;
use bulwark_e2e::kubelet::write_configmap;
use bulwark_e2e::process::wait_bounded;

fn wait_line(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, want: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    if seen.iter().any(|l| l == want) {
        return true;
    }
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = line == want;
                seen.push(line);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn configmap_updates_and_file_binds_reach_the_vm() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let cm = c.dir.join("vol-configmap");
    write_configmap(&cm, "one")?;
    let hosts = c.dir.join("hosts");
    std::fs::write(&hosts, "10.9.8.7 bulwark-hosts-entry\n").map_err(|e| e.to_string())?;
    let rw = c.dir.join("rw-file");
    std::fs::write(&rw, "").map_err(|e| e.to_string())?;

    let mounts = [
        format!("type=bind,src={},dst=/cfg,options=rbind:ro", cm.display()),
        format!("type=bind,src={},dst=/etc/hosts,options=rbind:ro", hosts.display()),
        format!("type=bind,src={},dst=/rw-file,options=rbind:rw", rw.display()),
    ];
    let mut flags = Vec::new();
    for m in &mounts {
        flags.extend(["--mount", m.as_str()]);
    }
    let script = "grep bulwark-hosts-entry /etc/hosts; \
                  if echo x > /etc/hosts 2>/dev/null; then echo HOSTS-WRITABLE; fi; \
                  if touch /cfg/new 2>/dev/null; then echo CFG-WRITABLE; fi; \
                  echo written-in-vm > /rw-file; \
                  i=0; while [ $i -lt 600 ]; do echo \"cfg=$(cat /cfg/key)\"; sleep 0.2; i=$((i+1)); done";
    let (mut run, rx) = c.spawn_run_lines("volumes", &flags, &["sh", "-c", script])?;
    let mut seen = Vec::new();
    let result = (|| {
        if !wait_line(&rx, &mut seen, "cfg=one", Duration::from_secs(180)) {
            return Err(format!("the configMap value never showed: {seen:?}\n{}", c.diagnostics()));
        }
        if !seen.iter().any(|l| l.contains("10.9.8.7 bulwark-hosts-entry")) {
            return Err(format!("/etc/hosts from the host not seen: {seen:?}"));
        }
        if seen.iter().any(|l| l.contains("WRITABLE")) {
            return Err(format!("a read-only bind mount was writable: {seen:?}"));
        }
        let host_view = std::fs::read_to_string(&rw).map_err(|e| e.to_string())?;
        if host_view.trim() != "written-in-vm" {
            return Err(format!("the container's write to the rw file did not reach the host: {host_view:?}"));
        }
        write_configmap(&cm, "two")?;
        if !wait_line(&rx, &mut seen, "cfg=two", Duration::from_secs(10)) {
            return Err(format!(
                "the configMap update was not seen within 10 s: {:?}",
                &seen[seen.len().saturating_sub(5)..]
            ));
        }
        Ok(())
    })();
    let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", "volumes"]);
    let _ = wait_bounded(&mut run, Duration::from_secs(60));
    result?;
    c.assert_clean()
}

/// virtiofsd runs as root of a user namespace over id-mapped mounts: owners still cross the
/// share unchanged both ways. A host file owned by 1234 is 1234 in the container; a file the
/// container gives to 1000:1000 is 1000:1000 on the host disk (not shifted into the
/// sandbox's block of ids); the image's files are root's; an owner outside the 65536 ids the
/// namespace maps is refused rather than written.
#[test]
fn owners_cross_the_id_mapped_share_unchanged() -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let c = Containerd::start(|_| {})?;
    let vol = c.dir.join("vol-owned");
    std::fs::create_dir(&vol).map_err(|e| e.to_string())?;
    std::fs::write(vol.join("owned"), "x").map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(vol.join("owned"), Some(1234), Some(1234)).map_err(|e| e.to_string())?;
    let mount = format!("type=bind,src={},dst=/data,options=rbind:rw", vol.display());
    let script = "echo owned=$(stat -c %u:%g /data/owned); echo image=$(stat -c %u /bin/sh); \
                  touch /made && echo rootfs=$(stat -c %u /made); \
                  touch /data/made && chown 1000:1000 /data/made && echo chowned; \
                  touch /data/far && if chown 70000 /data/far 2>/dev/null; then echo FAR-CHOWNED; else echo far-refused; fi; \
                  echo done";
    let (mut run, rx) = c.spawn_run_lines("owners", &["--mount", &mount], &["sh", "-c", script])?;
    let mut seen = Vec::new();
    let got = wait_line(&rx, &mut seen, "done", Duration::from_secs(180));
    let st = wait_bounded(&mut run, Duration::from_secs(60))?;
    if !got || !st.success() {
        return Err(format!("the container did not finish: {seen:?} {st:?}\n{}", c.diagnostics()));
    }
    for want in ["owned=1234:1234", "image=0", "rootfs=0", "chowned", "far-refused"] {
        assert!(seen.iter().any(|l| l == want), "{want:?} not in {seen:?}");
    }
    let made = std::fs::metadata(vol.join("made")).map_err(|e| e.to_string())?;
    assert_eq!((made.uid(), made.gid()), (1000, 1000), "the container's chown as the host disk has it");
    let far = std::fs::metadata(vol.join("far")).map_err(|e| e.to_string())?;
    assert_eq!(far.uid(), 0, "the refused chown left the owner");
    c.assert_clean()
}
