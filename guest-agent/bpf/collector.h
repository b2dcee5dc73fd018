/* The record the collector's BPF programs put in the ring buffer, and the numbers both sides
 * share. guest-agent/src/telemetry/raw.rs parses it (with the same offsets, checked below):
 * a fixed header (struct raw_event), then data_len bytes of fields, each
 * { u8 id; u8 flags; u16 len (little endian); u8 bytes[len] } (strings without their NUL).
 * Everything in it is treated as untrusted by user space. */
#ifndef BULWARK_COLLECTOR_H
#define BULWARK_COLLECTOR_H

#define RAW_VERSION 1

/* Event types: the numbers of telemetry.proto's EventType. */
#define ET_EXECVE 1
#define ET_EXECVEAT 2
#define ET_OPENAT 3
#define ET_OPENAT2 4
#define ET_CONNECT 5
#define ET_ACCEPT 6
#define ET_CHMOD 7
#define ET_FCHMODAT 8
#define ET_UNLINK 9
#define ET_UNLINKAT 10
#define ET_RENAME 11
#define ET_SETUID 12
#define ET_SETGID 13
#define ET_SETREUID 14
#define ET_SETRESUID 15
#define ET_PTRACE 16
#define ET_MOUNT 17
#define ET_UMOUNT 18
#define ET_INIT_MODULE 19
#define ET_FINIT_MODULE 20
#define ET_BPF 21
#define ET_MEMFD_CREATE 22
#define ET_DUP 23
#define ET_DUP2 24
#define ET_DUP3 25
#define ET_FORK 26
#define ET_EXIT 27
#define ET_RENAMEAT 28
#define ET_RENAMEAT2 29
#define ET_FCHMOD 30
#define ET_ACCEPT4 31
#define ET_CLONE 32
#define ET_CLONE3 33
#define ET_VFORK 34

/* Field ids of the data section. */
#define F_PATH 1     /* the path argument, as passed (or resolved from the fd for opens) */
#define F_PATH2 2    /* second path: rename target, mount target */
#define F_CWD 3      /* the process's working directory (execs) */
#define F_EXE 4      /* the running executable's path (execs) */
#define F_ARGV 5     /* argv as in the process's memory: NUL-separated */
#define F_NAME 6     /* memfd name, mount fstype */
#define F_FD_NAME 7  /* the dentry name of the fd's file ("[eventfd]", "memfd:x", "TCP"...) */
#define F_SOCKADDR 8 /* the sockaddr passed to connect, raw */
#define F_BASE 9     /* where a relative F_PATH starts: the dirfd's path or the cwd */
#define F_BASE2 10   /* the same for F_PATH2 */

/* raw_event.rflags */
#define RF_TRUNCATED 1 /* a field did not fit the record */
#define RF_FD_FILE 2   /* fd_imode/fd_rdev/sock_* describe the event's fd */

/* Sizes. Every string field is at most FIELD_MAX bytes; fields start below DATA_OFF_MAX + 1. */
#define FIELD_MAX 4096
#define PATH_READ_MAX 4096 /* bpf_probe_read_*_str size: up to 4095 bytes and the NUL */
#define DATA_OFF_MAX 16383
#define DATA_SIZE (DATA_OFF_MAX + 1 + 4 + FIELD_MAX + 60)

struct raw_event {
	__u16 version;         /* 0 */
	__u16 type;            /* 2 */
	__u32 data_len;        /* 4 */
	__u64 ts_boot_ns;      /* 8: CLOCK_BOOTTIME */
	__s64 res;             /* 16 */
	__u64 cgroup_id;       /* 24: the container cgroup matched */
	__u32 pid;             /* 32: guest (root namespace) tgid */
	__u32 tid;             /* 36 */
	__u32 ppid;            /* 40 */
	__u32 uid;             /* 44 */
	__u32 gid;             /* 48 */
	__u32 loginuid;        /* 52 */
	__u32 tty;             /* 56 */
	__u32 mode;            /* 60 */
	__u64 flags;           /* 64 */
	__s64 fd;              /* 72 */
	__s64 newfd;           /* 80 */
	__u64 ptrace_request;  /* 88 */
	__u32 target_pid;      /* 96 */
	__u32 target_id;       /* 100 */
	__u32 fd_imode;        /* 104 */
	__u32 fd_rdev;         /* 108: kernel encoding (major << 20 | minor) */
	__u64 cap_permitted;   /* 112 */
	__u64 cap_effective;   /* 120 */
	__u64 cap_inheritable; /* 128 */
	__u32 exe_nlink;       /* 136 */
	__u16 sock_family;     /* 140 */
	__u16 sock_proto;      /* 142 */
	__u16 sock_type;       /* 144 */
	__u16 lport;           /* 146: host order */
	__u16 rport;           /* 148: host order */
	__u16 rflags;          /* 150 */
	__u8 laddr[16];        /* 152: network order, 4 or 16 bytes used */
	__u8 raddr[16];        /* 168 */
	char comm[16];         /* 184 */
	__u32 target_id2;      /* 200: setreuid/setresuid: ruid */
	__u32 target_id3;      /* 204: setresuid: suid */
};                             /* 208 */

/* The agent's settings (config map, one entry). */
struct collector_config {
	__u64 types;     /* bit n: EventType n is collected */
	__u64 agent_ino; /* the agent's executable (never reported) */
	__u32 agent_dev; /* its device, kernel encoding */
	__u32 pad;
};

#endif
