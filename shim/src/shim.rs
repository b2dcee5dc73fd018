//! The shim's lifecycle entry points (containerd-shim's `Shim` trait): `start` (spawn the
//! daemon, grouped by pod sandbox), `delete` (clean up after a crashed shim, through
//! sandbox/state_dir.rs), `wait`, and creation of the Task service (task/).

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api::DeleteResponse, spawn, ExitSignal, Flags, Shim, StartOpts};

use crate::config::Config;
use crate::container;
use crate::sandbox::state_dir;
use crate::task::TaskService;

/// The shim process.
pub struct BulwarkShim {
    exit: Arc<ExitSignal>,
    id: String,
    namespace: String,
}

#[async_trait]
impl Shim for BulwarkShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        BulwarkShim { exit: Arc::new(ExitSignal::default()), id: args.id.clone(), namespace: args.namespace.clone() }
    }

    /// `start`: one shim daemon per sandbox. The grouping id is the CRI sandbox id when the
    /// bundle has one (so a pod's containers share a shim and a VM), else the container id.
    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        container::validate_id(&opts.id)?;
        let bundle = std::env::current_dir().map_err(|e| containerd_shim::Error::Other(format!("cwd: {e}")))?;
        let grouping = container::sandbox_id_from_bundle(&bundle, &opts.id);
        let address = spawn(opts, &grouping, Vec::new()).await?;
        // containerd reads it back when it reconnects to a running shim.
        std::fs::write(bundle.join("address"), &address)
            .map_err(|e| containerd_shim::Error::Other(format!("writing {}/address: {e}", bundle.display())))?;
        Ok(address)
    }

    /// `delete` after the shim died: cwd is the bundle. Kill the sandbox's leftover helpers
    /// (verified by /proc/<pid>/exe), unmount, remove the state dir. Reports 137 (SIGKILL).
    async fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        container::validate_id(&self.id)?;
        container::validate_id(&self.namespace)?;
        let bundle = std::env::current_dir().map_err(|e| containerd_shim::Error::Other(format!("cwd: {e}")))?;
        let cfg = Config::load().unwrap_or_else(|e| {
            tracing::warn!("{e}; cleaning up with the default paths");
            Config::default()
        });
        let sid = container::sandbox_id_from_bundle(&bundle, &self.id);
        let dir = state_dir::sandbox_dir(&cfg.paths.runtime_dir, &self.namespace, &sid);
        let id = self.id.clone();
        let ns = self.namespace.clone();
        let res = tokio::task::spawn_blocking(move || {
            if sid == id {
                if dir.exists() {
                    state_dir::cleanup_dir(&dir)?;
                }
            } else {
                // One container of a pod: only its share entry; the pod's VM belongs to the
                // sandbox container's delete.
                state_dir::cleanup_container_share(&dir, &id)?;
            }
            let rootfs = bundle.join("rootfs");
            for _ in 0..16 {
                if nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH).is_err() {
                    break;
                }
            }
            tracing::info!("cleaned up after container {id} (namespace {ns})");
            Ok::<(), crate::error::Error>(())
        })
        .await
        .map_err(|e| containerd_shim::Error::Other(format!("cleanup task: {e}")))?;
        res?;
        Ok(DeleteResponse {
            pid: 0,
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(crate::container::process::now()),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        TaskService::new(self.namespace.clone(), publisher, self.exit.clone())
    }
}
