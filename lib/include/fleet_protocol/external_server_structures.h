/*
 * Return codes and enumerations specific to the external-server side of a
 * module (docs/protocol.md §5.1).
 */
#ifndef FLEET_PROTOCOL_EXTERNAL_SERVER_STRUCTURES_H
#define FLEET_PROTOCOL_EXTERNAL_SERVER_STRUCTURES_H

#include "general_error_codes.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Errors an external-server module function may return besides OK / NOT_OK. */
enum es_error_codes {
    CONTEXT_INCORRECT = RESERVED - 1, /* -11: NULL or otherwise unusable context */
    TIMEOUT_OCCURRED = RESERVED - 2   /* -12: nothing happened within the timeout */
};

/*
 * Why a device left; passed as a plain int to device_disconnected().
 * The server uses `announced` for a DISCONNECT status or a
 * DEVICE_NOT_CONNECTED command response and `timeout` at session clean-up.
 */
enum disconnect_types {
    announced = 0,
    timeout = 1,
    error = 2
};

#ifdef __cplusplus
}
#endif

#endif /* FLEET_PROTOCOL_EXTERNAL_SERVER_STRUCTURES_H */
