//! The collector's settings from `SetupSandboxRequest.telemetry` (pure): which event types are
//! collected (a bit per `EventType` number, the set the BPF programs check in their config
//! map) and the rate limit.
use protobuf::Enum;
use protocol::agent::TelemetryConfig;
use protocol::telemetry::{event_type_by_name, event_type_names, EventType};

/// Events per second sent when the host asks for 0 (the agent's default).
pub const DEFAULT_MAX_EVENTS_PER_SEC: u32 = 20_000;

/// What the collector is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Bit n set: `EventType` n is collected.
    pub types: u64,
    pub max_events_per_sec: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("telemetry: unknown syscall {0:?} (known: {known})", known = event_type_names().join(", "))]
    UnknownSyscall(String),
    #[error("telemetry: {0} syscall names, more than the {MAX_NAMES} accepted")]
    TooManyNames(usize),
}

/// Most names one request may list (there are fewer event types than this).
const MAX_NAMES: usize = 256;

/// Every collectable event type (all but UNSPECIFIED).
fn all_types() -> impl Iterator<Item = EventType> {
    EventType::VALUES.iter().copied().filter(|t| *t != EventType::EVENT_TYPE_UNSPECIFIED)
}

fn bit(t: EventType) -> u64 {
    1u64 << (t.value() as u32 & 63)
}

/// The type mask of every known event type.
pub fn all_types_mask() -> u64 {
    all_types().fold(0, |m, t| m | bit(t))
}

/// The settings, or None when the collector stays off. An unknown name is an error naming it.
pub fn parse(cfg: &TelemetryConfig) -> Result<Option<Settings>, ConfigError> {
    if cfg.syscalls.len() > MAX_NAMES {
        return Err(ConfigError::TooManyNames(cfg.syscalls.len()));
    }
    let mut types = 0u64;
    for name in &cfg.syscalls {
        let t = event_type_by_name(name).ok_or_else(|| ConfigError::UnknownSyscall(name.chars().take(64).collect()))?;
        types |= bit(t);
    }
    if types == 0 {
        types = all_types_mask();
    }
    if !cfg.enabled {
        return Ok(None);
    }
    let max_events_per_sec =
        if cfg.max_events_per_sec == 0 { DEFAULT_MAX_EVENTS_PER_SEC } else { cfg.max_events_per_sec };
    Ok(Some(Settings { types, max_events_per_sec }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(enabled: bool, names: &[&str], rate: u32) -> TelemetryConfig {
        TelemetryConfig {
            enabled,
            syscalls: names.iter().map(|s| s.to_string()).collect(),
            max_events_per_sec: rate,
            ..Default::default()
        }
    }

    #[test]
    fn off_unless_enabled() {
        assert_eq!(parse(&cfg(false, &[], 0)), Ok(None));
        assert_eq!(parse(&TelemetryConfig::default()), Ok(None));
    }

    #[test]
    fn empty_means_every_type_and_default_rate() {
        let s = parse(&cfg(true, &[], 0)).unwrap().unwrap();
        assert_eq!(s.max_events_per_sec, DEFAULT_MAX_EVENTS_PER_SEC);
        assert_eq!(s.types, all_types_mask());
        assert_eq!(s.types & 1, 0, "UNSPECIFIED is never collected");
        for t in [EventType::EXECVE, EventType::EXIT, EventType::VFORK, EventType::CLONE3] {
            assert_ne!(s.types & bit(t), 0, "{t:?}");
        }
        assert_eq!(all_types_mask().count_ones() as usize, event_type_names().len());
    }

    #[test]
    fn names_select_types() {
        let s = parse(&cfg(true, &["execve", "openat", "connect"], 5)).unwrap().unwrap();
        assert_eq!(s.types, bit(EventType::EXECVE) | bit(EventType::OPENAT) | bit(EventType::CONNECT));
        assert_eq!(s.max_events_per_sec, 5);
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        for bad in ["read", "EXECVE", "event_type_unspecified", "", "execve "] {
            let err = parse(&cfg(true, &["openat", bad], 0)).unwrap_err();
            assert_eq!(err, ConfigError::UnknownSyscall(bad.to_string()));
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        // Checked even when the collector is off: the host's mistake is reported either way.
        assert!(parse(&cfg(false, &["nope"], 0)).is_err());
        let many: Vec<&str> = vec!["execve"; MAX_NAMES + 1];
        assert_eq!(parse(&cfg(true, &many, 0)), Err(ConfigError::TooManyNames(MAX_NAMES + 1)));
    }
}
