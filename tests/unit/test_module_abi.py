"""The ctypes mirror (external_server.modules.abi) against docs/protocol.md §5.1/§5.2 and the real C headers.

The C side is compiled with the system compiler from lib/include, so the
headers, the spec tables and the ctypes structures cannot drift apart.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from external_server.modules import abi

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ROOT / "lib" / "include"
CC = os.environ.get("CC", "cc")

# (struct, field) -> offset, and struct -> size, exactly as the §5.2 table states them (LP64).
SPEC_OFFSETS = {
    ("buffer", "data"): 0,
    ("buffer", "size_in_bytes"): 8,
    ("device_identification", "module"): 0,
    ("device_identification", "device_type"): 4,
    ("device_identification", "device_role"): 8,
    ("device_identification", "device_name"): 24,
    ("device_identification", "priority"): 40,
    ("key_value", "key"): 0,
    ("key_value", "value"): 16,
    ("config", "parameters"): 0,
    ("config", "size"): 8,
}
SPEC_SIZES = {"buffer": 16, "device_identification": 48, "key_value": 32, "config": 16}
CTYPES = {
    "buffer": abi.Buffer,
    "device_identification": abi.DeviceIdentification,
    "key_value": abi.KeyValue,
    "config": abi.Config,
}
# Constant name in C -> value in abi.py (§5.1).
CONSTANTS = {
    "OK": abi.OK,
    "NOT_OK": abi.NOT_OK,
    "RESERVED": abi.RESERVED,
    "CONTEXT_INCORRECT": abi.CONTEXT_INCORRECT,
    "TIMEOUT_OCCURRED": abi.TIMEOUT_OCCURRED,
    "announced": abi.DisconnectType.ANNOUNCED,
    "timeout": abi.DisconnectType.TIMEOUT,
    "error": abi.DisconnectType.ERROR,
}

pytestmark = pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="§5.2 layout is LP64")


def test_return_codes_match_spec() -> None:
    """§5.1: OK 0, NOT_OK -1, RESERVED -10, CONTEXT_INCORRECT -11, TIMEOUT_OCCURRED -12."""
    assert (abi.OK, abi.NOT_OK, abi.RESERVED) == (0, -1, -10)
    assert (abi.CONTEXT_INCORRECT, abi.TIMEOUT_OCCURRED) == (-11, -12)
    assert [int(t) for t in abi.DisconnectType] == [0, 1, 2]
    assert (abi.DISCONNECT_ANNOUNCED, abi.DISCONNECT_TIMEOUT, abi.DISCONNECT_ERROR) == (0, 1, 2)


@pytest.mark.parametrize("struct", sorted(SPEC_SIZES))
def test_ctypes_sizes_match_spec(struct: str) -> None:
    assert ctypes.sizeof(CTYPES[struct]) == SPEC_SIZES[struct]


@pytest.mark.parametrize(("struct", "field"), sorted(SPEC_OFFSETS))
def test_ctypes_offsets_match_spec(struct: str, field: str) -> None:
    assert getattr(CTYPES[struct], field).offset == SPEC_OFFSETS[(struct, field)]


def test_ctypes_field_order_matches_spec() -> None:
    for struct, ctype in CTYPES.items():
        spec_fields = [f for (s, f) in sorted(SPEC_OFFSETS, key=SPEC_OFFSETS.__getitem__) if s == struct]
        assert [name for name, *_ in ctype._fields_] == spec_fields


def _compile_and_run(tmp_path: Path, source: str, compiler: str = CC, suffix: str = "c") -> str:
    src = tmp_path / f"probe.{suffix}"
    exe = tmp_path / "probe"
    src.write_text(source)
    subprocess.run(
        [compiler, "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}", "-o", str(exe), str(src)],
        check=True,
        capture_output=True,
        text=True,
    )
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout


def _layout_probe() -> str:
    lines = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        "#include <fleet_protocol/external_server_interface.h>",
    ]
    lines.append("int main(void) {")
    for struct in SPEC_SIZES:
        lines.append(f'    printf("size {struct} %zu\\n", sizeof(struct {struct}));')
    for struct, field in SPEC_OFFSETS:
        lines.append(f'    printf("offset {struct} {field} %zu\\n", offsetof(struct {struct}, {field}));')
    for name in CONSTANTS:
        lines.append(f'    printf("const {name} %d\\n", (int)({name}));')
    lines.append("    return 0;\n}")
    return "\n".join(lines) + "\n"


def test_header_layout_and_constants_match_ctypes(tmp_path: Path) -> None:
    """sizeof/offsetof/constant values from the real header equal the ctypes mirror."""
    seen: dict[str, int] = {}
    for line in _compile_and_run(tmp_path, _layout_probe()).splitlines():
        *key, value = line.split()
        seen[" ".join(key)] = int(value)
    for struct, ctype in CTYPES.items():
        assert seen[f"size {struct}"] == ctypes.sizeof(ctype), struct
    for struct, field in SPEC_OFFSETS:
        assert seen[f"offset {struct} {field}"] == getattr(CTYPES[struct], field).offset, (struct, field)
    for name, value in CONSTANTS.items():
        assert seen[f"const {name}"] == int(value), name


FUNCTIONS_PROBE = """
#include <fleet_protocol/external_server_interface.h>
/* Each prototype, with the exact C signature of docs/protocol.md §5.3, must be compatible. */
int (*p_get_module_number)(void) = get_module_number;
int (*p_is_device_type_supported)(unsigned int) = is_device_type_supported;
void *(*p_init)(const struct config) = init;
int (*p_destroy)(void **) = destroy;
int (*p_forward_status)(const struct buffer, const struct device_identification, void *) = forward_status;
int (*p_forward_error_message)(const struct buffer, const struct device_identification, void *) =
    forward_error_message;
int (*p_device_connected)(const struct device_identification, void *) = device_connected;
int (*p_device_disconnected)(const int, const struct device_identification, void *) = device_disconnected;
int (*p_wait_for_command)(int, void *) = wait_for_command;
int (*p_pop_command)(struct buffer *, struct device_identification *, void *) = pop_command;
int (*p_command_ack)(const struct buffer, const struct device_identification, void *) = command_ack;
void (*p_deallocate)(struct buffer *) = deallocate;
int (*p_allocate)(struct buffer *, size_t) = allocate;
"""


@pytest.mark.parametrize(("compiler", "language"), [(CC, "c"), ("c++", "c++")])
def test_header_declares_all_twelve_functions(tmp_path: Path, compiler: str, language: str) -> None:
    """Compiles as C and as C++; -fsyntax-only is enough to check the signatures.

    Linkage (extern "C") is checked by test_example_module, which links the
    C++-compiled probe against the real library.
    """
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed")
    src = tmp_path / "functions.txt"
    src.write_text(FUNCTIONS_PROBE)
    subprocess.run(
        [compiler, "-x", language, "-fsyntax-only", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}", str(src)],
        check=True,
        capture_output=True,
        text=True,
    )
