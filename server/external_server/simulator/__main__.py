"""``python -m external_server.simulator`` = the ``fleet-simulator`` command."""

from .cli import main

raise SystemExit(main())
