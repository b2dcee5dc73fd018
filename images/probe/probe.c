/* bulwark-probe: tries the syscalls a sandbox escape would need and prints one line per
 * attempt, "<check> OK" or "<check> <ERRNO>" (e.g. "mount EPERM"), so a test can assert the
 * exact outcome. Installed as /bin/bulwark-probe in the busybox test image; built static by
 * images/build-test-image. Exit status: 0 (the lines carry the results), 2 on bad usage.
 *
 *   bulwark-probe unshare-user | unshare-files | mount | userns-mount | keyctl | socket-vsock
 *                 | socket-unix | ptrace <pid> | ptrace-child | mkdir <path> | seccomp-mode
 *                 | open-loop <n>
 *                 (several may follow)
 *
 * open-loop: n times open("/etc/passwd") + close, then "open-loop <n> <elapsed ns>" (the
 * syscall-heavy loop scripts/bench times with the guest's syscall collector off and on).
 *
 * ptrace-child: PTRACE_ATTACH to a child of the probe (Yama's default scope allows tracing a
 * descendant, so only seccomp or a missing capability refuses it).
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
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

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

static int usage(void) {
    fprintf(stderr, "usage: bulwark-probe unshare-user|unshare-files|mount|keyctl|socket-vsock|socket-unix|"
                    "ptrace <pid>|ptrace-child|mkdir <path>|seccomp-mode|open-loop <n> ...\n");
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
