"""The conformance fixture backend: an MCP server with everything the official conformance suite's
server scenarios call (see ``fixture_features.py``), served over stdio or Streamable HTTP.

Run as::

    python tests/conformance/fixture_server.py --transport stdio [--legacy-only]
    python tests/conformance/fixture_server.py --transport streamable-http [--port N] [--legacy-only]

Streamable HTTP listens on 127.0.0.1 only (``--port 0``, the default, picks a free port) and, once
bound, prints exactly one stdout line ``LISTENING http://127.0.0.1:PORT/mcp``. SIGTERM or SIGINT
shuts it down with exit status 0. Host/Origin (DNS-rebinding) checks accept 127.0.0.1, localhost
and [::1] on any port, as the SDK sets them up for a loopback server. Handshake-era sessions keep
their SSE events in memory, so a client can resume a broken stream with ``Last-Event-ID``
(server-sse-polling). Logs go to stderr.

Without ``--legacy-only`` the server speaks both protocol eras, as the mcp SDK does by default: a
request carrying the 2026-07-28 ``_meta`` envelope (or, over HTTP, a post-handshake
``MCP-Protocol-Version``) is served statelessly, anything else through the ``initialize`` handshake.

``--legacy-only`` makes it behave exactly like a server of the handshake era (2025-11-25 and
before), so that a client's era detection can be tested against both kinds of backend:

- stdio: only the SDK's handshake loop runs, so ``server/discover`` (a method that era does not
  have) gets -32601 "Method not found", and an enveloped request before ``initialize`` is refused.
- HTTP: a request with a post-handshake ``MCP-Protocol-Version`` and no session is handled as a
  session-era request (that era's servers did not know the header), which the SDK's stateful
  transport refuses with 400 "Missing session ID" unless it is an ``initialize``; with a session,
  the unknown version is refused with 400, as the stateful 2025-11-25 transport did.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import sys
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from fixture_features import RECONNECT_AFTER_MS, Fixture, FixtureServer
from mcp.server.runner import serve_loop
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, EventCallback, EventMessage, EventStore
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import INVALID_REQUEST, JSONRPCMessage
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

# The network fixtures' shared uvicorn runner lives beside them, in tests/fixtures.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
from uvicorn_runner import serve_announced

MCP_PATH: Final = "/mcp"
PROTOCOL_VERSION_HEADER: Final = "mcp-protocol-version"

# DNS-rebinding protection as the SDK sets it up for a loopback server.
SECURITY: Final = TransportSecuritySettings(
    enable_dns_rebinding_protection=True,
    allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
    allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
)

log = logging.getLogger("conformance-fixture")


# --- stdio ---------------------------------------------------------------------------------------


async def serve_stdio(server: FixtureServer, *, legacy_only: bool) -> None:
    async with stdio_server() as (read_stream, write_stream):
        if not legacy_only:
            # Server.run serves whichever era the client's first request opens.
            await server.run(read_stream, write_stream, server.create_initialization_options())
            return
        async with server.lifespan(server) as lifespan_state:
            # The SDK's handshake-only loop, the one its HTTP sessions run.
            await serve_loop(server, read_stream, write_stream, lifespan_state=lifespan_state)


# --- Streamable HTTP -----------------------------------------------------------------------------


class MemoryEventStore(EventStore):
    """The last ``limit`` SSE events of every stream, so a client can resume a broken stream with
    ``Last-Event-ID`` (server-sse-polling). Event ids are increasing integers, as strings."""

    def __init__(self, limit: int = 1000) -> None:
        self._events: deque[tuple[str, str, JSONRPCMessage | None]] = deque(maxlen=limit)
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = str(next(self._ids))
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        """Send the stream's events after ``last_event_id`` (priming events carry no message)."""
        stream = next((stream for event_id, stream, _ in self._events if event_id == last_event_id), None)
        if stream is None:
            return None
        for event_id, stream_id, message in list(self._events):
            if stream_id == stream and int(event_id) > int(last_event_id) and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream


class HandshakeEraOnly:
    """ASGI wrapper that answers post-handshake requests as a 2025-11-25 stateful server would."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        version = headers.get(PROTOCOL_VERSION_HEADER)
        if scope["type"] != "http" or version is None or version in HANDSHAKE_PROTOCOL_VERSIONS:
            await self._app(scope, receive, send)
        elif headers.get(MCP_SESSION_ID_HEADER) is None:
            # That era's servers ignored the header here: without it, the SDK's session-era
            # transport gives this request exactly the answer such a server gave.
            without = [
                (k, v) for k, v in scope["headers"] if k.decode("latin-1").lower() != PROTOCOL_VERSION_HEADER
            ]
            await self._app({**scope, "headers": without}, receive, send)
        else:
            supported = ", ".join(HANDSHAKE_PROTOCOL_VERSIONS)
            message = f"Bad Request: Unsupported protocol version: {version}. Supported versions: {supported}"
            body = {
                "jsonrpc": "2.0",
                "id": "server-error",
                "error": {"code": INVALID_REQUEST, "message": message},
            }
            await JSONResponse(body, status_code=400)(scope, receive, send)


def streamable_http_app(server: FixtureServer, *, legacy_only: bool) -> Starlette:
    """The SDK's session manager at ``/mcp``: handshake sessions, plus the stateless modern era."""
    manager = StreamableHTTPSessionManager(
        app=server,
        security_settings=SECURITY,
        event_store=MemoryEventStore(),
        retry_interval=RECONNECT_AFTER_MS,
    )
    # An ASGI app object, not a function: Starlette would wrap a function as a GET-only endpoint.
    endpoint: ASGIApp = StreamableHTTPASGIApp(manager)
    if legacy_only:
        endpoint = HandshakeEraOnly(endpoint)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    return Starlette(routes=[Route(MCP_PATH, endpoint=endpoint)], lifespan=lifespan)


async def serve_http(fixture: Fixture, server: FixtureServer, port: int, *, legacy_only: bool) -> None:
    async def end_listen_streams() -> None:
        fixture.listen.close()

    await serve_announced(
        streamable_http_app(server, legacy_only=legacy_only), port, MCP_PATH, end_listen_streams
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transport", choices=("stdio", "streamable-http"), required=True)
    parser.add_argument("--port", type=int, default=0, help="streamable-http: TCP port (0 picks a free one)")
    parser.add_argument(
        "--legacy-only", action="store_true", help="behave like a server of the handshake era (2025-11-25)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    fixture = Fixture()
    server = fixture.build_server()
    if args.transport == "stdio":
        asyncio.run(serve_stdio(server, legacy_only=args.legacy_only))
    else:
        asyncio.run(serve_http(fixture, server, args.port, legacy_only=args.legacy_only))


if __name__ == "__main__":
    main()
