"""Just enough HTTP/1.1 for the load generator: one keep-alive connection, one POST at a time.

aiohttp's client spends about 100 µs of CPU on each POST (a task, a timeout, header multidicts, a stream
reader). The generator shares one core with the backend, so at a few thousand calls a second it fell
behind before the systems it measured did, and its own lag became every latency. This client writes each
request with one ``transport.write`` and parses replies straight from ``data_received``: no task and no
timer per request.

It speaks what the systems under test answer: ``Content-Length`` bodies, ``chunked`` bodies (an SSE
stream that ends with the reply), bodies that end when the server closes the connection, and 1xx/204/304
replies without a body. Nothing is pipelined: a real MCP client waits for its reply before it reuses a
connection, and so does this one (``HttpLink.post`` refuses a second request in flight).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

# A reply head larger than this is not a reply we can be measuring; stop rather than buffer it.
_MAX_HEAD = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})


class HttpProtocolError(Exception):
    """The server's bytes are not an HTTP/1.1 response we can read."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()


class ResponseParser:
    """Turns the bytes of a connection into whole responses, however the bytes are split."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._head: tuple[int, dict[str, str]] | None = None
        self._body = bytearray()
        self._framing = ""  # "length", "chunked" or "close" once a head is read
        self._remaining = 0  # bytes still due: of the body ("length") or of the current chunk ("chunked")
        self._in_chunk = False

    def feed(self, data: bytes) -> list[Response]:
        self._buffer += data
        responses = []
        while (response := self._next()) is not None:
            responses.append(response)
        return responses

    def end_of_stream(self) -> Response | None:
        """The server closed: that ends a body framed by the close; any other unfinished reply is lost."""
        if self._head is not None and self._framing == "close":
            self._body += self._buffer
            self._buffer.clear()
            return self._finish()
        return None

    @property
    def mid_response(self) -> bool:
        return self._head is not None or bool(self._buffer)

    def _next(self) -> Response | None:
        if self._head is None and not self._read_head():
            return None
        if self._framing == "length":
            return self._read_length()
        if self._framing == "chunked":
            return self._read_chunks()
        return None  # "close": the body is whatever comes until end_of_stream

    def _read_head(self) -> bool:
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    raise HttpProtocolError(f"no end of the reply head in {_MAX_HEAD} bytes")
                return False
            lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
            del self._buffer[: end + 4]
            status = _status(lines[0])
            if 100 <= status < 200:
                continue  # informational (100 Continue, 103): the real reply follows
            headers = _headers(lines[1:])
            self._head = (status, headers)
            self._framing, self._remaining = _framing(status, headers)
            return True

    def _read_length(self) -> Response | None:
        if len(self._buffer) < self._remaining:
            return None
        self._body += self._buffer[: self._remaining]
        del self._buffer[: self._remaining]
        return self._finish()

    def _read_chunks(self) -> Response | None:
        while True:
            if self._in_chunk:
                # The chunk's data, then the CRLF that closes it.
                if len(self._buffer) < self._remaining + 2:
                    return None
                self._body += self._buffer[: self._remaining]
                del self._buffer[: self._remaining + 2]
                self._in_chunk = False
                continue
            line_end = self._buffer.find(b"\r\n")
            if line_end < 0:
                return None
            size = _chunk_size(bytes(self._buffer[:line_end]))
            if size == 0:
                # The last chunk, then an optional trailer section, then an empty line.
                end = self._buffer.find(b"\r\n\r\n", line_end)
                if end < 0:
                    return None
                del self._buffer[: end + 4]
                return self._finish()
            del self._buffer[: line_end + 2]
            self._remaining = size
            self._in_chunk = True

    def _finish(self) -> Response:
        assert self._head is not None
        status, headers = self._head
        response = Response(status, headers, bytes(self._body))
        self._head = None
        self._body.clear()
        return response


def _status(line: str) -> int:
    version, _, rest = line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise HttpProtocolError(f"not an HTTP/1.x status line: {line[:100]!r}")
    return int(code)


def _headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise HttpProtocolError(f"a header line without a colon: {line[:100]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def _framing(status: int, headers: Mapping[str, str]) -> tuple[str, int]:
    """How the body of this reply ends (RFC 9112 section 6.3) and, for a length, how long it is."""
    if status in _NO_BODY_STATUSES:
        return "length", 0
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return "chunked", 0
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HttpProtocolError(f"a bad Content-Length: {length[:40]!r}")
        return "length", int(length)
    return "close", 0


def _chunk_size(line: bytes) -> int:
    digits = line.partition(b";")[0].strip()  # a chunk extension may follow the size
    try:
        return int(digits, 16)
    except ValueError:
        raise HttpProtocolError(f"a bad chunk size line: {line[:40]!r}") from None


class HttpLink(asyncio.Protocol):
    """One keep-alive connection to ``url``; every request is a POST of a body with the standing headers.

    Replies go to ``on_response``; ``on_closed`` is told once when the connection ends, with why if a
    request was still waiting for its reply. ``exchange`` is the awaitable form for set-up requests.
    """

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"an http:// URL is needed, not {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.headers = dict(headers)
        self.on_response: Callable[[Response], None] = _unexpected
        self.on_closed: Callable[[str], None] = _ignore
        self.awaiting = False
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._parser = ResponseParser()
        self._head = b""
        self.set_header("Host", parts.netloc)

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, self.host, self.port)

    def set_header(self, name: str, value: str) -> None:
        """Sent on every later request (``Content-Length`` is added per request)."""
        self.headers[name] = value
        lines = "".join(f"{key}: {val}\r\n" for key, val in self.headers.items())
        self._head = f"POST {self.path} HTTP/1.1\r\n{lines}".encode("latin-1")

    def post(self, body: bytes) -> None:
        if self.closed or self._transport is None:
            raise ConnectionError("the connection is closed")
        if self.awaiting:
            raise RuntimeError("one request at a time: the previous reply has not come")
        self.awaiting = True
        self._transport.write(b"%sContent-Length: %d\r\n\r\n%s" % (self._head, len(body), body))

    async def exchange(self, body: bytes) -> Response:
        """POST ``body`` and wait for its reply (set-up only: it takes over ``on_response``)."""
        reply: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

        def closed(why: str) -> None:
            if not reply.done():
                reply.set_exception(ConnectionError(why or "the server closed the connection"))

        self.on_response = reply.set_result
        self.on_closed = closed
        try:
            self.post(body)
            return await reply
        finally:
            self.on_response = _unexpected
            self.on_closed = _ignore

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- asyncio.Protocol -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but they are one.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            responses = self._parser.feed(data)
        except HttpProtocolError as exc:
            self._lose(str(exc))
            return
        for response in responses:
            self._deliver(response)

    def eof_received(self) -> bool:
        last = self._parser.end_of_stream()
        if last is not None:
            self._deliver(last)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        why = "the server closed the connection" if exc is None else f"the connection failed: {exc!r}"
        self._lose(why)

    def _deliver(self, response: Response) -> None:
        self.awaiting = False
        self.on_response(response)

    def _lose(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._transport is not None:
            self._transport.close()
        waiting = self.awaiting or self._parser.mid_response
        self.awaiting = False
        self.on_closed(why if waiting else "")


def _unexpected(response: Response) -> None:
    raise HttpProtocolError(f"a reply nobody asked for: {response.status}")


def _ignore(why: str) -> None:
    return None
