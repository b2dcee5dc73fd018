//! Helpers shared by the fuzz targets (fuzz_targets/*.rs).

/// Whether `s` holds a control character other than a tab (what the shim's cleaning of
/// guest text replaces).
pub fn has_controls(s: &str) -> bool {
    s.chars().any(|c| c.is_control() && c != '\t')
}

/// `bytes` repeated `times` times, at most `cap` bytes in all: concatenated protobuf
/// encodings decode as one merged message (repeated fields appended, maps merged), so a
/// short input can reach the shim's caps on counts.
pub fn repeated(bytes: &[u8], times: u8, cap: usize) -> Vec<u8> {
    let n = if bytes.is_empty() { 1 } else { (times as usize).clamp(1, (cap / bytes.len()).max(1)) };
    bytes.repeat(n)
}

/// The marker the shim appends to guest text it cut.
pub const TRUNCATED: &str = " [truncated]";
