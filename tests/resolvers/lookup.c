/* Resolves each name on the command line with getaddrinfo() and prints one address per line: the
 * stub resolver of whichever C library this is linked with (glibc, or musl with musl-gcc). Exits 2
 * when a name does not resolve. Each run is a new process, so each lookup opens new sockets, as
 * every program on a node does. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        struct addrinfo hints, *results;
        memset(&hints, 0, sizeof hints);
        hints.ai_socktype = SOCK_STREAM;
        int rc = getaddrinfo(argv[i], NULL, &hints, &results);
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
