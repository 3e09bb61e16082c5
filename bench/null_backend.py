"""A null MCP server on stdio: one ``echo`` tool answered at once, so any benchmark measures its client.

No SDK and no event loop: it reads whatever bytes stdin has (``os.read``), answers every complete line in
that chunk, and writes all the answers back with one ``os.write``. Under pipelined load that batches
naturally (one pair of syscalls for many calls); with one call at a time it answers each line as soon as
it arrives, so it never adds waiting of its own.

Run as ``python -m bench.null_backend`` (from the repository root) or by its path.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import orjson

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
        return _result(request_id, {"tools": [ECHO_TOOL]})
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


def main() -> int:
    # The reader going away (or Ctrl-C in a terminal) is a normal end, not worth a traceback.
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        serve(sys.stdin.fileno(), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
