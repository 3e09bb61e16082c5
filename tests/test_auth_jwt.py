"""The auth plugin's JWT verification, attacked and used at the ``authenticate`` level.

Keys are generated with ``cryptography``; JWKS endpoints are real aiohttp servers on 127.0.0.1 that count
the requests they get (the issuer's, and an attacker's that must never be asked).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from plugins.auth import Auth, AuthOptions
from proxy.chain import Credentials, Principal
from proxy.errors import InsufficientScope, Unauthenticated

ISSUER = "https://issuer.example.com"
RESOURCE = "https://gw.example.com/mcp"
SECRET = "an-hs256-secret-that-is-long-enough-0123456789"

# -- helpers --------------------------------------------------------------------------------------------


def credentials(
    token: str | None = None,
    *,
    path: str = "/mcp",
    url: str | None = None,
    query: dict[str, str] | None = None,
    subprotocols: tuple[str, ...] = (),
    authorization: str | None = None,
) -> Credentials:
    """What a client presents; ``token`` becomes ``Authorization: Bearer <token>``."""
    if authorization is None and token is not None:
        authorization = f"Bearer {token}"
    return Credentials(
        transport="test",
        path=path,
        url=url or f"https://gw.example.com{path}",
        authorization=authorization,
        subprotocols=subprotocols,
        query=query or {},
        remote="127.0.0.1",
    )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"iss": ISSUER, "aud": RESOURCE, "sub": "alice", "exp": now + 600, "iat": now}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(payload))}.{b64(signature)}"


def hs256_with(secret: bytes, payload: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """An HS256 token signed by hand (pyjwt refuses to sign with a PEM key as an HMAC secret)."""
    head = b64(orjson.dumps(header or {"alg": "HS256", "typ": "JWT"}))
    body = b64(orjson.dumps(payload))
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def pem(public_key: Any) -> str:
    encoded: bytes = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return encoded.decode()


@dataclass
class KeyPair:
    algorithm: str
    private: Any
    kid: str

    @property
    def public(self) -> Any:
        return self.private.public_key()

    def jwk(self) -> dict[str, Any]:
        to_jwk: Any = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[self.algorithm]
        document: dict[str, Any] = to_jwk.to_jwk(self.public, as_dict=True)
        return {**document, "kid": self.kid, "use": "sig"}

    def sign(self, payload: dict[str, Any], **headers: Any) -> str:
        # Signed as raw JWS, so tests can send claims pyjwt would refuse to encode (a list as ``iss``).
        return jwt.api_jws.encode(
            orjson.dumps(payload),
            self.private,
            algorithm=self.algorithm,
            headers={"kid": self.kid, **headers},
        )


def generate(algorithm: str, kid: str) -> KeyPair:
    if algorithm == "RS256":
        return KeyPair(algorithm, rsa.generate_private_key(public_exponent=65537, key_size=2048), kid)
    if algorithm == "ES256":
        return KeyPair(algorithm, ec.generate_private_key(ec.SECP256R1()), kid)
    return KeyPair(algorithm, ed25519.Ed25519PrivateKey.generate(), kid)


@pytest.fixture(scope="module")
def rsa_key() -> KeyPair:
    return generate("RS256", "rsa-1")


@pytest.fixture(scope="module")
def attacker_key() -> KeyPair:
    return generate("RS256", "attacker-1")


@dataclass
class JwksServer:
    """A real JWKS endpoint that counts how often it is asked."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    url: str = ""
    status: int = 200
    # When set, each request waits for it (a slow issuer).
    release: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.release is not None:
            await self.release.wait()
        return web.json_response({"keys": self.keys}, status=self.status)


@pytest.fixture
async def jwks_factory() -> AsyncIterator[Callable[[], Any]]:
    servers: list[TestServer] = []

    async def start() -> JwksServer:
        state = JwksServer()
        app = web.Application()
        app.router.add_get("/jwks", state.handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        state.url = str(server.make_url("/jwks"))
        return state

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def jwks(jwks_factory: Callable[[], Any], rsa_key: KeyPair) -> JwksServer:
    server: JwksServer = await jwks_factory()
    server.keys = [rsa_key.jwk()]
    return server


class FakeClock:
    """A clock the test moves; starts at the real time so pyjwt's own checks agree with it."""

    def __init__(self) -> None:
        self.now = time.time()
        self.mono = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono


def auth_with(issuer: dict[str, Any], clock: FakeClock | None = None, **options: Any) -> Auth:
    validated = AuthOptions.model_validate(
        {"resource": RESOURCE, "issuers": [{"issuer": ISSUER, **issuer}], "token_store": None, **options}
    )
    if clock is None:
        return Auth(validated)
    return Auth(validated, now=clock.time, monotonic=clock.monotonic)


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts pyjwt decodes (a spy around the real function, which still does the work)."""
    calls: list[str] = []
    real = jwt.decode

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", spy)
    return calls


async def refused(auth: Auth, presented: Credentials, says: str = "") -> Unauthenticated:
    with pytest.raises(Unauthenticated) as caught:
        await auth.authenticate(presented)
    assert not isinstance(caught.value, InsufficientScope)
    assert says in caught.value.message, caught.value.message
    return caught.value


# -- the attack matrix ----------------------------------------------------------------------------------


async def test_alg_none_is_refused(jwks: JwksServer) -> None:
    auth = auth_with({"jwks_url": jwks.url})
    for alg in ("none", "None", "NONE"):
        token = unsigned({"alg": alg, "typ": "JWT"}, claims())
        error = await refused(auth, credentials(token), "algorithm")
        assert error.error == "invalid_token"
    assert jwks.requests == 0


async def test_hs256_signed_with_the_rsa_public_key_is_refused(rsa_key: KeyPair, jwks: JwksServer) -> None:
    public_pem = pem(rsa_key.public)
    forged = hs256_with(public_pem.encode(), claims(), {"alg": "HS256", "kid": rsa_key.kid})
    await refused(auth_with({"public_key": public_pem}), credentials(forged), "algorithm")
    await refused(auth_with({"jwks_url": jwks.url}), credentials(forged), "algorithm")
    # Even an issuer told to accept RS256 only cannot be talked into HS256 by the header.
    await refused(auth_with({"public_key": public_pem, "algorithms": ["RS256"]}), credentials(forged))


async def test_an_rs256_header_on_an_hmac_issuer_is_refused(rsa_key: KeyPair) -> None:
    token = rsa_key.sign(claims())
    await refused(auth_with({"secret": SECRET}), credentials(token), "algorithm")


async def test_expired_token_is_refused(rsa_key: KeyPair, jwks: JwksServer) -> None:
    auth = auth_with({"jwks_url": jwks.url}, leeway_seconds=30)
    expired = rsa_key.sign(claims(exp=int(time.time()) - 31 - 5))
    await refused(auth, credentials(expired), "expired")
    # Inside the leeway it is still good: the clock skew allowance is real, not a typo.
    assert (await auth.authenticate(credentials(rsa_key.sign(claims(exp=int(time.time()) - 5))))).subject


async def test_not_yet_valid_token_is_refused(rsa_key: KeyPair, jwks: JwksServer) -> None:
    auth = auth_with({"jwks_url": jwks.url}, leeway_seconds=30)
    await refused(auth, credentials(rsa_key.sign(claims(nbf=int(time.time()) + 120))), "not valid yet")


@pytest.mark.parametrize(
    ("aud", "says"),
    [
        ("https://other.example.com/mcp", "not for this resource"),
        (["https://other.example.com/mcp", "https://gw.example.com/mcp/extra"], "not for this resource"),
        ("https://gw.example.com/mc", "not for this resource"),
        (None, "no aud claim"),
    ],
)
async def test_wrong_or_missing_audience_is_refused(
    rsa_key: KeyPair, jwks: JwksServer, aud: Any, says: str
) -> None:
    auth = auth_with({"jwks_url": jwks.url})
    await refused(auth, credentials(rsa_key.sign(claims(aud=aud))), says)


@pytest.mark.parametrize(
    ("iss", "says"),
    [
        ("https://evil.example.com", "not trusted"),
        ("https://issuer.example.co", "not trusted"),
        ("https://issuer.example.com.evil", "not trusted"),
        ("issuer.example.com", "not trusted"),
        (["https://issuer.example.com"], "not trusted"),
        (None, "no iss claim"),
    ],
)
async def test_wrong_partial_or_missing_issuer_is_refused(
    rsa_key: KeyPair, jwks: JwksServer, iss: Any, says: str
) -> None:
    auth = auth_with({"jwks_url": jwks.url})
    await refused(auth, credentials(rsa_key.sign(claims(iss=iss))), says)
    assert jwks.requests == 0


async def test_missing_exp_is_refused(rsa_key: KeyPair, jwks: JwksServer) -> None:
    auth = auth_with({"jwks_url": jwks.url})
    await refused(auth, credentials(rsa_key.sign(claims(exp=None))), "no exp claim")
    hmac_auth = auth_with({"secret": SECRET})
    token = jwt.encode(claims(exp=None), SECRET, algorithm="HS256")
    await refused(hmac_auth, credentials(token), "no exp claim")


async def test_unknown_kid_refetches_at_most_once_per_interval(rsa_key: KeyPair, jwks: JwksServer) -> None:
    clock = FakeClock()
    auth = auth_with({"jwks_url": jwks.url, "jwks_min_refresh_seconds": 60}, clock)
    await auth.authenticate(credentials(rsa_key.sign(claims())))
    assert jwks.requests == 1
    clock.mono += 61
    stranger = generate("RS256", "unknown-kid")
    await refused(auth, credentials(stranger.sign(claims())), "kid")
    assert jwks.requests == 2  # refetched once for the unknown kid, then refused
    burst = [generate("ES256", f"guess-{i}").sign(claims()) for i in range(20)]
    outcomes = await asyncio.gather(
        *(auth.authenticate(credentials(token)) for token in burst), return_exceptions=True
    )
    assert all(isinstance(outcome, Unauthenticated) for outcome in outcomes)
    assert jwks.requests == 2  # the interval has not passed: no refetch at all
    clock.mono += 61
    outcomes = await asyncio.gather(
        *(auth.authenticate(credentials(token)) for token in burst), return_exceptions=True
    )
    assert all(isinstance(outcome, Unauthenticated) for outcome in outcomes)
    assert jwks.requests == 3  # one refetch for the whole concurrent burst


async def test_a_rotated_key_is_picked_up_by_the_refetch(rsa_key: KeyPair, jwks: JwksServer) -> None:
    clock = FakeClock()
    auth = auth_with({"jwks_url": jwks.url}, clock)
    await auth.authenticate(credentials(rsa_key.sign(claims())))
    rotated = generate("EdDSA", "rotated-1")
    jwks.keys.append(rotated.jwk())
    await refused(auth, credentials(rotated.sign(claims())), "kid")  # too soon to refetch
    clock.mono += 61
    principal = await auth.authenticate(credentials(rotated.sign(claims())))
    assert principal.subject == "alice"
    assert jwks.requests == 2


async def test_an_unavailable_jwks_refuses_clearly_and_is_not_hammered(
    rsa_key: KeyPair, jwks: JwksServer
) -> None:
    clock = FakeClock()
    jwks.status = 503
    auth = auth_with({"jwks_url": jwks.url}, clock)
    for _ in range(5):
        await refused(auth, credentials(rsa_key.sign(claims())), "cannot be fetched")
    assert jwks.requests == 1
    jwks.status = 200
    clock.mono += 61
    assert (await auth.authenticate(credentials(rsa_key.sign(claims())))).subject == "alice"
    assert jwks.requests == 2


async def test_a_client_leaving_mid_fetch_does_not_cancel_the_fetch(
    rsa_key: KeyPair, jwks: JwksServer
) -> None:
    jwks.release = asyncio.Event()
    auth = auth_with({"jwks_url": jwks.url})
    leaving = asyncio.ensure_future(auth.authenticate(credentials(rsa_key.sign(claims()))))
    while jwks.requests == 0:
        await asyncio.sleep(0.01)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    jwks.release.set()
    # The fetch finished for everyone: the next client is served without another fetch (which the rate
    # limit would not allow for a minute).
    assert (await auth.authenticate(credentials(rsa_key.sign(claims())))).subject == "alice"
    assert jwks.requests == 1


async def test_an_8kb_token_is_refused_before_parsing(
    rsa_key: KeyPair, jwks: JwksServer, decode_calls: list[str]
) -> None:
    auth = auth_with({"jwks_url": jwks.url})
    big = rsa_key.sign(claims(padding="x" * 8192))
    assert len(big) > 8192
    await refused(auth, credentials(big), "larger than")
    await refused(auth, credentials(subprotocols=("mcp", f"portico.bearer.{big}")), "larger than")
    assert decode_calls == []
    assert jwks.requests == 0


@pytest.mark.parametrize(
    "query",
    [
        {"access_token": "TOKEN"},
        {"token": "TOKEN"},
        {"session": "TOKEN"},
    ],
)
async def test_a_token_in_the_query_string_is_refused(
    rsa_key: KeyPair, jwks: JwksServer, query: dict[str, str]
) -> None:
    auth = auth_with({"jwks_url": jwks.url})
    token = rsa_key.sign(claims())
    query = {name: token for name in query}
    error = await refused(auth, credentials(token, query=query), "query string")
    assert error.error == "invalid_request"
    if "session" not in query:
        # Named outright, it is refused even without any other credential.
        error = await refused(auth, credentials(None, query=query), "query string")
        assert error.error == "invalid_request"


async def test_jku_x5u_and_jwk_headers_are_never_followed(
    rsa_key: KeyPair, attacker_key: KeyPair, jwks: JwksServer, jwks_factory: Callable[[], Any]
) -> None:
    attacker: JwksServer = await jwks_factory()
    attacker.keys = [attacker_key.jwk(), {**attacker_key.jwk(), "kid": rsa_key.kid}]
    auth = auth_with({"jwks_url": jwks.url})
    forged = [
        attacker_key.sign(claims(), jku=attacker.url),
        attacker_key.sign(claims(), jku=attacker.url, kid=rsa_key.kid),
        attacker_key.sign(claims(), x5u=attacker.url, kid=rsa_key.kid),
        attacker_key.sign(claims(), jwk=attacker_key.jwk(), kid=rsa_key.kid),
    ]
    for token in forged:
        await refused(auth, credentials(token))
    assert attacker.requests == 0
    assert jwks.requests == 1


async def test_a_token_for_another_endpoint_is_refused(rsa_key: KeyPair, jwks: JwksServer) -> None:
    auth = auth_with({"jwks_url": jwks.url})
    for_notes = rsa_key.sign(claims(aud="https://gw.example.com/servers/notes/mcp"))
    await refused(auth, credentials(for_notes), "not for this resource")
    assert (await auth.authenticate(credentials(for_notes, path="/servers/notes/mcp"))).subject == "alice"
    # A token verified (and cached) for /mcp is still refused on another endpoint.
    for_aggregate = rsa_key.sign(claims())
    await auth.authenticate(credentials(for_aggregate))
    await refused(auth, credentials(for_aggregate, path="/servers/notes/mcp"), "not for this resource")


async def test_a_bad_signature_is_refused(rsa_key: KeyPair, attacker_key: KeyPair, jwks: JwksServer) -> None:
    auth = auth_with({"jwks_url": jwks.url})
    header, _, signature = rsa_key.sign(claims()).split(".")
    tampered = f"{header}.{b64(orjson.dumps(claims(sub='admin')))}.{signature}"
    await refused(auth, credentials(tampered), "signature")
    other_key_same_kid = jwt.encode(
        claims(), attacker_key.private, algorithm="RS256", headers={"kid": rsa_key.kid}
    )
    await refused(auth, credentials(other_key_same_kid), "signature")
    hmac_auth = auth_with({"secret": SECRET})
    await refused(hmac_auth, credentials(jwt.encode(claims(), SECRET + "x", algorithm="HS256")), "signature")


@pytest.mark.parametrize(
    "garbage",
    [
        "garbage",
        "a.b.c",
        "a.b.c.d.e",
        "....",
        "eyJhbGciOiJSUzI1NiJ9",
        "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",
        "W10.W10.W10",
        "e30.e30.e30",
        "ptc_pat_nothing_here",
        "Zm9v==.YmFy.YmF6",
    ],
)
async def test_garbage_tokens_are_refused(jwks: JwksServer, garbage: str) -> None:
    await refused(auth_with({"jwks_url": jwks.url}), credentials(garbage))


@pytest.mark.parametrize("header", ["Bearer ", "Bearer  \u00e9t\u00e9", "Bearer a b", "Basic YTpi", "Bearer"])
async def test_malformed_authorization_headers_are_invalid_requests(jwks: JwksServer, header: str) -> None:
    error = await refused(auth_with({"jwks_url": jwks.url}), credentials(authorization=header))
    assert error.error == "invalid_request"


# -- happy paths ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
@pytest.mark.parametrize("source", ["jwks", "pem", "pem_file"])
async def test_asymmetric_tokens_verify(
    algorithm: str, source: str, jwks_factory: Callable[[], Any], tmp_path: Any
) -> None:
    key = generate(algorithm, f"{algorithm}-kid")
    if source == "jwks":
        server: JwksServer = await jwks_factory()
        server.keys = [key.jwk()]
        issuer: dict[str, Any] = {"jwks_url": server.url}
    elif source == "pem":
        issuer = {"public_key": pem(key.public)}
    else:
        (tmp_path / "issuer.pem").write_text(pem(key.public))
        issuer = {"public_key_file": str(tmp_path / "issuer.pem")}
    principal = await auth_with(issuer).authenticate(credentials(key.sign(claims())))
    assert principal.subject == "alice"
    assert principal.kind == "jwt"
    # An ES256 issuer does not take an RS256 token, whatever the token says.
    other = generate("RS256" if algorithm != "RS256" else "ES256", f"{algorithm}-kid")
    await refused(auth_with(issuer), credentials(other.sign(claims())))


async def test_hs256_tokens_verify_and_the_principal_is_complete() -> None:
    auth = auth_with({"secret": SECRET}, leeway_seconds=10)
    payload = claims()
    token = jwt.encode(payload, SECRET, algorithm="HS256")
    principal = await auth.authenticate(credentials(token))
    assert principal == Principal(
        subject="alice",
        claims=payload,
        valid_until=payload["exp"] + 10,
        credential=hashlib.sha256(token.encode()).hexdigest(),
        kind="jwt",
    )


async def test_secrets_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTICO_TEST_JWT_SECRET", SECRET)
    auth = auth_with({"secret": "${PORTICO_TEST_JWT_SECRET}"})
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert (await auth.authenticate(credentials(token))).subject == "alice"


async def test_claims_map_to_roles_tenant_and_scopes() -> None:
    auth = auth_with(
        {"secret": SECRET},
        subject_claim="preferred_username",
        roles_claims=["realm_access.roles", "groups", "https://example.com/roles"],
        tenant_claim="org.id",
    )
    payload = claims(
        preferred_username="alice@example.com",
        realm_access={"roles": ["admin", "reader"]},
        groups="ops, dev  reader",
        org={"id": "acme"},
        scope="files:read files:write",
    )
    payload["https://example.com/roles"] = ["auditor"]
    principal = await auth.authenticate(credentials(jwt.encode(payload, SECRET, algorithm="HS256")))
    assert principal.subject == "alice@example.com"
    assert principal.roles == ("admin", "reader", "ops", "dev", "auditor")
    assert principal.tenant == "acme"
    assert principal.scopes == frozenset({"files:read", "files:write"})
    scp = jwt.encode(claims(preferred_username="bob", scp=["a", "b"]), SECRET, algorithm="HS256")
    assert (await auth.authenticate(credentials(scp))).scopes == frozenset({"a", "b"})


async def test_a_token_without_its_subject_is_refused() -> None:
    auth = auth_with({"secret": SECRET})
    await refused(auth, credentials(jwt.encode(claims(sub=None), SECRET, algorithm="HS256")), "no sub")


async def test_insufficient_scope_names_the_scopes() -> None:
    auth = auth_with({"secret": SECRET}, required_scopes=["mcp:use", "files:read"])
    token = jwt.encode(claims(scope="files:read"), SECRET, algorithm="HS256")
    with pytest.raises(InsufficientScope) as caught:
        await auth.authenticate(credentials(token))
    assert caught.value.scopes == ("mcp:use", "files:read")
    assert "mcp:use" in caught.value.message
    assert caught.value.error == "insufficient_scope"
    enough = jwt.encode(claims(scope="files:read mcp:use"), SECRET, algorithm="HS256")
    assert (await auth.authenticate(credentials(enough))).subject == "alice"


async def test_extra_audiences_are_accepted() -> None:
    auth = auth_with({"secret": SECRET}, audiences=["portico-client"])
    token = jwt.encode(claims(aud="portico-client"), SECRET, algorithm="HS256")
    assert (await auth.authenticate(credentials(token))).subject == "alice"


async def test_without_a_resource_the_audience_comes_from_the_url() -> None:
    auth = Auth(AuthOptions.model_validate({"issuers": [{"issuer": ISSUER, "secret": SECRET}]}))
    token = jwt.encode(claims(aud="https://gw.example.com:8443/mcp"), SECRET, algorithm="HS256")
    url = "HTTPS://GW.Example.com:8443/mcp?x=1"
    assert (await auth.authenticate(credentials(token, url=url))).subject == "alice"
    await refused(auth, credentials(token, url="https://gw.example.com/mcp"), "not for this resource")


# -- the verified-token cache ---------------------------------------------------------------------------


async def test_a_verified_token_is_cached(
    rsa_key: KeyPair, jwks: JwksServer, decode_calls: list[str]
) -> None:
    auth = auth_with({"jwks_url": jwks.url})
    token = rsa_key.sign(claims())
    first = await auth.authenticate(credentials(token))
    for _ in range(5):
        assert await auth.authenticate(credentials(token)) is first
    assert len(decode_calls) == 1
    assert jwks.requests == 1


async def test_a_cached_principal_expires(
    rsa_key: KeyPair, jwks: JwksServer, decode_calls: list[str]
) -> None:
    clock = FakeClock()
    auth = auth_with({"jwks_url": jwks.url}, clock, leeway_seconds=30)
    payload = claims(exp=int(clock.now) + 100)
    token = rsa_key.sign(payload)
    principal = await auth.authenticate(credentials(token))
    assert principal.valid_until == payload["exp"] + 30
    clock.now = payload["exp"] + 29
    assert await auth.authenticate(credentials(token)) is principal
    clock.now = payload["exp"] + 30
    await refused(auth, credentials(token), "expired")
    assert len(decode_calls) == 1
    assert len(auth.cache) == 0


async def test_the_cache_is_bounded() -> None:
    auth = auth_with({"secret": SECRET}, verified_cache_size=3)
    for subject in ("a", "b", "c", "d", "e"):
        await auth.authenticate(credentials(jwt.encode(claims(sub=subject), SECRET, algorithm="HS256")))
    assert len(auth.cache) == 3
