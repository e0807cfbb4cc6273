/* Resolves each name on the command line with getaddrinfo() and prints one address per line: the
 * stub resolver of whichever C library this is linked with (glibc, or musl with musl-gcc). Exits 2
 * when a name does not resolve. Each run is a new process, so each lookup opens new sockets, as
 * every program on a node does. On stderr, "NAME: MICROSECONDS us" for each lookup: the time of
 * getaddrinfo() alone, without the process's start, which a busy machine can delay. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        struct addrinfo hints, *results;
        memset(&hints, 0, sizeof hints);
        hints.ai_socktype = SOCK_STREAM;
        struct timespec start, end;
        clock_gettime(CLOCK_MONOTONIC, &start);
        int rc = getaddrinfo(argv[i], NULL, &hints, &results);
        clock_gettime(CLOCK_MONOTONIC, &end);
        long micros = (end.tv_sec - start.tv_sec) * 1000000L + (end.tv_nsec - start.tv_nsec) / 1000L;
        fprintf(stderr, "%s: %ld us\n", argv[i], micros);
        if (rc != 0) {
            fprintf(stderr, "%s: %s\n", argv[i], gai_strerror(rc));
            return 2;
        }
        for (struct addrinfo *r = results; r != NULL; r = r->ai_next) {
            char text[INET6_ADDRSTRLEN];
            const void *addr = r->ai_family == AF_INET
                ? (const void *)&((struct sockaddr_in *)r->ai_addr)->sin_addr
                : (const void *)&((struct sockaddr_in6 *)r->ai_addr)->sin6_addr;
            if (inet_ntop(r->ai_family, addr, text, sizeof text) != NULL) {
                printf("%s\n", text);
            }
        }
        freeaddrinfo(results);
    }
    return 0;
}
