//! `bulwark`: the operator's tool on a Bulwark node. Reads what the shim reads and writes (the
//! node configuration, the sandboxes' state directories) through the shim crate itself:
//!
//! - `check`: can this node run Bulwark pods? (KVM with a real boot, helpers, guest image and
//!   its protocol, cgroup v2, seccomp, containerd and its configuration)
//! - `ps`: the running sandboxes; `inspect`: one sandbox's processes, cgroup, sockets, logs,
//!   share and network; `events`: its guest syscall events;
//! - `config`: the node configuration as the shim parses it.
//!
//! Modules: `node.rs` (configuration and runtime directory), `sandboxes.rs` (finding sandboxes
//! and what they record), `procfs.rs` (what /proc says about their processes), `text.rs`
//! (terminal-safe text, times, tables), one module per command, `error.rs`.

mod check;
mod config_cmd;
mod error;
mod events;
mod inspect;
mod node;
mod procfs;
mod ps;
mod sandboxes;
mod text;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Bulwark node tool: check readiness, list and inspect sandboxes, show their events.
#[derive(Parser, Debug)]
#[command(name = "bulwark", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the node's Bulwark lives (a private install: its config and runtime directory).
#[derive(Args, Debug, Clone, Default)]
pub struct NodeArgs {
    /// The node configuration (default: $BULWARK_CONFIG, else /etc/bulwark/config.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// The shim's state directory (default: paths.runtime_dir of the configuration).
    #[arg(long, global = true)]
    pub runtime_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Checks that this node can run Bulwark pods; exits non-zero if it cannot.
    Check(check::CheckArgs),
    /// Lists the sandboxes (one VM per pod) on this node.
    Ps {
        #[command(flatten)]
        node: NodeArgs,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shows one sandbox: its processes (pids, uids), cgroup, sockets, logs, share, network.
    Inspect {
        /// The sandbox id (or its state directory's name, h-<hash> for long ids).
        sandbox: String,
        #[command(flatten)]
        node: NodeArgs,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prints a sandbox's guest syscall events, one line each (time, pod, container, process,
    /// syscall, path or address, result).
    Events {
        /// The sandbox id (or its state directory's name).
        sandbox: String,
        #[command(flatten)]
        node: NodeArgs,
        /// Keep printing new events as they arrive.
        #[arg(long, short)]
        follow: bool,
    },
    /// Prints the node configuration as the shim reads it (every default filled in), or why
    /// it is refused.
    Config {
        #[command(flatten)]
        node: NodeArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Ps { node, json } => ps::run(&node, json),
        Command::Inspect { sandbox, node, json } => inspect::run(&node, &sandbox, json),
        Command::Events { sandbox, node, follow } => events::run(&node, &sandbox, follow),
        Command::Config { node } => config_cmd::run(&node),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bulwark: {e}");
            ExitCode::from(2)
        }
    }
}
