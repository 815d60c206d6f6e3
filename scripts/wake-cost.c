// What one cross-CPU wake-up costs on this machine: two threads, pinned to CPU 0 and CPU 1,
// pass a token back and forth through two eventfds, each sleeping in poll() between turns.
// Prints the round trip (two wake-ups) and the CPU time charged to the thread on CPU 0 per
// round trip (one sleep, one wake-up, one eventfd write). docs/benchmarks.md explains why
// these two numbers bound what a vhost-user daemon can do here.
//
//   cc -O2 -pthread scripts/wake-cost.c -o /tmp/wake-cost && /tmp/wake-cost
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

enum { ROUNDS = 20000 };
static int to_peer, to_main;

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static void wait_token(int fd) {
    struct pollfd p = {fd, POLLIN, 0};
    uint64_t v;
    poll(&p, 1, -1);
    if (read(fd, &v, sizeof v) != sizeof v) perror("read");
}

static void pass_token(int fd) {
    uint64_t one = 1;
    if (write(fd, &one, sizeof one) != sizeof one) perror("write");
}

static void *peer(void *arg) {
    (void)arg;
    pin(1);
    for (int i = 0; i < ROUNDS; i++) {
        wait_token(to_peer);
        pass_token(to_main);
    }
    return NULL;
}

static double us_between(struct timespec a, struct timespec b) {
    return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3;
}

int main(void) {
    to_peer = eventfd(0, 0);
    to_main = eventfd(0, 0);
    pthread_t t;
    pthread_create(&t, NULL, peer, NULL);
    pin(0);
    usleep(10000);
    struct timespec wall0, wall1, cpu0, cpu1;
    clock_gettime(CLOCK_MONOTONIC, &wall0);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu0);
    for (int i = 0; i < ROUNDS; i++) {
        pass_token(to_peer);
        wait_token(to_main);
    }
    clock_gettime(CLOCK_MONOTONIC, &wall1);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu1);
    pthread_join(t, NULL);
    double rtt = us_between(wall0, wall1) / ROUNDS;
    printf("cross-CPU eventfd round trip: %.1f us (one wake-up: %.1f us)\n", rtt, rtt / 2);
    printf("CPU charged per round trip to the CPU 0 thread: %.1f us\n",
           us_between(cpu0, cpu1) / ROUNDS);
    return 0;
}
