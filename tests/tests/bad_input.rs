//! Bad input makes `ctr run` fail with an error that names the problem, and leaves nothing
//! behind: a missing kernel, initrd or QEMU binary, and a bundle whose config.json is broken.

use std::path::PathBuf;

use bulwark_e2e::containerd::{Containerd, ShimConfig};
use bulwark_e2e::RUNTIME;

/// Runs `true` under a configuration altered by `adjust`; expects failure naming `needle`.
fn expect_failure(adjust: impl FnOnce(&mut ShimConfig), needle: &str) -> Result<(), String> {
    let c = Containerd::start(adjust)?;
    let out = c.run_rm("bad", &["true"])?;
    assert!(!out.status.success(), "ctr run should have failed: {out:?}");
    assert!(
        out.stderr.contains(needle),
        "the error should name {needle:?}; ctr said: {}\n{}",
        out.stderr,
        c.diagnostics()
    );
    c.assert_clean()?;
    let containers = c.ctr(&["containers", "ls", "-q"])?;
    assert_eq!(containers.stdout.trim(), "", "container record left behind");
    Ok(())
}

#[test]
fn missing_kernel_is_named_and_leaves_nothing() -> Result<(), String> {
    expect_failure(|c| c.kernel = PathBuf::from("/nonexistent/bulwark/vmlinux"), "/nonexistent/bulwark/vmlinux")
}

#[test]
fn missing_initrd_is_named_and_leaves_nothing() -> Result<(), String> {
    expect_failure(
        |c| c.initrd = PathBuf::from("/nonexistent/bulwark/initramfs.cpio"),
        "/nonexistent/bulwark/initramfs.cpio",
    )
}

#[test]
fn missing_qemu_is_named_and_leaves_nothing() -> Result<(), String> {
    expect_failure(
        |c| c.qemu = PathBuf::from("/nonexistent/bin/qemu-system-x86_64"),
        "/nonexistent/bin/qemu-system-x86_64",
    )
}

#[test]
fn broken_config_json_is_named_and_leaves_nothing() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    // A spec containerd accepts as JSON but that is not a valid OCI runtime spec: an
    // unknown namespace type. The shim must reject the bundle's config.json, not boot a VM.
    let spec = c.ctr(&["oci", "spec"])?;
    let mut spec: serde_json::Value =
        serde_json::from_str(&spec.stdout).map_err(|e| format!("ctr oci spec output: {e}"))?;
    spec["linux"]["namespaces"] = serde_json::json!([{ "type": "bogus" }]);
    spec["process"]["args"] = serde_json::json!(["true"]);
    // With a spec file ctr takes no image: the rootfs is the spec's root.path on the host.
    let rootfs = c.dir.join("broken-rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| e.to_string())?;
    spec["root"] = serde_json::json!({ "path": rootfs.to_string_lossy() });
    let file = c.dir.join("broken-spec.json");
    std::fs::write(&file, spec.to_string()).map_err(|e| e.to_string())?;
    let out = c.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", &file.to_string_lossy(), "broken"])?;
    assert!(!out.status.success(), "ctr run should have failed: {out:?}");
    assert!(out.stderr.contains("config.json"), "the error should name config.json: {}", out.stderr);
    c.assert_clean()?;
    let containers = c.ctr(&["containers", "ls", "-q"])?;
    assert_eq!(containers.stdout.trim(), "", "container record left behind");
    Ok(())
}

/// A bind mount of a host path outside the tenant policy's `host_paths` (here `/etc`, while
/// the test's configuration allows only its own directory) is refused at Create, naming the
/// path and the policy key, and leaves nothing behind; a path inside it works.
#[test]
fn a_host_path_outside_the_policy_is_refused() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let run = |src: &str| {
        let mount = format!("type=bind,src={src},dst=/x,options=rbind:ro");
        c.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--mount",
            &mount,
            bulwark_e2e::TEST_IMAGE,
            "hostpath",
            "ls",
            "/x",
        ])
    };
    let out = run("/etc")?;
    assert!(!out.status.success(), "a bind of /etc must be refused: {out:?}");
    assert!(
        out.stderr.contains("/etc") && out.stderr.contains("host_paths"),
        "the error should name the path and the policy: {}",
        out.stderr
    );
    c.assert_clean()?;
    let allowed = c.dir.join("allowed-volume");
    std::fs::create_dir_all(&allowed).map_err(|e| e.to_string())?;
    std::fs::write(allowed.join("inside"), b"ok").map_err(|e| e.to_string())?;
    let out = run(&allowed.to_string_lossy())?;
    assert!(out.status.success() && out.stdout.contains("inside"), "a path inside host_paths works: {out:?}");
    c.assert_clean()?;
    Ok(())
}

/// The share is id-mapped (virtiofsd runs in a user namespace of 65536 ids): a container that
/// would run as a uid, or with an extra gid, outside them is refused with the reason before any
/// VM boots, and nothing is left. (Ids inside them: `volumes.rs` chowns to 1000.)
#[test]
fn ids_outside_the_mapped_range_are_refused() -> Result<(), String> {
    let c = Containerd::start(|_| {})?;
    let rootfs = c.dir.join("ids-rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| e.to_string())?;
    let base = c.ctr(&["oci", "spec"])?;
    for (name, user, id) in [
        ("biguid", serde_json::json!({"uid": 70000, "gid": 0}), "uid 70000"),
        ("biggid", serde_json::json!({"uid": 0, "gid": 0, "additionalGids": [10, 1000680000]}), "extra gid 1000680000"),
    ] {
        let mut spec: serde_json::Value =
            serde_json::from_str(&base.stdout).map_err(|e| format!("ctr oci spec output: {e}"))?;
        spec["process"]["args"] = serde_json::json!(["true"]);
        spec["process"]["user"] = user;
        spec["root"] = serde_json::json!({ "path": rootfs.to_string_lossy() });
        let file = c.dir.join(format!("{name}.json"));
        std::fs::write(&file, spec.to_string()).map_err(|e| e.to_string())?;
        let out = c.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", &file.to_string_lossy(), name])?;
        assert!(!out.status.success(), "{name} must be refused: {out:?}");
        assert!(
            out.stderr.contains(id) && out.stderr.contains("unprivileged_virtiofsd"),
            "the error should name the id and the setting: {}",
            out.stderr
        );
        c.assert_clean()?;
    }
    let containers = c.ctr(&["containers", "ls", "-q"])?;
    assert_eq!(containers.stdout.trim(), "", "container record left behind");
    Ok(())
}
