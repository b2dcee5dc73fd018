//! The containerd snippets forward the tenant annotation to the shim: merged into a minimal
//! config of their format version, `containerd config dump` (1.6 and 2.x) shows
//! `pod_annotations = ["bulwark.io/tenant"]` in the `bulwark` runtime's section. (That the
//! runtime type is right is checked by tests/tests/runtimeclass_docs.rs.)

use std::path::PathBuf;
use std::process::Command;

use bulwark_policy_tests::manifest_path;

fn containerd2() -> PathBuf {
    if let Some(d) = std::env::var_os("BULWARK_CONTAINERD2_BIN") {
        return PathBuf::from(d).join("containerd");
    }
    let cache = std::env::var_os("BULWARK_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/bulwark")
    });
    cache.join("containerd2/usr/bin/containerd")
}

fn dump(bin: &PathBuf, snippet: &str, format: u32) -> String {
    let text = std::fs::read_to_string(manifest_path(snippet)).expect("snippet");
    let dir = std::env::temp_dir().join(format!("bwk-rc-ann-{}-{format}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    let full = format!("version = {format}\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n{text}", d = dir.display());
    std::fs::write(&config, full).unwrap();
    let out = Command::new(bin).arg("--config").arg(&config).args(["config", "dump"]).output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.unwrap_or_else(|e| {
        panic!(
            "running {}: {e} (containerd 1.6 is Debian's package, 2.x comes from scripts/lib/deps.sh)",
            bin.display()
        )
    });
    assert!(out.status.success(), "{} config dump: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `bulwark` runtime's own section of a dump (up to the next section header).
fn bulwark_section(dump: &str) -> String {
    let after = dump.split("runtimes.bulwark]").nth(1).expect("no runtimes.bulwark section in the dump");
    after.lines().skip(1).take_while(|l| !l.trim_start().starts_with('[')).collect::<Vec<_>>().join("\n")
}

fn check(bin: PathBuf, snippet: &str, format: u32) {
    let section = bulwark_section(&dump(&bin, snippet, format));
    let line = section
        .lines()
        .find(|l| l.trim_start().starts_with("pod_annotations"))
        .unwrap_or_else(|| panic!("runtimeclass/{snippet}: no pod_annotations in the bulwark section:\n{section}"));
    let normalised = line.replace('\'', "\"");
    assert!(normalised.contains("[\"bulwark.io/tenant\"]"), "runtimeclass/{snippet}: {line:?}");
}

#[test]
fn containerd_1_6_forwards_the_tenant_annotation() {
    check(PathBuf::from("containerd"), "containerd-1.6.toml", 2);
}

#[test]
fn containerd_2_forwards_the_tenant_annotation() {
    check(containerd2(), "containerd-2.x.toml", 3);
}
