"""Mutual-TLS client context for the broker connection (docs/protocol.md §3.2)."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_tls_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """Verify the broker against ``ca_file`` (hostname checked) and present our certificate."""
    for path in (ca_file, cert_file, key_file):
        if not path.is_file():
            raise FileNotFoundError(f"TLS file not found: {path}")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    return context
