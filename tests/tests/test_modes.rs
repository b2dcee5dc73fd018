//! The test guest modes exist only in the test initramfs: the production guest image's agent
//! has none of their names compiled in, the test image's agent has all of them (so this
//! check can fail). guest-agent/src/testmodes/ has the modes; bulwark_build builds both images.

use bulwark_e2e::faults::test_initrd;
use bulwark_e2e::Artifacts;

/// Every mode of guest-agent/src/testmodes/mod.rs.
const MODES: [&str; 9] = [
    "panic-after-start",
    "kill-agent-after-start",
    "liar",
    "mute",
    "huge-replies",
    "flood-logs",
    "garbage-frames",
    "oversize",
    "vsock-flood",
];

/// Mode names that are ordinary words too ("liar", "mute", "oversize" may appear in any
/// binary): only the distinctive ones, and the mode banner, decide.
fn distinctive(name: &str) -> bool {
    name.contains('-') && name != "oversize"
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn only_the_test_image_has_test_modes() -> Result<(), String> {
    let a = Artifacts::locate()?;
    let production = std::fs::read(&a.initrd).map_err(|e| format!("{}: {e}", a.initrd.display()))?;
    let test_path = test_initrd()?;
    let test = std::fs::read(&test_path).map_err(|e| format!("{}: {e}", test_path.display()))?;
    let mut wrong = Vec::new();
    for name in MODES.iter().copied().filter(|n| distinctive(n)).chain(["TEST MODE"]) {
        if contains(&production, name) {
            wrong.push(format!("the production initramfs {} has {name:?}", a.initrd.display()));
        }
        if !contains(&test, name) {
            wrong.push(format!("the test initramfs {} lacks {name:?}", test_path.display()));
        }
    }
    for name in MODES {
        if !contains(&test, name) {
            wrong.push(format!("the test initramfs lacks mode {name:?}"));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("\n"))
    }
}
