/*
 * Device identity and module configuration structures (docs/protocol.md §5.2).
 * Sizes and offsets are for LP64 (x86-64, aarch64).
 */
#ifndef FLEET_PROTOCOL_DEVICE_MANAGEMENT_H
#define FLEET_PROTOCOL_DEVICE_MANAGEMENT_H

#include "memory_management.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * One device. Identity is (module, device_type, device_role); the name and
 * priority travel with it. Role and name are UTF-8, size without terminator.
 * Offsets: module 0, device_type 4, device_role 8, device_name 24,
 * priority 40; 48 bytes with tail padding.
 */
struct device_identification {
    int module;
    unsigned int device_type;
    struct buffer device_role;
    struct buffer device_name;
    unsigned int priority;
};

/* One configuration entry: key at offset 0, value at offset 16; 32 bytes. */
struct key_value {
    struct buffer key;
    struct buffer value;
};

/*
 * The configuration given to init(): `size` entries at `parameters`.
 * company_name comes first, car_name second, then the module's own entries.
 * Owned by the caller and valid only during init().
 */
struct config {
    struct key_value *parameters;
    size_t size;
};

#ifdef __cplusplus
}
#endif

#endif /* FLEET_PROTOCOL_DEVICE_MANAGEMENT_H */
