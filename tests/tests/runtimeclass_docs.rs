//! The containerd snippets in runtimeclass/ are what containerd accepts: each one, merged into
//! a minimal config of its format version, makes `containerd config dump` (1.6 and 2.x) show
//! the runtime handler `bulwark` with runtime type io.containerd.bulwark.v2.

use std::process::Command;
use std::time::Duration;

use bulwark_e2e::cri::ContainerdVersion;
use bulwark_e2e::process;
use bulwark_e2e::repo_root;

fn check(version: ContainerdVersion, snippet: &str, format: u32) -> Result<(), String> {
    let bin = version.bin_dir()?.join("containerd");
    let text = std::fs::read_to_string(repo_root().join("runtimeclass").join(snippet))
        .map_err(|e| format!("reading runtimeclass/{snippet}: {e}"))?;
    let dir = std::env::temp_dir().join(format!("bwk-rc-{}-{format}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = dir.join("config.toml");
    let full = format!("version = {format}\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n{text}", d = dir.display());
    std::fs::write(&config, full).map_err(|e| e.to_string())?;
    let out =
        process::run(Command::new(&bin).arg("--config").arg(&config).args(["config", "dump"]), Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    if !out.status.success() {
        return Err(format!("{} config dump with runtimeclass/{snippet} failed: {}", bin.display(), out.stderr));
    }
    let section = out
        .stdout
        .split("runtimes.bulwark]")
        .nth(1)
        .ok_or_else(|| format!("runtimeclass/{snippet}: no runtimes.bulwark section in the dump"))?;
    let runtime_type = section
        .lines()
        .find(|l| l.trim_start().starts_with("runtime_type"))
        .ok_or_else(|| format!("runtimeclass/{snippet}: no runtime_type for bulwark"))?;
    if !runtime_type.contains("io.containerd.bulwark.v2") {
        return Err(format!("runtimeclass/{snippet}: bulwark's {runtime_type:?}"));
    }
    Ok(())
}

#[test]
fn containerd_1_6_accepts_the_version_2_snippet() -> Result<(), String> {
    check(ContainerdVersion::V1, "containerd-1.6.toml", 2)
}

#[test]
fn containerd_2_accepts_the_version_3_snippet() -> Result<(), String> {
    check(ContainerdVersion::V2, "containerd-2.x.toml", 3)
}
