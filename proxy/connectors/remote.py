"""What every connector to a backend at a URL shares: its config, the gateway's HTTP client, and the
credentials it shows the backend (see ``proxy.credentials``)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

from proxy.config import RemoteBackendConfig
from proxy.connectors.base import Connector
from proxy.credentials import BackendCredentials, credentials_for

# W3C Trace Context: version 00's shape, and a tracestate bounded as the recommendation says (512 chars).
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_TRACESTATE = re.compile(r"[\x20-\x7e]{1,512}")


def trace_headers(message: Any) -> dict[str, str]:
    """The W3C ``traceparent``/``tracestate`` HTTP headers for a message whose ``params._meta`` carries them.

    The gateway's tracing writes its backend span into the forwarded ``_meta`` (``proxy.tracing``); an
    HTTP backend, or a proxy or load balancer in front of it, reads trace context from the headers, so the
    same values travel in both. Malformed values are not copied: they could not join any trace.
    """
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        return {}
    parent = meta.get("traceparent")
    if not isinstance(parent, str) or _TRACEPARENT.fullmatch(parent) is None:
        return {}
    headers = {"traceparent": parent}
    state = meta.get("tracestate")
    if isinstance(state, str) and _TRACESTATE.fullmatch(state) is not None:
        headers["tracestate"] = state
    return headers


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
