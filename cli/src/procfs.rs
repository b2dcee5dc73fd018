//! What /proc says about a sandbox's processes: whether a recorded pid still runs the recorded
//! program, its uid/gid, resident memory, cgroup and start time. Bounded reads only.

use std::io::Read;
use std::path::Path;

/// Longest /proc file read.
const MAX_PROC_FILE: u64 = 64 * 1024;

fn read(path: &str) -> Option<String> {
    let mut s = String::new();
    std::fs::File::open(path).ok()?.take(MAX_PROC_FILE).read_to_string(&mut s).ok()?;
    Some(s)
}

/// Whether `pid` runs `exe` (a binary replaced since shows as "<path> (deleted)").
pub fn runs(pid: i32, exe: &Path) -> bool {
    let Ok(p) = std::fs::read_link(format!("/proc/{pid}/exe")) else { return false };
    let want = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    p == want || p == exe || p.to_string_lossy() == format!("{} (deleted)", want.display())
}

/// A "Key:" line of /proc/<pid>/status, split into words.
fn status_field(pid: i32, key: &str) -> Option<Vec<String>> {
    read(&format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.split_whitespace().map(str::to_string).collect()))
}

/// The effective uid and gid of `pid`.
pub fn ids(pid: i32) -> Option<(u32, u32)> {
    let uid = status_field(pid, "Uid:")?.get(1)?.parse().ok()?;
    let gid = status_field(pid, "Gid:")?.get(1)?.parse().ok()?;
    Some((uid, gid))
}

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    status_field(pid, "VmRSS:")?.first()?.parse().ok()
}

/// The cgroup v2 path of `pid` (the `0::` line of /proc/<pid>/cgroup).
pub fn cgroup(pid: i32) -> Option<String> {
    read(&format!("/proc/{pid}/cgroup"))?.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// When `pid` started, seconds since the epoch.
pub fn start_unix(pid: i32) -> Option<u64> {
    let stat = read(&format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let btime: u64 = read("/proc/stat")?.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| btime + ticks / hz as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_described() {
        let me = std::process::id() as i32;
        let exe = std::env::current_exe().unwrap();
        assert!(runs(me, &exe));
        assert!(!runs(me, Path::new("/usr/bin/qemu-system-x86_64")));
        assert!(!runs(999_999_999, &exe));
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!(ids(me), Some((uid, gid)));
        assert!(rss_kib(me).unwrap() > 0);
        let started = start_unix(me).unwrap();
        let now = crate::text::now_unix();
        assert!(started <= now && now - started < 3600, "{started} vs {now}");
    }
}
