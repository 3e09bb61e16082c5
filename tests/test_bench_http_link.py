"""The load generator's HTTP/1.1 client: replies read whole however the bytes arrive, over real sockets."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from bench.http_link import HttpLink, HttpProtocolError, Response, ResponseParser

LENGTH_REPLY = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"id": 17}\n'
CHUNKED_SSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"f\r\nevent: message\n\r\n"
    b'12;name=value\r\ndata: {"id": 17}\n\n\r\n'
    b"0\r\nX-Trailer: yes\r\n\r\n"
)


def feed_in_pieces(raw: bytes, size: int) -> list[Response]:
    parser = ResponseParser()
    responses: list[Response] = []
    for start in range(0, len(raw), size):
        responses += parser.feed(raw[start : start + size])
    assert not parser.mid_response
    return responses


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_a_length_framed_reply_however_it_is_split(size: int) -> None:
    [response] = feed_in_pieces(LENGTH_REPLY, size)
    assert (response.status, response.content_type) == (200, "application/json")
    assert response.body == b'{"id": 17}\n'


@pytest.mark.parametrize("size", [1, 2, 5, 13, 10_000])
def test_a_chunked_reply_with_an_extension_and_a_trailer(size: int) -> None:
    [response] = feed_in_pieces(CHUNKED_SSE, size)
    assert response.content_type == "text/event-stream"
    assert response.body == b'event: message\ndata: {"id": 17}\n\n'


def test_replies_back_to_back_in_one_read_are_all_returned() -> None:
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    accepted = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
    responses = ResponseParser().feed(LENGTH_REPLY + no_content + CHUNKED_SSE + accepted)
    assert [response.status for response in responses] == [200, 204, 200, 202]
    assert [response.body for response in responses][1::2] == [b"", b""]


def test_an_informational_reply_is_skipped_for_the_real_one() -> None:
    [response] = ResponseParser().feed(b"HTTP/1.1 100 Continue\r\n\r\n" + LENGTH_REPLY)
    assert response.status == 200


def test_a_body_without_length_ends_when_the_server_closes() -> None:
    parser = ResponseParser()
    assert parser.feed(b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"a":') == []
    assert parser.feed(b" 1}") == []
    last = parser.end_of_stream()
    assert last is not None and last.body == b'{"a": 1}'


def test_an_unfinished_length_framed_reply_is_not_completed_by_the_close() -> None:
    parser = ResponseParser()
    parser.feed(LENGTH_REPLY[:-3])
    assert parser.end_of_stream() is None
    assert parser.mid_response


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_bytes_that_are_not_a_reply_are_refused(raw: bytes) -> None:
    with pytest.raises(HttpProtocolError):
        ResponseParser().feed(raw)


def test_a_head_that_never_ends_is_refused_rather_than_buffered() -> None:
    parser = ResponseParser()
    with pytest.raises(HttpProtocolError, match="no end of the reply head"):
        for _ in range(100):
            parser.feed(b"X-Filler: " + b"a" * 1000 + b"\r\n")


async def serve(handler: web.RequestHandler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/mcp", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/mcp"


async def test_one_connection_carries_every_request_with_the_standing_headers() -> None:
    seen: list[tuple[str, str, str, int]] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername")[1] if request.transport else 0
        session = request.headers.get("X-Session", "")
        seen.append((session, request.headers["Host"], await request.text(), peer))
        if request.headers.get("X-Session") == "s1":
            # The SSE form, chunked, as the streaming servers answer.
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: " + await request.read() + b"\n\n")
            await response.write_eof()
            return response
        return web.json_response({"echo": await request.text()})

    runner, url = await serve(echo)
    try:
        link = HttpLink(url, {"Content-Type": "application/json"})
        await link.connect()
        first = await link.exchange(b'"one"')
        link.set_header("X-Session", "s1")
        second = await link.exchange(b'"two"')
        link.close()
    finally:
        await runner.cleanup()
    assert first.body == b'{"echo": "\\"one\\""}'
    assert (second.content_type, second.body) == ("text/event-stream", b'data: "two"\n\n')
    assert [(session, body) for session, _, body, _ in seen] == [("", '"one"'), ("s1", '"two"')]
    assert seen[0][1] == url.split("/")[2]
    assert seen[0][3] == seen[1][3], "both requests came over the same connection"


async def test_a_second_request_before_the_reply_is_refused() -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    runner, url = await serve(slow)
    try:
        link = HttpLink(url, {})
        await link.connect()
        link.post(b"{}")
        with pytest.raises(RuntimeError, match="one request at a time"):
            link.post(b"{}")
        link.close()
        release.set()
    finally:
        await runner.cleanup()


async def test_a_server_that_closes_before_replying_fails_the_waiting_request() -> None:
    async def hang_up(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(1)
        return web.Response(text="never sent")

    runner, url = await serve(hang_up)
    try:
        link = HttpLink(url, {})
        await link.connect()
        with pytest.raises(ConnectionError, match="closed the connection"):
            await asyncio.wait_for(link.exchange(b"{}"), 5)
        assert link.closed
        with pytest.raises(ConnectionError, match="the connection is closed"):
            link.post(b"{}")
    finally:
        await runner.cleanup()


def test_only_plain_http_urls() -> None:
    with pytest.raises(ValueError, match="http:// URL"):
        HttpLink("https://127.0.0.1/mcp", {})
