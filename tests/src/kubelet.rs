//! What kubelet does to files on the host that the tests imitate: its atomic writer for
//! configMap/secret volumes.

use std::path::Path;

/// kubelet's atomic-writer layout for a configMap volume: `..<ts>/key`, `..data -> ..<ts>`,
/// `key -> ..data/key`. `version` becomes the file's content and the timestamp dir's name.
pub fn write_configmap(dir: &Path, version: &str) -> Result<(), String> {
    let e = |what: &str, err: std::io::Error| format!("configMap {what} in {}: {err}", dir.display());
    std::fs::create_dir_all(dir).map_err(|err| e("mkdir", err))?;
    let ts = format!("..2025_01_01_00_00_00.{version}");
    std::fs::create_dir_all(dir.join(&ts)).map_err(|err| e("mkdir ts", err))?;
    std::fs::write(dir.join(&ts).join("key"), version).map_err(|err| e("write", err))?;
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts, &tmp).map_err(|err| e("symlink", err))?;
    // The swap: rename(2) over the old ..data is atomic.
    std::fs::rename(&tmp, dir.join("..data")).map_err(|err| e("rename", err))?;
    if !dir.join("key").exists() {
        std::os::unix::fs::symlink("..data/key", dir.join("key")).map_err(|err| e("key symlink", err))?;
    }
    // Old timestamp dirs go, as kubelet removes them after the swap.
    for entry in std::fs::read_dir(dir).map_err(|err| e("readdir", err))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..2025") && name != ts {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}
