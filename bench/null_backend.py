"""A null MCP server: one ``echo`` tool answered at once, so any benchmark measures its client.

On stdio (the default) there is no SDK and no event loop: it reads whatever bytes stdin has (``os.read``),
answers every complete line in that chunk, and writes all the answers back with one ``os.write``. Under
pipelined load that batches naturally (one pair of syscalls for many calls); with one call at a time it
answers each line as soon as it arrives, so it never adds waiting of its own.

``--transport ws`` and ``--transport http`` serve the same answers from an aiohttp server on uvloop at
``/mcp``: WebSocket (subprotocol ``mcp``, one message per text frame, each answered as it arrives) or
Streamable HTTP in the legacy session era (``initialize`` mints ``Mcp-Session-Id``, a request gets a JSON
response, a notification 202). They print one line, ``LISTENING <url>``, once they accept connections, and
stop when their stdin (if it is a pipe) closes, so a parent that dies does not leave them running.

Run as ``python -m bench.null_backend [--transport stdio|ws|http] [--host H] [--port P]`` (from the
repository root) or by its path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import stat
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from aiohttp import web

SUPPORTED_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
SERVER_INFO = {"name": "portico-null-backend", "version": "1.0"}
ECHO_TOOL = {
    "name": "echo",
    "description": "Return the text argument unchanged.",
    "inputSchema": {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    },
}
_CHUNK = 1 << 16
# What tools/list answers: echo, then any filler tools (--tools); set once by main().
LISTED_TOOLS: list[dict[str, Any]] = [ECHO_TOOL]


def configure(*, tools: int = 1, read_only: bool = False) -> None:
    """List ``tools`` tools in all (echo and ``tools - 1`` fillers named ``tool_0001``...), and with
    ``read_only`` mark echo read-only and idempotent, so the cache and dedup plugins take its calls."""
    echo = dict(ECHO_TOOL)
    if read_only:
        echo["annotations"] = {"readOnlyHint": True, "idempotentHint": True}
    fillers = [
        {
            "name": f"tool_{i:04d}",
            "description": f"Filler tool {i} (never called): it makes tools/list as long as a real server's.",
            "inputSchema": {"type": "object", "properties": {"value": {"type": "string"}}},
        }
        for i in range(1, max(tools, 1))
    ]
    LISTED_TOOLS[:] = [echo, *fillers]


def _result(request_id: Any, value: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": value})


def _error(request_id: Any, code: int, message: str) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})


def _call_tool(request_id: Any, params: dict[str, Any]) -> bytes:
    if params.get("name") != "echo":
        return _error(request_id, -32602, f"Unknown tool: {params.get('name')!r}")
    arguments = params.get("arguments")
    text = arguments.get("text") if isinstance(arguments, dict) else None
    if not isinstance(text, str):
        # A tool-level failure, reported the MCP way so the caller can tell it from a protocol error.
        content = [{"type": "text", "text": "echo needs a string argument 'text'"}]
        return _result(request_id, {"content": content, "isError": True})
    return _result(request_id, {"content": [{"type": "text", "text": text}], "isError": False})


def _initialize(request_id: Any, params: dict[str, Any]) -> bytes:
    asked = params.get("protocolVersion")
    version = asked if asked in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[-1]
    return _result(
        request_id, {"protocolVersion": version, "capabilities": {"tools": {}}, "serverInfo": SERVER_INFO}
    )


def answer(line: bytes) -> bytes | None:
    """The reply to one JSON-RPC line, or None when nothing is owed (notifications, responses)."""
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        return _error(None, -32700, "Parse error")
    if not isinstance(message, dict) or "method" not in message:
        return None  # a response to nothing we asked, or garbage with no id to answer
    if "id" not in message:
        return None  # notifications (initialized, cancelled, ...) need no reply
    request_id = message["id"]
    method = message["method"]
    params = message.get("params")
    if not isinstance(params, dict):
        params = {}
    # Hottest first: under load nearly every line is a tools/call.
    if method == "tools/call":
        return _call_tool(request_id, params)
    if method == "initialize":
        return _initialize(request_id, params)
    if method == "ping":
        return _result(request_id, {})
    if method == "tools/list":
        return _result(request_id, {"tools": LISTED_TOOLS})
    return _error(request_id, -32601, f"Method not found: {method}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def serve(fd_in: int, fd_out: int) -> None:
    """Answer requests until stdin closes."""
    pending = b""
    while True:
        chunk = os.read(fd_in, _CHUNK)
        if not chunk:
            return
        data = pending + chunk if pending else chunk
        lines = data.split(b"\n")
        # The last piece is an incomplete line (or b"" when the chunk ended on a newline).
        pending = lines.pop()
        replies = [reply for line in lines if line.strip() and (reply := answer(line)) is not None]
        if replies:
            replies.append(b"")
            _write_all(fd_out, b"\n".join(replies))


# -- WebSocket and Streamable HTTP ---------------------------------------------------------------------------
# aiohttp is imported only here, so the stdio variant starts and runs exactly as it did without it.

SESSION_HEADER = "Mcp-Session-Id"


async def _websocket(request: web.Request) -> web.StreamResponse:
    from aiohttp import WSMsgType, web

    # decode_text=False: text frames arrive as bytes, which is what answer() and orjson want.
    ws = web.WebSocketResponse(protocols=("mcp",), decode_text=False, compress=False)
    await ws.prepare(request)
    async for frame in ws:
        if frame.type is WSMsgType.TEXT:
            reply = answer(frame.data)
            if reply is not None:
                await ws.send_frame(reply, WSMsgType.TEXT)
    return ws


class _HttpSessions:
    """Streamable HTTP, legacy era: POST one message per request, sessions minted by ``initialize``."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    async def post(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        body = await request.read()
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _json(400, _error(None, -32700, "Parse error"))
        if not isinstance(message, dict):
            return _json(400, _error(None, -32600, "Invalid Request: one JSON-RPC message per POST"))
        headers: dict[str, str] = {}
        if message.get("method") == "initialize":
            session = secrets.token_hex(16)
            self.ids.add(session)
            headers[SESSION_HEADER] = session
        else:
            # Statuses as the specification (and the gateway) use them: missing 400, unknown 404.
            session_id = request.headers.get(SESSION_HEADER)
            if session_id is None:
                return _json(400, _error(message.get("id"), -32600, f"Bad Request: no {SESSION_HEADER}"))
            if session_id not in self.ids:
                return _json(404, _error(message.get("id"), -32600, "Session not found"))
        # answer() parses the body a second time; that keeps the stdio hot path free of any extra step.
        reply = answer(body)
        if reply is None:
            return web.Response(status=202)
        return _json(200, reply, headers)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        session_id = request.headers.get(SESSION_HEADER)
        if session_id not in self.ids:
            return web.Response(status=404)
        self.ids.discard(session_id)
        return web.Response(status=200)


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    from aiohttp import web

    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _application(transport: str) -> web.Application:
    from aiohttp import web

    app = web.Application()
    if transport == "ws":
        app.router.add_get("/mcp", _websocket)
    else:
        sessions = _HttpSessions()
        app.router.add_post("/mcp", sessions.post)
        app.router.add_delete("/mcp", sessions.delete)
    return app


def _stop_when_stdin_closes(stop: asyncio.Event) -> None:
    """Watch stdin when it is a pipe: its end means the parent is done (or dead), so this server is too."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    # A pipe, or the socket pair uvloop's subprocesses get instead; a terminal or /dev/null is left alone.
    mode = os.fstat(fd).st_mode if fd >= 0 else 0
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(fd, _CHUNK)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            stop.set()

    loop.add_reader(fd, readable)


async def serve_network(transport: str, host: str, port: int) -> None:
    """Serve ``transport`` ("ws" or "http") at http://host:port/mcp until SIGTERM, SIGINT or stdin's end."""
    import signal

    from aiohttp import web

    # No access log: writing a line per call would make this server the slow part.
    runner = web.AppRunner(_application(transport), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        scheme = "ws" if transport == "ws" else "http"
        print(f"LISTENING {scheme}://{bound_host}:{bound_port}/mcp", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        _stop_when_stdin_closes(stop)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.null_backend", description=__doc__.split("\n")[0])
    parser.add_argument("--transport", choices=("stdio", "ws", "http"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1", help="ws/http: address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="ws/http: port, 0 for any free one (default 0)")
    parser.add_argument("--tools", type=int, default=1, help="how many tools to list, echo first (default 1)")
    parser.add_argument(
        "--read-only", action="store_true", help="annotate echo readOnlyHint/idempotentHint (cache, dedup)"
    )
    args = parser.parse_args(argv)
    configure(tools=args.tools, read_only=args.read_only)
    if args.transport != "stdio":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve_network(args.transport, args.host, args.port))
        return 0
    # The reader going away (or Ctrl-C in a terminal) is a normal end, not worth a traceback.
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        serve(sys.stdin.fileno(), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
