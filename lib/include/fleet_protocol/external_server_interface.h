/*
 * The functions an external-server module exports (docs/protocol.md §5.3). A
 * module shared library must export all twelve; the server binds every one
 * at load time.
 *
 * Threading (§5.5): one context is not thread-safe and the server serializes
 * calls on it, EXCEPT wait_for_command(), which runs in its own thread and
 * may overlap any other call on the same context. Different contexts may be
 * used concurrently.
 *
 * Memory (§5.4): input buffers belong to the caller for the duration of the
 * call only. pop_command()'s outputs are allocated by the module and go back
 * through the module's deallocate().
 */
#ifndef FLEET_PROTOCOL_EXTERNAL_SERVER_INTERFACE_H
#define FLEET_PROTOCOL_EXTERNAL_SERVER_INTERFACE_H

#include "device_management.h"
#include "external_server_structures.h"
#include "general_error_codes.h"
#include "memory_management.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Creates a context from the configuration (copied; passed by value). NULL = failure. */
void *init(const struct config config_data);

/* Frees *context and sets it to NULL. OK, or NOT_OK for a NULL context. */
int destroy(void **context);

/* Forwards one device status. OK, NOT_OK, CONTEXT_INCORRECT or TIMEOUT_OCCURRED. */
int forward_status(const struct buffer device_status, const struct device_identification device,
                   void *context);

/* Forwards the error message carried by a status. Same codes as forward_status. */
int forward_error_message(const struct buffer error_msg, const struct device_identification device,
                          void *context);

/* A device was registered; any code but OK means it is not registered. */
int device_connected(const struct device_identification device, void *context);

/* A device left; disconnect_type is one of enum disconnect_types. NOT_OK = unknown device. */
int device_disconnected(const int disconnect_type, const struct device_identification device,
                        void *context);

/*
 * Blocks at most timeout_time_in_ms. OK = at least one command can be popped,
 * TIMEOUT_OCCURRED = none, CONTEXT_INCORRECT = bad context.
 */
int wait_for_command(int timeout_time_in_ms, void *context);

/*
 * Moves the oldest command into *command and its device into *device (role
 * and name data allocated by the module). Returns the number of commands
 * still queued (>= 0), or a negative error code. The caller zeroes both
 * structures before the call and deallocates role, name and command after it,
 * also when it failed.
 */
int pop_command(struct buffer *command, struct device_identification *device, void *context);

/* The device acknowledged a command the module produced. */
int command_ack(const struct buffer command, const struct device_identification device, void *context);

/* The module number this library implements (global, no context). */
int get_module_number(void);

/* OK if the module handles this device type, NOT_OK otherwise (global, no context). */
int is_device_type_supported(unsigned int device_type);

/* From memory_management.h, repeated so this header lists the complete set of twelve. */
int allocate(struct buffer *buffer_pointer, size_t size_in_bytes);
void deallocate(struct buffer *buffer_pointer);

#ifdef __cplusplus
}
#endif

#endif /* FLEET_PROTOCOL_EXTERNAL_SERVER_INTERFACE_H */
