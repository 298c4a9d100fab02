/*
 * The external-server module ABI (docs/protocol.md §5) on top of the Fleet Protocol
 * HTTP API (docs/http-bridge.md §1), with the fixes of §3.
 *
 * Threads and locks. One context = one car. The server calls
 * wait_for_command() in its worker thread, unlocked, and every other function
 * serialized (§5.5). Each context runs one poller thread of its own that
 * long-polls GET /command and feeds a FIFO queue; the queue, the device list,
 * the counters and the "kick" flag are guarded by ctx->lock, and ctx->changed
 * (CLOCK_MONOTONIC) is broadcast when commands are queued, when a status
 * succeeded while unprimed (kick) and when destroy() starts. The poller's own
 * state (cursor, seen set, guard) and the status path's own state (breaker,
 * status handle) are each touched by one thread only. Each side has its own
 * curl handle.
 *
 * Commands: the poller first takes a non-waiting snapshot (GET since=0) and
 * sets the cursor to the newest timestamp in it, so history is skipped but
 * nothing posted afterwards is lost (§3.1). Then it alternates a long poll
 * since=cursor+1&wait=true with a non-waiting inclusive "sweep" since=cursor
 * after every 200; entries at exactly the cursor that were already seen are
 * dropped by identity (§3.5). A pure inclusive long poll is not possible: the
 * API answers at once whenever any command at >= since exists (§1.4.1), so it
 * would never wait.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <fleet_protocol/external_server_interface.h>

#include "fleet_http.h"
#include "internal.h"

#define PRIME_RETRY_MS 500
#define FAILED_POLL_PAUSE_MS 50
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define GUARD_MAX_ENTRIES 1024
#define MAX_DUPLICATE_RETRIES 3
#define MAX_TRANSIENT_RETRIES 2
#define DUPLICATE_MARKER "identical to those sent previously"

struct command {
    struct command *next;
    int module;
    unsigned int device_type;
    char *role;
    size_t role_len;
    char *name;
    size_t name_len;
    char *data;
    size_t data_len;
};

struct device {
    int module;
    unsigned int device_type;
    unsigned int priority;
    char *role;
    size_t role_len;
    char *name;
    size_t name_len;
};

/* Identities (compact JSON, keys sorted) of the entries at exactly the cursor: a multiset. */
struct seen_set {
    char **items;
    size_t n;
    size_t cap;
};

struct fh_context {
    struct fh_config cfg;
    char *status_url;
    char *command_url;
    struct curl_slist *headers;

    pthread_mutex_t lock;
    pthread_cond_t changed;
    struct command *head;
    struct command *tail;
    size_t queued;
    struct device *devices;
    size_t n_devices;
    size_t cap_devices;
    unsigned int waiters;
    int destroying;
    int kick;
    struct fleet_http_stats stats;

    atomic_int stop;
    pthread_t poller;
    int poller_started;

    /* Status path: only the (serialized) caller threads. */
    CURL *status_handle;
    int consecutive_failures;
    int64_t breaker_until;
    struct fh_logstate status_log;
    struct fh_logstate reject_log;

    /* Poller thread only. */
    CURL *poll_handle;
    CURLM *multi;
    int primed;
    int64_t cursor;
    struct seen_set seen;
    int64_t *guard_times; /* oldest first */
    size_t guard_n;
    size_t guard_cap;
    int throttled;
    int backoff_ms;
    struct fh_logstate poll_log;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int global_ok;

static void global_init(void)
{
    global_ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

/* ---- small helpers -------------------------------------------------------------------------- */

static struct timespec monotonic_after(int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (ms < 0)
        ms = 0;
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

static void sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Poller sleep that ends early on destroy (and on a kick if asked). Returns 1 when stopping. */
static int poller_sleep(struct fh_context *ctx, int64_t ms, int wake_on_kick)
{
    struct timespec deadline = monotonic_after(ms);
    pthread_mutex_lock(&ctx->lock);
    while (!ctx->destroying && !(wake_on_kick && ctx->kick)) {
        if (pthread_cond_timedwait(&ctx->changed, &ctx->lock, &deadline) == ETIMEDOUT)
            break;
    }
    int stopping = ctx->destroying;
    pthread_mutex_unlock(&ctx->lock);
    return stopping;
}

static void stat_add(struct fh_context *ctx, uint64_t *field, uint64_t n)
{
    pthread_mutex_lock(&ctx->lock);
    *field += n;
    pthread_mutex_unlock(&ctx->lock);
}

static void free_command(struct command *c)
{
    if (c == NULL)
        return;
    free(c->role);
    free(c->name);
    free(c->data);
    free(c);
}

static void seen_clear(struct seen_set *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->items[i]);
    s->n = 0;
}

static int seen_add(struct seen_set *s, char *item)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        char **grown = realloc(s->items, cap * sizeof *grown);
        if (grown == NULL)
            return -1;
        s->items = grown;
        s->cap = cap;
    }
    s->items[s->n++] = item;
    return 0;
}

static int valid_role(const char *role, size_t len)
{
    if (role == NULL || len == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = role[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return 0;
    }
    return 1;
}

/* ---- command parsing (poller thread) ------------------------------------------------------- */

static int json_int64(const json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d >= -9.0e15 && d <= 9.0e15 && d == (double)(int64_t)d) {
            *out = (int64_t)d;
            return 0;
        }
    }
    return -1;
}

/* A queued command from one response entry, or NULL (why says why; NULL why = other module). */
static struct command *command_from(const json_t *entry, const char **why)
{
    const json_t *device = json_object_get(entry, "device_id");
    const json_t *payload = json_object_get(entry, "payload");
    const json_t *data = json_object_get(payload, "data");
    int64_t module, type;
    const json_t *role = json_object_get(device, "role");
    const json_t *name = json_object_get(device, "name");
    if (!json_is_object(device) || json_int64(json_object_get(device, "module_id"), &module) != 0 ||
        json_int64(json_object_get(device, "type"), &type) != 0 || !json_is_string(role) ||
        (name != NULL && !json_is_string(name)) || data == NULL) {
        *why = "malformed message (device_id or payload.data missing or of the wrong type)";
        return NULL;
    }
    if (module != FLEET_MODULE) {
        *why = NULL;
        return NULL;
    }
    if (type < 0 || type > UINT_MAX) {
        *why = "device type out of range";
        return NULL;
    }
    struct command *c = calloc(1, sizeof *c);
    if (c == NULL) {
        *why = "out of memory";
        return NULL;
    }
    c->module = (int)module;
    c->device_type = (unsigned int)type;
    c->role_len = json_string_length(role);
    c->role = fh_strndup(json_string_value(role), c->role_len);
    c->name_len = name != NULL ? json_string_length(name) : 0;
    c->name = fh_strndup(name != NULL ? json_string_value(name) : "", c->name_len);
    c->data = fh_command_bytes(data, &c->data_len, why);
    if (c->role == NULL || c->name == NULL || c->data == NULL) {
        if (c->role == NULL || c->name == NULL)
            *why = "out of memory";
        free_command(c);
        return NULL;
    }
    return c;
}

/*
 * Takes the entries of one 200 response in order. since_inclusive tells whether entries at
 * exactly the cursor may come back (sweep) and must be matched against the seen set.
 * Returns -1 when the body is not a JSON array.
 */
static int take_response(struct fh_context *ctx, const struct fh_response *r)
{
    json_error_t err;
    json_t *array = r->body != NULL ? json_loadb(r->body, r->len, JSON_DECODE_ANY, &err) : NULL;
    if (!json_is_array(array)) {
        json_decref(array);
        return -1;
    }
    size_t n = json_array_size(array);
    int64_t old = ctx->cursor;
    int64_t newest = old;
    unsigned char *matched = ctx->seen.n > 0 ? calloc(ctx->seen.n, 1) : NULL;
    struct seen_set fresh = {0};
    int64_t *fresh_ts = n > 0 ? calloc(n, sizeof *fresh_ts) : NULL;
    struct command *batch_head = NULL, *batch_last = NULL;
    uint64_t received = 0, other = 0, invalid = 0, duplicate = 0, queued = 0;
    char message[512];

    for (size_t i = 0; i < n; i++) {
        const json_t *entry = json_array_get(array, i);
        int64_t ts;
        if (!json_is_object(entry) || json_int64(json_object_get(entry, "timestamp"), &ts) != 0) {
            invalid++;
            fh_log(ctx->cfg.company, ctx->cfg.car, "skipping a command entry without a timestamp");
            continue;
        }
        if (ts < old) {
            duplicate++; /* older than what was seen: not possible with since >= cursor */
            continue;
        }
        char *identity = json_dumps(entry, JSON_COMPACT | JSON_SORT_KEYS);
        if (identity == NULL) {
            invalid++;
            continue;
        }
        if (ts == old) {
            int found = 0;
            for (size_t k = 0; k < ctx->seen.n && !found; k++) {
                if (matched != NULL && !matched[k] && strcmp(ctx->seen.items[k], identity) == 0) {
                    matched[k] = 1;
                    found = 1;
                }
            }
            if (found) {
                duplicate++;
                free(identity);
                continue;
            }
        }
        if (fresh_ts == NULL || seen_add(&fresh, identity) != 0) {
            free(identity);
            invalid++;
            continue;
        }
        fresh_ts[fresh.n - 1] = ts;
        if (ts > newest)
            newest = ts;

        const char *why = NULL;
        struct command *c = command_from(entry, &why);
        if (c != NULL) {
            received++;
            queued++;
            if (batch_last != NULL)
                batch_last->next = c;
            else
                batch_head = c;
            batch_last = c;
        } else if (why == NULL) {
            other++;
        } else {
            received++;
            invalid++;
            snprintf(message, sizeof message, "skipping an invalid command (timestamp %lld): %s",
                     (long long)ts, why);
            fh_log(ctx->cfg.company, ctx->cfg.car, "%s", message);
        }
    }

    /* The seen set describes exactly the newest timestamp. */
    if (newest == old) {
        for (size_t k = 0; k < fresh.n; k++) {
            if (seen_add(&ctx->seen, fresh.items[k]) != 0)
                free(fresh.items[k]);
        }
    } else {
        seen_clear(&ctx->seen);
        for (size_t k = 0; k < fresh.n; k++) {
            if (fresh_ts[k] != newest || seen_add(&ctx->seen, fresh.items[k]) != 0)
                free(fresh.items[k]);
        }
    }
    free(fresh.items);
    free(fresh_ts);
    free(matched);
    ctx->cursor = newest;
    json_decref(array);

    pthread_mutex_lock(&ctx->lock);
    if (batch_head != NULL) {
        if (ctx->tail != NULL)
            ctx->tail->next = batch_head;
        else
            ctx->head = batch_head;
        ctx->tail = batch_last;
        ctx->queued += queued;
        pthread_cond_broadcast(&ctx->changed);
    }
    ctx->stats.commands_received += received;
    ctx->stats.commands_other += other;
    ctx->stats.commands_invalid += invalid;
    ctx->stats.commands_duplicate += duplicate;
    ctx->stats.cursor = newest;
    pthread_mutex_unlock(&ctx->lock);
    return 0;
}

/* ---- the poller ------------------------------------------------------------------------------ */

static void poll_failed(struct fh_context *ctx, const char *what, const struct fh_response *r)
{
    char description[300];
    char message[400];
    fh_describe(r, description, sizeof description);
    if (r->curl == CURLE_OK && r->status == 404)
        snprintf(message, sizeof message, "%s: car unknown to the API (%s); waiting for its next status", what,
                 description);
    else
        snprintf(message, sizeof message, "%s failed: %s", what, description);
    fh_log_event(&ctx->poll_log, ctx->cfg.company, ctx->cfg.car, message, NULL);
    stat_add(ctx, &ctx->stats.poll_failures, 1);
}

/* §2.6 RequestFrequencyGuard after a waiting GET; returns the milliseconds it slept. */
static int64_t guard(struct fh_context *ctx)
{
    if (ctx->cfg.threshold_count <= 0 || ctx->guard_times == NULL)
        return 0;
    size_t count = (size_t)ctx->cfg.threshold_count;
    int64_t now = fh_now_ms();
    if (ctx->guard_n == ctx->guard_cap) { /* only when count > GUARD_MAX_ENTRIES: never fires */
        memmove(ctx->guard_times, ctx->guard_times + 1, (ctx->guard_n - 1) * sizeof(int64_t));
        ctx->guard_n--;
    }
    ctx->guard_times[ctx->guard_n++] = now;
    if (!ctx->throttled) {
        if (ctx->guard_n >= count) {
            if (now - ctx->guard_times[0] < ctx->cfg.threshold_period_ms) {
                ctx->throttled = 1;
                ctx->guard_n = 0;
                stat_add(ctx, &ctx->stats.guard_delays, 1);
                poller_sleep(ctx, ctx->cfg.threshold_delay_ms, 0);
                return ctx->cfg.threshold_delay_ms;
            }
            memmove(ctx->guard_times, ctx->guard_times + 1, (ctx->guard_n - 1) * sizeof(int64_t));
            ctx->guard_n--;
        }
        return 0;
    }
    poller_sleep(ctx, ctx->cfg.retry_delay_ms, 0);
    if (ctx->guard_n >= count) {
        ctx->throttled = 0;
        memmove(ctx->guard_times, ctx->guard_times + 1, (ctx->guard_n - 1) * sizeof(int64_t));
        ctx->guard_n--;
    }
    return ctx->cfg.retry_delay_ms;
}

static void get(struct fh_context *ctx, int64_t since, int wait, struct fh_response *r)
{
    char url_tail[64];
    snprintf(url_tail, sizeof url_tail, "&since=%lld&wait=%s", (long long)since, wait ? "true" : "false");
    char *url = fh_printf("%s%s", ctx->command_url, url_tail);
    if (url == NULL) {
        fh_response_reset(r);
        r->curl = CURLE_OUT_OF_MEMORY;
        return;
    }
    long budget_ms = wait ? ctx->cfg.poll_timeout_ms : ctx->cfg.status_timeout_ms;
    fh_perform_abortable(ctx->multi, ctx->poll_handle, url, budget_ms, &ctx->stop, r);
    free(url);
}

/* The history snapshot: on 200 the cursor skips everything that exists now (§3.1). */
static void prime(struct fh_context *ctx, struct fh_response *r)
{
    pthread_mutex_lock(&ctx->lock);
    ctx->kick = 0;
    ctx->stats.prime_requests++;
    pthread_mutex_unlock(&ctx->lock);
    get(ctx, 0, 0, r);
    if (r->aborted)
        return;
    json_error_t err;
    json_t *array = NULL;
    if (r->curl == CURLE_OK && r->status == 200 && r->body != NULL)
        array = json_loadb(r->body, r->len, JSON_DECODE_ANY, &err);
    if (!json_is_array(array)) {
        json_decref(array);
        poll_failed(ctx, "history snapshot (GET since=0)", r);
        poller_sleep(ctx, PRIME_RETRY_MS, 1);
        return;
    }
    int64_t newest = 0;
    size_t n = json_array_size(array);
    for (size_t i = 0; i < n; i++) {
        int64_t ts;
        if (json_int64(json_object_get(json_array_get(array, i), "timestamp"), &ts) == 0 && ts > newest)
            newest = ts;
    }
    seen_clear(&ctx->seen);
    for (size_t i = 0; i < n && newest > 0; i++) {
        const json_t *entry = json_array_get(array, i);
        int64_t ts;
        if (json_int64(json_object_get(entry, "timestamp"), &ts) != 0 || ts != newest)
            continue;
        char *identity = json_dumps(entry, JSON_COMPACT | JSON_SORT_KEYS);
        if (identity != NULL && seen_add(&ctx->seen, identity) != 0)
            free(identity);
    }
    json_decref(array);
    ctx->cursor = newest;
    ctx->primed = 1;
    pthread_mutex_lock(&ctx->lock);
    ctx->stats.primed = 1;
    ctx->stats.cursor = newest;
    pthread_mutex_unlock(&ctx->lock);
    fh_log_event(&ctx->poll_log, ctx->cfg.company, ctx->cfg.car, NULL, NULL);
    fh_log(ctx->cfg.company, ctx->cfg.car, "primed: %zu earlier command(s) skipped, cursor %lld", n,
           (long long)newest);
}

static void *poller_main(void *arg)
{
    struct fh_context *ctx = arg;
    struct fh_response r = {0};
    int need_sweep = 0;
    while (!atomic_load(&ctx->stop)) {
        if (!ctx->primed) {
            prime(ctx, &r);
            continue;
        }
        /* One GET per round: the inclusive sweep after every 200, else the long poll. */
        int sweep = need_sweep;
        int64_t started = fh_now_ms();
        stat_add(ctx, sweep ? &ctx->stats.sweep_requests : &ctx->stats.poll_requests, 1);
        get(ctx, sweep ? ctx->cursor : ctx->cursor + 1, !sweep, &r);
        if (r.aborted)
            break;
        int ok = r.curl == CURLE_OK && r.status == 200 && take_response(ctx, &r) == 0;
        if (ok) {
            ctx->backoff_ms = 0;
            fh_log_event(&ctx->poll_log, ctx->cfg.company, ctx->cfg.car, NULL, "command API reachable again");
            need_sweep = !sweep;
            if (sweep)
                continue; /* the sweep answers at once; the guard counts the waiting polls */
        } else {
            poll_failed(ctx, sweep ? "same-millisecond sweep (GET since=cursor)" : "command poll (GET wait=true)",
                        &r);
        }
        int64_t slept = guard(ctx);
        if (!ok && slept == 0) {
            /* Never busy-loop on fast failures, also with the guard disabled (count 0). */
            int64_t pause = FAILED_POLL_PAUSE_MS;
            if (ctx->cfg.threshold_count <= 0) {
                ctx->backoff_ms = ctx->backoff_ms == 0 ? BACKOFF_MIN_MS : ctx->backoff_ms * 2;
                if (ctx->backoff_ms > BACKOFF_MAX_MS)
                    ctx->backoff_ms = BACKOFF_MAX_MS;
                pause = ctx->backoff_ms;
            }
            int64_t elapsed = fh_now_ms() - started;
            if (elapsed < pause)
                poller_sleep(ctx, pause - elapsed, 0);
        }
    }
    fh_response_reset(&r);
    return NULL;
}

/* ---- statuses (caller threads, serialized by the server) -------------------------------------- */

static void status_sleep_within(int64_t ms, int64_t deadline)
{
    int64_t left = deadline - fh_now_ms();
    sleep_ms(ms < left ? ms : left);
}

static int send_status(struct fh_context *ctx, const char *body)
{
    int64_t now = fh_now_ms();
    if (ctx->cfg.breaker_failures > 0 && ctx->consecutive_failures >= ctx->cfg.breaker_failures &&
        now < ctx->breaker_until) {
        pthread_mutex_lock(&ctx->lock);
        ctx->stats.breaker_rejections++;
        ctx->stats.status_rejected++;
        pthread_mutex_unlock(&ctx->lock);
        return NOT_OK;
    }
    int64_t deadline = now + ctx->cfg.status_timeout_ms;
    int duplicates = 0, retries = 0, ok = 0;
    struct fh_response r = {0};
    for (;;) {
        int64_t left = deadline - fh_now_ms();
        if (left <= 0) {
            if (r.curl == CURLE_OK && r.status == 0) {
                r.curl = CURLE_OPERATION_TIMEDOUT;
                snprintf(r.error, sizeof r.error, "status time budget of %d ms used up",
                         ctx->cfg.status_timeout_ms);
            }
            break;
        }
        fh_perform(ctx->status_handle, ctx->status_url, body, (long)left, &r);
        stat_add(ctx, &ctx->stats.status_requests, 1);
        if (r.curl == CURLE_OK && r.status == 200) {
            ok = 1;
            break;
        }
        if (r.curl == CURLE_OK && r.status == 400 && duplicates < MAX_DUPLICATE_RETRIES && r.body != NULL &&
            strstr(r.body, DUPLICATE_MARKER) != NULL) {
            /* Same millisecond as an earlier status of this device: a new millisecond fixes it. */
            stat_add(ctx, &ctx->stats.duplicate_retries, 1);
            status_sleep_within((int64_t)2 << duplicates, deadline);
            duplicates++;
            continue;
        }
        if (fh_transient(&r) && retries < MAX_TRANSIENT_RETRIES) {
            int64_t pause = retries == 0 ? 100 : 300;
            if (fh_now_ms() + pause < deadline) {
                stat_add(ctx, &ctx->stats.status_retries, 1);
                sleep_ms(pause);
                retries++;
                continue;
            }
        }
        break;
    }
    if (ok) {
        if (ctx->cfg.breaker_failures > 0 && ctx->consecutive_failures >= ctx->cfg.breaker_failures)
            fh_log(ctx->cfg.company, ctx->cfg.car, "status API reachable again: circuit breaker closed");
        ctx->consecutive_failures = 0;
        fh_log_event(&ctx->status_log, ctx->cfg.company, ctx->cfg.car, NULL, "statuses are delivered again");
        pthread_mutex_lock(&ctx->lock);
        ctx->stats.status_ok++;
        if (!ctx->stats.primed) {
            ctx->kick = 1; /* the car (and device) may be known now: retry the snapshot at once */
            pthread_cond_broadcast(&ctx->changed);
        }
        pthread_mutex_unlock(&ctx->lock);
        fh_response_reset(&r);
        return OK;
    }
    char description[300];
    char message[400];
    fh_describe(&r, description, sizeof description);
    snprintf(message, sizeof message, "status not delivered: %s", description);
    fh_log_event(&ctx->status_log, ctx->cfg.company, ctx->cfg.car, message, NULL);
    if (fh_transient(&r)) {
        ctx->consecutive_failures++;
        if (ctx->cfg.breaker_failures > 0 && ctx->consecutive_failures >= ctx->cfg.breaker_failures) {
            ctx->breaker_until = fh_now_ms() + ctx->cfg.breaker_open_ms;
            stat_add(ctx, &ctx->stats.breaker_opened, 1);
            if (ctx->consecutive_failures == ctx->cfg.breaker_failures)
                fh_log(ctx->cfg.company, ctx->cfg.car,
                       "circuit breaker open after %d consecutive failures: statuses fail at once for %d ms "
                       "at a time until the API answers",
                       ctx->consecutive_failures, ctx->cfg.breaker_open_ms);
        }
    } else {
        ctx->consecutive_failures = 0;
    }
    stat_add(ctx, &ctx->stats.status_failed, 1);
    fh_response_reset(&r);
    return NOT_OK;
}

static int reject(struct fh_context *ctx, const char *what, const char *why)
{
    char message[400];
    snprintf(message, sizeof message, "%s not forwarded: %s", what, why);
    fh_log_event(&ctx->reject_log, ctx->cfg.company, ctx->cfg.car, message, NULL);
    stat_add(ctx, &ctx->stats.status_rejected, 1);
    return NOT_OK;
}

static int forward(const struct buffer bytes, const struct device_identification device, void *context,
                   int is_error)
{
    struct fh_context *ctx = context;
    if (ctx == NULL)
        return CONTEXT_INCORRECT;
    const char *what = is_error ? "error message" : "status";
    stat_add(ctx, &ctx->stats.status_calls, 1);

    const char *role = device.device_role.data;
    size_t role_len = role != NULL ? device.device_role.size_in_bytes : 0;
    const char *name = device.device_name.data;
    size_t name_len = name != NULL ? device.device_name.size_in_bytes : 0;
    if (!valid_role(role, role_len))
        return reject(ctx, what, "device role is empty or not [a-z0-9_]");
    if (name_len > 0 && memchr(name, '\0', name_len) != NULL)
        return reject(ctx, what, "device name contains a NUL byte");

    const char *text = bytes.data != NULL ? bytes.data : "";
    size_t text_len = bytes.data != NULL ? bytes.size_in_bytes : 0;
    json_error_t err;
    json_t *data = json_loadb(text, text_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    if (data == NULL && json_error_code(&err) == json_error_numeric_overflow)
        data = json_loadb(text, text_len, JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &err);
    int structured = json_is_object(data) || json_is_array(data) || json_is_string(data);
    const char *encoding = "JSON";
    const char *why = NULL;
    if (!structured) {
        char reason[JSON_ERROR_TEXT_LENGTH + 40];
        if (data == NULL)
            snprintf(reason, sizeof reason, "not JSON (%s)", err.text);
        else
            snprintf(reason, sizeof reason, "a JSON scalar (the API takes objects, arrays and strings)");
        json_decref(data);
        data = NULL;
        if (!ctx->cfg.base64_fallback)
            return reject(ctx, what, reason);
        char *b64 = fh_base64((const unsigned char *)text, text_len);
        data = b64 != NULL ? json_string(b64) : NULL;
        free(b64);
        encoding = "BASE64";
        if (data == NULL)
            return reject(ctx, what, "out of memory");
    } else if (fh_validate_status(data, device.device_type, is_error, &why) != 0) {
        json_decref(data);
        return reject(ctx, what, why);
    }

    json_t *device_id = json_pack("{s:i, s:I, s:s%, s:s%}", "module_id", device.module, "type",
                                  (json_int_t)device.device_type, "role", role, role_len, "name",
                                  name_len > 0 ? name : "", name_len);
    if (device_id == NULL) {
        json_decref(data);
        return reject(ctx, what, "device name is not valid UTF-8");
    }
    json_t *message = json_pack("[{s:I, s:o, s:{s:s, s:s, s:o}}]", "timestamp", (json_int_t)fh_wall_ms(),
                                "device_id", device_id, "payload", "message_type",
                                is_error ? "STATUS_ERROR" : "STATUS", "encoding", encoding, "data", data);
    /* json_pack "o" steals the references, also on failure. */
    char *body = message != NULL ? json_dumps(message, JSON_COMPACT) : NULL;
    json_decref(message);
    if (body == NULL)
        return reject(ctx, what, "cannot build the request body");
    int rc = send_status(ctx, body);
    free(body);
    return rc;
}

/* ---- the ABI ------------------------------------------------------------------------------------ */

static void free_context(struct fh_context *ctx)
{
    while (ctx->head != NULL) {
        struct command *next = ctx->head->next;
        free_command(ctx->head);
        ctx->head = next;
    }
    for (size_t i = 0; i < ctx->n_devices; i++) {
        free(ctx->devices[i].role);
        free(ctx->devices[i].name);
    }
    free(ctx->devices);
    seen_clear(&ctx->seen);
    free(ctx->seen.items);
    free(ctx->guard_times);
    if (ctx->multi != NULL)
        curl_multi_cleanup(ctx->multi);
    if (ctx->poll_handle != NULL)
        curl_easy_cleanup(ctx->poll_handle);
    if (ctx->status_handle != NULL)
        curl_easy_cleanup(ctx->status_handle);
    curl_slist_free_all(ctx->headers);
#ifndef FLEET_HTTP_INJECT_LEAK
    free(ctx->status_url);
#endif
    free(ctx->command_url);
    fh_config_free(&ctx->cfg);
    free(ctx);
}

void *init(const struct config config_data)
{
    pthread_once(&global_once, global_init);
    if (!global_ok) {
        fh_log(NULL, NULL, "init: curl_global_init failed");
        return NULL;
    }
    struct fh_context *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL)
        return NULL;
    if (fh_config_parse(&config_data, &ctx->cfg) != 0) {
        free(ctx);
        return NULL;
    }
    const char *failure = NULL;
    char *key = fh_url_escape(ctx->cfg.api_key);
    if (key != NULL) {
        ctx->status_url =
            fh_printf("%s/status/%s/%s?api_key=%s", ctx->cfg.api_url, ctx->cfg.company, ctx->cfg.car, key);
        ctx->command_url =
            fh_printf("%s/command/%s/%s?api_key=%s", ctx->cfg.api_url, ctx->cfg.company, ctx->cfg.car, key);
        free(key);
    }
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    if (h != NULL) {
        ctx->headers = h;
        h = curl_slist_append(ctx->headers, "Accept: application/json");
        if (h != NULL)
            h = curl_slist_append(ctx->headers, "Expect:"); /* no 100-continue round trip */
    }
    if (ctx->status_url == NULL || ctx->command_url == NULL || h == NULL)
        failure = "out of memory";
    if (failure == NULL) {
        ctx->status_handle = fh_handle_new(&ctx->cfg, ctx->headers);
        ctx->poll_handle = fh_handle_new(&ctx->cfg, ctx->headers);
        ctx->multi = curl_multi_init();
        if (ctx->status_handle == NULL || ctx->poll_handle == NULL || ctx->multi == NULL)
            failure = "cannot create the HTTP handles";
    }
    if (failure == NULL && ctx->cfg.threshold_count > 0) {
        ctx->guard_cap = (size_t)ctx->cfg.threshold_count < GUARD_MAX_ENTRIES
                             ? (size_t)ctx->cfg.threshold_count + 1
                             : GUARD_MAX_ENTRIES;
        ctx->guard_times = calloc(ctx->guard_cap, sizeof *ctx->guard_times);
        if (ctx->guard_times == NULL)
            failure = "out of memory";
    }
    int locks = 0;
    if (failure == NULL) {
        pthread_condattr_t attr;
        if (pthread_mutex_init(&ctx->lock, NULL) != 0 || pthread_condattr_init(&attr) != 0) {
            failure = "cannot create the lock";
        } else {
            if (pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0 ||
                pthread_cond_init(&ctx->changed, &attr) != 0) {
                pthread_mutex_destroy(&ctx->lock);
                failure = "cannot create the condition variable";
            } else {
                locks = 1;
            }
            pthread_condattr_destroy(&attr);
        }
    }
    if (failure == NULL) {
        atomic_init(&ctx->stop, 0);
        if (pthread_create(&ctx->poller, NULL, poller_main, ctx) != 0)
            failure = "cannot start the poller thread";
        else
            ctx->poller_started = 1;
    }
    if (failure != NULL) {
        fh_log(ctx->cfg.company, ctx->cfg.car, "init: %s", failure);
        if (locks) {
            pthread_cond_destroy(&ctx->changed);
            pthread_mutex_destroy(&ctx->lock);
        }
        free_context(ctx);
        return NULL;
    }
    return ctx;
}

int destroy(void **context)
{
    if (context == NULL || *context == NULL)
        return NOT_OK;
    struct fh_context *ctx = *context;
    pthread_mutex_lock(&ctx->lock);
    ctx->destroying = 1;
    atomic_store(&ctx->stop, 1);
    pthread_cond_broadcast(&ctx->changed);
    pthread_mutex_unlock(&ctx->lock);
    curl_multi_wakeup(ctx->multi); /* cancels an in-flight long poll at once */
    if (ctx->poller_started)
        pthread_join(ctx->poller, NULL);
    /* A waiter still inside wait_for_command() leaves before the memory goes away. */
    pthread_mutex_lock(&ctx->lock);
    while (ctx->waiters > 0)
        pthread_cond_wait(&ctx->changed, &ctx->lock);
    pthread_mutex_unlock(&ctx->lock);
    pthread_cond_destroy(&ctx->changed);
    pthread_mutex_destroy(&ctx->lock);
    free_context(ctx);
    *context = NULL;
    return OK;
}

int forward_status(const struct buffer device_status, const struct device_identification device, void *context)
{
    return forward(device_status, device, context, 0);
}

int forward_error_message(const struct buffer error_msg, const struct device_identification device,
                          void *context)
{
    return forward(error_msg, device, context, 1);
}

static int same_device(const struct device *d, const struct device_identification *id)
{
    size_t role_len = id->device_role.data != NULL ? id->device_role.size_in_bytes : 0;
    size_t name_len = id->device_name.data != NULL ? id->device_name.size_in_bytes : 0;
    return d->module == id->module && d->device_type == id->device_type && d->priority == id->priority &&
           d->role_len == role_len && d->name_len == name_len &&
           (role_len == 0 || memcmp(d->role, id->device_role.data, role_len) == 0) &&
           (name_len == 0 || memcmp(d->name, id->device_name.data, name_len) == 0);
}

int device_connected(const struct device_identification device, void *context)
{
    struct fh_context *ctx = context;
    if (ctx == NULL)
        return CONTEXT_INCORRECT;
    struct device d = {device.module, device.device_type, device.priority, NULL, 0, NULL, 0};
    d.role_len = device.device_role.data != NULL ? device.device_role.size_in_bytes : 0;
    d.name_len = device.device_name.data != NULL ? device.device_name.size_in_bytes : 0;
    d.role = fh_strndup(d.role_len > 0 ? device.device_role.data : "", d.role_len);
    d.name = fh_strndup(d.name_len > 0 ? device.device_name.data : "", d.name_len);
    if (d.role == NULL || d.name == NULL) {
        free(d.role);
        free(d.name);
        return NOT_OK;
    }
    pthread_mutex_lock(&ctx->lock);
    if (ctx->n_devices == ctx->cap_devices) {
        size_t cap = ctx->cap_devices ? ctx->cap_devices * 2 : 8;
        struct device *grown = realloc(ctx->devices, cap * sizeof *grown);
        if (grown == NULL) {
            pthread_mutex_unlock(&ctx->lock);
            free(d.role);
            free(d.name);
            return NOT_OK;
        }
        ctx->devices = grown;
        ctx->cap_devices = cap;
    }
    ctx->devices[ctx->n_devices++] = d;
    pthread_mutex_unlock(&ctx->lock);
    return OK;
}

int device_disconnected(const int disconnect_type, const struct device_identification device, void *context)
{
    struct fh_context *ctx = context;
    (void)disconnect_type;
    if (ctx == NULL)
        return CONTEXT_INCORRECT;
    int rc = NOT_OK;
    pthread_mutex_lock(&ctx->lock);
    for (size_t i = 0; i < ctx->n_devices; i++) {
        if (same_device(&ctx->devices[i], &device)) {
            free(ctx->devices[i].role);
            free(ctx->devices[i].name);
            memmove(&ctx->devices[i], &ctx->devices[i + 1], (ctx->n_devices - i - 1) * sizeof *ctx->devices);
            ctx->n_devices--;
            rc = OK;
            break;
        }
    }
    pthread_mutex_unlock(&ctx->lock);
    return rc;
}

int wait_for_command(int timeout_time_in_ms, void *context)
{
    struct fh_context *ctx = context;
    if (ctx == NULL)
        return CONTEXT_INCORRECT;
    struct timespec deadline = monotonic_after(timeout_time_in_ms > 0 ? timeout_time_in_ms : 0);
    int rc;
    pthread_mutex_lock(&ctx->lock);
    ctx->waiters++;
    for (;;) {
        if (ctx->destroying) {
            rc = CONTEXT_INCORRECT;
            break;
        }
        if (ctx->queued > 0) {
            rc = OK;
            break;
        }
        int waited = pthread_cond_timedwait(&ctx->changed, &ctx->lock, &deadline);
        if (waited == ETIMEDOUT) {
            rc = ctx->queued > 0 ? OK : TIMEOUT_OCCURRED;
            if (ctx->destroying)
                rc = CONTEXT_INCORRECT;
            break;
        }
        if (waited != 0 && waited != EINTR) {
            rc = NOT_OK;
            break;
        }
    }
    ctx->waiters--;
    if (ctx->destroying)
        pthread_cond_broadcast(&ctx->changed);
    pthread_mutex_unlock(&ctx->lock);
    return rc;
}

int pop_command(struct buffer *command, struct device_identification *device, void *context)
{
    struct fh_context *ctx = context;
    if (ctx == NULL)
        return CONTEXT_INCORRECT;
    if (command == NULL || device == NULL)
        return NOT_OK;
    pthread_mutex_lock(&ctx->lock);
    struct command *c = ctx->head;
    if (c == NULL) {
        pthread_mutex_unlock(&ctx->lock);
        return NOT_OK;
    }
    ctx->head = c->next;
    if (ctx->head == NULL)
        ctx->tail = NULL;
    ctx->queued--;
    size_t remaining = ctx->queued;
    ctx->stats.commands_popped++;
    pthread_mutex_unlock(&ctx->lock);

    /* Ownership of the malloc'd bytes moves to the caller, who returns them via deallocate(). */
    command->data = c->data;
    command->size_in_bytes = c->data_len;
    device->module = c->module;
    device->device_type = c->device_type;
    device->priority = 0;
    device->device_role.data = c->role;
    device->device_role.size_in_bytes = c->role_len;
    device->device_name.data = c->name;
    device->device_name.size_in_bytes = c->name_len;
    free(c);
    return remaining > INT_MAX ? INT_MAX : (int)remaining;
}

int command_ack(const struct buffer command, const struct device_identification device, void *context)
{
    (void)command;
    (void)device;
    (void)context;
    return OK; /* no HTTP call: the cursor alone prevents re-delivery (§2.5) */
}

int get_module_number(void)
{
    return FLEET_MODULE;
}

int is_device_type_supported(unsigned int device_type)
{
    return fh_type_supported(device_type) ? OK : NOT_OK;
}

int allocate(struct buffer *buffer_pointer, size_t size_in_bytes)
{
    if (buffer_pointer == NULL)
        return NOT_OK;
    buffer_pointer->data = malloc(size_in_bytes > 0 ? size_in_bytes : 1);
    if (buffer_pointer->data == NULL) {
        buffer_pointer->size_in_bytes = 0;
        return NOT_OK;
    }
    buffer_pointer->size_in_bytes = size_in_bytes;
    return OK;
}

void deallocate(struct buffer *buffer_pointer)
{
    if (buffer_pointer == NULL)
        return;
    free(buffer_pointer->data);
    buffer_pointer->data = NULL;
    buffer_pointer->size_in_bytes = 0;
}

int fleet_http_get_stats(const void *context, struct fleet_http_stats *out)
{
    struct fh_context *ctx = (struct fh_context *)context;
    if (ctx == NULL)
        return CONTEXT_INCORRECT;
    if (out == NULL)
        return NOT_OK;
    pthread_mutex_lock(&ctx->lock);
    *out = ctx->stats;
    out->queued = ctx->queued;
    out->devices = ctx->n_devices;
    pthread_mutex_unlock(&ctx->lock);
    return OK;
}
