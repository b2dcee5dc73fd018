//! The limits and the identifier rule that both sides of the VM boundary enforce: the shim on
//! what it accepts from containerd and from the guest, the agent on what it accepts from the
//! host. One definition, so the two sides can never disagree on what a valid id is.

/// Largest chunk ReadStdout/ReadStderr return.
pub const MAX_READ_CHUNK: u32 = 64 * 1024;
/// Largest cgroup file StatsContainer returns (per file).
pub const MAX_CGROUP_FILE: usize = 64 * 1024;
/// Largest OCI JSON document (spec, process, resources) either side accepts.
pub const MAX_SPEC_JSON: usize = 1024 * 1024;
/// Longest log line the host accepts from the agent; longer lines are truncated.
pub const MAX_LOG_LINE: usize = 8 * 1024;
/// Longest identifier (container, exec, sandbox id, containerd namespace): containerd's limit.
pub const MAX_ID_LEN: usize = 76;

/// Largest telemetry frame (the protobuf message after the 4-byte length), guest→shim and
/// shim→node socket alike. A larger declared length ends the stream: it cannot be resynced.
pub const MAX_TELEMETRY_FRAME: usize = 64 * 1024;
/// Most argv entries one telemetry event may carry.
pub const MAX_ARGV_ENTRIES: usize = 128;
/// Most argv bytes (all entries together) one telemetry event may carry.
pub const MAX_ARGV_BYTES: usize = 16 * 1024;
/// Longest path in a telemetry event (cwd, exe, path, path2, unix socket path): PATH_MAX.
pub const MAX_TELEMETRY_PATH: usize = 4096;
/// Longest short string in a telemetry event (comm, user name, memfd name, ids, pod names).
pub const MAX_TELEMETRY_NAME: usize = 256;
/// Longest image reference in an enriched event.
pub const MAX_TELEMETRY_IMAGE: usize = 1024;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid id {shown:?}: {why} (ids are letters and digits, single '.', '_' or '-' between them, at most 76 bytes)"
)]
pub struct IdError {
    /// The id as received, cut to 100 characters for messages.
    pub shown: String,
    pub why: &'static str,
}

/// containerd's identifier rule, `[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`, at most [`MAX_ID_LEN`]
/// bytes (pure). Ids become directory and file names on both sides of the VM boundary, so
/// nothing else gets through: no '/', no "..", no leading dot, no control characters.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    let bad = |why: &'static str| IdError { shown: id.chars().take(100).collect(), why };
    if id.is_empty() {
        return Err(bad("empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(bad("too long"));
    }
    let mut prev_sep = true; // at start, a separator is not allowed
    for c in id.bytes() {
        if c.is_ascii_alphanumeric() {
            prev_sep = false;
        } else if matches!(c, b'.' | b'_' | b'-') {
            if prev_sep {
                return Err(bad("a separator must follow a letter or digit"));
            }
            prev_sep = true;
        } else {
            return Err(bad("forbidden character"));
        }
    }
    if prev_sep {
        return Err(bad("must end with a letter or digit"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "t1", "abc-def.g_h", &"a".repeat(76), "0123456789abcdef"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "../x", "a/b", "a b", ".", "..", &"a".repeat(77), "é", "a\0b", "a\nb"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
