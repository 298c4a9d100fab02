/*
 * The example module (module number 1000): a configurable command source for
 * the server's tests and benchmarks. Behaviour and configuration keys are
 * documented in example_module.h; the ABI is docs/protocol.md §5.
 *
 * Locking: every context has one mutex guarding its devices, queue and
 * counters, and one condition variable (CLOCK_MONOTONIC) signalled whenever a
 * command is queued or destroy() starts. wait_for_command() is the only call
 * that may overlap others on the same context (§5.5); it never holds the
 * mutex while touching the file system.
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <fleet_protocol/external_server_interface.h>

#include "example_module.h"

#define DEFAULT_POLL_MS 10L
#define MAX_POLL_MS 10000L
#define MAX_COMMAND_FILE_BYTES (16L * 1024L * 1024L)

/* Owned bytes: malloc'd, NUL one past size, never NULL once filled. */
struct bytes {
    char *data;
    size_t size;
};

struct stored_device {
    int module;
    unsigned int device_type;
    unsigned int priority;
    struct bytes role;
    struct bytes name;
    uint64_t statuses; /* forward_status calls since (re)connect, drives echo_every */
};

struct command {
    struct command *next;
    int module;
    unsigned int device_type;
    unsigned int priority;
    struct bytes role;
    struct bytes name;
    struct bytes data;
};

struct example_context {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    pthread_mutex_t scan_lock; /* one command_dir scanner at a time keeps name order */

    /* Configuration: written by init() only. */
    unsigned int *types;
    size_t n_types;
    uint64_t echo_every;
    int has_command_data;
    struct bytes command_data;
    struct bytes command_on_connect;
    char *command_dir;
    long poll_ms;
    struct bytes *reject_roles;
    size_t n_reject_roles;
    unsigned long forward_delay_ms; /* forward_status sleeps this long: a slow module */
    int forward_result;             /* forward_status returns this: a failing module */

    /* State guarded by lock. */
    struct stored_device *devices;
    size_t n_devices;
    size_t cap_devices;
    struct command *head;
    struct command *tail;
    size_t queued;
    struct example_counters counters;
    int destroying;
    unsigned int waiters;

    struct example_context *next_live; /* guarded by live_lock */
};

/* Live contexts, for is_device_type_supported() which has no context argument. */
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct example_context *live_head;

/* ---- small helpers ---------------------------------------------------- */

static int bytes_copy(struct bytes *out, const void *data, size_t size)
{
    if (size > 0 && data == NULL)
        return -1;
    out->data = malloc(size + 1);
    if (out->data == NULL)
        return -1;
    if (size > 0)
        memcpy(out->data, data, size);
    out->data[size] = '\0';
    out->size = size;
    return 0;
}

static void bytes_free(struct bytes *b)
{
    free(b->data);
    b->data = NULL;
    b->size = 0;
}

static int bytes_equal(const struct bytes *b, const void *data, size_t size)
{
    return b->size == size && (size == 0 || memcmp(b->data, data, size) == 0);
}

static int buffer_valid(const struct buffer *buf)
{
    return buf->size_in_bytes == 0 || buf->data != NULL;
}

static int device_valid(const struct device_identification *device)
{
    return buffer_valid(&device->device_role) && buffer_valid(&device->device_name);
}

/* Parses decimal digits only (no sign, no spaces) into *out, refusing values above max. */
static int parse_unsigned(const char *text, size_t len, unsigned long long max, unsigned long long *out)
{
    unsigned long long value = 0;
    if (len == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (text[i] < '0' || text[i] > '9')
            return -1;
        unsigned digit = (unsigned)(text[i] - '0');
        if (value > (max - digit) / 10)
            return -1;
        value = value * 10 + digit;
    }
    *out = value;
    return 0;
}

static int parse_int(const char *text, size_t len, int *out)
{
    unsigned long long magnitude;
    if (len > 0 && text[0] == '-') {
        if (parse_unsigned(text + 1, len - 1, (unsigned long long)INT_MAX + 1ULL, &magnitude) != 0)
            return -1;
        *out = magnitude == (unsigned long long)INT_MAX + 1ULL ? INT_MIN : -(int)magnitude;
        return 0;
    }
    if (parse_unsigned(text, len, INT_MAX, &magnitude) != 0)
        return -1;
    *out = (int)magnitude;
    return 0;
}

static int clamp_int(size_t n)
{
    return n > (size_t)INT_MAX ? INT_MAX : (int)n;
}

/* ---- configuration ---------------------------------------------------- */

static int key_is(const struct key_value *kv, const char *name)
{
    size_t len = strlen(name);
    return kv->key.size_in_bytes == len && kv->key.data != NULL && memcmp(kv->key.data, name, len) == 0;
}

/* Splits "a, b,c" on commas, trimming spaces; an empty item is an error. Calls item() per item. */
static int for_each_item(const char *text, size_t len, int (*item)(struct example_context *, const char *, size_t),
                         struct example_context *ctx)
{
    size_t start = 0;
    if (len == 0)
        return 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && text[i] != ',')
            continue;
        size_t a = start, b = i;
        while (a < b && text[a] == ' ')
            a++;
        while (b > a && text[b - 1] == ' ')
            b--;
        if (a == b || item(ctx, text + a, b - a) != 0)
            return -1;
        start = i + 1;
    }
    return 0;
}

static int add_type(struct example_context *ctx, const char *text, size_t len)
{
    unsigned long long value;
    if (parse_unsigned(text, len, UINT_MAX, &value) != 0)
        return -1;
    unsigned int *grown = realloc(ctx->types, (ctx->n_types + 1) * sizeof *grown);
    if (grown == NULL)
        return -1;
    ctx->types = grown;
    ctx->types[ctx->n_types++] = (unsigned int)value;
    return 0;
}

static int add_reject_role(struct example_context *ctx, const char *text, size_t len)
{
    struct bytes *grown = realloc(ctx->reject_roles, (ctx->n_reject_roles + 1) * sizeof *grown);
    if (grown == NULL)
        return -1;
    ctx->reject_roles = grown;
    if (bytes_copy(&ctx->reject_roles[ctx->n_reject_roles], text, len) != 0)
        return -1;
    ctx->n_reject_roles++;
    return 0;
}

static void free_config(struct example_context *ctx)
{
    free(ctx->types);
    ctx->types = NULL;
    ctx->n_types = 0;
    bytes_free(&ctx->command_data);
    bytes_free(&ctx->command_on_connect);
    free(ctx->command_dir);
    ctx->command_dir = NULL;
    for (size_t i = 0; i < ctx->n_reject_roles; i++)
        bytes_free(&ctx->reject_roles[i]);
    free(ctx->reject_roles);
    ctx->reject_roles = NULL;
    ctx->n_reject_roles = 0;
}

/* Applies one key/value; unknown keys are ignored. Returns -1 for an invalid value. */
static int apply_setting(struct example_context *ctx, const struct key_value *kv)
{
    const char *value = kv->value.data;
    size_t len = kv->value.size_in_bytes;
    unsigned long long number;

    if (!buffer_valid(&kv->key) || !buffer_valid(&kv->value))
        return -1;
    if (key_is(kv, "supported_device_types")) {
        free(ctx->types);
        ctx->types = NULL;
        ctx->n_types = 0;
        return for_each_item(value, len, add_type, ctx);
    }
    if (key_is(kv, "echo_every")) {
        if (parse_unsigned(value, len, UINT64_MAX, &number) != 0)
            return -1;
        ctx->echo_every = number;
        return 0;
    }
    if (key_is(kv, "command_data")) {
        bytes_free(&ctx->command_data);
        ctx->has_command_data = 1;
        return bytes_copy(&ctx->command_data, value, len);
    }
    if (key_is(kv, "command_on_connect")) {
        bytes_free(&ctx->command_on_connect);
        return len == 0 ? 0 : bytes_copy(&ctx->command_on_connect, value, len);
    }
    if (key_is(kv, "command_dir")) {
        struct stat st;
        free(ctx->command_dir);
        ctx->command_dir = NULL;
        if (len == 0)
            return 0;
        if (memchr(value, '\0', len) != NULL)
            return -1;
        struct bytes path;
        if (bytes_copy(&path, value, len) != 0)
            return -1;
        ctx->command_dir = path.data;
        return stat(ctx->command_dir, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
    }
    if (key_is(kv, "command_dir_poll_ms")) {
        if (parse_unsigned(value, len, MAX_POLL_MS, &number) != 0 || number < 1)
            return -1;
        ctx->poll_ms = (long)number;
        return 0;
    }
    if (key_is(kv, "forward_delay_ms")) {
        if (parse_unsigned(value, len, 60000, &number) != 0)
            return -1;
        ctx->forward_delay_ms = (unsigned long)number;
        return 0;
    }
    if (key_is(kv, "forward_result"))
        return parse_int(value, len, &ctx->forward_result);
    if (key_is(kv, "reject_roles")) {
        for (size_t i = 0; i < ctx->n_reject_roles; i++)
            bytes_free(&ctx->reject_roles[i]);
        ctx->n_reject_roles = 0;
        return for_each_item(value, len, add_reject_role, ctx);
    }
    return 0;
}

/* ---- devices and queue (callers hold ctx->lock) ---------------------- */

static struct stored_device *find_device(struct example_context *ctx, const struct device_identification *device)
{
    for (size_t i = 0; i < ctx->n_devices; i++) {
        struct stored_device *d = &ctx->devices[i];
        if (d->module == device->module && d->device_type == device->device_type &&
            bytes_equal(&d->role, device->device_role.data, device->device_role.size_in_bytes))
            return d;
    }
    return NULL;
}

static void free_command(struct command *c)
{
    bytes_free(&c->role);
    bytes_free(&c->name);
    bytes_free(&c->data);
    free(c);
}

/* Builds a command owning copies of everything; NULL on allocation failure. */
static struct command *new_command(int module, unsigned int device_type, unsigned int priority,
                                   const void *role, size_t role_len, const void *name, size_t name_len,
                                   const void *data, size_t data_len)
{
    struct command *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->module = module;
    c->device_type = device_type;
    c->priority = priority;
    if (bytes_copy(&c->role, role, role_len) != 0 || bytes_copy(&c->name, name, name_len) != 0 ||
        bytes_copy(&c->data, data, data_len) != 0) {
        free_command(c);
        return NULL;
    }
    return c;
}

static struct command *command_for(const struct device_identification *device, const void *data, size_t len)
{
    return new_command(device->module, device->device_type, device->priority, device->device_role.data,
                       device->device_role.size_in_bytes, device->device_name.data,
                       device->device_name.size_in_bytes, data, len);
}

static void enqueue(struct example_context *ctx, struct command *c)
{
    c->next = NULL;
    if (ctx->tail != NULL)
        ctx->tail->next = c;
    else
        ctx->head = c;
    ctx->tail = c;
    ctx->queued++;
    ctx->counters.commands_queued++;
    pthread_cond_broadcast(&ctx->changed);
}

static void free_devices(struct example_context *ctx)
{
    for (size_t i = 0; i < ctx->n_devices; i++) {
        bytes_free(&ctx->devices[i].role);
        bytes_free(&ctx->devices[i].name);
    }
    free(ctx->devices);
    ctx->devices = NULL;
    ctx->n_devices = ctx->cap_devices = 0;
}

static void free_queue(struct example_context *ctx)
{
    while (ctx->head != NULL) {
        struct command *next = ctx->head->next;
        free_command(ctx->head);
        ctx->head = next;
    }
    ctx->tail = NULL;
    ctx->queued = 0;
}

/* Frees everything a context owns, then the context. */
static void free_context(struct example_context *ctx)
{
#ifdef EXAMPLE_INJECT_LEAK
    ctx->devices = NULL; /* the `leaky` build loses the device list: proves the valgrind check can fail */
    ctx->n_devices = 0;
#endif
    free_devices(ctx);
    free_queue(ctx);
    free_config(ctx);
    pthread_mutex_destroy(&ctx->scan_lock);
    pthread_cond_destroy(&ctx->changed);
    pthread_mutex_destroy(&ctx->lock);
    free(ctx);
}

/* ---- command_dir ------------------------------------------------------ */

static int is_command_file(const struct dirent *entry)
{
    size_t len = strlen(entry->d_name);
    return entry->d_name[0] != '.' && len > 4 && strcmp(entry->d_name + len - 4, ".cmd") == 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

/* Parses "<module> <type> <role>[ <name>]\n<data>"; NULL if malformed. */
static struct command *parse_command_file(const char *text, size_t size)
{
    const char *newline = memchr(text, '\n', size);
    size_t header_len = newline != NULL ? (size_t)(newline - text) : size;
    const char *data = newline != NULL ? newline + 1 : text + size;
    size_t data_len = (size_t)(text + size - data);
    const char *fields[3];
    size_t lens[3];
    size_t pos = 0;
    unsigned long long device_type;
    int module;

    for (int f = 0; f < 3; f++) {
        size_t start = pos;
        while (pos < header_len && text[pos] != ' ')
            pos++;
        fields[f] = text + start;
        lens[f] = pos - start;
        if (lens[f] == 0 || (f < 2 && pos == header_len))
            return NULL;
        if (pos < header_len)
            pos++; /* skip the single separating space */
    }
    const char *name = text + pos;
    size_t name_len = header_len - pos;
    if (parse_int(fields[0], lens[0], &module) != 0 || parse_unsigned(fields[1], lens[1], UINT_MAX, &device_type) != 0)
        return NULL;
    return new_command(module, (unsigned int)device_type, 0, fields[2], lens[2], name, name_len, data, data_len);
}

/*
 * Reads the whole file into a malloc'd buffer. Returns 0 on success, 1 if the
 * file vanished (another reader took it), -1 if it is not a readable regular
 * file of sane size (set aside as malformed rather than retried forever).
 */
static int read_file(const char *path, char **out, size_t *size)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    int rc = -1;
    *out = NULL;
    if (f == NULL)
        return errno == ENOENT ? 1 : -1;
    if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) && st.st_size <= MAX_COMMAND_FILE_BYTES) {
        size_t expected = (size_t)st.st_size;
        *out = malloc(expected + 1);
        if (*out != NULL && fread(*out, 1, expected, f) == expected) {
            *size = expected;
            rc = 0;
        }
    }
    fclose(f);
    if (rc != 0) {
        free(*out);
        *out = NULL;
    }
    return rc;
}

static void take_command_file(struct example_context *ctx, const char *name)
{
    size_t dir_len = strlen(ctx->command_dir), name_len = strlen(name);
    char *path = malloc(dir_len + name_len + 6); /* "/" + name + ".bad" + NUL */
    char *content = NULL;
    size_t size = 0;
    struct command *c = NULL;

    if (path == NULL)
        return;
    memcpy(path, ctx->command_dir, dir_len);
    path[dir_len] = '/';
    memcpy(path + dir_len + 1, name, name_len + 1);
    int got = read_file(path, &content, &size);
    if (got > 0) {
        free(path);
        return;
    }
    c = got == 0 ? parse_command_file(content, size) : NULL;
    free(content);
    if (c == NULL) {
        char *bad = malloc(dir_len + name_len + 6);
        if (bad != NULL) {
            memcpy(bad, path, dir_len + 1 + name_len);
            memcpy(bad + dir_len + 1 + name_len, ".bad", 5);
            if (rename(path, bad) != 0)
                unlink(path);
            free(bad);
        } else {
            unlink(path);
        }
        pthread_mutex_lock(&ctx->lock);
        ctx->counters.bad_command_files++;
        pthread_mutex_unlock(&ctx->lock);
    } else if (unlink(path) == 0) {
        pthread_mutex_lock(&ctx->lock);
        enqueue(ctx, c);
        pthread_mutex_unlock(&ctx->lock);
    } else {
        free_command(c); /* another reader unlinked it first: it owns the command */
    }
    free(path);
}

/* Moves every command file into the queue, in name order. Called without ctx->lock. */
static void scan_command_dir(struct example_context *ctx)
{
    struct dirent **entries = NULL;
    if (pthread_mutex_trylock(&ctx->scan_lock) != 0)
        return;
    int n = scandir(ctx->command_dir, &entries, is_command_file, by_name);
    for (int i = 0; i < n; i++) {
        take_command_file(ctx, entries[i]->d_name);
        free(entries[i]);
    }
    free(entries);
    pthread_mutex_unlock(&ctx->scan_lock);
}

/* ---- time --------------------------------------------------------------- */

static struct timespec monotonic_after(long ms)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

static int before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* ---- the ABI ------------------------------------------------------------ */

int get_module_number(void)
{
    return EXAMPLE_MODULE_NUMBER;
}

int is_device_type_supported(unsigned int device_type)
{
    int supported = 0;
    pthread_mutex_lock(&live_lock);
    if (live_head == NULL)
        supported = device_type == 0;
    for (struct example_context *ctx = live_head; ctx != NULL && !supported; ctx = ctx->next_live)
        for (size_t i = 0; i < ctx->n_types && !supported; i++)
            supported = ctx->types[i] == device_type;
    pthread_mutex_unlock(&live_lock);
    return supported ? OK : NOT_OK;
}

void *init(const struct config config_data)
{
    struct example_context *ctx;
    pthread_condattr_t attr;

    if (config_data.size > 0 && config_data.parameters == NULL)
        return NULL;
    ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL)
        return NULL;
    ctx->poll_ms = DEFAULT_POLL_MS;
    if (add_type(ctx, "0", 1) != 0) {
        free(ctx);
        return NULL;
    }
    for (size_t i = 0; i < config_data.size; i++) {
        if (apply_setting(ctx, &config_data.parameters[i]) != 0) {
            free_config(ctx);
            free(ctx);
            return NULL;
        }
    }
    if (pthread_condattr_init(&attr) != 0) {
        free_config(ctx);
        free(ctx);
        return NULL;
    }
    int failed = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0;
    if (!failed && pthread_cond_init(&ctx->changed, &attr) != 0)
        failed = 1;
    pthread_condattr_destroy(&attr);
    if (failed) {
        free_config(ctx);
        free(ctx);
        return NULL;
    }
    pthread_mutex_init(&ctx->lock, NULL);
    pthread_mutex_init(&ctx->scan_lock, NULL);

    pthread_mutex_lock(&live_lock);
    ctx->next_live = live_head;
    live_head = ctx;
    pthread_mutex_unlock(&live_lock);
    return ctx;
}

int destroy(void **context)
{
    struct example_context *ctx;
    if (context == NULL || *context == NULL)
        return NOT_OK;
    ctx = *context;

    pthread_mutex_lock(&live_lock);
    for (struct example_context **p = &live_head; *p != NULL; p = &(*p)->next_live) {
        if (*p == ctx) {
            *p = ctx->next_live;
            break;
        }
    }
    pthread_mutex_unlock(&live_lock);

    /* Wake a blocked waiter and let it leave before the memory goes away. */
    pthread_mutex_lock(&ctx->lock);
    ctx->destroying = 1;
    pthread_cond_broadcast(&ctx->changed);
    while (ctx->waiters > 0)
        pthread_cond_wait(&ctx->changed, &ctx->lock);
    pthread_mutex_unlock(&ctx->lock);

    free_context(ctx);
    *context = NULL;
    return OK;
}

int forward_status(const struct buffer device_status, const struct device_identification device, void *context)
{
    struct example_context *ctx = context;
    int rc = OK;
    if (ctx == NULL)
        return CONTEXT_INCORRECT;
    if (!buffer_valid(&device_status) || !device_valid(&device))
        return NOT_OK;
    if (ctx->forward_delay_ms > 0) {
        struct timespec pause = {(time_t)(ctx->forward_delay_ms / 1000), (long)(ctx->forward_delay_ms % 1000) * 1000000L};
        while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {
        }
    }
    pthread_mutex_lock(&ctx->lock);
    ctx->counters.statuses++;
    struct stored_device *stored = find_device(ctx, &device);
    if (stored != NULL && ctx->echo_every > 0 && ++stored->statuses % ctx->echo_every == 0) {
        struct command *c = ctx->has_command_data
                                ? command_for(&device, ctx->command_data.data, ctx->command_data.size)
                                : command_for(&device, device_status.data, device_status.size_in_bytes);
        if (c != NULL)
            enqueue(ctx, c);
        else
            rc = NOT_OK;
    }
    pthread_mutex_unlock(&ctx->lock);
    return rc == OK ? ctx->forward_result : rc;
}

int forward_error_message(const struct buffer error_msg, const struct device_identification device, void *context)
{
    struct example_context *ctx = context;
    if (ctx == NULL)
        return CONTEXT_INCORRECT;
    if (!buffer_valid(&error_msg) || !device_valid(&device))
        return NOT_OK;
    pthread_mutex_lock(&ctx->lock);
    ctx->counters.error_messages++;
    pthread_mutex_unlock(&ctx->lock);
    return OK;
}

int command_ack(const struct buffer command, const struct device_identification device, void *context)
{
    struct example_context *ctx = context;
    if (ctx == NULL)
        return CONTEXT_INCORRECT;
    if (!buffer_valid(&command) || !device_valid(&device))
        return NOT_OK;
    pthread_mutex_lock(&ctx->lock);
    ctx->counters.acks++;
    pthread_mutex_unlock(&ctx->lock);
    return OK;
}

int device_connected(const struct device_identification device, void *context)
{
    struct example_context *ctx = context;
    struct bytes name;
    int rc = OK;
    if (ctx == NULL)
        return CONTEXT_INCORRECT;
    if (!device_valid(&device))
        return NOT_OK;
    for (size_t i = 0; i < ctx->n_reject_roles; i++)
        if (bytes_equal(&ctx->reject_roles[i], device.device_role.data, device.device_role.size_in_bytes))
            return NOT_OK;
    if (bytes_copy(&name, device.device_name.data, device.device_name.size_in_bytes) != 0)
        return NOT_OK;

    pthread_mutex_lock(&ctx->lock);
    struct stored_device *stored = find_device(ctx, &device);
    if (stored == NULL) {
        if (ctx->n_devices == ctx->cap_devices) {
            size_t cap = ctx->cap_devices ? 2 * ctx->cap_devices : 4;
            struct stored_device *grown = realloc(ctx->devices, cap * sizeof *grown);
            if (grown == NULL)
                rc = NOT_OK;
            else {
                ctx->devices = grown;
                ctx->cap_devices = cap;
            }
        }
        if (rc == OK) {
            stored = &ctx->devices[ctx->n_devices];
            memset(stored, 0, sizeof *stored);
            if (bytes_copy(&stored->role, device.device_role.data, device.device_role.size_in_bytes) != 0) {
                stored = NULL;
                rc = NOT_OK;
            } else {
                ctx->n_devices++;
            }
        }
    }
    if (stored != NULL) {
        bytes_free(&stored->name);
        stored->name = name;
        name.data = NULL;
        stored->module = device.module;
        stored->device_type = device.device_type;
        stored->priority = device.priority;
        stored->statuses = 0;
        ctx->counters.connects++;
        if (ctx->command_on_connect.data != NULL) {
            struct command *c =
                command_for(&device, ctx->command_on_connect.data, ctx->command_on_connect.size);
            if (c != NULL)
                enqueue(ctx, c);
        }
    }
    pthread_mutex_unlock(&ctx->lock);
    free(name.data);
    return rc;
}

int device_disconnected(const int disconnect_type, const struct device_identification device, void *context)
{
    struct example_context *ctx = context;
    int rc = NOT_OK;
    if (ctx == NULL)
        return CONTEXT_INCORRECT;
    if (disconnect_type < announced || disconnect_type > error || !device_valid(&device))
        return NOT_OK;
    pthread_mutex_lock(&ctx->lock);
    struct stored_device *stored = find_device(ctx, &device);
    if (stored != NULL) {
        size_t index = (size_t)(stored - ctx->devices);
        bytes_free(&stored->role);
        bytes_free(&stored->name);
        memmove(stored, stored + 1, (ctx->n_devices - index - 1) * sizeof *stored);
        ctx->n_devices--;
        ctx->counters.disconnects++;
        rc = OK;
    }
    pthread_mutex_unlock(&ctx->lock);
    return rc;
}

int wait_for_command(int timeout_time_in_ms, void *context)
{
    struct example_context *ctx = context;
    int rc;
    if (ctx == NULL)
        return CONTEXT_INCORRECT;
    struct timespec deadline = monotonic_after(timeout_time_in_ms > 0 ? timeout_time_in_ms : 0);

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
        struct timespec wake = deadline;
        if (ctx->command_dir != NULL) {
            pthread_mutex_unlock(&ctx->lock);
            scan_command_dir(ctx); /* safe: destroy() waits for waiters to reach 0 */
            pthread_mutex_lock(&ctx->lock);
            if (ctx->queued > 0 || ctx->destroying)
                continue;
            struct timespec next_scan = monotonic_after(ctx->poll_ms);
            if (before(&next_scan, &wake))
                wake = next_scan;
        }
        struct timespec now = monotonic_after(0);
        if (!before(&now, &deadline)) {
            rc = TIMEOUT_OCCURRED;
            break;
        }
        int waited = pthread_cond_timedwait(&ctx->changed, &ctx->lock, &wake);
        if (waited != 0 && waited != ETIMEDOUT && waited != EINTR) {
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
    struct example_context *ctx = context;
    if (ctx == NULL)
        return CONTEXT_INCORRECT;
    if (command == NULL || device == NULL)
        return NOT_OK;
    pthread_mutex_lock(&ctx->lock);
    struct command *c = ctx->head;
    size_t remaining = 0;
    if (c != NULL) {
        ctx->head = c->next;
        if (ctx->head == NULL)
            ctx->tail = NULL;
        remaining = --ctx->queued;
        ctx->counters.commands_popped++;
    }
    pthread_mutex_unlock(&ctx->lock);

    if (c == NULL) {
        /* Leave nothing a later deallocate() could mistake for ours. */
        command->data = NULL;
        command->size_in_bytes = 0;
        device->device_role.data = device->device_name.data = NULL;
        device->device_role.size_in_bytes = device->device_name.size_in_bytes = 0;
        return NOT_OK;
    }
    /* Ownership of the malloc'd bytes moves to the caller, who returns them via deallocate(). */
    command->data = c->data.data;
    command->size_in_bytes = c->data.size;
    device->module = c->module;
    device->device_type = c->device_type;
    device->priority = c->priority;
    device->device_role.data = c->role.data;
    device->device_role.size_in_bytes = c->role.size;
    device->device_name.data = c->name.data;
    device->device_name.size_in_bytes = c->name.size;
    free(c);
    return clamp_int(remaining);
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

/* ---- test helpers (example_module.h) ---------------------------------- */

int example_get_counters(void *context, struct example_counters *out)
{
    struct example_context *ctx = context;
    if (ctx == NULL)
        return CONTEXT_INCORRECT;
    if (out == NULL)
        return NOT_OK;
    pthread_mutex_lock(&ctx->lock);
    *out = ctx->counters;
    out->devices = ctx->n_devices;
    out->queued = ctx->queued;
    pthread_mutex_unlock(&ctx->lock);
    return OK;
}

int example_push_command(void *context, const struct device_identification device, const struct buffer command)
{
    struct example_context *ctx = context;
    if (ctx == NULL)
        return CONTEXT_INCORRECT;
    if (!buffer_valid(&command) || !device_valid(&device))
        return NOT_OK;
    struct command *c = command_for(&device, command.data, command.size_in_bytes);
    if (c == NULL)
        return NOT_OK;
    pthread_mutex_lock(&ctx->lock);
    enqueue(ctx, c);
    pthread_mutex_unlock(&ctx->lock);
    return OK;
}
