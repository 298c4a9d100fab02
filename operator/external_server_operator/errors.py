"""Errors shared by the API client and the reconciler."""

from __future__ import annotations

import json


class KubeError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{method} {path}: HTTP {status}: {_status_message(body)}")

    @property
    def rejected(self) -> bool:
        """The request itself is wrong (validation, forbidden): retrying it unchanged cannot help."""
        return 400 <= self.status < 500 and self.status not in (404, 409, 429)


def _status_message(body: str) -> str:
    """The ``message`` of a Kubernetes Status body, else the body's beginning."""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return message if isinstance(message, str) and message else body[:500]
