/*
 * The inner loop of a module's command-waiting thread (docs/protocol.md §5.7), in C.
 *
 * wait_for_command() mostly times out; repeating it from Python makes every
 * timeout a GIL acquisition, and with one waiting thread per car x module
 * (thousands) those wake-ups starve the event loop. Called through ctypes
 * (which releases the GIL for the whole call), this loop returns to Python
 * only when something happened: a command is ready, an error, or a stop.
 */
#include <stddef.h>

typedef int (*fleet_wait_fn)(int timeout_time_in_ms, void *context);

#define FLEET_TIMEOUT_OCCURRED (-12)

/* Calls wait(timeout_ms, context) until it returns something other than
 * TIMEOUT_OCCURRED, or until *stop is non-zero (checked before each call, so
 * a stop takes effect within one timeout). Returns that code, or
 * TIMEOUT_OCCURRED when stopped. */
int fleet_wait_until_event(fleet_wait_fn wait, void *context, int timeout_ms, const int *stop)
{
    for (;;) {
        if (__atomic_load_n(stop, __ATOMIC_ACQUIRE) != 0)
            return FLEET_TIMEOUT_OCCURRED;
        int rc = wait(timeout_ms, context);
        if (rc != FLEET_TIMEOUT_OCCURRED)
            return rc;
    }
}
