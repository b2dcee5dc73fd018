//! `bulwark config`: parses the node configuration with the shim's own code and prints it with
//! every default filled in (the shim's structures, as Rust shows them), or why it is refused.
//! `scripts/install-node` runs it on the configuration it is about to install.

use std::process::ExitCode;

use crate::error::{Error, Result};
use crate::node::Node;
use crate::NodeArgs;

pub fn run(args: &NodeArgs) -> Result<ExitCode> {
    let node = Node::load(args)?;
    let origin = if node.config_found {
        format!("# {}", node.config_path.display())
    } else {
        format!("# {} does not exist: the shim runs with these defaults", node.config_path.display())
    };
    use std::io::Write;
    writeln!(std::io::stdout(), "{origin}\n{:#?}", node.cfg).map_err(|e| Error::Output(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}
