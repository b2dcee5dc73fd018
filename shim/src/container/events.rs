//! The events of containers and their processes, as containerd's task events, sent into one
//! ordered channel ([`EventTx`]). The task service owns the receiving end and forwards each
//! event to containerd in the order it was sent (task/events.rs); nothing below it publishes.
//!
//! `send` is synchronous (an unbounded channel), so a state change and its event can be made
//! under the same lock or gate, which is what orders them: create before start before exit,
//! an exec's exit before the wake-up of its waiters (the init process's exit waits for those),
//! OOM before exit, delete last.

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::types::mount::Mount;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::container::process::Stdio;

pub const TOPIC_CREATE: &str = "/tasks/create";
pub const TOPIC_START: &str = "/tasks/start";
pub const TOPIC_EXEC_ADDED: &str = "/tasks/exec-added";
pub const TOPIC_EXEC_STARTED: &str = "/tasks/exec-started";
pub const TOPIC_EXIT: &str = "/tasks/exit";
pub const TOPIC_DELETE: &str = "/tasks/delete";
pub const TOPIC_OOM: &str = "/tasks/oom";
pub const TOPIC_PAUSED: &str = "/tasks/paused";
pub const TOPIC_RESUMED: &str = "/tasks/resumed";

/// One event for containerd: its topic and message.
pub struct Event {
    pub topic: &'static str,
    pub message: Box<dyn MessageDyn>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.topic, self.message)
    }
}

/// The receiving end (the forwarder's, or a test's).
pub type EventRx = mpsc::UnboundedReceiver<Event>;

/// The sending end of the shim's one event channel; cheap to clone.
#[derive(Clone)]
pub struct EventTx {
    tx: mpsc::UnboundedSender<Event>,
    /// Events sent so far (the forwarder's flush waits until it has published as many).
    sent: Arc<AtomicU64>,
}

impl EventTx {
    /// A new channel.
    pub fn channel() -> (EventTx, EventRx) {
        let (tx, rx) = mpsc::unbounded_channel();
        (EventTx { tx, sent: Arc::new(AtomicU64::new(0)) }, rx)
    }

    /// How many events were sent into the channel so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    fn send(&self, topic: &'static str, message: Box<dyn MessageDyn>) {
        self.sent.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(Event { topic, message }).is_err() {
            tracing::warn!("event {topic} dropped: the event forwarder is gone");
        }
    }

    /// `/tasks/create` of a container (`pid`: the task pid containerd sees).
    pub fn created(&self, id: &str, bundle: &str, rootfs: &[Mount], stdio: &Stdio, pid: u32) {
        self.send(
            TOPIC_CREATE,
            Box::new(TaskCreate {
                container_id: id.to_string(),
                bundle: bundle.to_string(),
                rootfs: rootfs.to_vec(),
                io: MessageField::some(TaskIO {
                    stdin: stdio.stdin.clone(),
                    stdout: stdio.stdout.clone(),
                    stderr: stdio.stderr.clone(),
                    terminal: stdio.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }),
        );
    }

    /// `/tasks/start` of a container's init process.
    pub fn started(&self, id: &str, pid: u32) {
        self.send(TOPIC_START, Box::new(TaskStart { container_id: id.to_string(), pid, ..Default::default() }));
    }

    /// `/tasks/exec-added`.
    pub fn exec_added(&self, id: &str, exec_id: &str) {
        self.send(
            TOPIC_EXEC_ADDED,
            Box::new(TaskExecAdded {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                ..Default::default()
            }),
        );
    }

    /// `/tasks/exec-started`.
    pub fn exec_started(&self, id: &str, exec_id: &str, pid: u32) {
        self.send(
            TOPIC_EXEC_STARTED,
            Box::new(TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid,
                ..Default::default()
            }),
        );
    }

    /// `/tasks/exit` of a process (`process_id`: the container id for the init process, else
    /// the exec id).
    pub fn exited(&self, id: &str, process_id: &str, pid: u32, status: u32, at: Timestamp) {
        self.send(
            TOPIC_EXIT,
            Box::new(TaskExit {
                container_id: id.to_string(),
                id: process_id.to_string(),
                pid,
                exit_status: status,
                exited_at: MessageField::some(at),
                ..Default::default()
            }),
        );
    }

    /// `/tasks/delete` of a process (`process_id` as for [`EventTx::exited`]).
    pub fn deleted(&self, id: &str, process_id: &str, pid: u32, status: u32, at: MessageField<Timestamp>) {
        self.send(
            TOPIC_DELETE,
            Box::new(TaskDelete {
                container_id: id.to_string(),
                id: process_id.to_string(),
                pid,
                exit_status: status,
                exited_at: at,
                ..Default::default()
            }),
        );
    }

    /// `/tasks/oom`.
    pub fn oom(&self, id: &str) {
        self.send(TOPIC_OOM, Box::new(TaskOOM { container_id: id.to_string(), ..Default::default() }));
    }

    /// `/tasks/paused` or `/tasks/resumed`.
    pub fn paused(&self, id: &str, paused: bool) {
        if paused {
            self.send(TOPIC_PAUSED, Box::new(TaskPaused { container_id: id.to_string(), ..Default::default() }));
        } else {
            self.send(TOPIC_RESUMED, Box::new(TaskResumed { container_id: id.to_string(), ..Default::default() }));
        }
    }
}
