"""Backend transports. Each is one module implementing ``Connector``; ``make_connector`` picks one."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from proxy.config import RemoteBackendConfig, StdioBackendConfig
from proxy.connectors.base import Connector
from proxy.connectors.http import StreamableHttpConnector
from proxy.connectors.sse import SseConnector
from proxy.connectors.stdio import StdioConnector
from proxy.connectors.websocket import WebSocketConnector
from proxy.credentials import credentials_for

__all__ = ["Connector", "make_connector"]


def make_connector(
    backend: str,
    config: StdioBackendConfig | RemoteBackendConfig,
    *,
    http: aiohttp.ClientSession,
    base_dir: Path,
    transport: str | None = None,
    instance: int = 0,
) -> Connector:
    """A connector for the backend's configured transport, or for ``transport`` once a fallback chose it;
    ``instance`` picks one server of a pool (``urls``)."""
    if isinstance(config, StdioBackendConfig):
        return StdioConnector(backend, config, base_dir)
    remote = {"streamable-http": StreamableHttpConnector, "sse": SseConnector}.get(
        transport or config.transport or "", WebSocketConnector
    )
    # One credentials provider per backend, shared by all its connectors (and every server of a pool):
    # one token cache for all links.
    credentials = credentials_for(backend, config, http)
    return remote(backend, config.instance(instance), http, credentials)
