"""Topic names of docs/protocol.md §3.1, formed verbatim from company and car."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CarTopics:
    company: str
    car: str

    @property
    def module_gateway(self) -> str:
        """Car → server (Connect, Status, CommandResponse)."""
        return f"{self.company}/{self.car}/module_gateway"

    @property
    def external_server(self) -> str:
        """Server → car (ConnectResponse, StatusResponse, Command)."""
        return f"{self.company}/{self.car}/external_server"

    @property
    def disconnect_notification(self) -> str:
        """Server → car, empty payload at every session clean-up (§3.3)."""
        return f"{self.company}/{self.car}/external_server_disconnect"
