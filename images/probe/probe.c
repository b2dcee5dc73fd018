/* bulwark-probe: tries the syscalls a sandbox escape would need and prints one line per
 * attempt, "<check> OK" or "<check> <ERRNO>" (e.g. "mount EPERM"), so a test can assert the
 * exact outcome. Installed as /bin/bulwark-probe in the busybox test image; built static by
 * images/build-test-image. Exit status: 0 (the lines carry the results), 2 on bad usage.
 *
 *   bulwark-probe unshare-user | unshare-files | mount | userns-mount | keyctl | socket-vsock
 *                 | socket-unix | ptrace <pid> | ptrace-child | mkdir <path> | seccomp-mode
 *                 | vsock-connect <cid> <port> | vsock-hello <cid> <port>
 *                 | share-race <dir> <seconds> <canary>
 *                 | open-loop <n> | memfd-exec
 *                 (several may follow)
 *
 * memfd-exec: copies /bin/busybox into memfd_create("payload") and executes the memfd with
 * execveat(AT_EMPTY_PATH) as `true` (fileless execution, for the telemetry tests); prints
 * "memfd-exec <ERRNO>" only if that fails (on success the probe is gone: `true` exits 0).
 *
 * open-loop: n times open("/etc/passwd") + close, then "open-loop <n> <elapsed ns>" (the
 * syscall-heavy loop scripts/bench times with the guest's syscall collector off and on).
 *
 * ptrace-child: PTRACE_ATTACH to a child of the probe (Yama's default scope allows tracing a
 * descendant, so only seccomp or a missing capability refuses it).
 *
 * vsock-connect: socket(AF_VSOCK) and connect to <cid>:<port> (connect timeout 5 s), printed as
 * "vsock-connect <cid>:<port> <result>": the errno of socket or connect, or, once connected,
 * what the peer did within 5 s: CLOSED (end of stream or reset: it refused to serve us), DATA
 * (it sent bytes) or OPEN (it kept the connection open without a word, as a server waiting for
 * a request does).
 *
 * vsock-hello: the same, but once connected it first sends what a tenant posing as the guest's
 * telemetry collector would: a telemetry Hello frame of version 1 without the boot's token,
 * then an event frame with the path /bwk-impostor; printed as "vsock-hello <cid>:<port> ...".
 *
 * share-race: a hostile guest's race against the host building and removing containers in the
 * sandbox's virtio-fs share mounted at <dir> (guest root with CAP_SYS_ADMIN mounts the share's
 * tag there): for <seconds>, over and over, for every container tree <E> it sees, tries
 *   skeleton:  symlink <canary> and "/" as <dir>/<E>.bwk, rename <E>, symlink "/etc" as
 *              <E>/bwk-etc, mkdir <E>/mounts/bwk (the host keeps all of these read-only)
 *   rootfs:    symlinks to <canary>, "/" and "/etc" in <E>/rootfs, a directory renamed back and
 *              forth and swapped with a symlink to "/" (the tenant's own files: allowed)
 *   volume:    the same in every directory <E>/mounts/<n> (volumes; read-only ones refuse)
 * It prints "share-race saw <E>" for each tree the first time, then per kind of attempt
 * "share-race <kind> ok=<n> fail=<n> <first errno of a failure>" and "share-race done".
 *
 * userns-mount: unshare(CLONE_NEWUSER|CLONE_NEWNS) ("userns-mount-unshare"), then, if that
 * worked, mount a tmpfs on /tmp in the new namespaces ("userns-mount"): the way to mount
 * without CAP_SYS_ADMIN in the container. Run it last: the process stays in the new
 * namespaces.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/time.h>
#include <time.h>
#include <linux/vm_sockets.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif

static const char *errname(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case ENODEV: return "ENODEV";
    case EINVAL: return "EINVAL";
    case ENOSYS: return "ENOSYS";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EDQUOT: return "EDQUOT";
    case ECONNRESET: return "ECONNRESET";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case ENETUNREACH: return "ENETUNREACH";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EROFS: return "EROFS";
    case ENXIO: return "ENXIO";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "errno%d", e);
        return buf;
    }
    }
}

static void report(const char *check, long rc) {
    if (rc < 0) {
        printf("%s %s\n", check, errname(errno));
    } else {
        printf("%s OK\n", check);
    }
    fflush(stdout);
}

/* A telemetry Hello (GuestFrame.hello{version: 1}, no token) and an Event frame
 * (GuestFrame.event{path: "/bwk-impostor"}), each behind its u32 big-endian length. */
static const unsigned char impostor_frames[] = {
    0, 0, 0, 4, 0x0a, 0x02, 0x08, 0x01,
    0, 0, 0, 18, 0x12, 16, 0x8a, 0x01, 13, '/', 'b', 'w', 'k', '-', 'i', 'm', 'p', 'o', 's', 't', 'o', 'r',
};

/* socket(AF_VSOCK) + connect to cid:port, send `payload` if any, then 5 s to see what the
 * peer does. */
static void vsock_connect(const char *name, const char *cid_s, const char *port_s, const unsigned char *payload,
                          size_t payload_len) {
    char check[64];
    snprintf(check, sizeof check, "%s %s:%s", name, cid_s, port_s);
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        report(check, -1);
        return;
    }
    struct timeval tv = {.tv_sec = 5, .tv_usec = 0};
    setsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv, sizeof tv);
    struct sockaddr_vm addr;
    memset(&addr, 0, sizeof addr);
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = (unsigned)strtoul(cid_s, NULL, 10);
    addr.svm_port = (unsigned)strtoul(port_s, NULL, 10);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        report(check, -1);
        close(fd);
        return;
    }
    if (payload_len > 0 && send(fd, payload, payload_len, MSG_NOSIGNAL) != (ssize_t)payload_len) {
        report(check, -1);
        close(fd);
        return;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n = poll(&p, 1, 5000);
    const char *what = "OPEN";
    if (n > 0) {
        char buf[64];
        ssize_t got = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        what = got > 0 ? "DATA" : "CLOSED";
    } else if (n < 0) {
        what = errname(errno);
    }
    printf("%s %s\n", check, what);
    fflush(stdout);
    close(fd);
}

/* share-race: counts of one kind of attempt. */
struct tally {
    const char *kind;
    long ok, fail;
    int first_errno;
};

static void count(struct tally *t, int rc) {
    if (rc == 0) {
        t->ok++;
    } else {
        t->fail++;
        if (!t->first_errno) {
            t->first_errno = errno;
        }
    }
}

/* Plants, swaps and renames in <base> (a directory the guest may write or not). */
static void race_in(const char *base, const char *canary, struct tally *t) {
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s/bwk-canary", base);
    unlink(a);
    count(t, symlink(canary, a));
    snprintf(a, sizeof a, "%s/bwk-root", base);
    unlink(a);
    count(t, symlink("/", a));
    snprintf(a, sizeof a, "%s/bwk-etc", base);
    unlink(a);
    count(t, symlink("/etc", a));
    snprintf(a, sizeof a, "%s/bwk-dir", base);
    snprintf(b, sizeof b, "%s/bwk-dir2", base);
    mkdir(a, 0755);
    count(t, rename(a, b));
    count(t, rename(b, a));
    /* The directory swapped with a symlink to "/" and back. */
    count(t, rename(a, b));
    count(t, symlink("/", a));
    unlink(a);
    count(t, rename(b, a));
}

static void share_race(const char *dir, const char *secs_s, const char *canary) {
    struct tally skeleton = {"skeleton", 0, 0, 0}, rootfs = {"rootfs", 0, 0, 0}, volume = {"volume", 0, 0, 0};
    char seen[64][256];
    int nseen = 0;
    time_t end = time(NULL) + atol(secs_s);
    printf("share-race started\n");
    fflush(stdout);
    while (time(NULL) < end) {
        DIR *d = opendir(dir);
        if (!d) {
            printf("share-race opendir %s\n", errname(errno));
            fflush(stdout);
            return;
        }
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.' || strstr(e->d_name, ".bwk")) {
                continue; /* ours, if the skeleton ever let us make any */
            }
            int known = 0;
            for (int i = 0; i < nseen; i++) {
                known |= strcmp(seen[i], e->d_name) == 0;
            }
            if (!known && nseen < 64) {
                snprintf(seen[nseen++], sizeof seen[0], "%s", e->d_name);
                printf("share-race saw %s\n", e->d_name);
                fflush(stdout);
            }
            char a[4096], b[4096];
            snprintf(a, sizeof a, "%s/%s.bwk", dir, e->d_name);
            count(&skeleton, symlink(canary, a));
            unlink(a);
            count(&skeleton, symlink("/", a));
            unlink(a);
            snprintf(a, sizeof a, "%s/%s", dir, e->d_name);
            snprintf(b, sizeof b, "%s/%s.bwk-moved", dir, e->d_name);
            if (rename(a, b) == 0) {
                count(&skeleton, 0);
                rename(b, a);
            } else {
                count(&skeleton, -1);
            }
            snprintf(a, sizeof a, "%s/%s/bwk-etc", dir, e->d_name);
            count(&skeleton, symlink("/etc", a));
            snprintf(a, sizeof a, "%s/%s/mounts/bwk", dir, e->d_name);
            count(&skeleton, mkdir(a, 0755));
            snprintf(a, sizeof a, "%s/%s/rootfs", dir, e->d_name);
            race_in(a, canary, &rootfs);
            snprintf(a, sizeof a, "%s/%s/mounts", dir, e->d_name);
            DIR *m = opendir(a);
            struct dirent *v;
            while (m && (v = readdir(m))) {
                struct stat st;
                int n = snprintf(b, sizeof b, "%s/%s", a, v->d_name);
                if (n > 0 && (size_t)n < sizeof b && v->d_name[0] != '.' && stat(b, &st) == 0 &&
                    S_ISDIR(st.st_mode)) {
                    race_in(b, canary, &volume);
                }
            }
            if (m) {
                closedir(m);
            }
        }
        closedir(d);
    }
    struct tally *all[] = {&skeleton, &rootfs, &volume};
    for (int i = 0; i < 3; i++) {
        printf("share-race %s ok=%ld fail=%ld %s\n", all[i]->kind, all[i]->ok, all[i]->fail,
               all[i]->first_errno ? errname(all[i]->first_errno) : "-");
    }
    printf("share-race done\n");
    fflush(stdout);
}

static int usage(void) {
    fprintf(stderr, "usage: bulwark-probe unshare-user|unshare-files|mount|keyctl|socket-vsock|socket-unix|"
                    "ptrace <pid>|ptrace-child|mkdir <path>|seccomp-mode|vsock-connect <cid> <port>|"
                    "vsock-hello <cid> <port>|"
                    "share-race <dir> <seconds> <canary>|open-loop <n>|memfd-exec ...\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        return usage();
    }
    for (int i = 1; i < argc; i++) {
        const char *c = argv[i];
        if (strcmp(c, "unshare-user") == 0) {
            report(c, unshare(CLONE_NEWUSER));
        } else if (strcmp(c, "unshare-files") == 0) {
            report(c, unshare(CLONE_FILES));
        } else if (strcmp(c, "mount") == 0) {
            report(c, mount("none", "/tmp", "tmpfs", 0, NULL));
        } else if (strcmp(c, "userns-mount") == 0) {
            long rc = unshare(CLONE_NEWUSER | CLONE_NEWNS);
            report("userns-mount-unshare", rc);
            if (rc == 0) {
                report(c, mount("none", "/tmp", "tmpfs", 0, NULL));
            }
        } else if (strcmp(c, "keyctl") == 0) {
            /* KEYCTL_GET_KEYRING_ID (0) of KEY_SPEC_SESSION_KEYRING (-3), creating it (1). */
            report(c, syscall(SYS_keyctl, 0, -3, 1));
        } else if (strcmp(c, "socket-vsock") == 0 || strcmp(c, "socket-unix") == 0) {
            int fd = socket(c[7] == 'v' ? AF_VSOCK : AF_UNIX, SOCK_STREAM, 0);
            report(c, fd);
            if (fd >= 0) {
                close(fd);
            }
        } else if (strcmp(c, "ptrace") == 0 && i + 1 < argc) {
            pid_t pid = (pid_t)atoi(argv[++i]);
            long rc = ptrace(PTRACE_ATTACH, pid, NULL, NULL);
            report(c, rc);
            if (rc == 0) {
                waitpid(pid, NULL, __WALL);
                ptrace(PTRACE_DETACH, pid, NULL, NULL);
            }
        } else if (strcmp(c, "ptrace-child") == 0) {
            pid_t child = fork();
            if (child == 0) {
                pause();
                _exit(0);
            }
            if (child < 0) {
                report(c, -1);
                continue;
            }
            long rc = ptrace(PTRACE_ATTACH, child, NULL, NULL);
            report(c, rc);
            kill(child, SIGKILL);
            waitpid(child, NULL, __WALL);
        } else if (strcmp(c, "mkdir") == 0 && i + 1 < argc) {
            report(c, mkdir(argv[++i], 0755));
        } else if (strcmp(c, "vsock-connect") == 0 && i + 2 < argc) {
            vsock_connect("vsock-connect", argv[i + 1], argv[i + 2], NULL, 0);
            i += 2;
        } else if (strcmp(c, "vsock-hello") == 0 && i + 2 < argc) {
            vsock_connect("vsock-hello", argv[i + 1], argv[i + 2], impostor_frames, sizeof impostor_frames);
            i += 2;
        } else if (strcmp(c, "share-race") == 0 && i + 3 < argc) {
            share_race(argv[i + 1], argv[i + 2], argv[i + 3]);
            i += 3;
        } else if (strcmp(c, "memfd-exec") == 0) {
            int src = open("/bin/busybox", O_RDONLY);
            int mfd = (int)syscall(SYS_memfd_create, "payload", 0);
            char buf[65536];
            ssize_t n;
            while (src >= 0 && mfd >= 0 && (n = read(src, buf, sizeof buf)) > 0) {
                if (write(mfd, buf, (size_t)n) != n) {
                    break;
                }
            }
            char *args[] = {"true", NULL};
            char *env[] = {NULL};
            report(c, mfd < 0 || src < 0 ? -1 : syscall(SYS_execveat, mfd, "", args, env, AT_EMPTY_PATH));
        } else if (strcmp(c, "open-loop") == 0 && i + 1 < argc) {
            long n = atol(argv[++i]);
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            for (long k = 0; k < n; k++) {
                int fd = open("/etc/passwd", O_RDONLY);
                if (fd >= 0) {
                    close(fd);
                }
            }
            clock_gettime(CLOCK_MONOTONIC, &t1);
            long long ns = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
            printf("open-loop %ld %lld\n", n, ns);
            fflush(stdout);
        } else if (strcmp(c, "seccomp-mode") == 0) {
            FILE *f = fopen("/proc/self/status", "r");
            char line[256];
            const char *mode = "unknown";
            static char found[64];
            while (f && fgets(line, sizeof line, f)) {
                if (strncmp(line, "Seccomp:", 8) == 0) {
                    snprintf(found, sizeof found, "%s", line + 8 + strspn(line + 8, " \t"));
                    found[strcspn(found, "\n")] = 0;
                    mode = found;
                }
            }
            if (f) {
                fclose(f);
            }
            printf("seccomp-mode %s\n", mode);
            fflush(stdout);
        } else {
            return usage();
        }
    }
    return 0;
}
