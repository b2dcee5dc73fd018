//! `bulwark events <sandbox> [--follow]`: the sandbox's guest syscall events, one line each,
//! from the files the shim's telemetry relay keeps in its state directory: the previous file
//! (`telemetry.frames.1`) first, then the current one; with `--follow`, new events as they are
//! written, across rotations (the file being read is finished before the new one is opened),
//! until the sandbox is gone. Frames that do not decode are reported on stderr and skipped.

mod format;
mod reader;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bulwark_shim::sandbox::state_dir;

use crate::error::{Error, Result};
use crate::node::Node;
use crate::sandboxes;
use crate::NodeArgs;
use reader::{FrameFile, Item};

/// How often `--follow` looks for new events.
const POLL: Duration = Duration::from_millis(500);

/// Prints items: events on stdout, problems on stderr, a line when the loss count grows.
struct Printer {
    drops: u64,
    failed: Option<String>,
}

impl Printer {
    fn item(&mut self, file: &Path, item: Item) {
        let out = match item {
            Item::Event(m) => {
                let mut s = String::new();
                if m.drops > self.drops {
                    s.push_str(&format!("({} events of this sandbox lost so far)\n", m.drops));
                    self.drops = m.drops;
                }
                s.push_str(&format::line(&m));
                s.push('\n');
                s
            }
            Item::Skipped { offset, why } => {
                eprintln!("bulwark: {}: skipped a frame at offset {offset}: {why}", file.display());
                return;
            }
            Item::Corrupt { offset, why } => {
                eprintln!(
                    "bulwark: {}: unreadable from offset {offset} on ({why}): the rest is skipped",
                    file.display()
                );
                return;
            }
        };
        if let Err(e) = std::io::stdout().write_all(out.as_bytes()) {
            self.failed.get_or_insert(e.to_string());
        }
    }

    /// Reads what `f` holds now.
    fn drain(&mut self, f: &mut FrameFile, path: &Path) -> Result<()> {
        f.read_available(&mut |i| self.item(path, i)).map_err(|source| Error::Io {
            what: "reading",
            path: path.to_path_buf(),
            source,
        })?;
        match self.failed.take() {
            Some(e) => Err(Error::Output(e)),
            None => Ok(()),
        }
    }
}

fn open(path: &Path) -> Result<Option<FrameFile>> {
    match FrameFile::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { what: "opening", path: path.to_path_buf(), source }),
    }
}

pub fn run(args: &NodeArgs, name: &str, follow: bool) -> Result<ExitCode> {
    let node = Node::load(args)?;
    let sandbox = sandboxes::find(node.runtime_dir(), name)?;
    let (old, current) = (state_dir::telemetry_frames_old(&sandbox.dir), state_dir::telemetry_frames(&sandbox.dir));
    let mut p = Printer { drops: 0, failed: None };
    if let Some(mut f) = open(&old)? {
        p.drain(&mut f, &old)?;
    }
    let mut cur = open(&current)?;
    if let Some(f) = cur.as_mut() {
        p.drain(f, &current)?;
    }
    if !follow {
        if let Some(why) = cur.as_ref().and_then(FrameFile::incomplete) {
            eprintln!("bulwark: {}: {why} (being written)", current.display());
        }
        if cur.is_none() && !old.exists() {
            eprintln!(
                "bulwark: no events recorded for sandbox {} (no {}: telemetry is off, or nothing happened yet)",
                sandbox.id(),
                current.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    while sandbox.dir.is_dir() {
        std::thread::sleep(POLL);
        match cur.as_mut() {
            Some(f) => {
                p.drain(f, &current)?;
                if f.replaced() {
                    // Rotated: finish the old file (still open), then start on the new one.
                    p.drain(f, &current)?;
                    cur = open(&current)?;
                }
            }
            None => cur = open(&current)?,
        }
    }
    eprintln!("bulwark: sandbox {} is gone", sandbox.id());
    Ok(ExitCode::SUCCESS)
}
