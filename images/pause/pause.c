/* pause: the pod sandbox's init for the test pause image docker.io/bulwark/pause:test.
 * Sleeps in pause(2); reaps any child (it is PID 1 of the pod's PID namespace when that is
 * shared); exits 0 on SIGINT or SIGTERM. Built static by images/build-test-image. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

static void handle(int sig, void (*fn)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(sig, &sa, NULL) != 0) {
        _exit(1);
    }
}

int main(int argc, char **argv) {
    (void)argv;
    if (argc != 1) {
        static const char usage[] = "pause: takes no arguments\n";
        (void)!write(2, usage, sizeof usage - 1);
        return 2;
    }
    handle(SIGINT, on_stop);
    handle(SIGTERM, on_stop);
    handle(SIGCHLD, on_child);
    for (;;) {
        pause();
    }
}
