//! Guest syscall telemetry end to end, through CRI: a pod in a Bulwark microVM with the guest's
//! eBPF collector on; the shim's relay sends the pod's syscall events to the node socket,
//! served by the Falco plugin's own listener, process table and field extraction (the Falco
//! API glue around them is covered by the plugin's tests with `falco_plugin_runner`; the
//! shared object and a static plugin API cannot coexist in one build). What a tenant does in the pod (read /etc/shadow, start nc towards the test's
//! own bridge gateway, drop and chmod +x a binary then run it, delete a log file) reaches the
//! plugin with the pod's name, namespace and container name, the process and the path or
//! address; and the Falco rule meant for each fires on it (rules/bulwark_rules.yaml, evaluated
//! on the very frames the shim sent, with the plugin's own field extraction).

#[path = "../../falco-plugin/tests/support/rules_eval.rs"]
mod rules_eval;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_e2e::cri::{Checks, ContainerdVersion, CriContainerd, TestServer, HANDLER_BULWARK};
use bulwark_e2e::cri_client::{read_cri_log, ContainerSpec, CriClient};
use bulwark_e2e::process::poll;
use bulwark_e2e::TEST_IMAGE;
use bulwark_falco_plugin::fields::{extract, Value};
use bulwark_falco_plugin::listener::{self, Counters, Queued};
use bulwark_falco_plugin::proctable::ProcTable;
use bulwark_protocol::telemetry::{decode_enriched, Enriched};

const POD: &str = "tele";
const NAMESPACE: &str = "bulwark-e2e";
const CONTAINER: &str = "app";
/// How long the events of one action may take to reach the plugin (TCG guests are slow).
const EVENT_LIMIT: Duration = Duration::from_secs(90);

/// One event as the plugin extracts it.
#[derive(Debug, Clone, Default)]
struct Seen {
    ty: String,
    proc_name: String,
    exepath: String,
    path: String,
    fd_name: String,
    pod: String,
    ns: String,
    container: String,
}

impl Seen {
    /// `m` through the plugin's field extraction, with its process table.
    fn of(m: &Enriched, procs: &ProcTable) -> Seen {
        let s = |name: &str| match extract(name, None, m, procs) {
            Value::Str(v) => v,
            _ => String::new(),
        };
        Seen {
            ty: s("evt.type"),
            proc_name: s("proc.name"),
            exepath: s("proc.exepath"),
            path: s("evt.arg.path"),
            fd_name: s("fd.name"),
            pod: s("k8s.pod.name"),
            ns: s("k8s.ns.name"),
            container: s("container.name"),
        }
    }

    fn in_our_container(&self) -> bool {
        self.pod == POD && self.ns == NAMESPACE && self.container == CONTAINER
    }
}

/// One tenant action and how to recognise its event and its rule.
struct Expect {
    what: &'static str,
    matches: fn(&Seen, &Ctx) -> bool,
    rule: &'static str,
}

struct Ctx {
    gateway: String,
    port: u16,
}

fn expectations() -> Vec<Expect> {
    vec![
        Expect {
            what: "cat opens /etc/shadow",
            matches: |s, _| s.ty.starts_with("open") && s.proc_name == "cat" && s.fd_name == "/etc/shadow",
            rule: "Read sensitive file untrusted",
        },
        Expect {
            what: "nc is started",
            matches: |s, _| s.ty.starts_with("execve") && s.proc_name == "nc",
            rule: "Launch Suspicious Network Tool in Container",
        },
        Expect {
            what: "nc connects to the bridge gateway",
            matches: |s, c| {
                s.ty == "connect" && s.proc_name == "nc" && s.fd_name.ends_with(&format!("{}:{}", c.gateway, c.port))
            },
            rule: "",
        },
        Expect {
            what: "chmod +x of /tmp/x",
            matches: |s, _| s.ty.contains("chmod") && s.path.ends_with("/tmp/x"),
            rule: "Container Drift Detected (chmod)",
        },
        Expect {
            what: "/tmp/x is executed",
            // A script: the path executed is /tmp/x, the program running it the shell.
            matches: |s, _| s.ty.starts_with("execve") && s.path == "/tmp/x",
            rule: "",
        },
        Expect {
            what: "rm deletes /var/log/app.log",
            matches: |s, _| s.ty.starts_with("unlink") && s.proc_name == "rm" && s.path == "/var/log/app.log",
            rule: "Delete or rename log file in container",
        },
    ]
}

/// The plugin's node socket listener on `socket`: checked frames arrive on the receiver.
struct Plugin {
    frames: Receiver<Queued>,
    stop: Arc<AtomicBool>,
    procs: ProcTable,
    /// Every event so far, in order, as delivered.
    events: Vec<Enriched>,
}

impl Plugin {
    fn start(socket: &Path) -> Result<Plugin, String> {
        let l = listener::bind(socket).map_err(|e| format!("the plugin's listener: {e}"))?;
        let (tx, rx) = sync_channel(65_536);
        let stop = Arc::new(AtomicBool::new(false));
        listener::spawn_acceptor(l, tx, Arc::new(Counters::default()), stop.clone(), 64)
            .map_err(|e| format!("the plugin's acceptor: {e}"))?;
        Ok(Plugin { frames: rx, stop, procs: ProcTable::new(65_536), events: Vec::new() })
    }

    /// Takes events for at most `limit`, until `done` says enough.
    fn drain(&mut self, seen: &mut Vec<Seen>, limit: Duration, done: impl Fn(&[Seen]) -> bool) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && !done(seen) {
            let Ok((_, bytes)) = self.frames.recv_timeout(Duration::from_millis(200)) else { continue };
            match decode_enriched(&bytes) {
                Ok(m) => {
                    self.procs.observe(&m);
                    seen.push(Seen::of(&m, &self.procs));
                    self.events.push(m);
                }
                Err(e) => seen.push(Seen { ty: format!("<undecodable frame: {e}>"), ..Default::default() }),
            }
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn summary(seen: &[Seen]) -> String {
    let ours: Vec<String> = seen
        .iter()
        .filter(|s| s.container == CONTAINER)
        .map(|s| {
            format!("{} {} {} {}", s.ty, s.proc_name, if s.path.is_empty() { &s.fd_name } else { &s.path }, s.exepath)
        })
        .collect();
    let n = ours.len();
    format!(
        "{} events in all, {n} of container {CONTAINER}; the last 60 of those: {:?}",
        seen.len(),
        &ours[n.saturating_sub(60)..]
    )
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn guest_syscalls_reach_the_falco_plugin_with_pod_identity_and_fire_the_rules() {
    if let Err(e) = scenario() {
        panic!("{e}");
    }
}

fn scenario() -> Result<(), String> {
    let tmp = TempDir(std::env::temp_dir().join(format!("bulwark-e2e-telemetry-{}", std::process::id())));
    std::fs::create_dir_all(&tmp.0).map_err(|e| e.to_string())?;
    let socket = tmp.0.join("telemetry.sock");
    let mut plugin = Plugin::start(&socket)?;
    let c = CriContainerd::start_with(ContainerdVersion::V1, |s| {
        s.extra.push_str(&format!("\n[telemetry]\nnode_socket = {:?}\n", socket.display().to_string()));
    })?;
    let cl = &c.client;
    let mut checks = Checks::new("telemetry");
    let log_dir = c.pod_log_dir(POD)?;
    let pod_config = CriClient::pod_config(POD, "bwk-tele", &log_dir);
    let mut pod = String::new();
    if !checks.run("RunPodSandbox", || {
        pod = cl.run_pod_sandbox(&pod_config, HANDLER_BULWARK)?;
        Ok(())
    }) {
        return checks.finish(|| c.diagnostics());
    }
    let netns = cl.pod_netns(&pod).into_iter().collect::<Vec<_>>();
    let app = ContainerSpec::new(
        CONTAINER,
        TEST_IMAGE,
        &[
            "sh",
            "-c",
            "echo 'root:*:19000:0:99999:7:::' >/etc/shadow; mkdir -p /var/log; echo app-ready; exec sleep 100000",
        ],
    );
    let mut id = String::new();
    let started = checks.run("the tenant's container starts", || {
        id = cl.create_container(&pod, &pod_config, &app)?;
        cl.start_container(&id)?;
        let log = log_dir.join(format!("{CONTAINER}.log"));
        poll(Duration::from_secs(120), || read_cri_log(&log).iter().any(|(_, l)| l == "app-ready").then_some(()))
            .ok_or_else(|| format!("{} never said app-ready: {:?}", log.display(), read_cri_log(&log)))
    });
    let mut seen = Vec::new();
    if started {
        let server = TestServer::start(c.net.gateway, "hello\n", Duration::from_secs(300))?;
        let ctx = Ctx { gateway: c.net.gateway.to_string(), port: server.addr.port() };
        // nc is exec'd by the runtime itself: busybox's sh would start an applet through
        // /proc/self/exe, and the kernel names such a process "exe" at its execve (it renames
        // itself afterwards), as Falco would see it too.
        let (gw, port) = (ctx.gateway.clone(), ctx.port.to_string());
        let actions: Vec<Vec<&str>> = vec![
            vec!["sh", "-c", "cat /etc/shadow >/dev/null"],
            vec!["nc", "-w", "3", &gw, &port],
            vec!["sh", "-c", "printf '#!/bin/sh\\necho dropped\\n' >/tmp/x && chmod +x /tmp/x && /tmp/x"],
            vec!["sh", "-c", "echo x >/var/log/app.log && rm /var/log/app.log"],
        ];
        checks.run("the tenant's actions run", || {
            for a in &actions {
                let r = cl.exec_sync(&id, a, 60)?;
                // nc may end non-zero (the server closes first); the others must succeed.
                if r.exit_code != 0 && a[0] != "nc" {
                    return Err(format!("`{a:?}` exited {}: {:?} {:?}", r.exit_code, r.stdout, r.stderr));
                }
            }
            Ok(())
        });
        let expects = expectations();
        let all_seen =
            |seen: &[Seen]| expects.iter().all(|x| seen.iter().any(|s| s.in_our_container() && (x.matches)(s, &ctx)));
        plugin.drain(&mut seen, EVENT_LIMIT, all_seen);
        for x in &expects {
            checks.run(&format!("the plugin gets the event: {}", x.what), || {
                match seen.iter().find(|s| (x.matches)(s, &ctx)) {
                    Some(s) if s.in_our_container() => Ok(()),
                    Some(s) => Err(format!("seen, but with the wrong identity: {s:?} (want pod {POD}, ns {NAMESPACE}, container {CONTAINER})")),
                    None => Err(format!("not seen within {EVENT_LIMIT:?}. {}", summary(&seen))),
                }
            });
        }
        let frames = &plugin.events;
        let rules = rules_eval::load();
        for x in expects.iter().filter(|x| !x.rule.is_empty()) {
            checks.run(&format!("rule {:?} fires on: {}", x.rule, x.what), || {
                // The rule over every event up to that one (the process table needs them).
                let idx = seen
                    .iter()
                    .position(|s| (x.matches)(s, &ctx) && s.in_our_container())
                    .ok_or_else(|| format!("the event was not seen ({} events)", frames.len()))?;
                if rules_eval::fires(&rules, x.rule, &frames[..=idx]) {
                    Ok(())
                } else {
                    Err(format!("the rule does not fire on {:?}", frames[idx]))
                }
            });
        }
        drop(server);
    }
    checks.run("StopPodSandbox and RemovePodSandbox", || cl.stop_pod(&pod).and_then(|_| cl.remove_pod(&pod)));
    checks.run("nothing is left behind", || c.assert_clean(&netns));
    checks.finish(|| c.diagnostics())
}
