//! The node as the shim sees it: the configuration file (`--config`, `$BULWARK_CONFIG` or
//! `/etc/bulwark/config.toml`, parsed by the shim's own code) and the runtime directory
//! (`--runtime-dir` overrides `paths.runtime_dir`).

use std::path::{Path, PathBuf};

use bulwark_shim::config::{Config, CONFIG_ENV, DEFAULT_CONFIG_PATH};

use crate::error::{Error, Result};
use crate::NodeArgs;

/// The loaded configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Node {
    pub cfg: Config,
    pub config_path: PathBuf,
    /// False when the default file is absent and the shim would run with its defaults.
    pub config_found: bool,
}

/// Longest configuration file read (the shim's is a few KiB).
const MAX_CONFIG: u64 = 1024 * 1024;

impl Node {
    /// Loads the configuration like the shim does; `--runtime-dir` replaces its runtime dir.
    pub fn load(args: &NodeArgs) -> Result<Node> {
        let (path, explicit) = match &args.config {
            Some(p) => (p.clone(), true),
            None => match std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
                Some(p) => (PathBuf::from(p), true),
                None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
            },
        };
        let mut node = match read_bounded(&path) {
            Ok(text) => {
                let cfg = Config::parse(&text, &path).map_err(|e| Error::Config(e.to_string()))?;
                Node { cfg, config_path: path, config_found: true }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Node { cfg: Config::default(), config_path: path, config_found: false }
            }
            Err(e) => return Err(Error::Config(format!("cannot read the configuration {}: {e}", path.display()))),
        };
        if let Some(rd) = &args.runtime_dir {
            node.cfg.paths.runtime_dir = rd.clone();
        }
        Ok(node)
    }

    pub fn runtime_dir(&self) -> &Path {
        &self.cfg.paths.runtime_dir
    }
}

/// Reads a text file of at most [`MAX_CONFIG`] bytes.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?.take(MAX_CONFIG + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG {
        return Err(std::io::Error::other(format!("larger than {MAX_CONFIG} bytes")));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_missing_file_is_an_error_and_runtime_dir_overrides() {
        let args = NodeArgs { config: Some("/nonexistent/bulwark.toml".into()), runtime_dir: None };
        assert!(Node::load(&args).unwrap_err().to_string().contains("/nonexistent/bulwark.toml"));
        let dir = std::env::temp_dir().join(format!("bulwark-cli-node-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("config.toml");
        std::fs::write(&f, "[paths]\nruntime_dir = \"/run/x\"\n").unwrap();
        let node = Node::load(&NodeArgs { config: Some(f.clone()), runtime_dir: None }).unwrap();
        assert_eq!(node.runtime_dir(), Path::new("/run/x"));
        let node = Node::load(&NodeArgs { config: Some(f.clone()), runtime_dir: Some("/run/y".into()) }).unwrap();
        assert_eq!(node.runtime_dir(), Path::new("/run/y"));
        std::fs::write(&f, "[vm]\nvcpuz = 1\n").unwrap();
        let e = Node::load(&NodeArgs { config: Some(f), runtime_dir: None }).unwrap_err().to_string();
        assert!(e.contains("vcpuz"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
