//! The agent's processes by (container id, exec id): each container's init process under an
//! empty exec id, its exec processes under their own ids. Two maps, each behind its own async
//! lock, held only for the lookup or the change itself.
use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::process::Process;

/// No such process: the message names what was looked for.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotFound {
    #[error("container {0:?} not found")]
    Container(String),
    #[error("exec {exec_id:?} of container {id:?} not found")]
    Exec { id: String, exec_id: String },
}

#[derive(Default)]
pub struct ProcessTable {
    /// Init processes by container id.
    containers: Mutex<HashMap<String, Arc<Process>>>,
    /// Exec processes by (container id, exec id).
    execs: Mutex<HashMap<(String, String), Arc<Process>>>,
}

impl ProcessTable {
    /// The init process of container `id` when `exec_id` is empty, else that exec.
    pub async fn get(&self, id: &str, exec_id: &str) -> Result<Arc<Process>, NotFound> {
        if !exec_id.is_empty() {
            return self
                .execs
                .lock()
                .await
                .get(&(id.to_string(), exec_id.to_string()))
                .cloned()
                .ok_or_else(|| NotFound::Exec { id: id.to_string(), exec_id: exec_id.to_string() });
        }
        self.containers.lock().await.get(id).cloned().ok_or_else(|| NotFound::Container(id.to_string()))
    }

    pub async fn has_container(&self, id: &str) -> bool {
        self.containers.lock().await.contains_key(id)
    }

    /// The pid of container `id`'s init process, while it has not exited.
    pub async fn running_init_pid(&self, id: &str) -> Option<i32> {
        self.containers.lock().await.get(id).filter(|e| !e.has_exited()).map(|e| e.pid)
    }

    pub async fn insert_container(&self, id: String, init: Arc<Process>) {
        self.containers.lock().await.insert(id, init);
    }

    pub async fn remove_container(&self, id: &str) {
        self.containers.lock().await.remove(id);
    }

    pub async fn has_exec(&self, id: &str, exec_id: &str) -> bool {
        self.execs.lock().await.contains_key(&(id.to_string(), exec_id.to_string()))
    }

    /// Adds an exec; returns the one it replaced under the same ids, if any.
    pub async fn insert_exec(&self, id: String, exec_id: String, process: Arc<Process>) -> Option<Arc<Process>> {
        self.execs.lock().await.insert((id, exec_id), process)
    }

    pub async fn remove_exec(&self, id: &str, exec_id: &str) {
        self.execs.lock().await.remove(&(id.to_string(), exec_id.to_string()));
    }

    /// Drops every exec of container `id` (their processes died with the container).
    pub async fn forget_execs_of(&self, id: &str) {
        let gone: Vec<Arc<Process>> = {
            let mut execs = self.execs.lock().await;
            let keys: Vec<_> = execs.keys().filter(|(c, _)| c == id).cloned().collect();
            keys.iter().filter_map(|k| execs.remove(k)).collect()
        };
        for e in gone {
            e.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn process(pid: i32) -> (Arc<Process>, tokio::sync::watch::Sender<Option<i32>>) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (Arc::new(Process::without_stdio(pid, rx)), tx)
    }

    #[tokio::test]
    async fn init_is_found_under_the_empty_exec_id_and_execs_under_their_own() {
        let t = ProcessTable::default();
        let (init, _i) = process(10);
        let (exec, _e) = process(11);
        t.insert_container("c1".into(), init).await;
        t.insert_exec("c1".into(), "e1".into(), exec).await;
        assert_eq!(t.get("c1", "").await.map(|p| p.pid), Ok(10));
        assert_eq!(t.get("c1", "e1").await.map(|p| p.pid), Ok(11));
        assert_eq!(
            t.get("c1", "e2").await.map(|p| p.pid),
            Err(NotFound::Exec { id: "c1".into(), exec_id: "e2".into() })
        );
        // An exec id belongs to one container.
        assert!(t.get("c2", "e1").await.is_err());
        assert_eq!(t.get("c2", "").await.map(|p| p.pid), Err(NotFound::Container("c2".into())));
        assert_eq!(NotFound::Container("c2".into()).to_string(), "container \"c2\" not found");
        assert_eq!(
            NotFound::Exec { id: "c1".into(), exec_id: "e2".into() }.to_string(),
            "exec \"e2\" of container \"c1\" not found"
        );
        assert!(t.has_container("c1").await && !t.has_container("c2").await);
        assert!(t.has_exec("c1", "e1").await && !t.has_exec("c1", "").await);
    }

    #[tokio::test]
    async fn running_init_pid_only_while_the_init_process_runs() {
        let t = ProcessTable::default();
        let (init, exit) = process(42);
        t.insert_container("pod".into(), init).await;
        assert_eq!(t.running_init_pid("pod").await, Some(42));
        assert_eq!(t.running_init_pid("other").await, None);
        exit.send(Some(0)).expect("exit");
        assert_eq!(t.running_init_pid("pod").await, None);
        assert!(t.get("pod", "").await.is_ok(), "an exited init process stays until removed");
        t.remove_container("pod").await;
        assert!(t.get("pod", "").await.is_err());
    }

    #[tokio::test]
    async fn forgetting_a_containers_execs_closes_them_and_keeps_the_others() {
        let t = ProcessTable::default();
        let (a, _a) = process(1);
        let (b, _b) = process(2);
        let (c, _c) = process(3);
        t.insert_exec("c1".into(), "a".into(), a.clone()).await;
        t.insert_exec("c1".into(), "b".into(), b).await;
        t.insert_exec("c2".into(), "a".into(), c.clone()).await;
        t.forget_execs_of("c1").await;
        assert!(t.get("c1", "a").await.is_err() && t.get("c1", "b").await.is_err());
        assert_eq!(t.get("c2", "a").await.map(|p| p.pid), Ok(3));
        // Closed: a reader of the forgotten exec's output sees EOF at once.
        let eof = tokio::time::timeout(Duration::from_secs(1), a.stdout.read(10)).await.expect("EOF, not a wait");
        assert!(eof.is_empty());
        assert!(tokio::time::timeout(Duration::from_millis(50), c.stdout.read(10)).await.is_err(), "c2's stays open");
    }

    #[tokio::test]
    async fn inserting_an_exec_twice_returns_the_replaced_one() {
        let t = ProcessTable::default();
        let (first, _f) = process(5);
        let (second, _s) = process(6);
        assert!(t.insert_exec("c1".into(), "e".into(), first).await.is_none());
        assert_eq!(t.insert_exec("c1".into(), "e".into(), second).await.map(|p| p.pid), Some(5));
        t.remove_exec("c1", "e").await;
        assert!(!t.has_exec("c1", "e").await);
    }
}
