"""``python -m external_server_operator``: same as the ``external-server-operator`` command."""

from .main import main

raise SystemExit(main())
