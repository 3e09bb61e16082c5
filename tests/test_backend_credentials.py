"""Credentials toward backends: ``${file:...}``, secrets that are never shown, and OAuth client credentials
against a real token endpoint (tests/fixtures/oauth_server.py) and real backends that check every bearer
token with it (http_backend.py / ws_backend.py ``--require-bearer``)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy import config
from proxy.config import ClientCredentialsConfig, RemoteBackendConfig, StdioBackendConfig
from proxy.credentials import ClientCredentials, credentials_for
from proxy.errors import BackendUnavailable, ConfigError
from tests.conftest import OAUTH_CLIENT_SECRET, StartGateway, everything, listening_fixture
from tests.fixtures.oauth_server import OAuthServer
from tests.ports import free_port
from tests.rawclient import RawClient
from tests.test_aggregation import text_of
from tests.test_bidirectional import call

CLIENT_SECRET = OAUTH_CLIENT_SECRET
HEADER_SECRET = "hdr-51c0de-never-log-me"
ENV_SECRET = "env-9d2e11-never-log-me"


@asynccontextmanager
async def guarded(oauth: OAuthServer, label: str, script: str, *args: str) -> AsyncIterator[str]:
    """A fixture backend that lets through only bearer tokens ``oauth`` calls active; its checks are
    recorded under ``label``."""
    async with listening_fixture(script, *args, "--require-bearer", oauth.introspection_url(label)) as (
        url,
        _,
    ):
        yield url


def auth_block(oauth: OAuthServer, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """The ``auth`` of a backend entry; the secret comes from a file next to the config."""
    (tmp_path / "client_secret").write_text(CLIENT_SECRET + "\n")
    return {
        "type": "client_credentials",
        "token_url": oauth.token_url,
        "client_id": "portico",
        "client_secret": "${file:client_secret}",
        **extra,
    }


def load_text(tmp_path: Path, text: str) -> config.GatewayConfig:
    path = tmp_path / "portico.yaml"
    path.write_text(text)
    return config.load(path)


def assert_never_shown(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


# -- ${file:...} ------------------------------------------------------------------------------------------


def test_file_references_read_files_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("abc\n")
    (tmp_path / "two-newlines").write_text("x\n\n")
    absolute = tmp_path / "crlf"
    absolute.write_bytes(b"y\r\n")
    cfg = load_text(
        tmp_path,
        f"""\
mcpServers:
  a:
    command: x
    env: {{TWO: "${{file:two-newlines}}", CRLF: "${{file:{absolute}}}"}}
  r:
    url: http://127.0.0.1:9/mcp
    headers: {{Authorization: "Bearer ${{file:secrets/token}}"}}
""",
    )
    a, r = cfg.mcpServers["a"], cfg.mcpServers["r"]
    assert isinstance(a, StdioBackendConfig) and isinstance(r, RemoteBackendConfig)
    assert r.headers == {"Authorization": "Bearer abc"}
    # Exactly one trailing newline goes.
    assert a.env == {"TWO": "x\n", "CRLF": "y"}


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (None, "No such file or directory"),
        (b"\xff\xfe not text", "is not UTF-8 text"),
        (b"A" * (64 * 1024 + 1), "is larger than"),
    ],
)
def test_an_unusable_secret_file_is_a_config_error_naming_key_and_file(
    tmp_path: Path, write: bytes | None, expected: str
) -> None:
    secret_file = tmp_path / "missing-secret"
    if write is not None:
        secret_file.write_bytes(write)
    with pytest.raises(ConfigError) as caught:
        load_text(
            tmp_path,
            "mcpServers:\n  r:\n    url: http://127.0.0.1:9/mcp\n"
            "    headers: {X-Key: '${file:missing-secret}'}\n",
        )
    message = caught.value.message
    assert "mcpServers.r.headers.X-Key" in message
    assert str(secret_file) in message
    assert expected in message
    assert "AAAA" not in message and "not text" not in message


# -- never shown ------------------------------------------------------------------------------------------


def secret_config(tmp_path: Path) -> Path:
    (tmp_path / "client_secret").write_text(CLIENT_SECRET + "\n")
    settings = {
        "mcpServers": {
            "local": {"command": "server", "env": {"API_KEY": ENV_SECRET}},
            "plain": {"url": "https://mcp.example.com/mcp", "headers": {"X-Api-Key": HEADER_SECRET}},
            "oauth": {
                "url": "wss://mcp.example.com/mcp",
                "auth": {
                    "type": "client_credentials",
                    "token_url": "https://idp.example.com/oauth/token",
                    "client_id": "portico",
                    "client_secret": "${file:client_secret}",
                },
            },
        }
    }
    path = tmp_path / "portico.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_repr_str_and_json_dump_of_the_config_mask_secrets(tmp_path: Path) -> None:
    cfg = config.load(secret_config(tmp_path))
    dumps = [backend.model_dump_json() for backend in cfg.mcpServers.values()]
    for shown in (repr(cfg), str(cfg), repr(cfg.mcpServers), *dumps):
        assert_never_shown(shown, CLIENT_SECRET, HEADER_SECRET, ENV_SECRET)
        assert config.SECRET_MASK in shown
    # Masked only when shown: the values themselves are intact.
    local, plain, oauth = cfg.mcpServers["local"], cfg.mcpServers["plain"], cfg.mcpServers["oauth"]
    assert isinstance(local, StdioBackendConfig) and local.env == {"API_KEY": ENV_SECRET}
    assert isinstance(plain, RemoteBackendConfig) and plain.headers["X-Api-Key"] == HEADER_SECRET
    assert isinstance(oauth, RemoteBackendConfig) and oauth.auth is not None
    assert oauth.auth.client_secret == CLIENT_SECRET and oauth.auth.scope is None


def test_portico_check_names_headers_env_and_auth_but_shows_no_value(tmp_path: Path) -> None:
    path = secret_config(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "env: API_KEY" in done.stdout
    assert "headers: X-Api-Key" in done.stdout
    assert "auth: client_credentials at https://idp.example.com/oauth/token" in done.stdout
    assert_never_shown(done.stdout + done.stderr, CLIENT_SECRET, HEADER_SECRET, ENV_SECRET)


AUTH = {"type": "client_credentials", "token_url": "https://idp/t", "client_id": "c", "client_secret": "s"}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"headers": {"X-Key": "${file:two-lines}"}}, "mcpServers.r.headers: the value of header 'X-Key'"),
        (
            {"headers": {"authorization": f"Bearer {HEADER_SECRET}"}, "auth": AUTH},
            "mcpServers.r: auth and headers.Authorization both set",
        ),
        ({"auth": {**AUTH, "client_secret": ""}}, "mcpServers.r.auth.client_secret: client_secret is empty"),
        ({"auth": {**AUTH, "token_url": "ftp://idp/t"}}, "mcpServers.r.auth.token_url: token_url needs"),
        ({"auth": {**AUTH, "type": "password"}}, "mcpServers.r.auth.type"),
        ({"auth": {**AUTH, "client_secret": [HEADER_SECRET]}}, "mcpServers.r.auth.client_secret"),
    ],
)
def test_validation_errors_never_echo_secret_values(
    tmp_path: Path, entry: dict[str, Any], expected: str
) -> None:
    (tmp_path / "two-lines").write_text(f"{HEADER_SECRET}\nsecond line\n")
    path = tmp_path / "portico.yaml"
    path.write_text(yaml.safe_dump({"mcpServers": {"r": {"url": "http://127.0.0.1:9/mcp", **entry}}}))
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert expected in caught.value.message
    assert_never_shown(caught.value.message, HEADER_SECRET, "second line")


async def test_backends_that_fail_to_start_log_no_secret(
    start_gateway: StartGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    closed_port = free_port()
    (tmp_path / "client_secret").write_text(CLIENT_SECRET)
    gw = await start_gateway(
        {
            "mcpServers": {
                "dies": {
                    "command": sys.executable,
                    "args": ["-c", "import sys; sys.exit(3)"],
                    "env": {"API_KEY": ENV_SECRET},
                },
                "unreachable": {
                    "url": f"http://127.0.0.1:{closed_port}/mcp",
                    "headers": {"Authorization": f"Bearer {HEADER_SECRET}"},
                },
                "no-token": {
                    "url": f"ws://127.0.0.1:{closed_port}/mcp",
                    "auth": {
                        "type": "client_credentials",
                        "token_url": f"http://127.0.0.1:{closed_port}/token",
                        "client_id": "portico",
                        "client_secret": "${file:client_secret}",
                    },
                },
                "local": everything(),
            }
        }
    )
    client = await gw.client()
    assert text_of(await client.call("tools/call", call("local_echo", text="still here"))) == "still here"
    failures = [r.getMessage() for r in caplog.records if "failed to start" in r.getMessage()]
    assert len(failures) == 3, failures
    assert any("token endpoint" in f and "unreachable" in f for f in failures), failures
    assert_never_shown(caplog.text, CLIENT_SECRET, HEADER_SECRET, ENV_SECRET)


# -- client credentials, end to end ----------------------------------------------------------------------


async def test_every_remote_transport_sends_the_bearer_token(
    start_gateway: StartGateway, oauth: OAuthServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    extra = {"scope": "mcp:read mcp:write", "resource": "https://mcp.example.com/mcp"}
    async with (
        guarded(oauth, "http", "http_backend.py", "--transport", "streamable-http") as http_url,
        guarded(oauth, "sse", "http_backend.py", "--transport", "sse") as sse_url,
        guarded(oauth, "ws", "ws_backend.py") as ws_url,
    ):
        backends = {
            "h": {"url": http_url, "era": "legacy"},
            "s": {"url": sse_url, "type": "sse"},
            "w": {"url": ws_url, "era": "legacy"},
        }
        gw = await start_gateway(
            {
                "mcpServers": {
                    n: {**b, "auth": auth_block(oauth, tmp_path, **extra)} for n, b in backends.items()
                }
            }
        )
        client = await gw.client()
        for name in backends:
            reply = await client.call("tools/call", call(f"{name}_echo", text=f"via {name}"))
            assert text_of(reply) == f"via {name}"
    # One token per backend, fetched once and presented with every request to it.
    assert len(oauth.token_requests) == 3
    for label in ("http", "sse", "ws"):
        assert len(oauth.accepted_tokens(label)) == 1, label
        assert oauth.refused(label) == [], label
    basics = [r.authorization or "" for r in oauth.token_requests]
    assert all(basic.startswith("Basic ") for basic in basics)
    assert all(r.form == {"grant_type": "client_credentials", **extra} for r in oauth.token_requests)
    assert "got an access token" in caplog.text
    assert_never_shown(caplog.text, CLIENT_SECRET, *oauth.issued, *(b.removeprefix("Basic ") for b in basics))


async def test_tokens_are_refreshed_before_they_expire(
    start_gateway: StartGateway, oauth: OAuthServer, tmp_path: Path
) -> None:
    # Tokens are said to live 2 s but the backend refuses them after 1.5 s (clocks and caches differ
    # between servers, which is why tokens are replaced early): a token used late shows up as refused.
    oauth.expires_in, oauth.lifetime = 2.0, 1.5
    async with guarded(oauth, "http", "http_backend.py", "--transport", "streamable-http") as url:
        gw = await start_gateway(
            {"mcpServers": {"h": {"url": url, "era": "legacy", "auth": auth_block(oauth, tmp_path)}}}
        )
        client = await gw.client()
        async with asyncio.timeout(60):
            while len(oauth.issued) < 4:
                assert text_of(await client.call("tools/call", call("h_echo", text="x"))) == "x"
                await asyncio.sleep(0.05)
    assert oauth.refused("http") == []
    assert len(oauth.accepted_tokens("http")) >= 3


FIXTURE_ARGS = {
    "streamable-http": ("http_backend.py", "--transport", "streamable-http"),
    "sse": ("http_backend.py", "--transport", "sse"),
    "websocket": ("ws_backend.py",),
}


@pytest.mark.parametrize("transport", list(FIXTURE_ARGS))
async def test_a_refused_token_is_replaced_once_and_the_request_retried_once(
    start_gateway: StartGateway, oauth: OAuthServer, tmp_path: Path, transport: str
) -> None:
    async with guarded(oauth, "b", *FIXTURE_ARGS[transport]) as url:
        remote = {"url": url, "type": transport, "era": "legacy", "session": "per-client"}
        gw = await start_gateway({"mcpServers": {"r": {**remote, "auth": auth_block(oauth, tmp_path)}}})
        client = await gw.client()
        assert text_of(await client.call("tools/call", call("r_echo", text="first"))) == "first"
        assert len(oauth.token_requests) == 1

        async def caller() -> RawClient:
            # HTTP presents the token with every request; a WebSocket only when it opens, so a new
            # client (with a link of its own) is what meets the refusal there.
            return await gw.client() if transport == "websocket" else client

        # The backend's side forgets every token (a revocation, a restarted identity provider).
        oauth.revoke_all()
        assert text_of(await (await caller()).call("tools/call", call("r_echo", text="again"))) == "again"
        assert len(oauth.token_requests) == 2
        assert len(oauth.refused("b")) == 1

        # A backend that refuses even a fresh token: one more token and one retry, then a clear error.
        oauth.lifetime = 0.0
        oauth.revoke_all()
        reply = await (await caller()).request("tools/call", call("r_echo", text="refused"))
    assert reply["error"]["code"] == -32050
    assert "the backend refused the gateway's credentials (HTTP 401)" in reply["error"]["message"]
    assert len(oauth.token_requests) == 3
    assert len(oauth.refused("b")) == 3


async def test_concurrent_requests_refused_together_share_one_new_token(
    start_gateway: StartGateway, oauth: OAuthServer, tmp_path: Path
) -> None:
    async with guarded(oauth, "http", "http_backend.py", "--transport", "streamable-http") as url:
        gw = await start_gateway(
            {"mcpServers": {"h": {"url": url, "era": "legacy", "auth": auth_block(oauth, tmp_path)}}}
        )
        clients = [await gw.client() for _ in range(4)]
        oauth.revoke_all()
        replies = await asyncio.gather(
            *(c.call("tools/call", call("h_echo", text=str(i))) for i, c in enumerate(clients * 3))
        )
    assert [text_of(r) for r in replies] == [str(i) for i in range(12)]
    assert len(oauth.token_requests) == 2


@pytest.mark.parametrize("transport", ["streamable-http", "websocket"])
async def test_a_failing_token_endpoint_gives_a_clear_error_while_other_backends_serve(
    start_gateway: StartGateway,
    oauth: OAuthServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    transport: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    script = ("ws_backend.py",) if transport == "websocket" else ("http_backend.py", "--transport", transport)
    async with guarded(oauth, "b", *script) as url:
        # Per client: a WebSocket presents its token once, when it opens; each client opens its own.
        remote = {"url": url, "era": "legacy", "session": "per-client", "auth": auth_block(oauth, tmp_path)}
        gw = await start_gateway({"mcpServers": {"r": remote, "local": everything()}})
        client = await gw.client()
        assert text_of(await client.call("tools/call", call("r_echo", text="up"))) == "up"
        oauth.fail_with = 503
        oauth.revoke_all()
        late = await gw.client()
        reply = await late.request("tools/call", call("r_echo", text="no token"))
        assert text_of(await late.call("tools/call", call("local_echo", text="fine"))) == "fine"
        oauth.fail_with = None
        assert text_of(await (await gw.client()).call("tools/call", call("r_echo", text="back"))) == "back"
    assert reply["error"]["code"] == -32050
    message = reply["error"]["message"]
    assert f"the token endpoint {oauth.token_url} answered HTTP 503 (temporarily_unavailable)" in message
    assert_never_shown(str(reply), CLIENT_SECRET, *oauth.issued)
    assert_never_shown(caplog.text, CLIENT_SECRET, *oauth.issued)


# -- the provider on its own, against the real token endpoint ---------------------------------------------


class Clock:
    """A monotonic clock the test moves by hand, so refresh times are checked without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def provider(oauth: OAuthServer, clock: Clock, **extra: Any) -> AsyncIterator[ClientCredentials]:
    auth = ClientCredentialsConfig.model_validate(
        {
            "type": "client_credentials",
            "token_url": oauth.token_url,
            "client_id": "portico",
            "client_secret": CLIENT_SECRET,
            **extra,
        }
    )
    async with aiohttp.ClientSession() as http:
        yield ClientCredentials("b", auth, http, {"X-Static": "yes"}, clock=clock)


async def token_of(credentials: ClientCredentials) -> str:
    headers = await credentials.headers(None)
    assert headers["X-Static"] == "yes"
    return headers["Authorization"].removeprefix("Bearer ")


@pytest.mark.parametrize(
    ("expires_in", "stale_after"),
    [(3600.0, 2880.0), (100.0, 50.0), (130.0, 70.0), (2.0, 1.0), (None, 240.0), ("120", 60.0)],
)
async def test_a_token_is_replaced_at_80_percent_or_60_s_before_expiry(
    oauth: OAuthServer, expires_in: Any, stale_after: float
) -> None:
    oauth.expires_in = expires_in
    clock = Clock()
    async with provider(oauth, clock) as credentials:
        first = await token_of(credentials)
        clock.now += stale_after - 0.01
        assert await token_of(credentials) == first
        assert len(oauth.token_requests) == 1
        clock.now += 0.02
        assert await token_of(credentials) != first
        assert len(oauth.token_requests) == 2


async def test_concurrent_callers_share_one_token_request(oauth: OAuthServer) -> None:
    oauth.hold = asyncio.Event()
    async with provider(oauth, Clock()) as credentials:
        callers = asyncio.gather(*(token_of(credentials) for _ in range(20)))
        await oauth.wait_for_token_requests(1)
        oauth.hold.set()
        tokens = await callers
    assert set(tokens) == {oauth.issued[0]}
    assert len(oauth.token_requests) == 1


async def test_a_failed_refresh_keeps_the_current_token_until_it_expires(oauth: OAuthServer) -> None:
    oauth.expires_in = 100.0
    clock = Clock()
    async with provider(oauth, clock) as credentials:
        first = await token_of(credentials)
        oauth.fail_with = 500
        clock.now += 60.0  # past the refresh time, before the expiry
        assert await token_of(credentials) == first
        assert len(oauth.token_requests) == 2
        clock.now += 4.0  # the endpoint is not asked again at once
        assert await token_of(credentials) == first
        assert len(oauth.token_requests) == 2
        clock.now += 2.0
        assert await token_of(credentials) == first
        assert len(oauth.token_requests) == 3
        clock.now += 34.0  # expired
        with pytest.raises(BackendUnavailable) as caught:
            await token_of(credentials)
    assert (
        caught.value.message
        == f"backend 'b': the token endpoint {oauth.token_url} answered HTTP 500 (temporarily_unavailable)"
    )
    assert len(oauth.token_requests) == 4


async def test_client_secret_post_and_audience_go_in_the_form(oauth: OAuthServer) -> None:
    async with provider(
        oauth, Clock(), auth_method="client_secret_post", audience="api://mcp"
    ) as credentials:
        await token_of(credentials)
    (request,) = oauth.token_requests
    assert request.authorization is None
    assert request.form == {
        "grant_type": "client_credentials",
        "audience": "api://mcp",
        "client_id": "portico",
        "client_secret": CLIENT_SECRET,
    }


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {"error": "invalid_client"}, "answered HTTP 401 (invalid_client)"),
        (200, {"token_type": "Bearer"}, "without a usable access_token"),
        (200, {"access_token": "t", "token_type": "DPoP"}, "token of type 'DPoP'"),
    ],
)
async def test_a_bad_token_answer_is_a_clear_backend_error(
    oauth: OAuthServer, status: int, body: dict[str, Any], expected: str
) -> None:
    bad = "wrong" if status == 401 else CLIENT_SECRET
    async with provider(oauth, Clock(), client_secret=bad) as credentials:
        if status == 200:
            oauth.answer = body
        with pytest.raises(BackendUnavailable) as caught:
            await token_of(credentials)
    assert expected in caught.value.message
    assert_never_shown(caught.value.message, CLIENT_SECRET, "wrong")


async def test_connections_to_one_backend_share_one_provider(oauth: OAuthServer) -> None:
    backend = RemoteBackendConfig.model_validate({"url": "http://127.0.0.1:9/mcp", "auth": AUTH})
    async with aiohttp.ClientSession() as http, aiohttp.ClientSession() as other:
        assert credentials_for("b", backend, http) is credentials_for("b", backend, http)
        assert credentials_for("b", backend, other) is not credentials_for("b", backend, http)
