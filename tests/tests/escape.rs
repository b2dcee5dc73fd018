//! Escapes from inside a tenant container through the shared filesystem, end to end (a real
//! containerd, `ctr run`, a real VM): the container plants symlinks to `/`, `/etc`,
//! `/etc/shadow`, `../../..` and to a host canary file's absolute path, in its rootfs and in a
//! read-write volume, then reads and writes through them and through `..` paths, and makes a
//! device node with the numbers of a host disk (a loop device of random bytes). Everything must resolve inside the guest: the host canary
//! is never opened (inotify), no file appears on the host outside the volume, the host's disk
//! bytes are never read, the host mount table is unchanged; the guest sees its own kernel and
//! its own files where the links point.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bulwark_e2e::canary::{compare_mounts, stable_host_mounts, Canary};
use bulwark_e2e::containerd::Containerd;
use bulwark_e2e::process::run;
use bulwark_e2e::{RUNTIME, TEST_IMAGE};

/// A block device of the host with bytes only the host knows: a loop device over a file of
/// random bytes (the test host's own disks may not be readable even by root). If the guest
/// could reach the host's devices through a device node, it would read these bytes.
struct HostDisk {
    major: u64,
    minor: u64,
    bytes: Vec<u8>,
    node: String,
    file: PathBuf,
}

impl HostDisk {
    fn attach() -> Result<HostDisk, String> {
        let file = PathBuf::from(format!("/tmp/bwk-escape-disk-{}.img", std::process::id()));
        let mut bytes = vec![0u8; 4096];
        use std::io::Read;
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(|e| e.to_string())?;
        std::fs::write(&file, &bytes).map_err(|e| format!("writing {}: {e}", file.display()))?;
        let out = run(Command::new("losetup").args(["--find", "--show"]).arg(&file), Duration::from_secs(30))
            .map_err(|e| format!("{e} (losetup is in util-linux: apt-get install mount)"))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&file);
            return Err(format!("losetup --find --show {}: {}", file.display(), out.stderr));
        }
        let node = out.stdout.trim().to_string();
        let mut disk = HostDisk { major: 0, minor: 0, bytes: bytes[..32].to_vec(), node, file };
        let rdev = std::fs::metadata(&disk.node).map_err(|e| format!("{}: {e}", disk.node))?.rdev();
        (disk.major, disk.minor) = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
        Ok(disk)
    }
}

impl Drop for HostDisk {
    fn drop(&mut self) {
        let _ = run(Command::new("losetup").args(["-d", &self.node]), Duration::from_secs(30));
        let _ = std::fs::remove_file(&self.file);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The container's script. Each attempt prints one line `<name> OK|FAIL <output>` (output
/// flattened to one line), so every outcome is asserted exactly.
fn script(canary: &Path, tag: &str, disk: &HostDisk) -> String {
    let c = canary.display();
    let cd = canary.parent().map(|p| p.display().to_string()).unwrap_or_default();
    format!(
        r#"try() {{ n=$1; shift; if o=$("$@" 2>&1); then r=OK; else r=FAIL; fi; echo "$n $r $(echo "$o" | tr '\n' ' ')"; }}
C={c}
T={tag}
mkdir -p /esc
for d in esc vol; do
  try $d-ln-root ln -s / /$d/l-root
  try $d-ln-shadow ln -s /etc/shadow /$d/l-shadow
  try $d-ln-up ln -s ../../../../../../../.. /$d/l-up
  try $d-ln-canary ln -s $C /$d/l-canary
  try $d-ln-canarydir ln -s {cd} /$d/l-canarydir
  try $d-ln-etc ln -s /etc /$d/l-etc
  try $d-read-canary cat /$d/l-canary
  try $d-list-canarydir ls /$d/l-canarydir
  try $d-read-shadow cat /$d/l-shadow
  try $d-write-canary sh -c "echo pwned > /$d/l-canary"
  try $d-passwd-lines sh -c "cat /$d/l-up/etc/passwd | wc -l"
  try $d-osrelease cat /$d/l-root/proc/sys/kernel/osrelease
  try $d-realpath-up readlink -f /$d/l-up
  try $d-write-etc sh -c "echo pwned > /$d/l-etc/$T"
  try $d-write-up sh -c "echo pwned > /$d/l-up/$T"
  try $d-write-up-tmp sh -c "echo pwned > /$d/l-up/tmp/$T"
done
try dotdot-passwd-lines sh -c "cat /vol/../../../../../../etc/passwd | wc -l"
try dotdot-write sh -c "echo pwned > /vol/../../../../../../$T-dotdot"
try dotdot-realpath readlink -f /vol/../../../..
mkdir -p {cd}
try guest-write-canary-path sh -c "echo pwned > /vol/l-canary && cat $C"
try rovol-ln ln -s / /rovol/l-root
try rovol-write sh -c "echo pwned > /rovol/$T"
try disk-mknod mknod /esc/disk b {major} {minor}
try disk-read sh -c "dd if=/esc/disk of=/esc/disk-head bs=32 count=1 2>&1 >/dev/null | grep -v records; hexdump -v -e '1/1 \"%02x\"' /esc/disk-head"
echo ESCAPES-DONE
"#,
        major = disk.major,
        minor = disk.minor,
    )
}

/// The line of attempt `name`: ("OK" | "FAIL", output).
fn attempt<'a>(out: &'a str, name: &str) -> Result<(&'a str, &'a str), String> {
    out.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
            let (verdict, text) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((verdict, text.trim()))
        })
        .ok_or_else(|| format!("no result for {name:?} in the container's output:\n{out}"))
}

/// Attempt `name` ended with `verdict` and its output contains `text_has`.
fn expect(out: &str, name: &str, verdict: &str, text_has: &str) -> Result<(), String> {
    let (v, text) = attempt(out, name)?;
    if v != verdict || !text.contains(text_has) {
        return Err(format!("{name}: got {v} {text:?}, expected {verdict} with {text_has:?}"));
    }
    Ok(())
}

/// Attempt `name` succeeded and printed exactly `text`.
fn expect_ok(out: &str, name: &str, text: &str) -> Result<(), String> {
    match attempt(out, name)? {
        ("OK", t) if t == text => Ok(()),
        (v, t) => Err(format!("{name}: got {v} {t:?}, expected OK {text:?}")),
    }
}

#[test]
fn symlink_and_dotdot_escapes_through_the_share_stay_in_the_guest() -> Result<(), String> {
    let disk = HostDisk::attach()?;
    let canary = Canary::plant()?;
    let c = Containerd::start(|_| {})?;
    let tag = format!("bwk-escape-{}", std::process::id());
    let vol = c.dir.join("vol");
    let rovol = c.dir.join("rovol");
    for d in [&vol, &rovol] {
        std::fs::create_dir(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    std::fs::write(rovol.join("ro-file"), "ro\n").map_err(|e| e.to_string())?;
    let host_markers: Vec<PathBuf> = ["/etc", "/tmp", "/", "/run", "/var/tmp"]
        .iter()
        .flat_map(|d| [Path::new(d).join(&tag), Path::new(d).join(format!("{tag}-dotdot"))])
        .chain([c.dir.join(&tag), vol.parent().unwrap_or(&vol).join(format!("{tag}-dotdot"))])
        .collect();
    let mounts_before = stable_host_mounts();

    let (rw, ro) = (
        format!("type=bind,src={},dst=/vol,options=rbind:rw", vol.display()),
        format!("type=bind,src={},dst=/rovol,options=rbind:ro", rovol.display()),
    );
    let script = script(&canary.file, &tag, &disk);
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--mount",
        &rw,
        "--mount",
        &ro,
        TEST_IMAGE,
        "escape",
        "sh",
        "-c",
        &script,
    ])?;
    let ctx = format!("{out:?}\n{}", c.diagnostics());
    eprintln!("container output:\n{}", out.stdout);
    if !out.status.success() || !out.stdout.contains("ESCAPES-DONE") {
        return Err(format!("the escape script did not run to its end\n{ctx}"));
    }
    let o = out.stdout.as_str();
    let guest_release = c.artifacts.kernel_release.clone();
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let result = (|| -> Result<(), String> {
        for d in ["esc", "vol"] {
            for l in ["root", "shadow", "up", "canary", "canarydir", "etc"] {
                expect(o, &format!("{d}-ln-{l}"), "OK", "")?;
            }
            // The canary's host path does not exist in the guest: the links dangle there.
            expect(o, &format!("{d}-read-canary"), "FAIL", "No such file")?;
            expect(o, &format!("{d}-list-canarydir"), "FAIL", "No such file")?;
            expect(o, &format!("{d}-write-canary"), "FAIL", "nonexistent")?;
            // The busybox image has no /etc/shadow; the host has one.
            expect(o, &format!("{d}-read-shadow"), "FAIL", "No such file")?;
            // `/` and `../../..` are the container's root: its passwd has 2 lines, its
            // kernel is the guest's.
            expect_ok(o, &format!("{d}-passwd-lines"), "2")?;
            let (_, rel) = attempt(o, &format!("{d}-osrelease"))?;
            if rel != guest_release || rel == host_release {
                return Err(format!("{d}-osrelease: {rel:?}, expected the guest's {guest_release:?}"));
            }
            expect_ok(o, &format!("{d}-realpath-up"), "/")?;
            for w in ["write-etc", "write-up", "write-up-tmp"] {
                expect(o, &format!("{d}-{w}"), "OK", "")?;
            }
        }
        expect_ok(o, "dotdot-passwd-lines", "2")?;
        expect(o, "dotdot-write", "OK", "")?;
        expect_ok(o, "dotdot-realpath", "/")?;
        // With the canary's directory made in the guest, the link works: in the guest.
        expect_ok(o, "guest-write-canary-path", "pwned")?;
        expect(o, "rovol-ln", "FAIL", "Read-only")?;
        expect(o, "rovol-write", "FAIL", "Read-only")?;
        // The host disk's device numbers never reach the host's disk: mknod is refused (the
        // container's device cgroup) or the node opens the guest's device, whose bytes differ.
        let (mknod, _) = attempt(o, "disk-mknod")?;
        let (read, bytes) = attempt(o, "disk-read")?;
        if mknod == "OK" && read == "OK" && bytes == hex(&disk.bytes) {
            return Err(format!(
                "the container read the host's {} ({}:{}) through a device node: {bytes}",
                disk.node, disk.major, disk.minor
            ));
        }
        Ok(())
    })();
    result.map_err(|e| format!("{e}\n{ctx}"))?;

    // On the host: the links the guest made are inert symlinks in the volume directory
    // (proof that the test went through the real share), nothing was written outside it, the
    // canary was never opened, no mount came or went.
    for l in ["l-root", "l-up", "l-canary", "l-etc"] {
        let m = std::fs::symlink_metadata(vol.join(l)).map_err(|e| format!("{}: {e}", vol.join(l).display()))?;
        if !m.file_type().is_symlink() {
            return Err(format!("{} on the host is not the symlink the guest made", vol.join(l).display()));
        }
    }
    let target = std::fs::read_link(vol.join("l-canary")).map_err(|e| e.to_string())?;
    assert_eq!(target, canary.file, "the guest's link in the volume names the canary");
    for p in &host_markers {
        assert!(!p.exists(), "the guest wrote {} on the host\n{ctx}", p.display());
    }
    assert!(std::fs::read_dir(&rovol).map(|d| d.count()).unwrap_or(0) == 1, "the read-only volume changed");
    c.assert_clean()?;
    canary.check_untouched().map_err(|e| format!("{e}\n{ctx}"))?;
    compare_mounts(&mounts_before, &stable_host_mounts())
}
