//! Kernel modules: finit_module(2) each `/lib/modules/<name>.ko` in the order listed in
//! `/lib/modules/load-order` (written by the image builder; one name per line).
use std::fs::File;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

pub const MODULE_DIR: &str = "/lib/modules";

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("loading module {name} from {path}: {source}")]
    Load { name: String, path: String, source: Errno },
}

/// Parses the load-order file: one module name per line; blank lines and `#` comments are
/// skipped; names with a path separator are rejected (skipped) so only MODULE_DIR is read.
pub fn parse_load_order(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.strip_suffix(".ko").unwrap_or(l))
        .filter(|l| !l.contains('/') && *l != "." && *l != "..")
        .collect()
}

/// Loads every listed module. Returns the names loaded (or already present) and the errors;
/// a failed module does not stop the others.
pub fn load_all(dir: &Path) -> (Vec<String>, Vec<ModuleError>) {
    let order_path = dir.join("load-order");
    let text = match std::fs::read_to_string(&order_path) {
        Ok(t) => t,
        Err(source) => return (vec![], vec![ModuleError::Read { path: order_path.display().to_string(), source }]),
    };
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for name in parse_load_order(&text) {
        let path = dir.join(format!("{name}.ko"));
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(source) => {
                errors.push(ModuleError::Read { path: path.display().to_string(), source });
                continue;
            }
        };
        match finit_module(&file, c"", ModuleInitFlags::empty()) {
            Ok(()) | Err(Errno::EEXIST) => loaded.push(name.to_string()),
            Err(source) => {
                errors.push(ModuleError::Load { name: name.to_string(), path: path.display().to_string(), source })
            }
        }
    }
    (loaded, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_order_parsing() {
        let text = "virtio_ring\n\n# comment\n  virtio.ko \n../evil\nvsock\n";
        assert_eq!(parse_load_order(text), vec!["virtio_ring", "virtio", "vsock"]);
    }
}
