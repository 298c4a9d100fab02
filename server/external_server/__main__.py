"""``python -m external_server``: see :mod:`external_server.cli`."""

from external_server.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
