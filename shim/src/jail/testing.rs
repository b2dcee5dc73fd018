//! Test helpers of jail/ (which must not use host/, where `host::Command` names a jail
//! confinement: that would be an import cycle).

use std::path::PathBuf;

/// A fresh directory for one test.
pub fn temp_dir(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "bulwark-test-jail-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("creating a test temp dir");
    d
}
