/*
 * The byte buffer every module call exchanges and the module's own allocator
 * (docs/protocol.md §5.2, §5.4).
 *
 * Ownership: a buffer passed INTO a module is owned by the caller and valid
 * only during the call (the module copies what it keeps). A buffer a module
 * hands OUT was allocated by the module and must be returned to that same
 * module's deallocate(); the caller never frees it with its own allocator.
 */
#ifndef FLEET_PROTOCOL_MEMORY_MANAGEMENT_H
#define FLEET_PROTOCOL_MEMORY_MANAGEMENT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A sized byte range. size_in_bytes never counts a terminator; strings are
 * UTF-8. Callers passing strings in still put a NUL one byte past the end.
 * LP64 layout: data at offset 0, size_in_bytes at offset 8, 16 bytes total.
 */
struct buffer {
    void *data;
    size_t size_in_bytes;
};

/*
 * Allocates size_in_bytes bytes with the module's allocator into
 * *buffer_pointer. Returns OK, or NOT_OK when the allocation failed.
 */
int allocate(struct buffer *buffer_pointer, size_t size_in_bytes);

/*
 * Frees data allocated by this module, then sets data = NULL and
 * size_in_bytes = 0. Accepts a buffer whose data is already NULL.
 */
void deallocate(struct buffer *buffer_pointer);

#ifdef __cplusplus
}
#endif

#endif /* FLEET_PROTOCOL_MEMORY_MANAGEMENT_H */
