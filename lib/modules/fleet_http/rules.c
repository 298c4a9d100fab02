/*
 * What differs between the three modules (docs/http-bridge.md §2.1, §2.3, §2.5):
 * supported device types, status validation and the command bytes.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Compact, keys sorted (what the reference's cpprest serialization gives), any top-level value. */
#define DUMP_FLAGS (JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY)

int fh_type_supported(unsigned int device_type)
{
#if FLEET_MODULE == 1
    return device_type == 1;
#elif FLEET_MODULE == 2
    return device_type >= 1 && device_type <= 4;
#else
    (void)device_type;
    return 1;
#endif
}

#if FLEET_MODULE == 1
static int string_in(const json_t *value, const char *const *allowed)
{
    if (!json_is_string(value))
        return 0;
    for (; *allowed != NULL; allowed++)
        if (strcmp(json_string_value(value), *allowed) == 0)
            return 1;
    return 0;
}
#endif

int fh_validate_status(const json_t *data, unsigned int device_type, int error, const char **why)
{
#if FLEET_MODULE == 1
    static const char *const states[] = {"IDLE", "DRIVE", "IN_STOP", "OBSTACLE", "ERROR", NULL};
    if (device_type != 1) {
        *why = "mission accepts device type 1 only";
        return -1;
    }
    if (!json_is_object(data)) {
        *why = "not a JSON object";
        return -1;
    }
    if (error) {
        if (!json_is_array(json_object_get(data, "finishedStops"))) {
            *why = "error message without an array 'finishedStops'";
            return -1;
        }
        return 0;
    }
    if (!string_in(json_object_get(data, "state"), states)) {
        *why = "'state' is not one of IDLE, DRIVE, IN_STOP, OBSTACLE, ERROR";
        return -1;
    }
    const json_t *telemetry = json_object_get(data, "telemetry");
    if (!json_is_object(telemetry) || !json_is_number(json_object_get(telemetry, "speed"))) {
        *why = "'telemetry' is not an object with a numeric 'speed'";
        return -1;
    }
    if (json_object_get(data, "nextStop") == NULL) {
        *why = "no 'nextStop'";
        return -1;
    }
    return 0;
#else
    (void)data;
    (void)device_type;
    (void)error;
    (void)why;
    return 0;
#endif
}

#if FLEET_MODULE != 2
static char *dump(const json_t *data, size_t *len)
{
    char *text = json_dumps(data, DUMP_FLAGS);
    if (text != NULL)
        *len = strlen(text);
    return text;
}
#endif

char *fh_command_bytes(const json_t *data, size_t *len, const char **why)
{
#if FLEET_MODULE == 1
    static const char *const actions[] = {"NO_ACTION", "STOP", "START", NULL};
    if (!json_is_object(data) || !string_in(json_object_get(data, "action"), actions) ||
        !json_is_array(json_object_get(data, "stops")) || !json_is_string(json_object_get(data, "route"))) {
        *why = "mission command needs 'action' (NO_ACTION, STOP, START), array 'stops', string 'route'";
        return NULL;
    }
    char *out = dump(data, len);
    if (out == NULL)
        *why = "out of memory";
    return out;
#elif FLEET_MODULE == 2
    /* Re-encoded as [{"outNum":n,"actType":a},...]; other keys are dropped. */
    if (!json_is_array(data)) {
        *why = "io command is not an array";
        return NULL;
    }
    size_t n = json_array_size(data);
    size_t cap = 3 + n * 64;
    char *out = malloc(cap);
    if (out == NULL) {
        *why = "out of memory";
        return NULL;
    }
    size_t used = 0;
    out[used++] = '[';
    for (size_t i = 0; i < n; i++) {
        const json_t *item = json_array_get(data, i);
        const json_t *out_num = json_object_get(item, "outNum");
        const json_t *act_type = json_object_get(item, "actType");
        if (!json_is_object(item) || !json_is_integer(out_num) || !json_is_integer(act_type)) {
            free(out);
            *why = "io command element is not {\"outNum\": int, \"actType\": int}";
            return NULL;
        }
        /* 2 x 20 digits + 28 fixed characters < 64 per element. */
        int w = snprintf(out + used, cap - used, "%s{\"outNum\":%" JSON_INTEGER_FORMAT
                                                 ",\"actType\":%" JSON_INTEGER_FORMAT "}",
                         i > 0 ? "," : "", json_integer_value(out_num), json_integer_value(act_type));
        if (w < 0 || (size_t)w >= cap - used) {
            free(out);
            *why = "io command too large";
            return NULL;
        }
        used += (size_t)w;
    }
    out[used++] = ']';
    out[used] = '\0';
    *len = used;
    return out;
#else
    /* Compact JSON of data, whatever it is; a string keeps its quotes; encoding is ignored. */
    char *out = dump(data, len);
    if (out == NULL)
        *why = "data cannot be serialized";
    return out;
#endif
}
