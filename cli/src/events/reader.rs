//! Reads a telemetry frames file (`u32` big-endian length + one `Enriched` protobuf, written by
//! the shim's relay) as it grows, through the protocol crate's bounded decoder. The file holds
//! guest-derived data and is treated as hostile: reads are chunked, no more than one frame
//! (at most `MAX_TELEMETRY_FRAME` bytes) is ever held, a frame that does not decode is reported
//! and skipped, a declared length over the cap ends the reading of that file (the framing
//! cannot be trusted after it), and nothing here panics.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bulwark_protocol::limits::MAX_TELEMETRY_FRAME;
use bulwark_protocol::telemetry::{decode_enriched, Enriched, FrameDecoder};

/// Bytes read at a time.
const CHUNK: usize = 64 * 1024;

/// What the file gave.
#[derive(Debug)]
pub enum Item {
    Event(Box<Enriched>),
    /// A frame that does not decode or breaks a limit: skipped.
    Skipped {
        offset: u64,
        why: String,
    },
    /// The rest of the file cannot be read as frames.
    Corrupt {
        offset: u64,
        why: String,
    },
}

/// One frames file, read from its start as it grows.
pub struct FrameFile {
    path: PathBuf,
    file: File,
    inode: (u64, u64),
    decoder: FrameDecoder,
    /// Bytes consumed so far.
    offset: u64,
    /// Where the frame being decoded started.
    frame_start: u64,
    corrupt: bool,
}

impl FrameFile {
    pub fn open(path: &Path) -> std::io::Result<FrameFile> {
        let file = File::open(path)?;
        let md = file.metadata()?;
        Ok(FrameFile {
            path: path.to_path_buf(),
            file,
            inode: (md.dev(), md.ino()),
            decoder: FrameDecoder::new(MAX_TELEMETRY_FRAME),
            offset: 0,
            frame_start: 0,
            corrupt: false,
        })
    }

    /// Reads what the file holds now, handing each item to `each` as it is decoded.
    pub fn read_available(&mut self, each: &mut dyn FnMut(Item)) -> std::io::Result<()> {
        if self.corrupt {
            return Ok(());
        }
        // A file cut shorter than what was read (rewritten in place): start again.
        if self.file.metadata()?.len() < self.offset {
            *self = FrameFile::open(&self.path)?;
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = self.file.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            let mut input = &buf[..n];
            while !input.is_empty() {
                let before = input.len();
                let frame = self.decoder.decode(&mut input);
                let used = (before - input.len()) as u64;
                match frame {
                    Ok(Some(bytes)) => {
                        let start = self.frame_start;
                        self.offset += used;
                        self.frame_start = self.offset;
                        each(match decode_enriched(&bytes) {
                            Ok(m) => Item::Event(Box::new(m)),
                            Err(e) => Item::Skipped { offset: start, why: e.to_string() },
                        });
                    }
                    Ok(None) => self.offset += used,
                    Err(e) => {
                        self.corrupt = true;
                        each(Item::Corrupt { offset: self.frame_start, why: e.to_string() });
                        return Ok(());
                    }
                }
            }
        }
    }

    /// At the end of a file that will not grow: why its last bytes were not a whole frame.
    pub fn incomplete(&self) -> Option<String> {
        if self.corrupt {
            return None;
        }
        self.decoder.finish().err().map(|e| format!("{e} at offset {}", self.frame_start))
    }

    /// Whether `path` now names another file than the one being read (rotated, removed).
    pub fn replaced(&self) -> bool {
        match std::fs::metadata(&self.path) {
            Ok(md) => (md.dev(), md.ino()) != self.inode,
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_protocol::telemetry::{encode_frame, Event, EventType};
    use std::io::Write;

    fn enriched(pid: u32) -> Vec<u8> {
        let mut e = Event::new();
        e.type_ = EventType::OPENAT.into();
        e.pid = pid;
        let mut m = Enriched::new();
        m.event = Some(e).into();
        m.pod_name = "web".into();
        encode_frame(&m).unwrap()
    }

    fn collect(f: &mut FrameFile) -> Vec<String> {
        let mut out = Vec::new();
        f.read_available(&mut |i| {
            out.push(match i {
                Item::Event(m) => format!("event {}", m.event.pid),
                Item::Skipped { offset, .. } => format!("skipped @{offset}"),
                Item::Corrupt { offset, .. } => format!("corrupt @{offset}"),
            })
        })
        .unwrap();
        out
    }

    #[test]
    fn frames_garbage_growth_and_corruption() {
        let dir = std::env::temp_dir().join(format!("bulwark-cli-frames-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("telemetry.frames");
        let one = enriched(1);
        let mut bytes = one.clone();
        // A frame whose body is not an Enriched message: reported, and the next one still read.
        bytes.extend_from_slice(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        bytes.extend(enriched(2));
        // Half of a third frame: not yet.
        let three = enriched(3);
        bytes.extend_from_slice(&three[..5]);
        std::fs::write(&path, &bytes).unwrap();

        let mut f = FrameFile::open(&path).unwrap();
        assert_eq!(collect(&mut f), ["event 1", format!("skipped @{}", one.len()).as_str(), "event 2"]);
        assert!(f.incomplete().unwrap().contains("ended inside a frame"), "{:?}", f.incomplete());
        // The writer finishes the frame, then writes a declared length far over the cap.
        let mut w = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        w.write_all(&three[5..]).unwrap();
        let corrupt_at = bytes.len() + three.len() - 5;
        w.write_all(&u32::MAX.to_be_bytes()).unwrap();
        w.write_all(&enriched(4)).unwrap();
        assert_eq!(collect(&mut f), ["event 3".to_string(), format!("corrupt @{corrupt_at}")]);
        assert!(collect(&mut f).is_empty(), "nothing more from a corrupt file");
        assert!(!f.replaced());
        // Rotation: the file is renamed and a new one starts.
        std::fs::rename(&path, dir.join("telemetry.frames.1")).unwrap();
        assert!(f.replaced());
        std::fs::write(&path, enriched(5)).unwrap();
        let mut g = FrameFile::open(&path).unwrap();
        assert_eq!(collect(&mut g), ["event 5"]);
        assert_eq!(g.incomplete(), None);
        // Rewritten shorter in place: read again from the start.
        std::fs::write(&path, &enriched(6)[..3]).unwrap();
        assert!(collect(&mut g).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
