//! What the task verbs share: the shim's containers and sandboxes by id, the sending end of
//! the event channel (and the forwarder's progress), the lock that serialises Create and Delete (sandbox boot and teardown
//! decisions), and the shim's exit signal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use containerd_shim::ExitSignal;

use crate::config::Config;
use crate::container::{Container, EventTx, Process};
use crate::error::{Error, Result};
use crate::policy::Tenant;
use crate::sandbox::Sandbox;
use crate::task::events::Forwarded;

/// Where Create gets the node configuration and a new pod's sandbox from: the real ones
/// (`/etc/bulwark/config.toml`, [`Sandbox::prepare`]), or, in unit tests, a test config and
/// sandboxes built on the fake VMM and agent.
pub struct Env {
    pub config: Box<dyn Fn() -> Result<Config> + Send + Sync>,
    pub prepare: PrepareSandbox,
}

/// Prepares the sandbox of (configuration, containerd namespace, sandbox id).
pub type PrepareSandbox = std::sync::Arc<dyn Fn(&Config, &str, &str) -> Result<Sandbox> + Send + Sync>;

impl Env {
    pub fn production() -> Env {
        Env { config: Box::new(Config::load), prepare: std::sync::Arc::new(Sandbox::prepare) }
    }
}

/// The state of the task service.
pub struct Service {
    pub env: Env,
    pub namespace: String,
    pub events: EventTx,
    pub exit: Arc<ExitSignal>,
    /// The forwarder's progress (None in unit tests, which read the channel themselves).
    pub forwarded: Option<Forwarded>,
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    /// The tenant (name, policy) of each sandbox, decided when it was created.
    tenants: Mutex<HashMap<String, Arc<Tenant>>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Serialises Create and Delete (sandbox boot/teardown decisions).
    pub lifecycle: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Service {
    pub fn new(namespace: String, events: EventTx, forwarded: Option<Forwarded>, exit: Arc<ExitSignal>) -> Self {
        Self::with_env(Env::production(), namespace, events, forwarded, exit)
    }

    /// [`Service::new`] with the configuration and sandboxes from `env`.
    pub fn with_env(
        env: Env,
        namespace: String,
        events: EventTx,
        forwarded: Option<Forwarded>,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Service {
            env,
            namespace,
            events,
            exit,
            forwarded,
            sandboxes: Mutex::new(HashMap::new()),
            tenants: Mutex::new(HashMap::new()),
            containers: Mutex::new(HashMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
        }
    }

    /// The container `id`.
    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found in this shim")))
    }

    /// The container `id` and its process `exec_id` (empty: the init process).
    pub fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Container>, Arc<Process>)> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        Ok((c, p))
    }

    pub fn has_container(&self, id: &str) -> bool {
        lock(&self.containers).contains_key(id)
    }

    pub fn has_containers(&self) -> bool {
        !lock(&self.containers).is_empty()
    }

    pub fn insert_container(&self, c: Arc<Container>) {
        lock(&self.containers).insert(c.id.clone(), c);
    }

    /// Forgets the container; returns whether it was the last of its sandbox.
    pub fn remove_container(&self, c: &Container) -> bool {
        let mut map = lock(&self.containers);
        map.remove(&c.id);
        !map.values().any(|o| o.sandbox_id == c.sandbox_id)
    }

    pub fn sandbox(&self, id: &str) -> Option<Arc<Sandbox>> {
        lock(&self.sandboxes).get(id).cloned()
    }

    pub fn insert_sandbox(&self, sb: Arc<Sandbox>) {
        lock(&self.sandboxes).insert(sb.id.clone(), sb);
    }

    pub fn remove_sandbox(&self, id: &str) -> Option<Arc<Sandbox>> {
        lock(&self.tenants).remove(id);
        lock(&self.sandboxes).remove(id)
    }

    /// Records the tenant of sandbox `id`.
    pub fn set_tenant(&self, id: &str, tenant: Tenant) {
        lock(&self.tenants).insert(id.to_string(), Arc::new(tenant));
    }

    /// The tenant (name, policy) of sandbox `id`; the default policy if none was recorded.
    pub fn tenant(&self, id: &str) -> Arc<Tenant> {
        lock(&self.tenants).get(id).cloned().unwrap_or_default()
    }

    /// Every sandbox, forgotten (Shutdown).
    pub fn take_sandboxes(&self) -> Vec<Arc<Sandbox>> {
        lock(&self.sandboxes).drain().map(|(_, s)| s).collect()
    }
}
