//! What the shim does to the host: helper programs it starts and supervises (child.rs), and
//! symlink-proof file and mount operations below its own directories (fs.rs).

pub mod child;
// Used by the share once it is rebuilt on it (issue 8); tested on its own until then.
#[allow(dead_code)]
pub mod fs;
