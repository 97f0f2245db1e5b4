/* delaylink: a slow point-to-point link in user space, for kernels without
 * the netem qdisc (tests/dist/slowlink.sh uses it when netem is missing).
 *
 *   delaylink TUN_A TUN_B DELAY_MS RATE_MBIT
 *
 * Creates two TUN devices (layer 3, no packet info) and forwards every
 * packet read from one to the other, as a wire of RATE_MBIT (0: unlimited)
 * with a one-way propagation delay of DELAY_MS would: a packet leaves when
 * the wire is free (serialisation at the rate, in order), then arrives
 * DELAY_MS later. Each direction has its own wire and a queue of at most
 * 8 MiB; packets beyond it are dropped, as a router's would be. slowlink.sh
 * moves the devices into its two namespaces and gives them addresses.
 *
 * Prints "ready" once both devices exist; runs until SIGTERM/SIGINT. */
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define MAX_PKT 65536
#define QUEUE_BYTES (8u << 20)

typedef struct pkt {
    uint64_t due_ns;
    uint32_t len;
    unsigned char *data;
} pkt;

/* One direction: a FIFO of packets in flight (due times never decrease:
 * the wire serialises in order and the delay is constant). */
typedef struct wire {
    pkt *q;
    size_t cap, head, n, bytes;
    uint64_t free_at_ns; /* when the wire has sent everything queued */
    uint64_t dropped;
} wire;

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int tun_open(const char *name) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    if (fd < 0) {
        perror("delaylink: /dev/net/tun");
        return -1;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        fprintf(stderr, "delaylink: creating %s: %s\n", name, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static int push(wire *w, const unsigned char *data, uint32_t len, uint64_t now, uint64_t delay_ns,
                double ns_per_byte) {
    if (w->bytes + len > QUEUE_BYTES) {
        w->dropped++;
        return 0;
    }
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 1024;
        pkt *q = malloc(cap * sizeof *q);
        if (!q) return -1;
        for (size_t i = 0; i < w->n; i++) q[i] = w->q[(w->head + i) % w->cap];
        free(w->q);
        w->q = q, w->cap = cap, w->head = 0;
    }
    pkt *p = &w->q[(w->head + w->n) % w->cap];
    if (!(p->data = malloc(len))) return -1;
    memcpy(p->data, data, len);
    p->len = len;
    uint64_t start = w->free_at_ns > now ? w->free_at_ns : now;
    w->free_at_ns = start + (uint64_t)(len * ns_per_byte);
    p->due_ns = w->free_at_ns + delay_ns;
    w->n++;
    w->bytes += len;
    return 0;
}

/* Delivers the due packets of w to fd. */
static void deliver(wire *w, int fd, uint64_t now) {
    while (w->n && w->q[w->head].due_ns <= now) {
        pkt *p = &w->q[w->head];
        if (write(fd, p->data, p->len) < 0 && errno == EAGAIN) return; /* try again soon */
        free(p->data);
        w->bytes -= p->len;
        w->head = (w->head + 1) % w->cap;
        w->n--;
    }
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: delaylink TUN_A TUN_B DELAY_MS RATE_MBIT\n");
        return 2;
    }
    double delay_ms = atof(argv[3]), rate = atof(argv[4]);
    if (delay_ms < 0 || rate < 0) {
        fprintf(stderr, "delaylink: DELAY_MS and RATE_MBIT must be >= 0\n");
        return 2;
    }
    const uint64_t delay_ns = (uint64_t)(delay_ms * 1e6);
    const double ns_per_byte = rate > 0 ? 8e3 / rate : 0; /* 8 bits / (rate * 1e6 bit/s) in ns */
    int fd[2] = {tun_open(argv[1]), tun_open(argv[2])};
    if (fd[0] < 0 || fd[1] < 0) return 1;
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    printf("ready\n");
    fflush(stdout);

    wire w[2] = {{0}, {0}}; /* w[i]: packets read from fd[i], bound for fd[1 - i] */
    static unsigned char buf[MAX_PKT];
    while (!stop) {
        uint64_t now = now_ns();
        int timeout = 100;
        for (int i = 0; i < 2; i++) {
            deliver(&w[i], fd[1 - i], now);
            if (w[i].n) {
                uint64_t due = w[i].q[w[i].head].due_ns;
                int ms = due > now ? (int)((due - now + 999999) / 1000000) : 0;
                if (ms < timeout) timeout = ms;
            }
        }
        struct pollfd pf[2] = {{fd[0], POLLIN, 0}, {fd[1], POLLIN, 0}};
        int r = poll(pf, 2, timeout);
        if (r < 0 && errno != EINTR) {
            perror("delaylink: poll");
            return 1;
        }
        now = now_ns();
        for (int i = 0; i < 2 && r > 0; i++) {
            if (!(pf[i].revents & POLLIN)) continue;
            for (;;) { /* drain what is there */
                ssize_t len = read(fd[i], buf, sizeof buf);
                if (len <= 0) break;
                if (push(&w[i], buf, (uint32_t)len, now, delay_ns, ns_per_byte)) {
                    fprintf(stderr, "delaylink: out of memory\n");
                    return 1;
                }
            }
        }
    }
    fprintf(stderr, "delaylink: stopped (dropped %llu + %llu packets at full queues)\n",
            (unsigned long long)w[0].dropped, (unsigned long long)w[1].dropped);
    return 0;
}
