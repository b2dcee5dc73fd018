//! Checks of containerd: its version, and whether the configuration it reads registers the
//! runtime handler `bulwark` (`containerd config dump`: the file with its imports merged, as
//! containerd itself merges them; CRI plugin `io.containerd.grpc.v1.cri` for 1.x,
//! `io.containerd.cri.v1.runtime` for 2.x), with the right runtime type, a shim binary it can
//! run (containerd 1.6 ignores `runtime_path` when it starts a shim and takes
//! `containerd-shim-bulwark-v2` from its PATH; 2.x follows `runtime_path`), and the tenant
//! annotation passed on.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bulwark_shim::config::DEFAULT_CONFIG_PATH;

use super::command;
use super::outcome::Outcome;
use crate::node::Node;

const SHIM: &str = "containerd-shim-bulwark-v2";
const INSTALL: &str = "scripts/install-node adds it (runtimeclass/README.md shows the snippet for each containerd)";
const PLUGINS: [&str; 2] = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"];

/// The CRI plugin named in the dump's top-level `disabled_plugins`, if it is (pure).
pub fn cri_disabled(dump: &str) -> Option<String> {
    let doc: toml::Table = toml::from_str(dump).ok()?;
    doc.get("disabled_plugins")?
        .as_array()?
        .iter()
        .filter_map(|p| p.as_str())
        .find(|p| PLUGINS.contains(p) || *p == "cri")
        .map(str::to_string)
}

/// The `bulwark` runtime's table in a `containerd config dump` (pure).
pub fn bulwark_runtime(dump: &str) -> Result<Option<toml::Table>, String> {
    let doc: toml::Table = toml::from_str(dump).map_err(|e| format!("cannot parse containerd's config dump: {e}"))?;
    for plugin in PLUGINS {
        let runtime = doc
            .get("plugins")
            .and_then(|p| p.get(plugin))
            .and_then(|p| p.get("containerd"))
            .and_then(|c| c.get("runtimes"))
            .and_then(|r| r.get("bulwark"))
            .and_then(|b| b.as_table());
        if let Some(t) = runtime {
            return Ok(Some(t.clone()));
        }
    }
    Ok(None)
}

fn executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where containerd would find the shim without runtime_path: on its PATH (ours, and the
/// usual directories of a service's PATH).
fn shim_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(SHIM))
        .find(|p| executable(p))
}

/// What the runtime table says, checked for containerd `major`.x (pure but for the file
/// lookups).
fn runtime_outcomes(t: &toml::Table, config: &Path, node: Option<&Node>, major: u32) -> Vec<Outcome> {
    let mut v = Vec::new();
    let ty = t.get("runtime_type").and_then(|x| x.as_str()).unwrap_or("");
    if ty != bulwark_shim::RUNTIME_ID {
        v.push(Outcome::fail(
            "containerd config",
            format!(
                "runtime bulwark in {} has runtime_type {ty:?}, not {:?}",
                config.display(),
                bulwark_shim::RUNTIME_ID
            ),
            INSTALL,
        ));
        return v;
    }
    let path = t.get("runtime_path").and_then(|x| x.as_str()).unwrap_or("");
    let shim = if path.is_empty() || major < 2 {
        match shim_on_path() {
            Some(p) => Ok(format!("the shim from PATH ({})", p.display())),
            None if path.is_empty() => {
                Err(format!("runtime bulwark names no runtime_path and {SHIM} is on no usual PATH directory"))
            }
            None => Err(format!(
                "containerd {major}.x ignores runtime_path ({path}) when it starts a shim and looks for {SHIM} on \
                 its PATH, where there is none"
            )),
        }
    } else if executable(Path::new(path)) {
        Ok(format!("runtime_path {path}"))
    } else {
        Err(format!("runtime bulwark's runtime_path {path} is not an executable file"))
    };
    let annotations: Vec<&str> = t
        .get("pod_annotations")
        .and_then(|a| a.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let shim_config = match node {
        Some(n) if n.config_path != Path::new(DEFAULT_CONFIG_PATH) => {
            format!("; containerd must run with BULWARK_CONFIG={} for the shim to read it", n.config_path.display())
        }
        _ => String::new(),
    };
    match shim {
        Ok(how) => v.push(Outcome::ok(
            "containerd config",
            format!("runtime handler bulwark ({ty}) in {}, {how}{shim_config}", config.display()),
        )),
        Err(why) => v.push(Outcome::fail("containerd config", why, INSTALL)),
    }
    if !annotations.contains(&"bulwark.io/tenant") {
        v.push(Outcome::warn(
            "tenant annotation",
            "runtime bulwark does not pass the pod annotation bulwark.io/tenant: pods get their namespace's tenant policy",
            "add pod_annotations = [\"bulwark.io/tenant\"] to the runtime (scripts/install-node does)",
        ));
    }
    v
}

pub fn checks(containerd: &Path, config: &Path, node: Option<&Node>) -> Vec<Outcome> {
    let fix_missing = "apt-get install containerd (or name the binary with --containerd)";
    let version = match command::run(Command::new(containerd).arg("--version"), Duration::from_secs(10)) {
        Ok(o) if o.success => o.stdout.split_whitespace().nth(2).unwrap_or("?").trim_start_matches('v').to_string(),
        Ok(o) => {
            return vec![Outcome::fail(
                "containerd",
                format!("{} --version failed: {}", containerd.display(), o.stderr.trim()),
                fix_missing,
            )]
        }
        Err(e) => return vec![Outcome::fail("containerd", e, fix_missing)],
    };
    let mut v = vec![Outcome::ok("containerd", format!("{} version {version}", containerd.display()))];
    if !config.exists() {
        v.push(Outcome::fail(
            "containerd config",
            format!(
                "{} does not exist: containerd runs with its defaults, without the bulwark runtime",
                config.display()
            ),
            INSTALL,
        ));
        return v;
    }
    let dump = command::run(
        Command::new(containerd).arg("--config").arg(config).args(["config", "dump"]),
        Duration::from_secs(30),
    );
    let dump = match dump {
        Ok(o) if o.success => o.stdout,
        Ok(o) => {
            v.push(Outcome::fail(
                "containerd config",
                format!("containerd cannot read {}: {}", config.display(), o.stderr.trim()),
                "correct the file (containerd config dump names the problem)",
            ));
            return v;
        }
        Err(e) => {
            v.push(Outcome::fail("containerd config", e, "check that containerd runs"));
            return v;
        }
    };
    if let Some(plugin) = cri_disabled(&dump) {
        v.push(Outcome::fail(
            "containerd config",
            format!(
                "{} disables the CRI plugin ({plugin} in disabled_plugins): kubelet cannot run pods on this \
                 containerd (ctr --runtime {} still can)",
                config.display(),
                bulwark_shim::RUNTIME_ID
            ),
            format!("remove {plugin} from disabled_plugins in {}", config.display()),
        ));
        return v;
    }
    match bulwark_runtime(&dump) {
        Ok(Some(t)) => {
            let major = version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(1);
            v.extend(runtime_outcomes(&t, config, node, major))
        }
        Ok(None) => v.push(Outcome::fail(
            "containerd config",
            format!("{} (with its imports) registers no runtime handler bulwark", config.display()),
            INSTALL,
        )),
        Err(e) => v.push(Outcome::fail("containerd config", e, "run containerd config dump to see what it reads")),
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::outcome::Status;

    #[test]
    fn the_runtime_is_found_in_either_format_and_checked() {
        let v2 = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\n\
                  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.bulwark]\nruntime_type = \"io.containerd.bulwark.v2\"\n\
                  runtime_path = \"/bin/true\"\npod_annotations = [\"bulwark.io/tenant\"]\n";
        let t = bulwark_runtime(v2).unwrap().unwrap();
        let o = runtime_outcomes(&t, Path::new("/etc/containerd/config.toml"), None, 2);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].status, Status::Ok, "{o:?}");
        if shim_on_path().is_none() {
            let o = runtime_outcomes(&t, Path::new("/etc/containerd/config.toml"), None, 1);
            assert_eq!(o[0].status, Status::Fail, "1.x needs the shim on PATH: {o:?}");
            assert!(o[0].detail.contains("ignores runtime_path"), "{o:?}");
        }
        let v3 = "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.bulwark]\nruntime_type = 'io.containerd.bulwark.v2'\n\
                  runtime_path = '/nonexistent/shim'\n";
        let t = bulwark_runtime(v3).unwrap().unwrap();
        let o = runtime_outcomes(&t, Path::new("/c.toml"), None, 2);
        assert_eq!(o[0].status, Status::Fail, "{o:?}");
        assert!(o[0].detail.contains("/nonexistent/shim"));
        assert_eq!(o[1].status, Status::Warn, "no tenant annotation: {o:?}");
        let other = "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.bulwark]\nruntime_type = 'io.containerd.runc.v2'\n";
        let o = runtime_outcomes(&bulwark_runtime(other).unwrap().unwrap(), Path::new("/c.toml"), None, 2);
        assert_eq!(o[0].status, Status::Fail);
        assert_eq!(bulwark_runtime("[plugins]\n").unwrap(), None);
        assert_eq!(
            cri_disabled("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n").as_deref(),
            Some("io.containerd.grpc.v1.cri")
        );
        assert_eq!(cri_disabled("disabled_plugins = []\n"), None);
        assert!(bulwark_runtime("not toml [").is_err());
    }
}
