/* Internal declarations shared by the fleet_http sources (not installed, not exported). */
#ifndef FLEET_HTTP_INTERNAL_H
#define FLEET_HTTP_INTERNAL_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>
#include <jansson.h>

#ifndef FLEET_MODULE
#error "build with -DFLEET_MODULE=1 (mission), 2 (io) or 3 (transparent)"
#endif
#if FLEET_MODULE == 1
#define FH_MODULE_NAME "mission"
#elif FLEET_MODULE == 2
#define FH_MODULE_NAME "io"
#elif FLEET_MODULE == 3
#define FH_MODULE_NAME "transparent"
#else
#error "FLEET_MODULE must be 1, 2 or 3"
#endif

/* ---- configuration (config.c) ----------------------------------------------------------- */

struct fh_config {
    char *company;
    char *car;
    char *api_url; /* as configured, trailing '/' removed */
    char *api_key;
    int threshold_count;
    int threshold_period_ms;
    int threshold_delay_ms;
    int retry_delay_ms;
    int connect_timeout_ms;
    int status_timeout_ms;
    int poll_timeout_ms;
    int breaker_failures;
    int breaker_open_ms;
    int base64_fallback;
};

struct config; /* fleet_protocol/device_management.h */

/* 0 and a filled *out, or -1 (already logged) for a missing or invalid value. */
int fh_config_parse(const struct config *in, struct fh_config *out);
void fh_config_free(struct fh_config *cfg);

/* Exposed for the unit tests through the library (not exported). */
int fh_valid_api_url(const char *url);

/* ---- module rules (rules.c) --------------------------------------------------------------- */

int fh_type_supported(unsigned int device_type);
/* 0 if a status (error = 0) or error message (error = 1) of this device type is acceptable. */
int fh_validate_status(const json_t *data, unsigned int device_type, int error, const char **why);
/* The bytes handed to the server for a command's data, malloc'd (NUL one past *len), or NULL
 * with *why set when the command is invalid for this module. */
char *fh_command_bytes(const json_t *data, size_t *len, const char **why);

/* ---- HTTP (http.c) ----------------------------------------------------------------------- */

struct fh_response {
    CURLcode curl;   /* CURLE_OK when an HTTP status was received */
    long status;     /* HTTP status, 0 without one */
    char *body;      /* malloc'd, NUL-terminated, may be NULL */
    size_t len;
    char error[CURL_ERROR_SIZE];
    int aborted;     /* the request was cancelled by the stop flag */
};

void fh_response_reset(struct fh_response *r);
/* A configured easy handle (headers, timeouts, write callback); NULL on failure. */
CURL *fh_handle_new(const struct fh_config *cfg, struct curl_slist *headers);
/* Blocking request in the calling thread; body NULL = GET. timeout_ms bounds the whole transfer. */
void fh_perform(CURL *handle, const char *url, const char *body, long timeout_ms, struct fh_response *out);
/* Same, through a multi handle so that fh_wakeup() from another thread can cancel it. */
void fh_perform_abortable(CURLM *multi, CURL *handle, const char *url, long timeout_ms,
                          atomic_int *stop, struct fh_response *out);
/* A connection-level failure (refused, reset, timeout, empty reply) or a 5xx. */
int fh_transient(const struct fh_response *r);
/* One short description ("HTTP 401: ...", "curl 7: ...") into buf. */
void fh_describe(const struct fh_response *r, char *buf, size_t size);

/* ---- utilities (util.c) -------------------------------------------------------------------- */

int64_t fh_now_ms(void);      /* CLOCK_MONOTONIC */
int64_t fh_wall_ms(void);     /* CLOCK_REALTIME */
char *fh_strndup(const char *s, size_t n);
char *fh_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *fh_url_escape(const char *s);
char *fh_base64(const unsigned char *data, size_t len);
void fh_log(const char *company, const char *car, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Collapses repeats of the same message: logs the first, counts the rest, reports the count
 * when a different message (or NULL = recovered) comes, or every 30 s. Not thread-safe: one per
 * thread of use. */
struct fh_logstate {
    char last[256];
    uint64_t repeats;
    int64_t since_ms;
};
void fh_log_event(struct fh_logstate *st, const char *company, const char *car, const char *message,
                  const char *recovered);

#endif /* FLEET_HTTP_INTERNAL_H */
