/* The pod sandbox's process (what registry.k8s.io/pause runs) and the test's app image: sleeps
 * until SIGTERM or SIGINT, then exits 0. Built static by tests/cluster/images/build.py, so that
 * the image needs nothing else. */
#include <signal.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

int main(void) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    for (;;)
        pause();
}
