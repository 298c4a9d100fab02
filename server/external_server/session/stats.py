"""Counters one car session keeps for /status and metrics; plain data, no I/O."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class SessionStats:
    messages_in: Counter[str] = field(default_factory=Counter)
    messages_out: Counter[str] = field(default_factory=Counter)
    invalid_messages: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)
    resets: Counter[str] = field(default_factory=Counter)
    module_errors: Counter[str] = field(default_factory=Counter)
    commands_dropped: Counter[str] = field(default_factory=Counter)
    dropped_overflow: int = 0
    sessions_started: int = 0
    last_message_at: float | None = None
    """Monotonic seconds (the session core's clock); /status turns them into wall time."""
    state_since: float | None = None
