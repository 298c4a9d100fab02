/*
 * Concurrency stress driver for the example module, built with
 * ThreadSanitizer by `make tsan` and run by the unit tests. It plays the
 * server's threading model (docs/protocol.md §5.5): per context one waiter thread
 * calling wait_for_command() unlocked, and caller threads serializing every
 * other call through one lock; a second context runs the same in parallel,
 * and a third thread keeps asking is_device_type_supported(). Finally a
 * waiter blocked in a long wait_for_command() must be woken by destroy().
 * Exit status 0 = every invariant held (TSan reports make it non-zero).
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <fleet_protocol/external_server_interface.h>

#include "example_module.h"

#define STATUSES 3000

struct car {
    void *ctx;
    pthread_mutex_t server_lock; /* what the server's per-context serialization does */
    atomic_int stop;
    long popped;
    long acked;
    atomic_int failures;
};

static struct buffer text(const char *s)
{
    struct buffer b = {(void *)s, strlen(s)};
    return b;
}

static struct device_identification device(const char *role)
{
    struct device_identification d = {EXAMPLE_MODULE_NUMBER, 0, text(role), text("name"), 0};
    return d;
}

static void pop_all(struct car *car)
{
    for (;;) {
        struct buffer cmd = {0};
        struct device_identification dev = {0};
        pthread_mutex_lock(&car->server_lock);
        int rc = pop_command(&cmd, &dev, car->ctx);
        if (rc >= 0) {
            car->popped++;
            if (command_ack(cmd, dev, car->ctx) == OK)
                car->acked++;
        }
        deallocate(&dev.device_role);
        deallocate(&dev.device_name);
        deallocate(&cmd);
        pthread_mutex_unlock(&car->server_lock);
        if (rc <= 0)
            return;
    }
}

static void *waiter(void *arg)
{
    struct car *car = arg;
    while (!car->stop) {
        int rc = wait_for_command(5, car->ctx);
        if (rc == OK)
            pop_all(car);
        else if (rc != TIMEOUT_OCCURRED)
            car->failures++;
    }
    pop_all(car);
    return NULL;
}

static void *producer(void *arg)
{
    struct car *car = arg;
    struct device_identification dev = device("button");
    for (int i = 0; i < STATUSES; i++) {
        pthread_mutex_lock(&car->server_lock);
        if (forward_status(text("{\"pressed\": true}"), dev, car->ctx) != OK)
            car->failures++;
        if (i % 500 == 0) {
            device_disconnected(announced, dev, car->ctx);
            device_connected(dev, car->ctx);
        }
        pthread_mutex_unlock(&car->server_lock);
    }
    return NULL;
}

static void *type_reader(void *arg)
{
    atomic_int *stop = arg;
    while (!*stop)
        (void)is_device_type_supported(0);
    return NULL;
}

static void *long_waiter(void *arg)
{
    return (void *)(long)wait_for_command(10000, arg);
}

static void *make_context(const char *echo_every)
{
    struct key_value pairs[3] = {
        {text("company_name"), text("c")},
        {text("car_name"), text("v")},
        {text("echo_every"), text(echo_every)},
    };
    struct config config = {pairs, 3};
    return init(config);
}

static int run_car(struct car *car)
{
    struct device_identification dev = device("button");
    pthread_t w, p;
    struct example_counters counters;
    if (device_connected(dev, car->ctx) != OK)
        return 1;
    pthread_create(&w, NULL, waiter, car);
    pthread_create(&p, NULL, producer, car);
    pthread_join(p, NULL);
    car->stop = 1;
    pthread_join(w, NULL);
    example_get_counters(car->ctx, &counters);
    if (car->failures != 0 || counters.statuses != STATUSES || counters.queued != 0 ||
        (long)counters.commands_popped != car->popped || car->acked != car->popped || car->popped == 0) {
        fprintf(stderr, "car invariant broken: failures=%d statuses=%llu popped=%ld acked=%ld queued=%llu\n",
                atomic_load(&car->failures), (unsigned long long)counters.statuses, car->popped, car->acked,
                (unsigned long long)counters.queued);
        return 1;
    }
    return 0;
}

static void *run_car_thread(void *arg)
{
    return (void *)(long)run_car(arg);
}

int main(void)
{
    struct car cars[2];
    pthread_t threads[2], reader;
    atomic_int stop_reader = 0;
    int failed = 0;

    for (int i = 0; i < 2; i++) {
        memset(&cars[i], 0, sizeof cars[i]);
        atomic_init(&cars[i].stop, 0);
        atomic_init(&cars[i].failures, 0);
        pthread_mutex_init(&cars[i].server_lock, NULL);
        cars[i].ctx = make_context(i == 0 ? "1" : "7");
        if (cars[i].ctx == NULL)
            return 1;
    }
    pthread_create(&reader, NULL, type_reader, (void *)&stop_reader);
    for (int i = 0; i < 2; i++)
        pthread_create(&threads[i], NULL, run_car_thread, &cars[i]);
    for (int i = 0; i < 2; i++) {
        void *rc;
        pthread_join(threads[i], &rc);
        failed |= rc != NULL;
    }

    /* destroy() with a waiter blocked: the waiter must come back promptly with CONTEXT_INCORRECT. */
    pthread_t blocked;
    void *blocked_rc;
    struct timespec pause = {0, 50 * 1000000L}, start, end;
    pthread_create(&blocked, NULL, long_waiter, cars[0].ctx);
    nanosleep(&pause, NULL);
    clock_gettime(CLOCK_MONOTONIC, &start);
    failed |= destroy(&cars[0].ctx) != OK || cars[0].ctx != NULL;
    pthread_join(blocked, &blocked_rc);
    clock_gettime(CLOCK_MONOTONIC, &end);
    failed |= (long)blocked_rc != CONTEXT_INCORRECT;
    failed |= end.tv_sec - start.tv_sec > 2;

    failed |= destroy(&cars[1].ctx) != OK;
    stop_reader = 1;
    pthread_join(reader, NULL);
    for (int i = 0; i < 2; i++)
        pthread_mutex_destroy(&cars[i].server_lock);
    printf("stress %s: popped %ld + %ld commands\n", failed ? "FAILED" : "ok", cars[0].popped, cars[1].popped);
    return failed;
}
