"""Authentication and authorization through a real gateway, on every client transport.

JWTs are minted here with pyjwt and a shared HS256 secret (the matrix of key types and attacks at the
verifier's own level is in tests/test_auth_jwt.py); what these tests prove is what only a running
gateway can show: a refused client never gets a session and the backend never hears of it, a session
ends with its token, a revoked gateway token stops an open session, the client's credential never
reaches a backend, and a denied caller can neither call nor see a tool.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from yarl import URL

from tests.conftest import RunningGateway, StartGateway, fixture_server
from tests.fixtures.oauth_server import OAuthServer
from tests.rawclient import RawClient, RpcError
from tests.test_backend_credentials import auth_block, guarded
from tests.test_http_transport import POST_HEADERS, Endpoint, initialize_params, request, tool_call
from tests.test_modern_era import modern_post
from tests.test_modern_era import request as modern_request

SECRET = "an HS256 secret that is long enough to be accepted, 0123456789"
ISSUER = "https://idp.example.test"
ROOT = Path(__file__).resolve().parent.parent


def token(sub: str = "alice", *, roles: list[str] | None = None, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "iss": ISSUER, "aud": claims.pop("aud", "RESOURCE"), "iat": now}
    payload["exp"] = claims.pop("exp", now + 600)
    if roles is not None:
        payload["roles"] = roles
    payload.update(claims)
    return jwt.encode(payload, SECRET, algorithm="HS256")


class Secured:
    """A gateway with the auth plugin (and optionally policy) in front of a recording stdio backend."""

    def __init__(self, gw: RunningGateway, record: Path, http_clients: list[aiohttp.ClientSession]) -> None:
        self.gw = gw
        self.record = record
        self._http_clients = http_clients
        self.resource = str(gw.server.make_url("/mcp"))
        self.ws_url = self.resource.replace("http://", "ws://")

    def jwt(self, sub: str = "alice", **claims: Any) -> str:
        claims.setdefault("aud", self.resource)
        return token(sub, **claims)

    def backend_lines(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]

    def calls_reaching_backend(self) -> list[str]:
        return [m["method"] for m in self.backend_lines() if m.get("method") == "tools/call"]

    async def ws(self, bearer: str | None, **kwargs: Any) -> RawClient:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        client = await RawClient.connect(self.gw.http, self.ws_url, headers=headers, **kwargs)
        self.gw.clients.append(client)
        await client.initialize()
        return client

    def http(self, bearer: str | None) -> Endpoint:
        """The /mcp endpoint through an HTTP client that sends ``bearer`` with every request."""
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        http = aiohttp.ClientSession(headers=headers)
        self._http_clients.append(http)
        return Endpoint(http, URL(self.resource))


def auth_options(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "issuers": [{"issuer": ISSUER, "secret": SECRET}],
        "authorization_servers": [ISSUER],
        "scopes_supported": ["mcp"],
        "leeway_seconds": 0,
        "token_store": str(tmp_path / "tokens.sqlite"),
        **extra,
    }


SecureGateway = Callable[..., Awaitable[Secured]]


@pytest.fixture
async def secured(start_gateway: StartGateway, tmp_path: Path) -> AsyncIterator[SecureGateway]:
    """Start a gateway whose chain is auth (with these options) and, if given, policy."""
    http_clients: list[aiohttp.ClientSession] = []

    async def start(*, policy: dict[str, Any] | None = None, **options: Any) -> Secured:
        record = tmp_path / "backend-received.jsonl"
        options.setdefault("role_prefix", "role:")
        plugins: list[Any] = [{"name": "auth", "options": auth_options(tmp_path, **options)}]
        if policy is not None:
            plugins.append({"name": "policy", "options": policy})
        backend = fixture_server("legacy_only_server.py", env={"RECORD_TO": str(record)})
        gw = await start_gateway({"mcpServers": {"legacy": backend}, "plugins": plugins})
        return Secured(gw, record, http_clients)

    yield start
    for http in http_clients:
        await http.close()


# -- refusals at the edge ----------------------------------------------------------------------------------


class RsaIssuer:
    """A second, RS256 issuer whose keys the gateway fetches from a real JWKS endpoint (counted)."""

    name = "https://rsa-idp.example.test"

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.fetches = 0
        self.server: TestServer | None = None

    async def _jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        jwk = {
            **json.loads(RSAAlgorithm.to_jwk(self.key.public_key())),
            "kid": "k1",
            "alg": "RS256",
            "use": "sig",
        }
        return web.json_response({"keys": [jwk]})

    @property
    def jwks_url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/jwks"))

    def sign(self, claims: dict[str, Any], kid: str = "k1", key: rsa.RSAPrivateKey | None = None) -> str:
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
async def rsa_issuer() -> AsyncIterator[RsaIssuer]:
    issuer = RsaIssuer()
    app = web.Application()
    app.router.add_get("/jwks", issuer._jwks)
    issuer.server = TestServer(app, host="127.0.0.1", port=0)
    await issuer.server.start_server()
    yield issuer
    await issuer.server.close()


def hs256_signed_with(secret: bytes, claims: dict[str, Any]) -> str:
    """An HS256 token made by hand: pyjwt itself refuses to use a public key as an HMAC secret."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def bad_tokens(s: Secured, rsa_issuer: RsaIssuer) -> dict[str, str]:
    now = int(time.time())
    good = s.jwt()
    header, payload, signature = good.split(".")
    rsa_claims = {"sub": "mallory", "iss": rsa_issuer.name, "aud": s.resource, "exp": now + 600}
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "HS/RS key confusion": hs256_signed_with(rsa_issuer.public_pem, rsa_claims),
        "unknown kid": rsa_issuer.sign(rsa_claims, kid="k-unknown", key=stranger),
        "missing aud": jwt.encode({"sub": "alice", "iss": ISSUER, "exp": now + 600}, SECRET, "HS256"),
        "missing iss": jwt.encode({"sub": "alice", "aud": s.resource, "exp": now + 600}, SECRET, "HS256"),
        "alg none": jwt.encode(
            {"sub": "alice", "iss": ISSUER, "aud": s.resource, "exp": now + 600}, None, "none"
        ),
        "expired": s.jwt(exp=now - 60),
        "not yet valid": s.jwt(nbf=now + 600),
        "wrong audience": s.jwt(aud="https://other.example.test/mcp"),
        "wrong issuer": jwt.encode(
            {"sub": "a", "iss": "https://evil.test", "aud": s.resource, "exp": now + 600}, SECRET, "HS256"
        ),
        "missing exp": jwt.encode({"sub": "alice", "iss": ISSUER, "aud": s.resource}, SECRET, "HS256"),
        "bad signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        # About 8 KB: under aiohttp's 8190-byte header line (beyond it aiohttp itself answers 400).
        "8 KB token": s.jwt(padding="x" * 5800),
        "garbage": "not-a-token",
    }


async def test_every_bad_token_gets_401_with_a_challenge_and_reaches_no_backend(
    secured: SecureGateway, rsa_issuer: RsaIssuer
) -> None:
    s = await secured(
        issuers=[
            {"issuer": ISSUER, "secret": SECRET},
            {"issuer": rsa_issuer.name, "jwks_url": rsa_issuer.jwks_url},
        ]
    )
    # The RS256 issuer works: its own token, signed with its key, is served.
    rs256 = rsa_issuer.sign(
        {"sub": "rita", "iss": rsa_issuer.name, "aud": s.resource, "exp": int(time.time()) + 600}
    )
    assert (await s.http(rs256).post(request("initialize", initialize_params()))).status == 200
    before = len(s.backend_lines())
    tokens = bad_tokens(s, rsa_issuer)
    assert 7800 < len(tokens["8 KB token"]) < 8150
    for what, bad in {**tokens, "no token": ""}.items():
        endpoint = s.http(bad or None)
        response = await endpoint.post(request("initialize", initialize_params()))
        assert response.status == 401, what
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ") and "resource_metadata=" in challenge, what
        if bad:
            assert 'error="invalid_token"' in challenge or 'error="invalid_request"' in challenge, what
        body = await response.json()
        assert body["error"]["code"] == -32061 and body["id"] is None, what
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.ws(bad or None)
        assert refused.value.status == 401, what
    # Nothing at all reached the backend after its own start-up handshake.
    assert len(s.backend_lines()) == before
    assert len(s.gw.gateway.sessions) == 1  # the RS256 client's, and no other
    # Unknown kids made the gateway look at the JWKS again at most once (the first fetch, one refetch).
    assert rsa_issuer.fetches <= 2


async def test_a_good_token_is_served_on_websocket_http_and_sse(secured: SecureGateway) -> None:
    s = await secured()
    client = await s.ws(s.jwt())
    reply = await client.call("tools/call", {"name": "legacy_echo", "arguments": {"text": "over ws"}})
    assert reply["content"][0]["text"] == "over ws"
    endpoint = s.http(s.jwt())
    session = await endpoint.open_session()
    _, reply = await endpoint.call(session, tool_call("legacy_echo", request_id=2, text="over http"))
    assert reply["result"]["content"][0]["text"] == "over http"
    # The legacy HTTP+SSE transport authenticates its stream and every POST.
    sse = await s.http(s.jwt()).http.get(
        s.gw.server.make_url("/sse"), headers={"Accept": "text/event-stream"}
    )
    assert sse.status == 200
    sse.close()
    refused = await s.http(None).http.get(
        s.gw.server.make_url("/sse"), headers={"Accept": "text/event-stream"}
    )
    assert refused.status == 401


async def test_the_protected_resource_metadata_names_the_authorization_servers(
    secured: SecureGateway,
) -> None:
    s = await secured()
    response = await s.http(None).post(request("initialize", initialize_params()))
    challenge = response.headers["WWW-Authenticate"]
    metadata_url = challenge.split('resource_metadata="', 1)[1].split('"', 1)[0]
    assert URL(metadata_url).path == "/.well-known/oauth-protected-resource/mcp"
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        document = await (await s.gw.http.get(s.gw.server.make_url(path))).json()
        assert document["resource"] == s.resource
        assert document["authorization_servers"] == [ISSUER]
        assert "offline_access" not in document.get("scopes_supported", [])


async def test_a_token_in_the_query_string_is_refused(secured: SecureGateway) -> None:
    s = await secured()
    good = s.jwt()
    url = URL(s.resource).with_query(access_token=good)
    response = await s.gw.http.post(
        url, data=json.dumps(request("initialize", initialize_params())), headers=POST_HEADERS
    )
    assert response.status == 401
    assert 'error="invalid_request"' in response.headers["WWW-Authenticate"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await RawClient.connect(s.gw.http, str(URL(s.ws_url).with_query(access_token=good)))
    assert refused.value.status == 401


async def test_a_missing_scope_is_403_insufficient_scope(secured: SecureGateway) -> None:
    s = await secured(required_scopes=["mcp"])
    response = await s.http(s.jwt(scope="other")).post(request("initialize", initialize_params()))
    assert response.status == 403
    challenge = response.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="mcp"' in challenge
    ok = await s.http(s.jwt(scope="mcp other")).post(request("initialize", initialize_params()))
    assert ok.status == 200


# -- the browser way, expiry and revocation on open sessions ---------------------------------------------


async def test_a_browser_passes_its_token_as_a_subprotocol_and_gets_mcp_back(secured: SecureGateway) -> None:
    s = await secured()
    ws = await s.gw.http.ws_connect(s.ws_url, protocols=("mcp", f"portico.bearer.{s.jwt()}"))
    try:
        assert ws.protocol == "mcp"  # the token is never echoed back
        client = RawClient(ws)
        s.gw.clients.append(client)
        await client.initialize()
        tools = await client.list_all("tools/list", "tools")
        assert "legacy_echo" in {t["name"] for t in tools}
    finally:
        await ws.close()


async def test_a_websocket_session_ends_when_its_token_expires(secured: SecureGateway) -> None:
    s = await secured()
    client = await s.ws(s.jwt(exp=int(time.time()) + 3))
    assert (await client.call("tools/call", {"name": "legacy_echo", "arguments": {"text": "x"}}))["content"]
    async with asyncio.timeout(10):
        await client._reader
    assert client.ws.closed
    assert client.ws.close_code == 1008
    assert not s.gw.gateway.sessions


def portico(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def test_a_revoked_gateway_token_stops_an_open_session_on_its_next_message(
    secured: SecureGateway, tmp_path: Path
) -> None:
    s = await secured()
    config_file = next(tmp_path.glob("portico-*.yaml"))
    created = portico("token", "create", "--user", "carol", "--config", str(config_file), cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    secret = next(word for word in created.stdout.split() if word.startswith("ptc_"))
    token_id = secret.split("_")[2]
    client = await s.ws(secret)
    assert (await client.call("tools/call", {"name": "legacy_echo", "arguments": {"text": "x"}}))["content"]
    calls = len(s.calls_reaching_backend())
    revoked = portico("token", "revoke", token_id, "--config", str(config_file), cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(RpcError) as refused:
        await client.call("tools/call", {"name": "legacy_echo", "arguments": {"text": "after"}})
    assert refused.value.code == -32061 and "revoked" in refused.value.error["message"]
    assert len(s.calls_reaching_backend()) == calls
    async with asyncio.timeout(10):
        await client._reader
    assert client.ws.close_code == 1008
    response = await s.http(secret).post(request("initialize", initialize_params()))
    assert response.status == 401


# -- no passthrough, session binding, accounts ------------------------------------------------------------


async def test_the_clients_token_never_reaches_the_backend(secured: SecureGateway) -> None:
    s = await secured()
    bearer = s.jwt()
    client = await s.ws(bearer)
    await client.call("tools/call", {"name": "legacy_echo", "arguments": {"text": "hello"}})
    endpoint = s.http(bearer)
    session = await endpoint.open_session()
    await endpoint.call(session, tool_call("legacy_echo", request_id=5, text="again"))
    received = s.record.read_text()
    assert "hello" in received and "again" in received
    assert bearer not in received and bearer.split(".")[1] not in received


async def test_an_http_session_belongs_to_the_subject_that_opened_it(secured: SecureGateway) -> None:
    s = await secured()
    alice = s.http(s.jwt("alice"))
    session = await alice.open_session()
    assert await s.http(s.jwt("bob")).status_of(session) == 404
    # The same subject with a fresh token carries on.
    assert await s.http(s.jwt("alice", jti="second")).status_of(session) == 200


async def test_a_virtual_account_token_reaches_only_its_backends(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    record = tmp_path / "received.jsonl"
    gw = await start_gateway(
        {
            "mcpServers": {
                "one": fixture_server("legacy_only_server.py", env={"RECORD_TO": str(record)}),
                "two": fixture_server("legacy_only_server.py"),
            },
            "plugins": [{"name": "auth", "options": auth_options(tmp_path)}],
        }
    )
    config_file = next(tmp_path.glob("portico-*.yaml"))
    created = portico(
        "token",
        "create",
        "--account",
        "ci-bot",
        "--backends",
        "two",
        "--config",
        str(config_file),
        cwd=tmp_path,
    )
    assert created.returncode == 0, created.stderr
    secret = next(word for word in created.stdout.split() if word.startswith("ptc_"))
    client = await RawClient.connect(gw.http, gw.url, headers={"Authorization": f"Bearer {secret}"})
    gw.clients.append(client)
    await client.initialize()
    tools = {t["name"] for t in await client.list_all("tools/list", "tools")}
    assert tools == {"two_echo", "two_stats"}
    with pytest.raises(RpcError) as refused:
        await client.call("tools/call", {"name": "one_echo", "arguments": {"text": "x"}})
    assert refused.value.code == -32602
    assert '"tools/call"' not in record.read_text()


# -- policy ------------------------------------------------------------------------------------------------

POLICY_CSV = """\
p, role:reader, legacy/tool/echo, tools/call, allow
p, role:admin, legacy/*, *, allow
"""

MODEL = ROOT / "policies" / "rbac_model.conf"


@pytest.fixture
def policy_files(tmp_path: Path) -> dict[str, Any]:
    csv = tmp_path / "policy.csv"
    csv.write_text(POLICY_CSV)
    return {"model": str(MODEL), "policy": str(csv)}


async def test_a_denied_caller_can_neither_call_nor_see_a_tool_on_websocket_and_http(
    secured: SecureGateway, policy_files: dict[str, Any]
) -> None:
    s = await secured(policy=policy_files)
    reader = s.jwt("rita", roles=["reader"])
    calls = len(s.calls_reaching_backend())
    client = await s.ws(reader)
    assert {t["name"] for t in await client.list_all("tools/list", "tools")} == {"legacy_echo"}
    with pytest.raises(RpcError) as denied:
        await client.call("tools/call", {"name": "legacy_stats", "arguments": {}})
    assert denied.value.code == -32063
    message = denied.value.error["message"]
    assert "rita" in message and "legacy/tool/stats" in message and "tools/call" in message
    endpoint = s.http(reader)
    session = await endpoint.open_session()
    _, listed = await endpoint.call(session, request("tools/list", {}, 2))
    assert {t["name"] for t in listed["result"]["tools"]} == {"legacy_echo"}
    _, refused = await endpoint.call(session, tool_call("legacy_stats", request_id=3))
    assert refused["error"]["code"] == -32063
    assert len(s.calls_reaching_backend()) == calls  # denials cost the backend nothing
    admin = await s.ws(s.jwt("ada", roles=["admin"]))
    assert {t["name"] for t in await admin.list_all("tools/list", "tools")} == {"legacy_echo", "legacy_stats"}
    assert (await admin.call("tools/call", {"name": "legacy_stats", "arguments": {}}))["content"]


async def test_the_clients_token_reaches_no_backend_on_any_backend_transport(
    start_gateway: StartGateway, oauth: OAuthServer, tmp_path: Path
) -> None:
    """Each remote backend lets through only tokens its authorization server issued (it asks by
    introspection, and every token it was shown is recorded): the gateway presents its own, and the
    client's JWT is never among them; the stdio backend's record of everything it read lacks it too."""
    record = tmp_path / "stdio-received.jsonl"
    async with (
        guarded(oauth, "http", "http_backend.py", "--transport", "streamable-http") as http_url,
        guarded(oauth, "sse", "http_backend.py", "--transport", "sse") as sse_url,
        guarded(oauth, "ws", "ws_backend.py") as ws_url,
    ):
        remote = {"h": {"url": http_url}, "s": {"url": sse_url, "type": "sse"}, "w": {"url": ws_url}}
        backends: dict[str, Any] = {
            name: {**entry, "era": "legacy", "auth": auth_block(oauth, tmp_path)}
            for name, entry in remote.items()
        }
        backends["o"] = fixture_server("legacy_only_server.py", env={"RECORD_TO": str(record)})
        gw = await start_gateway(
            {"mcpServers": backends, "plugins": [{"name": "auth", "options": auth_options(tmp_path)}]}
        )
        bearer = token("alice", aud=str(gw.server.make_url("/mcp")))
        client = await RawClient.connect(gw.http, gw.url, headers={"Authorization": f"Bearer {bearer}"})
        gw.clients.append(client)
        await client.initialize()
        for name in ("h", "s", "w", "o"):
            reply = await client.call("tools/call", {"name": f"{name}_echo", "arguments": {"text": name}})
            assert reply["content"][0]["text"] == name
    for label in ("http", "sse", "ws"):
        shown = [seen.token for seen in oauth.seen[label]]
        assert shown and set(shown) <= set(oauth.issued), label
        assert bearer not in shown, label
    assert bearer not in record.read_text()


async def test_modern_stateless_requests_are_authenticated_and_filtered_each_time(
    secured: SecureGateway, policy_files: dict[str, Any]
) -> None:
    """A 2026-07-28 client has no session: every POST is authenticated on its own, and the policy filters
    and denies exactly as for a session."""
    s = await secured(policy=policy_files)
    url = URL(s.resource)
    listing = modern_request("tools/list", {})
    refused = await s.gw.http.post(url, json=listing, headers=modern_post(method="tools/list"))
    assert refused.status == 401 and "resource_metadata=" in refused.headers["WWW-Authenticate"]
    reader = {"Authorization": f"Bearer {s.jwt('rita', roles=['reader'])}"}
    listed = await s.gw.http.post(url, json=listing, headers={**modern_post(method="tools/list"), **reader})
    assert listed.status == 200
    assert {t["name"] for t in (await listed.json())["result"]["tools"]} == {"legacy_echo"}
    call = modern_request("tools/call", {"name": "legacy_stats", "arguments": {}})
    denied = await s.gw.http.post(url, json=call, headers={**modern_post("legacy_stats"), **reader})
    assert (await denied.json())["error"]["code"] == -32063
    assert s.calls_reaching_backend() == []
