//! The agent's top-level modules only call down: every `crate::x` path in a file of module `y`
//! must name a module of a lower layer (or `y` itself). main.rs, the root, may use all of them.
use std::collections::BTreeMap;
use std::path::Path;

/// Layer of each top-level module of `src/`: higher layers may use lower ones only.
const LAYERS: &[(&str, u32)] = &[
    ("init", 0),
    ("network", 0),
    ("telemetry", 0),
    ("process", 1),
    ("vsock", 1),
    ("container", 2),
    ("rpc", 3),
    ("testmodes", 4),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules named by `crate::x` paths in `text` (comments skipped).
fn crate_refs(text: &str) -> Vec<String> {
    let mut refs = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (i, _) in code.match_indices("crate::") {
            if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &code[i + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            refs.push(name);
        }
    }
    refs
}

#[test]
fn top_level_modules_only_call_down() {
    let layers: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component").as_os_str().to_string_lossy().into_owned();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "main" {
            continue;
        }
        let Some(&own) = layers.get(module.as_str()) else {
            violations.push(format!("{}: top-level module {module} has no layer in LAYERS", rel.display()));
            continue;
        };
        for target in crate_refs(&std::fs::read_to_string(&file).expect("read")) {
            if target == module {
                continue;
            }
            match layers.get(target.as_str()) {
                Some(&layer) if layer < own => {}
                _ => violations.push(format!("{} ({module}) uses crate::{target}", rel.display())),
            }
        }
    }
    assert!(violations.is_empty(), "calls that do not go down a layer:\n{}", violations.join("\n"));
}

#[test]
fn the_scanner_sees_crate_paths_and_skips_comments() {
    let text = "use crate::init::reaper::Reaper;\n// crate::rpc in a comment\nlet x = crate::process::X; a::crate::no;";
    assert_eq!(crate_refs(text), ["init", "process"]);
}
