/*
 * fleet_http: external-server modules that bridge a car to the Fleet Protocol
 * HTTP API (docs/http-bridge.md). One source tree, three libraries selected at
 * compile time with -DFLEET_MODULE=<n>:
 *
 *   libfleet_http_mission.so      module 1, device type 1 only, mission JSON rules
 *   libfleet_http_io.so           module 2, device types 1..4, io command format
 *   libfleet_http_transparent.so  module 3, every device type, no validation
 *
 * Besides the twelve ABI functions (lib/include/fleet_protocol) each library
 * exports fleet_http_get_stats() below; the server never calls it, tests and
 * operators' tools may.
 *
 * Configuration keys (values are strings, docs/protocol.md §5.6; the first
 * occurrence of a key wins; keys are checked in sorted order and the first
 * invalid value makes init() return NULL; unknown keys are ignored):
 *
 *   company_name, car_name   required, non-empty, [a-z0-9_]*
 *   api_url                  required, http(s)://host[:port][/path], path includes /v2/protocol
 *   api_key                  required, non-empty (sent as the api_key query parameter)
 *   max_requests_threshold_count       default 3    request-frequency guard (§2.6) of the
 *   max_requests_threshold_period_ms   default 1000 command poller: C polls within P ms
 *   delay_after_threshold_reached_ms   default 500  -> sleep Dl, then R before each poll
 *   retry_requests_delay_ms            default 220  until C polls have been made again
 *   connect_timeout_ms       default 2000   TCP/TLS connect bound of every request (>= 1)
 *   status_timeout_ms        default 5000   total time budget of one forward_status /
 *                                           forward_error_message incl. retries, and the bound
 *                                           of the poller's non-waiting GETs (>= 1)
 *   poll_timeout_ms          default 30000  bound of one long-poll GET (must exceed the API's
 *                                           request_for_messages timeout) (>= 1)
 *   circuit_breaker_failures default 3      consecutive failed status calls (connection error,
 *                                           timeout, 5xx) that open the breaker; 0 = no breaker
 *   circuit_breaker_open_ms  default 5000   while open, status calls fail at once (NOT_OK)
 *   status_base64_fallback   default 0      transparent only: 1 = post status bytes that are not
 *                                           JSON (or a JSON scalar) with encoding BASE64
 *
 * Integers: mission parses the whole string (digits, optional leading '-'
 * for "-0", must fit an int); io and transparent accept leading white space
 * and '+', and ignore trailing text ("10ms" = 10). Negative or out of range =
 * invalid in all three.
 *
 * Logging goes to stderr, one line per event, prefixed
 * "fleet_http[<module>] <company>/<car>:". Repeated identical failures are
 * logged once with a count when they stop or every 30 s.
 */
#ifndef FLEET_HTTP_H
#define FLEET_HTTP_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FLEET_HTTP_MISSION 1
#define FLEET_HTTP_IO 2
#define FLEET_HTTP_TRANSPARENT 3

/* Counters of one context since init (all monotonic except queued, devices, primed, cursor). */
struct fleet_http_stats {
    uint64_t status_calls;        /* forward_status + forward_error_message calls with a context */
    uint64_t status_ok;           /* ... that returned OK */
    uint64_t status_rejected;     /* ... refused before any HTTP request (validation, breaker) */
    uint64_t status_failed;       /* ... that made requests and still failed */
    uint64_t status_requests;     /* POST /status requests made (attempts incl. retries) */
    uint64_t status_retries;      /* retries after a connection error / timeout / 5xx */
    uint64_t duplicate_retries;   /* retries after the same-millisecond duplicate 400 */
    uint64_t breaker_opened;      /* times the circuit breaker opened */
    uint64_t breaker_rejections;  /* status calls refused while it was open */
    uint64_t prime_requests;      /* non-waiting GET since=0 snapshots while unprimed */
    uint64_t sweep_requests;      /* non-waiting GET since=cursor (same-millisecond sweep) */
    uint64_t poll_requests;       /* waiting GETs since=cursor+1&wait=true */
    uint64_t poll_failures;       /* GETs (any kind) that did not give 200 with an array */
    uint64_t guard_delays;        /* times the request-frequency guard entered throttled mode */
    uint64_t commands_received;   /* new commands of this module seen by the poller */
    uint64_t commands_other;      /* new commands of other modules (ignored) */
    uint64_t commands_invalid;    /* commands of this module skipped as invalid or malformed */
    uint64_t commands_duplicate;  /* entries dropped because they were already seen */
    uint64_t commands_popped;
    uint64_t queued;              /* commands waiting for pop_command now */
    uint64_t devices;             /* devices currently connected */
    uint64_t primed;              /* 1 once the history snapshot was taken */
    int64_t cursor;               /* newest command timestamp seen (ms, server clock) */
};

/* Copies the counters of a context; OK, or CONTEXT_INCORRECT / NOT_OK for NULL arguments. */
int fleet_http_get_stats(const void *context, struct fleet_http_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* FLEET_HTTP_H */
