"""What a backend needs from the rest of the gateway: the client session it serves, and the gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from proxy.chain import Principal
from proxy.jsonrpc import Message

if TYPE_CHECKING:
    from proxy.backend import Backend


class ClientIdentity(Protocol):
    """What a backend needs to know about the client session it opens a per-client link for."""

    @property
    def id(self) -> str: ...

    @property
    def client_info(self) -> dict[str, Any]: ...

    @property
    def client_capabilities(self) -> dict[str, Any]: ...

    @property
    def log_level(self) -> str | None: ...

    @property
    def principal(self) -> Principal: ...

    @property
    def protocol_version(self) -> str | None:
        """None for a modern-era client, which has no session of its own to keep."""
        ...


class BackendEvents(Protocol):
    """How a backend reaches the clients; implemented by the gateway."""

    def backend_changed(self, backend: Backend) -> None: ...

    def backend_down(self, backend: Backend, reason: str) -> None: ...

    def breaker_changed(self, backend: Backend, state: str) -> None:
        """The breaker of a backend with ``breaker.shared`` opened or closed here."""
        ...

    async def relay_request(self, backend: Backend, session_id: str, message: Message) -> Message:
        """Put a backend's request to the client of ``session_id`` and return the client's response."""
        ...

    def deliver_notification(
        self, backend: Backend, session_ids: list[str] | None, message: Message
    ) -> None: ...
