//! The sandbox container's `linux.cgroupsPath`, in containerd's two formats, turned into a
//! path relative to the cgroup v2 mount.
//!
//! - cgroupfs: an absolute path, `/kubepods/burstable/pod<uid>/<sandbox-id>`.
//! - systemd: `slice:prefix:name`, e.g. `kubepods-burstable-pod<uid>.slice:cri-containerd:<id>`;
//!   the slice expands into its parents as systemd does (`a-b-c.slice` lives in
//!   `a.slice/a-b.slice/a-b-c.slice`) and the unit is the scope `<prefix>-<name>.scope`.
//!
//! The value comes from the pod spec through containerd: it is never trusted. Only
//! `[A-Za-z0-9_.-]` in components, no `.`/`..`, no empty component, bounded length and depth.

use std::fmt;
use std::path::PathBuf;

/// Longest cgroupsPath accepted (bytes).
pub const MAX_PATH_LEN: usize = 1024;
/// Longest single component (a file name).
pub const MAX_COMPONENT_LEN: usize = 255;
/// Deepest cgroupfs path accepted (components).
pub const MAX_DEPTH: usize = 16;

/// How the cgroupsPath was written (which cgroup driver containerd uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Cgroupfs,
    Systemd,
}

/// A transient systemd scope: the unit and the slice it goes into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdUnit {
    /// e.g. `kubepods-burstable-pod1234.slice`.
    pub slice: String,
    /// e.g. `cri-containerd-<id>.scope`.
    pub unit: String,
}

/// A parsed, validated cgroupsPath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPath {
    pub driver: Driver,
    /// Relative to the cgroup v2 mount, e.g. `kubepods/burstable/pod1/abc` or
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope`.
    pub rel: PathBuf,
    /// For the systemd format: the scope to ask systemd for.
    pub systemd: Option<SystemdUnit>,
}

/// A refused cgroupsPath, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.path.chars().take(120).flat_map(char::escape_default).collect();
        write!(
            f,
            "linux.cgroupsPath \"{shown}\" refused: {}. Expected \"/kubepods/<qos>/pod<uid>/<id>\" (cgroupfs) or \
             \"<name>.slice:<prefix>:<id>\" (systemd), as containerd generates them",
            self.reason
        )
    }
}

impl std::error::Error for PathError {}

fn component_ok(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("empty path component".into());
    }
    if c == "." || c == ".." {
        return Err(format!("component {c:?} is not allowed"));
    }
    if c.len() > MAX_COMPONENT_LEN {
        return Err(format!("a component is longer than {MAX_COMPONENT_LEN} bytes"));
    }
    if let Some(bad) = c.chars().find(|ch| !(ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'))) {
        return Err(format!("character {:?} is not allowed (only A-Z a-z 0-9 _ . -)", bad));
    }
    // A directory named like a control file would be confusing at best.
    if c.starts_with("cgroup.") {
        return Err(format!("component {c:?} looks like a cgroup control file"));
    }
    Ok(())
}

/// systemd's slice expansion: `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is
/// the root (empty path).
pub fn expand_slice(slice: &str) -> Result<PathBuf, String> {
    let name = slice.strip_suffix(".slice").ok_or_else(|| format!("slice {slice:?} does not end in \".slice\""))?;
    if name == "-" {
        return Ok(PathBuf::new());
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if part.is_empty() {
            return Err(format!("slice {slice:?} has an empty '-' separated part"));
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        let c = format!("{prefix}.slice");
        component_ok(&c)?;
        path.push(c);
    }
    Ok(path)
}

/// Parses and validates a cgroupsPath (see the module documentation).
pub fn parse(s: &str) -> Result<CgroupPath, PathError> {
    let err = |reason: String| PathError { path: s.to_string(), reason };
    if s.is_empty() {
        return Err(err("it is empty".into()));
    }
    if s.len() > MAX_PATH_LEN {
        return Err(err(format!("it is longer than {MAX_PATH_LEN} bytes")));
    }
    if s.contains(':') {
        let parts: Vec<&str> = s.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(err("the systemd format is exactly slice:prefix:name".into()));
        };
        let slice = if slice.is_empty() { "system.slice" } else { slice };
        if slice.contains('/') {
            return Err(err("a systemd slice contains no '/'".into()));
        }
        let mut rel = expand_slice(slice).map_err(err)?;
        if prefix.is_empty() || name.is_empty() {
            return Err(err("the systemd prefix and name must not be empty".into()));
        }
        if name.ends_with(".slice") {
            return Err(err("the name must be a scope, not a slice".into()));
        }
        let unit = format!("{prefix}-{name}.scope");
        component_ok(prefix).map_err(err)?;
        component_ok(name).map_err(err)?;
        component_ok(&unit).map_err(err)?;
        rel.push(&unit);
        return Ok(CgroupPath {
            driver: Driver::Systemd,
            rel,
            systemd: Some(SystemdUnit { slice: slice.to_string(), unit }),
        });
    }
    let Some(rest) = s.strip_prefix('/') else {
        return Err(err("a cgroupfs path must be absolute (start with '/')".into()));
    };
    let mut rel = PathBuf::new();
    let mut depth = 0;
    for c in rest.split('/') {
        component_ok(c).map_err(err)?;
        depth += 1;
        if depth > MAX_DEPTH {
            return Err(err(format!("it is deeper than {MAX_DEPTH} components")));
        }
        rel.push(c);
    }
    Ok(CgroupPath { driver: Driver::Cgroupfs, rel, systemd: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths() {
        let p = parse("/kubepods/burstable/pod1b2c-33/abcdef0123").unwrap();
        assert_eq!(p.driver, Driver::Cgroupfs);
        assert_eq!(p.rel, PathBuf::from("kubepods/burstable/pod1b2c-33/abcdef0123"));
        assert_eq!(p.systemd, None);
        assert_eq!(parse("/default/x").unwrap().rel, PathBuf::from("default/x"));
    }

    #[test]
    fn systemd_paths_expand_slices() {
        let p = parse("kubepods-burstable-pod1b2c_33.slice:cri-containerd:abcdef").unwrap();
        assert_eq!(p.driver, Driver::Systemd);
        assert_eq!(
            p.rel,
            PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c_33.slice/cri-containerd-abcdef.scope"
            )
        );
        let u = p.systemd.unwrap();
        assert_eq!(u.slice, "kubepods-burstable-pod1b2c_33.slice");
        assert_eq!(u.unit, "cri-containerd-abcdef.scope");
        assert_eq!(parse("-.slice:p:n").unwrap().rel, PathBuf::from("p-n.scope"));
        assert_eq!(parse(":p:n").unwrap().rel, PathBuf::from("system.slice/p-n.scope"));
        assert_eq!(expand_slice("kubepods.slice").unwrap(), PathBuf::from("kubepods.slice"));
    }

    #[test]
    fn hostile_paths_are_refused() {
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        let deep = "/a".repeat(MAX_DEPTH + 1);
        let long_component = format!("/{}", "a".repeat(MAX_COMPONENT_LEN + 1));
        for (bad, why) in [
            ("", "empty"),
            ("/", "empty path component"),
            ("/kubepods/../../etc", "\"..\""),
            ("/kubepods/./x", "\".\""),
            ("/kubepods//x", "empty path component"),
            ("/kubepods/x/", "empty path component"),
            ("kubepods/x", "absolute"),
            ("/kube pods/x", "' '"),
            ("/kubepods/x\n", "'\\n'"),
            ("/kubepods/\u{e9}", "not allowed"),
            ("/kubepods/cgroup.procs", "control file"),
            (long.as_str(), "longer than"),
            (deep.as_str(), "deeper than"),
            (long_component.as_str(), "component is longer"),
            ("a.slice:b", "exactly slice:prefix:name"),
            ("a.slice:b:c:d", "exactly slice:prefix:name"),
            ("kubepods:cri:x", "does not end in"),
            ("a--b.slice:cri:x", "empty '-' separated"),
            ("../a.slice:cri:x", "no '/'"),
            ("a.slice:cri:..", "\"..\""),
            ("a.slice:cri/x:y", "'/'"),
            ("a.slice::x", "must not be empty"),
            ("a.slice:cri:x.slice", "scope"),
            ("a$b.slice:cri:x", "'$'"),
        ] {
            let e = parse(bad).expect_err(bad);
            let msg = e.to_string();
            assert!(msg.contains(why), "{bad:?}: {msg}");
            assert!(msg.contains("refused"), "{msg}");
        }
    }
}
