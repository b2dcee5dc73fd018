//! The test modes by name, and the moment the "after start" modes act (test builds only:
//! the module is compiled with the feature `test-modes`).

/// The misbehaviours (test builds only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    PanicAfterStart,
    KillAgentAfterStart,
    Liar,
    Mute,
    HugeReplies,
    FloodLogs,
    GarbageFrames,
    Oversize,
    VsockFlood,
}

impl Mode {
    /// Every mode with its name on the command line.
    pub const ALL: [(&'static str, Mode); 9] = [
        ("panic-after-start", Mode::PanicAfterStart),
        ("kill-agent-after-start", Mode::KillAgentAfterStart),
        ("liar", Mode::Liar),
        ("mute", Mode::Mute),
        ("huge-replies", Mode::HugeReplies),
        ("flood-logs", Mode::FloodLogs),
        ("garbage-frames", Mode::GarbageFrames),
        ("oversize", Mode::Oversize),
        ("vsock-flood", Mode::VsockFlood),
    ];

    pub fn parse(name: &str) -> Option<Mode> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
    }

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, m)| *m == self).map(|(n, _)| *n).unwrap_or("?")
    }

    /// Modes that take over the log connection (and the other guest→host streams).
    pub fn abuses_streams(self) -> bool {
        matches!(self, Mode::FloodLogs | Mode::GarbageFrames | Mode::Oversize)
    }
}

/// The moment "after start" modes act: the n-th successful StartContainer (n from
/// `bulwark.test_mode_starts=<n>`, default 1: a CRI pod's first container is its pause
/// container, so a test that wants the app container running too says 2).
pub mod first_start {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;

    use tokio::sync::watch;

    static AFTER: AtomicU32 = AtomicU32::new(1);

    fn channel() -> &'static watch::Sender<u32> {
        static STARTS: OnceLock<watch::Sender<u32>> = OnceLock::new();
        STARTS.get_or_init(|| watch::channel(0).0)
    }

    /// Sets n (at least 1).
    pub fn set_after(n: u32) {
        AFTER.store(n.max(1), Ordering::SeqCst);
    }

    /// Counts one start; true for the n-th.
    pub fn mark() -> bool {
        let mut now = 0;
        channel().send_modify(|s| {
            *s = s.saturating_add(1);
            now = *s;
        });
        now == AFTER.load(Ordering::SeqCst)
    }

    /// Whether the n-th start happened.
    pub fn started() -> bool {
        *channel().borrow() >= AFTER.load(Ordering::SeqCst)
    }

    /// Waits until the n-th start.
    pub async fn wait() {
        let mut rx = channel().subscribe();
        let _ = rx.wait_for(|s| *s >= AFTER.load(Ordering::SeqCst)).await;
    }
}
