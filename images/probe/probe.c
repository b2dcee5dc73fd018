/* bulwark-probe: tries the syscalls a sandbox escape would need and prints one line per
 * attempt, "<check> OK" or "<check> <ERRNO>" (e.g. "mount EPERM"), so a test can assert the
 * exact outcome. Installed as /bin/bulwark-probe in the busybox test image; built static by
 * images/build-test-image. Exit status: 0 (the lines carry the results), 2 on bad usage.
 *
 *   bulwark-probe unshare-user | unshare-files | mount | userns-mount | keyctl | socket-vsock
 *                 | socket-unix | ptrace <pid> | ptrace-child | mkdir <path> | seccomp-mode
 *                 | vsock-connect <cid> <port>
 *                 (several may follow)
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
#include <unistd.h>

#include <sys/time.h>
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

/* socket(AF_VSOCK) + connect to cid:port, then 5 s to see what the peer does. */
static void vsock_connect(const char *cid_s, const char *port_s) {
    char check[64];
    snprintf(check, sizeof check, "vsock-connect %s:%s", cid_s, port_s);
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

static int usage(void) {
    fprintf(stderr, "usage: bulwark-probe unshare-user|unshare-files|mount|keyctl|socket-vsock|socket-unix|"
                    "ptrace <pid>|ptrace-child|mkdir <path>|seccomp-mode|vsock-connect <cid> <port> ...\n");
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
            vsock_connect(argv[i + 1], argv[i + 2]);
            i += 2;
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
