/*
 * General return codes shared by every Fleet Protocol module interface
 * (docs/protocol.md §5.1). Codes -1 ... -10 are reserved for general errors;
 * interface-specific codes start below RESERVED.
 */
#ifndef FLEET_PROTOCOL_GENERAL_ERROR_CODES_H
#define FLEET_PROTOCOL_GENERAL_ERROR_CODES_H

#define OK 0
#define NOT_OK (-1)
#define RESERVED (-10)

#endif /* FLEET_PROTOCOL_GENERAL_ERROR_CODES_H */
