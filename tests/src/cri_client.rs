//! A blocking, typed CRI (runtime.v1) client over containerd's unix socket, the way kubelet
//! talks to it: `k8s-cri`'s tonic clients on a private tokio runtime, every call bounded in
//! time, errors as strings naming the call.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1::{ContainerState, ContainerStats, ContainerStatus, PodSandboxStatus};

/// Upper bound for RunPodSandbox / CreateContainer / StartContainer / Stop* (a VM boot under
/// TCG on a busy 2-core machine included).
pub const SLOW_CALL: Duration = Duration::from_secs(240);
/// Upper bound for every other call.
pub const FAST_CALL: Duration = Duration::from_secs(60);

/// A connected CRI client.
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// What one container should run; turned into a CRI `ContainerConfig`.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub memory_limit: Option<i64>,
    /// CFS (quota, period) in microseconds: kubelet's translation of a CPU limit.
    pub cpu_quota: Option<(i64, i64)>,
    /// cgroup v2 files to set (CRI `unified`), e.g. `pids.max`.
    pub unified: HashMap<String, String>,
    /// Capabilities added to the runtime's default set, as Kubernetes names them (`SYS_ADMIN`).
    pub add_caps: Vec<String>,
    /// The node's PID namespace (Kubernetes `hostPID`; in a Bulwark VM: the VM's).
    pub host_pid: bool,
    /// (host path, container path, read-only)
    pub mounts: Vec<(PathBuf, String, bool)>,
}

impl ContainerSpec {
    /// A container of `image` running `command`.
    pub fn new(name: &str, image: &str, command: &[&str]) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: image.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }
}

/// Output of ExecSync.
#[derive(Debug, Clone)]
pub struct ExecResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

impl CriClient {
    /// Connects to the CRI socket `socket` (containerd's gRPC socket).
    pub fn connect(socket: &Path) -> Result<CriClient, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("building a tokio runtime: {e}"))?;
        let path = socket.to_path_buf();
        let channel = rt.block_on(async move {
            let endpoint = Endpoint::try_from("http://[::1]:50051")
                .map_err(|e| format!("endpoint: {e}"))?
                .connect_timeout(Duration::from_secs(10));
            tokio::time::timeout(
                Duration::from_secs(20),
                endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                })),
            )
            .await
            .map_err(|_| "connecting to the CRI socket timed out".to_string())?
            .map_err(|e| format!("connecting to the CRI socket {}: {e}", socket.display()))
        })?;
        Ok(CriClient {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// Runs `fut` on this client's runtime, failing after `limit`.
    pub fn block_on<T>(
        &self,
        what: &str,
        limit: Duration,
        fut: impl Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        self.rt.block_on(async {
            tokio::time::timeout(limit, fut).await.map_err(|_| format!("{what}: no answer within {limit:?}"))?
        })
    }

    /// The tokio runtime (for the streaming client).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    fn call<Req, Resp, F, Fut>(&self, what: &str, limit: Duration, req: Req, f: F) -> Result<Resp, String>
    where
        F: FnOnce(RuntimeServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let client = self.runtime.clone();
        self.block_on(what, limit, async move {
            f(client, tonic::Request::new(req))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| format!("{what}: {} ({:?})", s.message(), s.code()))
        })
    }

    /// CRI Version: the runtime's name and version.
    pub fn version(&self) -> Result<(String, String), String> {
        let r =
            self.call("Version", FAST_CALL, cri::VersionRequest { version: "v1".into() }, |mut c, r| async move {
                c.version(r).await
            })?;
        Ok((r.runtime_name, r.runtime_version))
    }

    /// CRI Status: Ok when RuntimeReady and NetworkReady are both true.
    pub fn ready(&self) -> Result<(), String> {
        let r = self.call("Status", FAST_CALL, cri::StatusRequest { verbose: false }, |mut c, r| async move {
            c.status(r).await
        })?;
        let conditions = r.status.map(|s| s.conditions).unwrap_or_default();
        let not_ready: Vec<String> = conditions
            .iter()
            .filter(|c| !c.status)
            .map(|c| format!("{}: {} {}", c.r#type, c.reason, c.message))
            .collect();
        if conditions.is_empty() || !not_ready.is_empty() {
            return Err(format!("CRI not ready: {not_ready:?}"));
        }
        Ok(())
    }

    /// Names (repo tags) of the images CRI sees.
    pub fn image_tags(&self) -> Result<Vec<String>, String> {
        let client = self.images.clone();
        self.block_on("ListImages", FAST_CALL, async move {
            let mut client = client;
            let r = client
                .list_images(cri::ListImagesRequest { filter: None })
                .await
                .map_err(|s| format!("ListImages: {}", s.message()))?;
            Ok(r.into_inner().images.into_iter().flat_map(|i| i.repo_tags).collect())
        })
    }

    /// The pod config every test pod uses: `name` (also its UID and the log dir's last part),
    /// `hostname`, logs under `log_dir`, pod-wide network and IPC namespaces, per-container PID
    /// namespaces (kubelet's defaults).
    pub fn pod_config(name: &str, hostname: &str, log_dir: &Path) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "bulwark-e2e".into(),
                attempt: 0,
            }),
            hostname: hostname.into(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            labels: HashMap::from([("bulwark-e2e".to_string(), "cri".to_string())]),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(kubelet_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with `handler`; returns the sandbox id.
    pub fn run_pod_sandbox(&self, config: &cri::PodSandboxConfig, handler: &str) -> Result<String, String> {
        let req = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: handler.into() };
        let r = self.call("RunPodSandbox", SLOW_CALL, req, |mut c, r| async move { c.run_pod_sandbox(r).await })?;
        Ok(r.pod_sandbox_id)
    }

    /// PodSandboxStatus (verbose: `info` holds containerd's JSON, e.g. the netns path).
    pub fn pod_status(&self, pod: &str) -> Result<(PodSandboxStatus, HashMap<String, String>), String> {
        let req = cri::PodSandboxStatusRequest { pod_sandbox_id: pod.into(), verbose: true };
        let r =
            self.call("PodSandboxStatus", FAST_CALL, req, |mut c, r| async move { c.pod_sandbox_status(r).await })?;
        Ok((r.status.ok_or("PodSandboxStatus without a status")?, r.info))
    }

    /// The pod's IP as CRI reports it.
    pub fn pod_ip(&self, pod: &str) -> Result<String, String> {
        let (status, _) = self.pod_status(pod)?;
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        if ip.is_empty() {
            return Err(format!("pod {pod} has no IP in PodSandboxStatus"));
        }
        Ok(ip)
    }

    /// The netns path containerd created for the pod (from the verbose status info: its own
    /// `netNamespacePath`, or the sandbox's runtime spec).
    pub fn pod_netns(&self, pod: &str) -> Result<String, String> {
        let (_, info) = self.pod_status(pod)?;
        let text = info.get("info").ok_or("PodSandboxStatus verbose info has no \"info\" key")?;
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("sandbox info JSON: {e}"))?;
        let from_spec = v.pointer("/runtimeSpec/linux/namespaces").and_then(|n| n.as_array()).and_then(|ns| {
            ns.iter()
                .find(|n| n.get("type").and_then(|t| t.as_str()) == Some("network"))
                .and_then(|n| n.get("path"))
                .and_then(|p| p.as_str())
        });
        v.get("netNamespacePath")
            .and_then(|p| p.as_str())
            .or(from_spec)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("no network namespace path in the sandbox info: {text:.300}"))
    }

    /// StopPodSandbox.
    pub fn stop_pod(&self, pod: &str) -> Result<(), String> {
        let req = cri::StopPodSandboxRequest { pod_sandbox_id: pod.into() };
        self.call("StopPodSandbox", SLOW_CALL, req, |mut c, r| async move { c.stop_pod_sandbox(r).await })?;
        Ok(())
    }

    /// RemovePodSandbox.
    pub fn remove_pod(&self, pod: &str) -> Result<(), String> {
        let req = cri::RemovePodSandboxRequest { pod_sandbox_id: pod.into() };
        self.call("RemovePodSandbox", SLOW_CALL, req, |mut c, r| async move { c.remove_pod_sandbox(r).await })?;
        Ok(())
    }

    /// Ids of every pod sandbox containerd knows.
    pub fn list_pods(&self) -> Result<Vec<String>, String> {
        let req = cri::ListPodSandboxRequest { filter: None };
        let r = self.call("ListPodSandbox", FAST_CALL, req, |mut c, r| async move { c.list_pod_sandbox(r).await })?;
        Ok(r.items.into_iter().map(|p| p.id).collect())
    }

    /// CreateContainer in `pod`; the log goes to `<pod log dir>/<name>.log`.
    pub fn create_container(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        spec: &ContainerSpec,
    ) -> Result<String, String> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: spec.name.clone(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: spec.image.clone(), ..Default::default() }),
            command: spec.command.clone(),
            log_path: format!("{}.log", spec.name),
            stdin: spec.stdin,
            stdin_once: spec.stdin_once,
            tty: spec.tty,
            mounts: spec
                .mounts
                .iter()
                .map(|(host, ctr, ro)| cri::Mount {
                    host_path: host.to_string_lossy().into_owned(),
                    container_path: ctr.clone(),
                    readonly: *ro,
                    ..Default::default()
                })
                .collect(),
            linux: Some(cri::LinuxContainerConfig {
                resources: resources_of(spec),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: if spec.host_pid {
                            cri::NamespaceMode::Node as i32
                        } else {
                            cri::NamespaceMode::Container as i32
                        },
                        ..kubelet_namespaces()
                    }),
                    capabilities: (!spec.add_caps.is_empty())
                        .then(|| cri::Capability { add_capabilities: spec.add_caps.clone(), ..Default::default() }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let r = self.call("CreateContainer", SLOW_CALL, req, |mut c, r| async move { c.create_container(r).await })?;
        Ok(r.container_id)
    }

    /// StartContainer.
    pub fn start_container(&self, id: &str) -> Result<(), String> {
        let req = cri::StartContainerRequest { container_id: id.into() };
        self.call("StartContainer", SLOW_CALL, req, |mut c, r| async move { c.start_container(r).await })?;
        Ok(())
    }

    /// StopContainer with a grace period of `timeout_s` seconds.
    pub fn stop_container(&self, id: &str, timeout_s: i64) -> Result<(), String> {
        let req = cri::StopContainerRequest { container_id: id.into(), timeout: timeout_s };
        self.call("StopContainer", SLOW_CALL, req, |mut c, r| async move { c.stop_container(r).await })?;
        Ok(())
    }

    /// RemoveContainer.
    pub fn remove_container(&self, id: &str) -> Result<(), String> {
        let req = cri::RemoveContainerRequest { container_id: id.into() };
        self.call("RemoveContainer", SLOW_CALL, req, |mut c, r| async move { c.remove_container(r).await })?;
        Ok(())
    }

    /// ContainerStatus.
    pub fn container_status(&self, id: &str) -> Result<ContainerStatus, String> {
        let req = cri::ContainerStatusRequest { container_id: id.into(), verbose: false };
        let r = self.call("ContainerStatus", FAST_CALL, req, |mut c, r| async move { c.container_status(r).await })?;
        r.status.ok_or_else(|| "ContainerStatus without a status".into())
    }

    /// Polls ContainerStatus until the container has exited; bounded by `limit`.
    pub fn wait_exited(&self, id: &str, limit: Duration) -> Result<ContainerStatus, String> {
        let start = std::time::Instant::now();
        loop {
            let s = self.container_status(id)?;
            if s.state == ContainerState::ContainerExited as i32 {
                return Ok(s);
            }
            if start.elapsed() > limit {
                return Err(format!("container {id} did not exit within {limit:?}; state {:?}", s.state));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// ExecSync of `cmd` with a `timeout_s` second limit on the command.
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout_s: i64) -> Result<ExecResult, String> {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_s,
        };
        let limit = Duration::from_secs(timeout_s.max(1) as u64) + FAST_CALL;
        let r = self.call(&format!("ExecSync {cmd:?}"), limit, req, |mut c, r| async move { c.exec_sync(r).await })?;
        Ok(ExecResult {
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
            exit_code: r.exit_code,
        })
    }

    /// Exec: returns the streaming URL for the command.
    pub fn exec_url(&self, id: &str, cmd: &[&str], tty: bool, stdin: bool) -> Result<String, String> {
        let req = cri::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        };
        Ok(self.call("Exec", FAST_CALL, req, |mut c, r| async move { c.exec(r).await })?.url)
    }

    /// Attach: returns the streaming URL for the container's stdio.
    pub fn attach_url(&self, id: &str, tty: bool, stdin: bool) -> Result<String, String> {
        let req = cri::AttachRequest { container_id: id.into(), stdin, tty, stdout: true, stderr: !tty };
        Ok(self.call("Attach", FAST_CALL, req, |mut c, r| async move { c.attach(r).await })?.url)
    }

    /// ContainerStats.
    pub fn container_stats(&self, id: &str) -> Result<ContainerStats, String> {
        let req = cri::ContainerStatsRequest { container_id: id.into() };
        let r = self.call("ContainerStats", FAST_CALL, req, |mut c, r| async move { c.container_stats(r).await })?;
        r.stats.ok_or_else(|| "ContainerStats without stats".into())
    }

    /// UpdateContainerResources with a new memory limit (and everything else unset).
    pub fn update_memory_limit(&self, id: &str, bytes: i64) -> Result<(), String> {
        let req = cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(cri::LinuxContainerResources { memory_limit_in_bytes: bytes, ..Default::default() }),
            ..Default::default()
        };
        self.call("UpdateContainerResources", FAST_CALL, req, |mut c, r| async move {
            c.update_container_resources(r).await
        })?;
        Ok(())
    }
}

/// The messages of a CRI container log file (`<time> <stream> <P|F> <message>` lines), with
/// partial lines joined, as (stream, line).
pub fn read_cri_log(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = Vec::new();
    let mut partial: HashMap<String, String> = HashMap::new();
    for l in text.lines() {
        let mut parts = l.splitn(4, ' ');
        let (Some(_time), Some(stream), Some(tag), msg) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let buf = partial.entry(stream.to_string()).or_default();
        buf.push_str(msg.unwrap_or(""));
        if tag == "F" {
            lines.push((stream.to_string(), std::mem::take(buf)));
        }
    }
    lines
}

/// The container's resources as kubelet sends them; None when it sets none.
fn resources_of(spec: &ContainerSpec) -> Option<cri::LinuxContainerResources> {
    if spec.memory_limit.is_none() && spec.cpu_quota.is_none() && spec.unified.is_empty() {
        return None;
    }
    let (cpu_quota, cpu_period) = spec.cpu_quota.unwrap_or((0, 0));
    Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: spec.memory_limit.unwrap_or(0),
        cpu_quota,
        cpu_period,
        unified: spec.unified.clone(),
        ..Default::default()
    })
}

/// kubelet's defaults: pod-wide network and IPC namespaces, a PID namespace per container.
fn kubelet_namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_are_parsed_and_partials_joined() {
        let dir = std::env::temp_dir().join(format!("bwk-crilog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.log");
        std::fs::write(
            &p,
            "2024-01-01T00:00:00.1Z stdout P hel\n2024-01-01T00:00:00.2Z stderr F oops\n\
             2024-01-01T00:00:00.3Z stdout F lo\n2024-01-01T00:00:00.4Z stdout F \n",
        )
        .unwrap();
        let got = read_cri_log(&p);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            got,
            vec![
                ("stderr".to_string(), "oops".to_string()),
                ("stdout".to_string(), "hello".to_string()),
                ("stdout".to_string(), String::new()),
            ]
        );
    }
}
