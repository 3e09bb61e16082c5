"""The endpoint URL a request's credentials carry (a token's audience is checked against it) is the one
the client addressed, however many requests with other Hosts or targets came before."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request

from proxy.transports.authentication import credentials_of


def url_of(target: str, host: str | None) -> str:
    headers = {"Host": host} if host is not None else {}
    return credentials_of(make_mocked_request("POST", target, headers=headers), "streamable-http").url


def test_each_host_gets_its_own_url_even_after_others_were_seen() -> None:
    assert url_of("/mcp?token=x", "gw.example.com") == "http://gw.example.com/mcp"
    assert url_of("/mcp", "gw.example.com:8443") == "http://gw.example.com:8443/mcp"
    assert url_of("/mcp", "127.0.0.1:8765") == "http://127.0.0.1:8765/mcp"
    assert url_of("/mcp", "gw.example.com") == "http://gw.example.com/mcp"


def test_a_virtual_server_endpoint_keeps_its_path() -> None:
    request = make_mocked_request(
        "POST", "/servers/notes/mcp", headers={"Host": "gw.example.com"}, match_info={"server": "notes"}
    )
    assert credentials_of(request, "streamable-http").url == "http://gw.example.com/servers/notes/mcp"


def test_an_absolute_target_does_not_change_what_later_requests_get() -> None:
    # The absolute form names its own port; the same host without a port must not inherit it.
    assert url_of("http://127.0.0.5:9999/mcp", "127.0.0.5") == "http://127.0.0.5:9999/mcp"
    assert url_of("/mcp", "127.0.0.5") == "http://127.0.0.5/mcp"


def test_many_hosts_are_not_all_remembered() -> None:
    for number in range(2000):
        assert url_of("/mcp", f"host-{number}.example") == f"http://host-{number}.example/mcp"
    from proxy.transports import authentication

    assert authentication._url_of.cache_info().currsize <= 256


def test_query_and_subprotocols_are_still_read() -> None:
    request = make_mocked_request(
        "GET",
        "/mcp?access_token=abc",
        headers={"Host": "h", "Sec-WebSocket-Protocol": "mcp, bearer.tok"},
    )
    credentials = credentials_of(request, "websocket")
    assert dict(credentials.query) == {"access_token": "abc"}
    assert credentials.subprotocols == ("mcp", "bearer.tok")
    plain = credentials_of(make_mocked_request("GET", "/mcp", headers={"Host": "h"}), "websocket")
    assert (dict(plain.query), plain.subprotocols) == ({}, ())
