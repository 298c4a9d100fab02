/*
 * Test helpers exported by the example module (module number 1000) in
 * addition to the twelve ABI functions. The server never calls them; tests
 * and benchmarks use them to observe and drive a context directly.
 *
 * Configuration keys read by init() (unknown keys are ignored, an invalid
 * value makes init() return NULL; a repeated key: the last one wins):
 *
 *   supported_device_types  comma-separated unsigned ints, default "0"; "" = none.
 *                           is_device_type_supported() has no context, so it
 *                           answers for the union over all live contexts (or
 *                           the default "0" while none is live).
 *   echo_every              N >= 0, default 0 = off. Every N-th forward_status of a
 *                           connected device queues a command for that device
 *                           carrying the status bytes (or command_data if set).
 *   command_data            bytes used instead of the status bytes by echo_every.
 *   command_on_connect      bytes, default "" = off. device_connected() queues this
 *                           command for the device.
 *   command_dir             existing directory, default "" = off. wait_for_command()
 *                           also takes commands from files dropped there (below).
 *   command_dir_poll_ms     1..10000, default 10: how often a waiting
 *                           wait_for_command() rescans command_dir.
 *   reject_roles            comma-separated roles for which device_connected()
 *                           returns NOT_OK, default "" = none.
 *   forward_delay_ms        0..60000, default 0: forward_status() sleeps this long
 *                           first (a slow module, e.g. an unreachable HTTP API).
 *   forward_result          int, default 0 (OK): forward_status() returns this code
 *                           after doing its work (a module that reports errors).
 *
 * Command files in command_dir: only names ending in ".cmd" and not starting
 * with "." are read (write a temporary name, then rename() it in). They are
 * taken in strcmp() order of their names, one command each, and deleted after
 * reading. Content:
 *
 *   <module> <device_type> <role>[ <name>]\n<command bytes>
 *
 * The first line holds decimal module and device type, a non-empty role
 * without spaces, and optionally a single space followed by the name (rest
 * of the line, may contain spaces). Everything after the first '\n' is the
 * command, byte for byte (may be empty; no newline at all = empty command).
 * Priority is 0. A malformed file is renamed to "<name>.bad" and counted.
 *
 * Device lifecycle: devices are kept keyed by (module, device_type, role) in
 * connection order. A re-connect of a known device updates its name and
 * priority, keeps its position and restarts its echo count. device_disconnected()
 * returns NOT_OK for an unknown device (or a disconnect type outside 0..2) and
 * otherwise removes the device but NOT its queued commands: which commands are
 * stale is the server's decision (docs/protocol.md §5.7).
 *
 * Commands are queued FIFO per context, also for devices that are not
 * connected. pop_command() returns how many are still queued after the pop,
 * NOT_OK when empty. Every popped buffer is malloc'd (never NULL, with a NUL
 * one byte past size_in_bytes) and freed by deallocate().
 *
 * destroy() wakes a thread blocked in wait_for_command() on the same context
 * (it returns CONTEXT_INCORRECT) and waits for it to leave before freeing. A
 * wait_for_command() that STARTS after destroy() is a use after free: the
 * server joins its waiter thread before calling destroy().
 */
#ifndef EXAMPLE_MODULE_H
#define EXAMPLE_MODULE_H

#include <stdint.h>

#include <fleet_protocol/external_server_interface.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EXAMPLE_MODULE_NUMBER 1000

/* Cumulative counts since init(); `devices` and `queued` are current sizes. */
struct example_counters {
    uint64_t statuses;          /* forward_status calls accepted */
    uint64_t error_messages;    /* forward_error_message calls accepted */
    uint64_t acks;              /* command_ack calls accepted */
    uint64_t connects;          /* device_connected calls that returned OK */
    uint64_t disconnects;       /* device_disconnected calls that returned OK */
    uint64_t commands_queued;   /* commands ever queued (echo, on-connect, files, push) */
    uint64_t commands_popped;   /* successful pop_command calls */
    uint64_t bad_command_files; /* malformed files renamed to *.bad */
    uint64_t devices;           /* devices currently connected */
    uint64_t queued;            /* commands currently queued */
};

/* Copies the counters into *out. OK, CONTEXT_INCORRECT (NULL context) or NOT_OK (NULL out). */
int example_get_counters(void *context, struct example_counters *out);

/* Queues a command (copied) for a device as if the module produced it. OK / NOT_OK / CONTEXT_INCORRECT. */
int example_push_command(void *context, const struct device_identification device,
                         const struct buffer command);

#ifdef __cplusplus
}
#endif

#endif /* EXAMPLE_MODULE_H */
