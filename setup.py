"""Builds the one small C helper of the server (see server/external_server/native/wait_loop.c).

Everything else is declared in pyproject.toml. The helper is a plain shared library loaded
with ctypes (it defines no Python module); the server falls back to a Python loop without it.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "external_server.native._wait_loop",
            sources=["server/external_server/native/wait_loop.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror"],
            py_limited_api=False,
        )
    ]
)
