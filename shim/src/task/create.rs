//! Create: checks the request, boots the pod's sandbox VM on its first container (sized once,
//! by that container), mounts the rootfs into the share, creates the container in the guest,
//! and hands the container its init process (container/: /tasks/create, stdio, exit watcher).
//! Anything done before a failure is undone (VM first, so virtiofsd lets go of the rootfs,
//! then the mounts). Also starts a new sandbox's OOM watcher.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::api;
use tokio::net::unix::pipe;

use crate::agent::{AgentApi, NewContainer};
use crate::config::Config;
use crate::container::{self, Container, ContainerConfig, Stdio};
use crate::error::{Error, Result};
use crate::policy::{self, Tenant, TenantPolicy};
use crate::resources::rootfs;
use crate::resources::volumes::SharedMount;
use crate::sandbox::sizing::{self, VmSize};
use crate::sandbox::Sandbox;
use crate::task::service::Service;

/// What creating the container in the guest gave.
struct InGuest {
    agent: Arc<dyn AgentApi>,
    guest_pid: u32,
    stdout: Option<pipe::Sender>,
    stderr: Option<pipe::Sender>,
}

pub async fn create(svc: &Arc<Service>, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse> {
    container::validate_id(&req.id)?;
    container::validate_id(&svc.namespace)?;
    if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
        return Err(Error::InvalidArgument("checkpoint/restore is not supported by the bulwark runtime".into()));
    }
    let bundle = PathBuf::from(&req.bundle);
    if !bundle.is_absolute() || !bundle.is_dir() {
        return Err(Error::InvalidArgument(format!("bundle {:?} is not an absolute directory path", req.bundle)));
    }
    let _g = svc.lifecycle.lock().await;
    if svc.has_container(&req.id) {
        return Err(Error::AlreadyExists(format!("container {} already exists", req.id)));
    }
    let cfg = (svc.env.config)()?;
    let (spec, raw_spec) = container::load_spec(&bundle)?;
    let sid = container::sandbox_id_of(&spec, &req.id)?;
    if cfg.jail.unprivileged_virtiofsd {
        if let Some(user) = spec.process().as_ref().map(|p| p.user()) {
            container::check_ids_mapped(user, crate::jail::idmap::BLOCK, &format!("container {}", req.id))?;
        }
    }

    let annotations = spec.annotations().clone().unwrap_or_default();
    let new_pod = svc.sandbox(&sid).is_none();
    if new_pod {
        let tenant = policy::tenant_of(&annotations);
        let tp = cfg.tenant_policy(tenant.as_deref());
        check_tenant_ceilings(&annotations, tenant.as_deref(), &tp)?;
        for a in policy::ignored_annotations(&annotations) {
            tracing::warn!("sandbox {sid}: annotation {a:?} is not one Bulwark reads; ignored");
        }
        svc.set_tenant(&sid, Tenant { name: tenant, policy: tp });
    }
    let tenant = svc.tenant(&sid);
    let (sandbox, new_sandbox) = match svc.sandbox(&sid) {
        Some(s) => (s, false),
        None => match prepare_sandbox(svc, sandbox_config(&cfg, &tenant.policy), &sid).await {
            Ok(s) => (Arc::new(s), true),
            Err(e) => {
                svc.remove_sandbox(&sid);
                return Err(e);
            }
        },
    };
    let undo_sandbox = |sb: Arc<Sandbox>| async move {
        if new_sandbox {
            svc.remove_sandbox(&sb.id);
            sb.teardown().await;
        }
    };
    if new_sandbox {
        if let Err(e) = sandbox.set_pod_config(&spec, tenant.policy.network_bandwidth_mbit) {
            undo_sandbox(sandbox).await;
            return Err(e);
        }
    }

    // The VM is sized once, by the container that boots it.
    let boot = new_sandbox
        .then(|| sizing::size_vm(&cfg.vm, &annotations))
        .map(|(size, why)| within_ceilings(size, why, &tenant.policy));
    let mounts = {
        let (id, b, share, rootfs) = (req.id.clone(), bundle.clone(), sandbox.dir.clone(), req.rootfs.clone());
        let (tenant, idmap) = (tenant.clone(), sandbox.idmap());
        match tokio::task::spawn_blocking(move || {
            rootfs::mount_rootfs(&id, &b, &spec, &rootfs, &share, &tenant.policy, idmap.as_deref())
        })
        .await
        {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                undo_sandbox(sandbox).await;
                return Err(e);
            }
            Err(e) => {
                undo_sandbox(sandbox).await;
                return Err(Error::Mount(format!("rootfs mount task failed: {e}")));
            }
        }
    };

    let unconfined = tenant.policy.allow_unconfined_seccomp;
    // Known to the telemetry relay before its first process runs.
    sandbox.telemetry().add_container(&req.id, &annotations);
    let in_guest = match create_in_vm(&cfg, &req, raw_spec, &sandbox, boot, &mounts.shared, unconfined).await {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("creating container {}: {e}", req.id);
            sandbox.telemetry().remove_container(&req.id);
            // VM first (virtiofsd lets go of the rootfs), then the mounts.
            undo_sandbox(sandbox).await;
            let m = mounts.clone();
            let _ = tokio::task::spawn_blocking(move || rootfs::unmount_rootfs(&m)).await;
            return Err(e);
        }
    };
    if new_sandbox {
        svc.insert_sandbox(sandbox.clone());
        watch_oom(svc, &sandbox, in_guest.agent.clone());
        watch_health(&sandbox, in_guest.agent.clone());
    }

    let c = Arc::new(Container::new(
        ContainerConfig {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            sandbox_id: sid,
            stdio: Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
            mounts,
            guest_pid: in_guest.guest_pid,
        },
        in_guest.agent,
        sandbox.clone(),
        svc.events.clone(),
    ));
    svc.insert_container(c.clone());
    c.init_created(&req.rootfs, in_guest.stdout, in_guest.stderr);
    let pid = c.pid();
    tracing::info!(
        "container {} created in sandbox {} (QEMU pid {pid}, guest pid {})",
        req.id,
        sandbox.id,
        in_guest.guest_pid
    );
    Ok(api::CreateTaskResponse { pid, ..Default::default() })
}

/// Prepares a new sandbox (its state directory, share and id-map: mounts, a fork, a scan of
/// `/proc`) on a blocking thread, not on the runtime's workers.
async fn prepare_sandbox(svc: &Arc<Service>, cfg: Config, sid: &str) -> Result<Sandbox> {
    let (prepare, ns, id) = (svc.env.prepare.clone(), svc.namespace.clone(), sid.to_string());
    tokio::task::spawn_blocking(move || prepare(&cfg, &ns, &id))
        .await
        .map_err(|e| Error::Internal(format!("preparing sandbox {sid}: {e}")))?
}

/// The node configuration as it applies to a new sandbox of this tenant: the tenant's host
/// cgroup bounds, where it has its own (pure).
fn sandbox_config(cfg: &Config, tp: &TenantPolicy) -> Config {
    let mut c = cfg.clone();
    if let Some(p) = tp.pids_max {
        c.cgroup.pids_max = p;
    }
    if let Some(w) = tp.io_weight {
        c.cgroup.io_weight = w;
    }
    c
}

/// Refuses a pod that asks for more than its tenant may have (pure).
fn check_tenant_ceilings(
    annotations: &std::collections::HashMap<String, String>,
    tenant: Option<&str>,
    tp: &TenantPolicy,
) -> Result<()> {
    let who = match tenant {
        Some(t) => format!("tenant {t:?} ([tenants.{t}] or [tenant] in the node's config.toml)"),
        None => "pods outside a known tenant ([tenant] in the node's config.toml)".to_string(),
    };
    let (vcpus, mib) = sizing::requested(annotations);
    if let Some(v) = vcpus.filter(|v| *v > tp.max_vcpus) {
        return Err(Error::InvalidArgument(format!(
            "the pod asks for {v} vCPUs (CPU limits plus overhead); {who} allows at most {}",
            tp.max_vcpus
        )));
    }
    if let Some(m) = mib.filter(|m| *m > tp.max_memory_mib) {
        return Err(Error::InvalidArgument(format!(
            "the pod asks for {m} MiB of memory (limits plus overhead); {who} allows at most {} MiB",
            tp.max_memory_mib
        )));
    }
    Ok(())
}

/// The VM size within the tenant's ceilings (pods without limits get the node's default
/// size, which may exceed a small tenant's ceiling).
fn within_ceilings(size: VmSize, why: String, tp: &TenantPolicy) -> (VmSize, String) {
    let capped = VmSize { vcpus: size.vcpus.min(tp.max_vcpus), memory_mib: size.memory_mib.min(tp.max_memory_mib) };
    if capped == size {
        (size, why)
    } else {
        (capped, format!("{why}; capped to the tenant's ceiling: {} vCPU, {} MiB", capped.vcpus, capped.memory_mib))
    }
}

/// Boots the VM if new, opens the output FIFOs and creates the container in the guest.
async fn create_in_vm(
    cfg: &Config,
    req: &api::CreateTaskRequest,
    raw_spec: Vec<u8>,
    sandbox: &Arc<Sandbox>,
    boot: Option<(VmSize, String)>,
    shared_mounts: &[SharedMount],
    allow_unconfined_seccomp: bool,
) -> Result<InGuest> {
    if let Some((size, why)) = boot {
        tracing::info!("sandbox {}: {why}", sandbox.id);
        let accel = crate::sandbox::boot::resolve_accel(cfg).await;
        sandbox.boot(accel, size, Duration::from_secs(cfg.vm.boot_timeout_secs)).await?;
    }
    let agent =
        sandbox.agent().ok_or_else(|| Error::FailedPrecondition(format!("sandbox {} has no agent", sandbox.id)))?;
    let stdout = container::stdio::open_output(&req.stdout).await?;
    let stderr = container::stdio::open_output(&req.stderr).await?;
    let guest_pid = agent
        .create_container(NewContainer {
            id: req.id.clone(),
            sandbox_id: sandbox.id.clone(),
            spec_json: raw_spec,
            rootfs_path: rootfs::guest_rootfs_path(&req.id),
            stdin: !req.stdin.is_empty(),
            terminal: req.terminal,
            shared_mounts: shared_mounts
                .iter()
                .map(|m| bulwark_protocol::agent::SharedMount {
                    mount_index: m.index,
                    share_path: m.share_path.clone(),
                    ..Default::default()
                })
                .collect(),
            allow_unconfined_seccomp,
        })
        .await?;
    Ok(InGuest { agent, guest_pid, stdout, stderr })
}

/// Starts the OOM watcher of a freshly booted sandbox: `/tasks/oom` for every OOM kill the
/// guest reports in a container of that sandbox this shim knows; other ids are logged and
/// dropped.
/// Starts the health check of a freshly booted sandbox: a guest that stops answering ends
/// its pod (the VM is killed; every container reports its exit).
fn watch_health(sandbox: &Arc<Sandbox>, agent: Arc<dyn AgentApi>) {
    let (gone, end) = (Arc::downgrade(sandbox), Arc::downgrade(sandbox));
    crate::sandbox::health::spawn(
        agent,
        crate::sandbox::health::Schedule::default(),
        move || gone.upgrade().is_none_or(|s| s.is_stopping()),
        move |why: String| async move {
            if let Some(sb) = end.upgrade() {
                tracing::error!("sandbox {}: {why}; ending the pod (killing its VM)", sb.id);
                sb.kill_vm().await;
            }
        },
    );
}

fn watch_oom(svc: &Arc<Service>, sandbox: &Arc<Sandbox>, agent: Arc<dyn AgentApi>) {
    let svc = Arc::downgrade(svc);
    let sid = sandbox.id.clone();
    crate::sandbox::oom::spawn(sandbox, agent, move |container_id: String| {
        let svc = svc.clone();
        let sid = sid.clone();
        async move {
            let Some(svc) = svc.upgrade() else { return };
            match svc.container(&container_id) {
                Ok(c) if c.sandbox_id == sid => c.on_oom_event(),
                _ => tracing::warn!("sandbox {sid}: OOM event for unknown container {container_id:?} ignored"),
            }
        }
    });
}
