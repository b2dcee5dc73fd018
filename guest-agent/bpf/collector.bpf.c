// SPDX-License-Identifier: GPL-2.0
/* Bulwark's guest syscall collector (loaded by bulwark-agent, guest-agent/src/telemetry/).
 *
 * Programs (raw tracepoints: no tracefs, no per-syscall attach):
 *   sys_enter            a syscall the collector knows, enabled in the config map, by a task of a
 *                        registered container cgroup (or one below it), not the agent's own
 *                        executable: its arguments are kept per thread (pending map).
 *   sys_exit             the same thread's syscall returns: one record with the result, the
 *                        arguments decoded, paths read from the caller's memory or resolved from
 *                        the kernel's file objects.
 *   sched_process_exec   a successful execve/execveat: exe path, argv from the new image's
 *                        memory, cwd (sys_exit skips successful execs).
 *   sched_process_fork   the child's pid as the guest's root namespace sees it, for the fork
 *                        family's result; children of tracked processes are tracked.
 *   sched_process_exit   the last thread of a tracked process (one that ran an execve in a
 *                        watched container, or a descendant) exits.
 * Records go to the ring buffer `events`; a full ring buffer is counted in `lost`. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "collector.h"

char LICENSE[] SEC("license") = "GPL";

_Static_assert(__builtin_offsetof(struct raw_event, res) == 16, "raw_event layout");
_Static_assert(__builtin_offsetof(struct raw_event, pid) == 32, "raw_event layout");
_Static_assert(__builtin_offsetof(struct raw_event, flags) == 64, "raw_event layout");
_Static_assert(__builtin_offsetof(struct raw_event, target_pid) == 96, "raw_event layout");
_Static_assert(__builtin_offsetof(struct raw_event, cap_permitted) == 112, "raw_event layout");
_Static_assert(__builtin_offsetof(struct raw_event, exe_nlink) == 136, "raw_event layout");
_Static_assert(__builtin_offsetof(struct raw_event, rflags) == 150, "raw_event layout");
_Static_assert(__builtin_offsetof(struct raw_event, laddr) == 152, "raw_event layout");
_Static_assert(__builtin_offsetof(struct raw_event, comm) == 184, "raw_event layout");
_Static_assert(__builtin_offsetof(struct raw_event, target_id3) == 204, "raw_event layout");
_Static_assert(sizeof(struct raw_event) == 208, "raw_event layout");

#define MAX_CGROUP_DEPTH 16
#define MAX_PATH_DEPTH 64
#define NAME_MAX 255
#define PATHBUF_HALF 4096
#define AT_FDCWD -100
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define S_IFMT 0170000
#define S_IFSOCK 0140000
#define TS_COMPAT 0x0002
#define SOCKADDR_MAX 112
#define FD_NAME_MAX 64

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 2 * 1024 * 1024);
} events SEC(".maps");

/* Registered container cgroups: kernfs id -> 1. Filled by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} containers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct collector_config);
} config SEC(".maps");

/* Records the ring buffer had no room for. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* Processes that ran an execve in a watched container, and their descendants (by tgid):
 * only their exits are reported (at exit the executable is gone, so is_agent() cannot tell
 * libcontainer's helpers, which never exec, from the tenant's processes). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} tracked SEC(".maps");

struct pending {
	__u64 args[6];
	__u64 cgroup;
	__s64 child;
	__u32 nr;
	__u32 type;
};

/* A syscall in flight, by thread id (LRU: a thread that never returns is forgotten). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct pending);
} pending SEC(".maps");

struct scratch {
	struct raw_event ev;
	__u8 data[DATA_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* A path walk's state and buffer: components are written backwards into buf[0..PATHBUF_HALF).
 * The state lives in the map, not on the stack, so the verifier sees one unknown position per
 * step instead of a new one per iteration. */
struct pathbuf {
	__u64 dentry;
	__u64 vfsmnt;
	__u64 root_dentry;
	__u64 root_mnt;
	__u32 pos;
	__u32 truncated;
	__u32 at_root; /* the walk reached the task's root or the namespace's */
	__u32 pad;
	__u8 buf[PATHBUF_HALF + NAME_MAX + 1];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pathbuf);
} pathbufs SEC(".maps");

static __always_inline __u32 syscall_type(long nr)
{
	switch (nr) {
	case 2: /* open */
	case 85: /* creat */
	case 257:
		return ET_OPENAT;
	case 437:
		return ET_OPENAT2;
	case 59:
		return ET_EXECVE;
	case 322:
		return ET_EXECVEAT;
	case 42:
		return ET_CONNECT;
	case 43:
		return ET_ACCEPT;
	case 288:
		return ET_ACCEPT4;
	case 90:
		return ET_CHMOD;
	case 91:
		return ET_FCHMOD;
	case 268:
		return ET_FCHMODAT;
	case 87:
		return ET_UNLINK;
	case 263:
		return ET_UNLINKAT;
	case 82:
		return ET_RENAME;
	case 264:
		return ET_RENAMEAT;
	case 316:
		return ET_RENAMEAT2;
	case 105:
		return ET_SETUID;
	case 106:
		return ET_SETGID;
	case 113:
		return ET_SETREUID;
	case 117:
		return ET_SETRESUID;
	case 101:
		return ET_PTRACE;
	case 165:
		return ET_MOUNT;
	case 166:
		return ET_UMOUNT;
	case 175:
		return ET_INIT_MODULE;
	case 313:
		return ET_FINIT_MODULE;
	case 321:
		return ET_BPF;
	case 319:
		return ET_MEMFD_CREATE;
	case 32:
		return ET_DUP;
	case 33:
		return ET_DUP2;
	case 292:
		return ET_DUP3;
	case 57:
		return ET_FORK;
	case 58:
		return ET_VFORK;
	case 56:
		return ET_CLONE;
	case 435:
		return ET_CLONE3;
	}
	return 0;
}

static __always_inline struct collector_config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config, &zero);
}

static __always_inline bool type_on(struct collector_config *cfg, __u32 type)
{
	return type < 64 && (cfg->types & (1ULL << type));
}

static __always_inline struct kernfs_node *kernfs_parent(struct kernfs_node *kn)
{
	if (bpf_core_field_exists(kn->parent))
		return BPF_CORE_READ(kn, parent);
	return BPF_CORE_READ((struct kernfs_node___new *)kn, __parent);
}

/* The registered container cgroup the task is in (its own or an ancestor), or 0. */
static __always_inline __u64 container_cgroup(struct task_struct *task)
{
	struct kernfs_node *kn = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn);
	for (int i = 0; i < MAX_CGROUP_DEPTH; i++) {
		if (!kn)
			return 0;
		__u64 id = BPF_CORE_READ(kn, id);
		if (bpf_map_lookup_elem(&containers, &id))
			return id;
		kn = kernfs_parent(kn);
	}
	return 0;
}

/* The task still runs the agent's executable (libcontainer's init before its execve). */
static __always_inline bool is_agent(struct task_struct *task, struct collector_config *cfg)
{
	struct inode *ino = BPF_CORE_READ(task, mm, exe_file, f_inode);
	if (!ino)
		return false;
	return BPF_CORE_READ(ino, i_ino) == cfg->agent_ino && BPF_CORE_READ(ino, i_sb, s_dev) == cfg->agent_dev;
}

static __always_inline __u32 encode_dev(__u32 major, __u32 minor)
{
	return (minor & 0xff) | (major << 8) | ((minor & ~0xffu) << 12);
}

static __always_inline struct scratch *begin(__u32 type, __u64 cgroup, struct task_struct *task)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;
	struct raw_event *ev = &s->ev;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->version = RAW_VERSION;
	ev->type = type;
	ev->ts_boot_ns = bpf_ktime_get_boot_ns();
	ev->cgroup_id = cgroup;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	ev->pid = pid_tgid >> 32;
	ev->tid = (__u32)pid_tgid;
	ev->ppid = BPF_CORE_READ(task, real_parent, tgid);
	__u64 ugid = bpf_get_current_uid_gid();
	ev->uid = (__u32)ugid;
	ev->gid = ugid >> 32;
	ev->loginuid = 0xffffffff;
	if (bpf_core_field_exists(task->loginuid))
		ev->loginuid = BPF_CORE_READ(task, loginuid.val);
	struct tty_struct *tty = BPF_CORE_READ(task, signal, tty);
	if (tty) {
		int major = BPF_CORE_READ(tty, driver, major);
		int minor = BPF_CORE_READ(tty, driver, minor_start) + BPF_CORE_READ(tty, index);
		ev->tty = encode_dev(major, minor);
	}
	const struct cred *cred = BPF_CORE_READ(task, cred);
	bpf_core_read(&ev->cap_permitted, sizeof(__u64), &cred->cap_permitted);
	bpf_core_read(&ev->cap_effective, sizeof(__u64), &cred->cap_effective);
	bpf_core_read(&ev->cap_inheritable, sizeof(__u64), &cred->cap_inheritable);
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	ev->fd = -1;
	ev->newfd = -1;
	return s;
}

static __always_inline void submit(struct scratch *s)
{
	__u32 len = s->ev.data_len;
	if (len > DATA_SIZE)
		len = DATA_SIZE;
	if (bpf_ringbuf_output(&events, s, sizeof(struct raw_event) + len, 0)) {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&lost, &zero);
		if (n)
			*n += 1;
	}
}

/* Room for one more field? Returns its offset, or -1 (the record is marked truncated). */
static __always_inline long field_start(struct scratch *s)
{
	__u32 off = s->ev.data_len;
	if (off > DATA_OFF_MAX) {
		s->ev.rflags |= RF_TRUNCATED;
		return -1;
	}
	return off;
}

static __always_inline void field_end(struct scratch *s, __u32 off, __u8 id, __u32 len)
{
	__u8 *h = &s->data[off & DATA_OFF_MAX];
	h[0] = id;
	h[1] = 0;
	h[2] = len & 0xff;
	h[3] = (len >> 8) & 0xff;
	s->ev.data_len = off + 4 + len;
}

static __always_inline void put_user_str(struct scratch *s, __u8 id, const void *uptr)
{
	if (!uptr)
		return;
	long off = field_start(s);
	if (off < 0)
		return;
	long n = bpf_probe_read_user_str(&s->data[(off & DATA_OFF_MAX) + 4], PATH_READ_MAX, uptr);
	if (n <= 0)
		return;
	field_end(s, off, id, n - 1);
}

static __always_inline void put_kernel_str(struct scratch *s, __u8 id, const void *kptr, __u32 max)
{
	if (!kptr)
		return;
	long off = field_start(s);
	if (off < 0)
		return;
	if (max > PATH_READ_MAX)
		max = PATH_READ_MAX;
	long n = bpf_probe_read_kernel_str(&s->data[(off & DATA_OFF_MAX) + 4], max, kptr);
	if (n <= 0)
		return;
	field_end(s, off, id, n - 1);
}

static __always_inline void put_user_bytes(struct scratch *s, __u8 id, const void *uptr, __u64 len)
{
	if (!uptr || !len)
		return;
	long off = field_start(s);
	if (off < 0)
		return;
	if (len > FIELD_MAX) {
		len = FIELD_MAX;
		s->ev.rflags |= RF_TRUNCATED;
	}
	if (bpf_probe_read_user(&s->data[(off & DATA_OFF_MAX) + 4], len & (FIELD_MAX * 2 - 1), uptr))
		return;
	field_end(s, off, id, len);
}

/* One step of a path walk: prepend "/<name>" of the current dentry, or cross to the mount
 * point at a mount's root; stop (return 1) at the task's root or the namespace's root. */
static long walk_step(__u32 i, void *unused)
{
	__u32 zero = 0;
	struct pathbuf *w = bpf_map_lookup_elem(&pathbufs, &zero);
	if (!w)
		return 1;
	if (w->dentry == w->root_dentry && w->vfsmnt == w->root_mnt) {
		w->at_root = 1;
		return 1;
	}
	struct dentry *d = (struct dentry *)w->dentry;
	struct vfsmount *vm = (struct vfsmount *)w->vfsmnt;
	if (!d || !vm)
		return 1;
	struct dentry *mnt_root = BPF_CORE_READ(vm, mnt_root);
	struct dentry *parent = BPF_CORE_READ(d, d_parent);
	bool last = false;
	if (d == mnt_root) {
		struct mount *m = (struct mount *)((void *)vm - bpf_core_field_offset(struct mount, mnt));
		struct mount *mp = BPF_CORE_READ(m, mnt_parent);
		if (!mp || mp == m) {
			w->at_root = 1;
			return 1;
		}
		w->dentry = (__u64)BPF_CORE_READ(m, mnt_mountpoint);
		w->vfsmnt = (__u64)((void *)mp + bpf_core_field_offset(struct mount, mnt));
		return 0;
	}
	if (d == parent) {
		/* A pseudo file (pipe, socket, memfd...) or a disconnected dentry: its own name,
		 * as d_path gives "/memfd:x", and nothing for the nameless (pipes). */
		last = true;
	}
	__u32 len = BPF_CORE_READ(d, d_name.len);
	const unsigned char *name = BPF_CORE_READ(d, d_name.name);
	if (len > NAME_MAX)
		len = NAME_MAX;
	if (last && len == 0)
		return 1;
	__u32 pos = w->pos;
	if (pos > PATHBUF_HALF - 1 || len + 1 > pos) {
		w->truncated = 1;
		return 1;
	}
	pos -= len + 1;
	w->pos = pos;
	pos &= PATHBUF_HALF - 1;
	w->buf[pos] = '/';
	bpf_probe_read_kernel(&w->buf[pos + 1], len & NAME_MAX, name);
	w->dentry = (__u64)parent;
	return last ? 1 : 0;
}

/* The path of dentry+vfsmnt as `task` sees it (below its root). A global function: the
 * verifier checks it once, not at every call site. */
__noinline int put_path_at(struct scratch *s, __u32 id, __u64 dentry, __u64 vfsmnt, __u64 task_addr)
{
	if (!s || !dentry)
		return 0;
	long off = field_start(s);
	if (off < 0)
		return 0;
	__u32 zero = 0;
	struct pathbuf *w = bpf_map_lookup_elem(&pathbufs, &zero);
	if (!w)
		return 0;
	w->dentry = dentry;
	w->vfsmnt = vfsmnt;
	w->root_dentry = 0;
	w->root_mnt = 0;
	struct fs_struct *fs = BPF_CORE_READ((struct task_struct *)task_addr, fs);
	if (fs) {
		w->root_dentry = (__u64)BPF_CORE_READ(fs, root.dentry);
		w->root_mnt = (__u64)BPF_CORE_READ(fs, root.mnt);
	}
	w->pos = PATHBUF_HALF - 1;
	w->truncated = 0;
	w->at_root = 0;
	bpf_loop(MAX_PATH_DEPTH, walk_step, 0, 0);
	__u32 pos = w->pos;
	if (pos >= PATHBUF_HALF - 1) {
		if (!w->at_root)
			return 0; /* a nameless pseudo file: no path */
		pos = PATHBUF_HALF - 2;
		w->buf[pos] = '/';
	}
	if (w->truncated)
		s->ev.rflags |= RF_TRUNCATED;
	__u32 len = PATHBUF_HALF - 1 - pos;
	if (len > PATHBUF_HALF - 1)
		return 0;
	bpf_probe_read_kernel(&s->data[(off & DATA_OFF_MAX) + 4], len & (PATHBUF_HALF - 1),
			      &w->buf[pos & (PATHBUF_HALF - 1)]);
	field_end(s, off, id, len & (PATHBUF_HALF - 1));
	return 0;
}

/* The path of `path` (a kernel struct path) as the task sees it (below its root). */
static __always_inline void put_path(struct scratch *s, __u8 id, const struct path *path, struct task_struct *task)
{
	if (!path)
		return;
	put_path_at(s, id, (__u64)BPF_CORE_READ(path, dentry), (__u64)BPF_CORE_READ(path, mnt), (__u64)task);
}

static __always_inline struct file *fd_file(struct task_struct *task, __s64 fd)
{
	if (fd < 0)
		return 0;
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt)
		return 0;
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	if (fd >= max)
		return 0;
	struct file **arr = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	bpf_probe_read_kernel(&f, sizeof(f), &arr[fd]);
	return f;
}

/* What the fd is: inode type, device, dentry name, and a socket's ends. */
static __always_inline void put_fd_info(struct scratch *s, struct file *f)
{
	if (!f)
		return;
	struct inode *ino = BPF_CORE_READ(f, f_inode);
	__u32 mode = BPF_CORE_READ(ino, i_mode);
	s->ev.rflags |= RF_FD_FILE;
	s->ev.fd_imode = mode;
	s->ev.fd_rdev = BPF_CORE_READ(ino, i_rdev);
	put_kernel_str(s, F_FD_NAME, BPF_CORE_READ(f, f_path.dentry, d_name.name), FD_NAME_MAX);
	if ((mode & S_IFMT) != S_IFSOCK)
		return;
	struct socket *so = BPF_CORE_READ(f, private_data);
	struct sock *sk = BPF_CORE_READ(so, sk);
	if (!sk)
		return;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	s->ev.sock_family = family;
	s->ev.sock_proto = BPF_CORE_READ(sk, sk_protocol);
	s->ev.sock_type = BPF_CORE_READ(sk, sk_type);
	if (family == AF_INET) {
		bpf_core_read(s->ev.laddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(s->ev.raddr, 4, &sk->__sk_common.skc_daddr);
	} else if (family == AF_INET6) {
		bpf_core_read(s->ev.laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(s->ev.raddr, 16, &sk->__sk_common.skc_v6_daddr);
	} else {
		return;
	}
	s->ev.lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	__u16 dport = BPF_CORE_READ(sk, __sk_common.skc_dport);
	s->ev.rport = __builtin_bswap16(dport);
}

static __always_inline void put_fd_path(struct scratch *s, __u8 id, struct file *f, struct task_struct *task)
{
	if (f)
		put_path(s, id, &f->f_path, task);
}

/* The start of a relative path: the dirfd's directory, or the cwd for AT_FDCWD. */
static __always_inline void put_base(struct scratch *s, __u8 id, __s64 dirfd, const char *upath,
				     struct task_struct *task)
{
	char first = 0;
	if (!upath || bpf_probe_read_user(&first, 1, upath) || first == '/')
		return;
	if ((int)dirfd == AT_FDCWD) {
		struct fs_struct *fs = BPF_CORE_READ(task, fs);
		if (fs)
			put_path(s, id, &fs->pwd, task);
	} else {
		put_fd_path(s, id, fd_file(task, (int)dirfd), task);
	}
}

SEC("raw_tp/sys_enter")
int BPF_PROG(sys_enter, struct pt_regs *regs, long nr)
{
	__u32 type = syscall_type(nr);
	if (!type)
		return 0;
	struct collector_config *cfg = get_config();
	if (!cfg || !type_on(cfg, type))
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	/* 32-bit syscalls (int 0x80) have other numbers: not decoded. */
	if (BPF_CORE_READ(task, thread_info.status) & TS_COMPAT)
		return 0;
	__u64 cg = container_cgroup(task);
	if (!cg || is_agent(task, cfg))
		return 0;
	struct pending p = {};
	p.args[0] = BPF_CORE_READ(regs, di);
	p.args[1] = BPF_CORE_READ(regs, si);
	p.args[2] = BPF_CORE_READ(regs, dx);
	p.args[3] = BPF_CORE_READ(regs, r10);
	p.args[4] = BPF_CORE_READ(regs, r8);
	p.args[5] = BPF_CORE_READ(regs, r9);
	p.cgroup = cg;
	p.nr = nr;
	p.type = type;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_update_elem(&pending, &tid, &p, BPF_ANY);
	return 0;
}

static __always_inline void decode(struct scratch *s, struct pending *p, long ret, struct task_struct *task)
{
	__u64 *a = p->args;
	switch (p->type) {
	case ET_OPENAT:
	case ET_OPENAT2: {
		__s64 dirfd = AT_FDCWD;
		const char *path;
		if (p->nr == 2) { /* open(path, flags, mode) */
			path = (const char *)a[0];
			s->ev.flags = a[1];
			s->ev.mode = a[2];
		} else if (p->nr == 85) { /* creat(path, mode) */
			path = (const char *)a[0];
			s->ev.flags = 01 | 0100 | 01000; /* O_WRONLY|O_CREAT|O_TRUNC */
			s->ev.mode = a[1];
		} else {
			dirfd = (int)a[0];
			path = (const char *)a[1];
			if (p->type == ET_OPENAT2) {
				__u64 how[2] = {};
				bpf_probe_read_user(how, sizeof(how), (void *)a[2]);
				s->ev.flags = how[0];
				s->ev.mode = how[1];
			} else {
				s->ev.flags = a[2];
				s->ev.mode = a[3];
			}
		}
		if (ret >= 0) {
			struct file *f = fd_file(task, ret);
			s->ev.fd = ret;
			put_fd_path(s, F_PATH, f, task);
			put_fd_info(s, f);
		} else {
			put_user_str(s, F_PATH, path);
			put_base(s, F_BASE, dirfd, path, task);
		}
		break;
	}
	case ET_EXECVE:
	case ET_EXECVEAT: { /* failed execs only: successful ones come from sched_process_exec */
		const char *path = (const char *)(p->type == ET_EXECVE ? a[0] : a[1]);
		if (p->type == ET_EXECVEAT)
			s->ev.flags = a[4];
		put_user_str(s, F_PATH, path);
		put_base(s, F_BASE, p->type == ET_EXECVE ? AT_FDCWD : (__s64)(int)a[0], path, task);
		break;
	}
	case ET_CONNECT: {
		s->ev.fd = (int)a[0];
		put_fd_info(s, fd_file(task, s->ev.fd));
		__u64 len = a[2];
		if (len > SOCKADDR_MAX)
			len = SOCKADDR_MAX;
		put_user_bytes(s, F_SOCKADDR, (void *)a[1], len);
		break;
	}
	case ET_ACCEPT:
	case ET_ACCEPT4:
		if (p->type == ET_ACCEPT4)
			s->ev.flags = a[3];
		s->ev.fd = ret;
		if (ret >= 0)
			put_fd_info(s, fd_file(task, ret));
		break;
	case ET_CHMOD:
		s->ev.mode = a[1];
		put_user_str(s, F_PATH, (void *)a[0]);
		put_base(s, F_BASE, AT_FDCWD, (void *)a[0], task);
		break;
	case ET_FCHMOD: {
		s->ev.fd = (int)a[0];
		s->ev.mode = a[1];
		struct file *f = fd_file(task, s->ev.fd);
		put_fd_path(s, F_PATH, f, task);
		put_fd_info(s, f);
		break;
	}
	case ET_FCHMODAT:
		s->ev.mode = a[2];
		put_user_str(s, F_PATH, (void *)a[1]);
		put_base(s, F_BASE, (int)a[0], (void *)a[1], task);
		break;
	case ET_UNLINK:
		put_user_str(s, F_PATH, (void *)a[0]);
		put_base(s, F_BASE, AT_FDCWD, (void *)a[0], task);
		break;
	case ET_UNLINKAT:
		s->ev.flags = a[2];
		put_user_str(s, F_PATH, (void *)a[1]);
		put_base(s, F_BASE, (int)a[0], (void *)a[1], task);
		break;
	case ET_RENAME:
		put_user_str(s, F_PATH, (void *)a[0]);
		put_user_str(s, F_PATH2, (void *)a[1]);
		put_base(s, F_BASE, AT_FDCWD, (void *)a[0], task);
		put_base(s, F_BASE2, AT_FDCWD, (void *)a[1], task);
		break;
	case ET_RENAMEAT:
	case ET_RENAMEAT2:
		if (p->type == ET_RENAMEAT2)
			s->ev.flags = a[4];
		put_user_str(s, F_PATH, (void *)a[1]);
		put_user_str(s, F_PATH2, (void *)a[3]);
		put_base(s, F_BASE, (int)a[0], (void *)a[1], task);
		put_base(s, F_BASE2, (int)a[2], (void *)a[3], task);
		break;
	case ET_SETUID:
	case ET_SETGID:
		s->ev.target_id = a[0];
		break;
	case ET_SETREUID:
		s->ev.target_id2 = a[0];
		s->ev.target_id = a[1];
		break;
	case ET_SETRESUID:
		s->ev.target_id2 = a[0];
		s->ev.target_id = a[1];
		s->ev.target_id3 = a[2];
		break;
	case ET_PTRACE:
		s->ev.ptrace_request = a[0];
		s->ev.target_pid = a[1];
		break;
	case ET_MOUNT:
		s->ev.flags = a[3];
		put_user_str(s, F_PATH, (void *)a[0]);
		put_user_str(s, F_PATH2, (void *)a[1]);
		put_user_str(s, F_NAME, (void *)a[2]);
		break;
	case ET_UMOUNT:
		s->ev.flags = a[1];
		put_user_str(s, F_PATH, (void *)a[0]);
		break;
	case ET_INIT_MODULE:
		s->ev.flags = a[1]; /* the image's length */
		break;
	case ET_FINIT_MODULE: {
		s->ev.fd = (int)a[0];
		s->ev.flags = a[2];
		put_fd_path(s, F_PATH, fd_file(task, s->ev.fd), task);
		break;
	}
	case ET_BPF:
		s->ev.flags = a[0]; /* the command */
		break;
	case ET_MEMFD_CREATE:
		s->ev.flags = a[1];
		s->ev.fd = ret;
		put_user_str(s, F_NAME, (void *)a[0]);
		break;
	case ET_DUP:
	case ET_DUP2:
	case ET_DUP3: {
		s->ev.fd = (int)a[0];
		s->ev.newfd = ret;
		if (p->type == ET_DUP3)
			s->ev.flags = a[2];
		struct file *f = fd_file(task, s->ev.fd);
		put_fd_path(s, F_PATH, f, task);
		put_fd_info(s, f);
		break;
	}
	case ET_CLONE:
		s->ev.flags = a[0];
		break;
	case ET_CLONE3: {
		__u64 flags = 0;
		bpf_probe_read_user(&flags, sizeof(flags), (void *)a[0]);
		s->ev.flags = flags;
		break;
	}
	}
}

SEC("raw_tp/sys_exit")
int BPF_PROG(sys_exit, struct pt_regs *regs, long ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct pending *pp = bpf_map_lookup_elem(&pending, &tid);
	if (!pp)
		return 0;
	struct pending p = *pp;
	bpf_map_delete_elem(&pending, &tid);
	if ((p.type == ET_EXECVE || p.type == ET_EXECVEAT) && ret == 0)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct scratch *s = begin(p.type, p.cgroup, task);
	if (!s)
		return 0;
	s->ev.res = ret;
	if (p.child > 0 && ret > 0)
		s->ev.res = p.child;
	decode(s, &p, ret, task);
	submit(s);
	return 0;
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(sched_process_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct collector_config *cfg = get_config();
	if (!cfg)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 cg = container_cgroup(task);
	if (!cg)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u8 one = 1;
	bpf_map_update_elem(&tracked, &tgid, &one, BPF_ANY);
	__u32 type = ET_EXECVE;
	__u64 flags = 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct pending *pp = bpf_map_lookup_elem(&pending, &tid);
	if (pp && pp->type == ET_EXECVEAT) {
		type = ET_EXECVEAT;
		flags = pp->args[4];
	}
	if (!type_on(cfg, type))
		return 0;
	struct scratch *s = begin(type, cg, task);
	if (!s)
		return 0;
	s->ev.flags = flags;
	put_kernel_str(s, F_PATH, BPF_CORE_READ(bprm, filename), PATH_READ_MAX);
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	struct file *exe = BPF_CORE_READ(mm, exe_file);
	if (exe) {
		put_path(s, F_EXE, &exe->f_path, task);
		s->ev.exe_nlink = BPF_CORE_READ(exe, f_inode, __i_nlink);
	}
	unsigned long start = BPF_CORE_READ(mm, arg_start);
	unsigned long end = BPF_CORE_READ(mm, arg_end);
	if (end > start)
		put_user_bytes(s, F_ARGV, (void *)start, end - start);
	struct fs_struct *fs = BPF_CORE_READ(task, fs);
	if (fs)
		put_path(s, F_CWD, &fs->pwd, task);
	submit(s);
	return 0;
}

SEC("raw_tp/sched_process_fork")
int BPF_PROG(sched_process_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct pending *pp = bpf_map_lookup_elem(&pending, &tid);
	if (pp)
		pp->child = BPF_CORE_READ(child, pid);
	/* A new process (not a thread) of a tracked one is tracked too. */
	__u32 child_pid = BPF_CORE_READ(child, pid);
	__u32 child_tgid = BPF_CORE_READ(child, tgid);
	__u32 parent_tgid = BPF_CORE_READ(parent, tgid);
	if (child_pid == child_tgid && bpf_map_lookup_elem(&tracked, &parent_tgid)) {
		__u8 one = 1;
		bpf_map_update_elem(&tracked, &child_tgid, &one, BPF_ANY);
	}
	return 0;
}

SEC("raw_tp/sched_process_exit")
int BPF_PROG(sched_process_exit, struct task_struct *p)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_delete_elem(&pending, &tid);
	struct collector_config *cfg = get_config();
	if (!cfg || !type_on(cfg, ET_EXIT))
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	/* Only when the whole process is gone (its last thread). */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!bpf_map_lookup_elem(&tracked, &tgid))
		return 0;
	bpf_map_delete_elem(&tracked, &tgid);
	__u64 cg = container_cgroup(task);
	if (!cg)
		return 0;
	struct scratch *s = begin(ET_EXIT, cg, task);
	if (!s)
		return 0;
	s->ev.res = BPF_CORE_READ(task, exit_code);
	submit(s);
	return 0;
}
