/*
 * echo.c -- "nullresp", the syscall floor of a UDP DNS responder.
 *
 * One thread, one socket: receive a batch of datagrams with recvmmsg(),
 * turn each query into a "response" by setting the QR bit (and nothing
 * else), and send the whole batch back with sendmmsg().  No parsing, no
 * allocation.  dnsperf counts these as answers (it matches on the ID), so
 * the server CPU per answered query measured against it is what the kernel
 * alone costs per query: no real DNS server can be cheaper than this.
 *
 * usage: echo PORT [ADDR]    (ADDR defaults to 127.0.0.1)
 * Exits 0 on SIGTERM/SIGINT.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define MAXLEN 4096

static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [ADDR]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    const char *addr = argc > 2 ? argv[2] : "127.0.0.1";

    /* No SA_RESTART: a signal must interrupt the blocking recvmmsg(). */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); return 1; }
    /* A larger receive buffer so that bursts from dnsperf's 8 sockets are
       queued rather than dropped while we are busy sending. */
    int rcvbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);

    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, addr, &sin.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", addr);
        return 2;
    }
    if (bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0) { perror("bind"); return 1; }

    static unsigned char bufs[BATCH][MAXLEN];
    static struct sockaddr_in peers[BATCH];
    static struct iovec iov[BATCH];
    static struct mmsghdr msgs[BATCH];

    fprintf(stderr, "nullresp serving on %s:%d\n", addr, port);
    while (!stop) {
        /* Re-arm every header: recvmmsg overwrites msg_namelen/msg_len. */
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = MAXLEN;
            msgs[i].msg_hdr.msg_name = &peers[i];
            msgs[i].msg_hdr.msg_namelen = sizeof peers[i];
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = NULL;
            msgs[i].msg_hdr.msg_controllen = 0;
            msgs[i].msg_hdr.msg_flags = 0;
        }
        /* Block for the first datagram, then take whatever else is queued. */
        int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("recvmmsg");
            return 1;
        }
        int m = 0;
        for (int i = 0; i < n; i++) {
            unsigned len = msgs[i].msg_len;
            if (len < 12) continue; /* shorter than a DNS header: drop */
            bufs[i][2] |= 0x80;     /* QR = response */
            iov[i].iov_len = len;
            if (m != i) msgs[m] = msgs[i];
            m++;
        }
        int off = 0;
        while (off < m) {
            int s = sendmmsg(fd, msgs + off, (unsigned)(m - off), 0);
            if (s < 0) {
                if (errno == EINTR) { if (stop) break; continue; }
                /* e.g. ENOBUFS/ECONNREFUSED for one peer: skip that datagram */
                off++;
                continue;
            }
            off += s;
        }
    }
    close(fd);
    return 0;
}
