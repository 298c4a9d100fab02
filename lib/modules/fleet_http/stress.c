/*
 * Concurrency stress driver for the fleet_http module (transparent build,
 * module 3), built with ThreadSanitizer by `make tsan` and run by
 * tests/unit/test_fleet_http_native.py against the HTTP API test double.
 *
 *   fleet_http_stress_tsan <api_url> <commands_per_car>
 *
 * It plays the server's threading model (docs/protocol.md §5.5) for two cars
 * (car_a, car_b): per context one waiter thread calling wait_for_command()
 * unlocked and popping under the car's lock, and one status thread calling
 * forward_status / forward_error_message / device_(dis)connected under the
 * same lock, while the module's own poller thread feeds the queue; a third
 * thread keeps calling the context-free functions and fleet_http_get_stats().
 * After both contexts are primed it prints "ready"; the test then POSTs
 * commands_per_car commands "[0]" … "[n-1]" to each car. Every command must
 * arrive exactly once and in order. Finally destroy() must return within a
 * second while a waiter is blocked in wait_for_command(30000) and the poller
 * is inside a long poll. Exit status 0 = every invariant held (TSan reports
 * make it non-zero).
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <fleet_protocol/external_server_interface.h>

#include "fleet_http.h"

#define DEADLINE_S 90

struct car {
    const char *name;
    void *ctx;
    pthread_mutex_t server_lock; /* what the server's per-context serialization does */
    atomic_int stop;
    long expected;
    long popped;        /* guarded by server_lock */
    long out_of_order;  /* guarded by server_lock */
    long statuses_ok;
    atomic_int failures;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static struct buffer text(const char *s)
{
    struct buffer b = {(void *)s, strlen(s)};
    return b;
}

static struct device_identification device(const char *role, const char *name)
{
    struct device_identification d = {FLEET_HTTP_TRANSPARENT, 1, text(role), text(name), 0};
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
            char expected[32];
            snprintf(expected, sizeof expected, "[%ld]", car->popped);
            if (cmd.size_in_bytes != strlen(expected) || memcmp(cmd.data, expected, cmd.size_in_bytes) != 0)
                car->out_of_order++;
            car->popped++;
            if (command_ack(cmd, dev, car->ctx) != OK)
                car->failures++;
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
    while (!atomic_load(&car->stop)) {
        int rc = wait_for_command(10, car->ctx);
        if (rc == OK)
            pop_all(car);
        else if (rc != TIMEOUT_OCCURRED)
            car->failures++;
    }
    pop_all(car);
    return NULL;
}

static void *statuses(void *arg)
{
    struct car *car = arg;
    struct device_identification main_device = device("stress_device", "Stress");
    struct device_identification churn = device("churn_device", "Churn");
    char status[64];
    for (long i = 0; !atomic_load(&car->stop); i++) {
        snprintf(status, sizeof status, "{\"i\":%ld,\"car\":\"%s\"}", i, car->name);
        pthread_mutex_lock(&car->server_lock);
        if (forward_status(text(status), main_device, car->ctx) == OK)
            car->statuses_ok++;
        else
            car->failures++;
        if (i % 10 == 0 && forward_error_message(text("\"error text\""), main_device, car->ctx) != OK)
            car->failures++;
        if (i % 7 == 0) {
            if (device_connected(churn, car->ctx) != OK || device_disconnected(0, churn, car->ctx) != OK)
                car->failures++;
        }
        if (forward_status(text("not json"), main_device, car->ctx) != NOT_OK)
            car->failures++;
        pthread_mutex_unlock(&car->server_lock);
    }
    return NULL;
}

static atomic_int globals_stop;

static void *globals(void *arg)
{
    struct car *cars = arg;
    long calls = 0;
    while (!atomic_load(&globals_stop)) {
        struct fleet_http_stats st;
        if (is_device_type_supported(7) != OK || get_module_number() != FLEET_HTTP_TRANSPARENT)
            cars[0].failures++;
        if (fleet_http_get_stats(cars[calls % 2].ctx, &st) != OK)
            cars[0].failures++;
        calls++;
        sleep_ms(1);
    }
    return NULL;
}

static void *long_waiter(void *arg)
{
    void *ctx = arg;
    int *rc = malloc(sizeof *rc);
    if (rc != NULL)
        *rc = wait_for_command(30000, ctx);
    return rc;
}

static void *init_car(struct car *car, const char *api_url)
{
    struct key_value kv[] = {
        {text("company_name"), text("company_x")},
        {text("car_name"), text(car->name)},
        {text("api_url"), text(api_url)},
        {text("api_key"), text("DefaultKey")},
        {text("max_requests_threshold_count"), text("0")}, /* guard off: the test posts in bursts */
    };
    struct config config = {kv, sizeof kv / sizeof kv[0]};
    return init(config);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s <api_url> <commands_per_car>\n", argv[0]);
        return 2;
    }
    long per_car = strtol(argv[2], NULL, 10);
    struct car cars[2] = {{.name = "car_a"}, {.name = "car_b"}};
    for (int i = 0; i < 2; i++) {
        pthread_mutex_init(&cars[i].server_lock, NULL);
        atomic_init(&cars[i].stop, 0);
        atomic_init(&cars[i].failures, 0);
        cars[i].expected = per_car;
        cars[i].ctx = init_car(&cars[i], argv[1]);
        if (cars[i].ctx == NULL) {
            fprintf(stderr, "init failed\n");
            return 1;
        }
        struct device_identification d = device("stress_device", "Stress");
        if (device_connected(d, cars[i].ctx) != OK || forward_status(text("{}"), d, cars[i].ctx) != OK) {
            fprintf(stderr, "first status failed\n");
            return 1;
        }
    }
    double deadline = now_s() + DEADLINE_S;
    for (int i = 0; i < 2; i++) {
        struct fleet_http_stats st = {0};
        while (fleet_http_get_stats(cars[i].ctx, &st) == OK && !st.primed && now_s() < deadline)
            sleep_ms(5);
        if (!st.primed) {
            fprintf(stderr, "%s never primed\n", cars[i].name);
            return 1;
        }
    }

    pthread_t threads[5];
    atomic_init(&globals_stop, 0);
    for (int i = 0; i < 2; i++) {
        pthread_create(&threads[2 * i], NULL, waiter, &cars[i]);
        pthread_create(&threads[2 * i + 1], NULL, statuses, &cars[i]);
    }
    pthread_create(&threads[4], NULL, globals, cars);
    printf("ready\n");
    fflush(stdout);

    for (;;) {
        long done = 0;
        for (int i = 0; i < 2; i++) {
            pthread_mutex_lock(&cars[i].server_lock);
            done += cars[i].popped >= cars[i].expected;
            pthread_mutex_unlock(&cars[i].server_lock);
        }
        if (done == 2 || now_s() > deadline)
            break;
        sleep_ms(10);
    }
    sleep_ms(300); /* anything extra (a duplicate) would show up now */
    for (int i = 0; i < 2; i++)
        atomic_store(&cars[i].stop, 1);
    for (int i = 0; i < 4; i++)
        pthread_join(threads[i], NULL);
    atomic_store(&globals_stop, 1);
    pthread_join(threads[4], NULL);

    int ok = 1;
    for (int i = 0; i < 2; i++) {
        printf("%s: popped %ld of %ld, out of order %ld, statuses ok %ld, failures %d\n", cars[i].name,
               cars[i].popped, cars[i].expected, cars[i].out_of_order, cars[i].statuses_ok,
               atomic_load(&cars[i].failures));
        if (cars[i].popped != cars[i].expected || cars[i].out_of_order != 0 || atomic_load(&cars[i].failures) != 0 ||
            cars[i].statuses_ok == 0)
            ok = 0;
    }

    /* destroy() while a waiter is blocked and the poller sits in a long poll. */
    pthread_t blocked;
    pthread_create(&blocked, NULL, long_waiter, cars[0].ctx);
    sleep_ms(200);
    double started = now_s();
    if (destroy(&cars[0].ctx) != OK || cars[0].ctx != NULL)
        ok = 0;
    double took = now_s() - started;
    void *result = NULL;
    pthread_join(blocked, &result);
    int waiter_rc = result != NULL ? *(int *)result : 0;
    free(result);
    started = now_s();
    if (destroy(&cars[1].ctx) != OK)
        ok = 0;
    double took_b = now_s() - started;
    printf("destroy with a blocked waiter: %.3f s (waiter got %d); destroy in a long poll: %.3f s\n", took,
           waiter_rc, took_b);
    if (took > 1.0 || took_b > 1.0 || waiter_rc != CONTEXT_INCORRECT)
        ok = 0;
    for (int i = 0; i < 2; i++)
        pthread_mutex_destroy(&cars[i].server_lock);
    if (!ok) {
        printf("stress FAILED\n");
        return 1;
    }
    printf("stress ok\n");
    return 0;
}
