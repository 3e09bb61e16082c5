"""A stand-in for a client session, for tests that drive the plugin chain without a gateway."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeSession:
    """Has what ``proxy.chain.SessionView`` promises plugins; ``end`` records why it was ended."""

    id: str = "session-1"
    transport: str = "test"
    protocol_version: str | None = "2025-11-25"
    client_info: dict[str, Any] = field(default_factory=dict)
    ended: list[str] = field(default_factory=list)

    def end(self, reason: str) -> None:
        self.ended.append(reason)
