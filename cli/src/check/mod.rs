//! `bulwark check`: whether this node can run Bulwark pods. Every check runs (a failure does not
//! hide the others), says what it found, and when something is wrong how to fix it; the exit
//! status is non-zero when any check failed (a warning, such as the TCG fallback on a node
//! without usable KVM, leaves the node able to run pods).
//!
//! The checks, in order: the configuration (`node.rs`), root, the binaries and the guest image
//! with its protocol version and the runtime directory (`files.rs`), KVM, seccomp and cgroup v2
//! (`host.rs`), containerd and its configuration (`containerd.rs`), and a real boot of a VM
//! through the shim's own boot probe (`boot.rs`; `--quick` skips it). Each result is an
//! `Outcome` (`outcome.rs`); programs are run bounded (`command.rs`).

mod boot;
mod command;
mod containerd;
mod files;
mod host;
mod outcome;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::node::Node;
use crate::text::clean;
use crate::NodeArgs;
pub use outcome::{Outcome, Status};

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Skip the test boot of a VM (KVM is then only opened, not proven).
    #[arg(long)]
    pub quick: bool,
    /// containerd's configuration.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    pub containerd_config: PathBuf,
    /// The containerd binary that reads it.
    #[arg(long, default_value = "containerd")]
    pub containerd: PathBuf,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Show the shim's log lines during the test boot.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    /// No check failed: the node can run Bulwark pods.
    ready: bool,
    checks: Vec<Outcome>,
}

fn render(r: &Report) -> String {
    let mut out = String::new();
    for o in &r.checks {
        let tag = match o.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skipped => "skip",
        };
        out.push_str(&format!("{tag}  {:<18} {}\n", o.check, clean(&o.detail, 2000)));
        if let Some(fix) = &o.fix {
            out.push_str(&format!("      {:<18} fix: {}\n", "", clean(fix, 2000)));
        }
    }
    let count = |s| r.checks.iter().filter(|o| o.status == s).count();
    let (fails, warns) = (count(Status::Fail), count(Status::Warn));
    if r.ready {
        out.push_str(&format!("ready: this node can run Bulwark pods ({warns} warning(s))\n"));
    } else {
        out.push_str(&format!(
            "NOT READY: this node cannot run Bulwark pods: {fails} check(s) failed, {warns} warning(s)\n"
        ));
    }
    out
}

pub fn run(args: &CheckArgs) -> Result<ExitCode> {
    if args.verbose {
        let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(tracing::Level::INFO).try_init();
    }
    let mut checks = Vec::new();
    let node = match Node::load(&args.node) {
        Ok(n) => {
            checks.push(if n.config_found {
                Outcome::ok("config", format!("{} parses", n.config_path.display()))
            } else {
                Outcome::warn(
                    "config",
                    format!("{} does not exist: the shim runs with its defaults", n.config_path.display()),
                    "scripts/install-node writes it with the installed paths",
                )
            });
            Some(n)
        }
        Err(e) => {
            checks.push(Outcome::fail(
                "config",
                e.to_string(),
                "correct the key named (every key: shim/src/config.rs), or reinstall with scripts/install-node",
            ));
            None
        }
    };
    checks.push(host::root());
    let cfg = node.as_ref().map(|n| n.cfg.clone()).unwrap_or_default();
    let before_files = checks.len();
    if node.is_some() {
        checks.extend(files::checks(&cfg));
    }
    let files_ok = checks[before_files..].iter().all(|o| o.status != Status::Fail);
    let kvm = host::kvm_create();
    checks.push(host::seccomp());
    checks.push(host::cgroup(&cfg));
    checks.extend(containerd::checks(&args.containerd, &args.containerd_config, node.as_ref()));
    let can_boot = match &node {
        None => Err("the configuration does not load".to_string()),
        Some(_) if !files_ok => Err("a binary or the guest image is missing (above)".to_string()),
        Some(_) if !host::is_root() => Err("not root".to_string()),
        Some(_) if args.quick => Err("--quick".to_string()),
        Some(_) => Ok(()),
    };
    checks.extend(boot::kvm_and_boot(&cfg, kvm, can_boot));

    let report = Report { ready: checks.iter().all(|o| o.status != Status::Fail), checks };
    let text = if args.json {
        serde_json::to_string_pretty(&report).map_err(|e| Error::Output(e.to_string()))? + "\n"
    } else {
        render(&report)
    };
    std::io::stdout().write_all(text.as_bytes()).map_err(|e| Error::Output(e.to_string()))?;
    Ok(if report.ready { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_each_check_its_fix_and_the_verdict() {
        let r = Report {
            ready: false,
            checks: vec![
                Outcome::ok("qemu", "/usr/bin/qemu-system-x86_64"),
                Outcome::fail("kvm", "unusable\u{1b}[31m", "load kvm"),
            ],
        };
        let t = render(&r);
        assert!(t.contains("ok    qemu "), "{t}");
        assert!(t.contains("FAIL  kvm                unusable\\u{1b}[31m\n"), "{t}");
        assert!(t.contains("fix: load kvm"), "{t}");
        assert!(t.ends_with("NOT READY: this node cannot run Bulwark pods: 1 check(s) failed, 0 warning(s)\n"), "{t}");
    }
}
