/*
 * The pod infrastructure ("pause") container of the local test cluster (tools/cluster/up.sh).
 * It holds the pod's namespaces and does nothing else: it sleeps until SIGTERM or SIGINT and then
 * exits 0 at once (so a sandbox stop never waits for a kill timeout), and as PID 1 of a shared
 * PID namespace it reaps orphaned children. Built statically and imported into Docker as the only
 * file of an image, because no registry is reachable to pull one.
 */
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

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop;
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0) {
        return 1;
    }
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGCHLD, &sa, NULL) != 0) {
        return 1;
    }
    for (;;) {
        pause();
    }
}
