"""What every connector to a backend at a URL shares: its config, the gateway's HTTP client, and the
credentials it shows the backend (see ``proxy.credentials``)."""

from __future__ import annotations

import aiohttp

from proxy.config import RemoteBackendConfig
from proxy.connectors.base import Connector
from proxy.credentials import BackendCredentials, credentials_for


class RemoteConnector(Connector):
    """A connector to a remote backend (Streamable HTTP, HTTP+SSE or WebSocket)."""

    def __init__(
        self,
        backend: str,
        config: RemoteBackendConfig,
        http: aiohttp.ClientSession,
        credentials: BackendCredentials | None = None,
    ) -> None:
        super().__init__(backend)
        self.config = config
        self.http = http
        # One provider per backend and gateway, so every link to the backend shares its token.
        self.credentials = credentials or credentials_for(backend, config, http)
        self._start_state()

    def _start_state(self) -> None:
        """Set up the transport's own state, before any connection (each transport has its own)."""
