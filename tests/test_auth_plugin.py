"""The auth plugin as a whole: loaded from a config, where it takes tokens from, its protected-resource
metadata, and its check of every message in the chain."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from plugins.auth import Auth, AuthOptions
from plugins.auth.bearer import SUBPROTOCOL_PREFIX
from proxy import config
from proxy.chain import ANONYMOUS, Chain, Context, Direction, NamedPlugin, Principal, authenticator_of
from proxy.errors import ConfigError, ErrorCode, Unauthenticated
from proxy.plugin_loader import build_plugins
from tests.fake_session import FakeSession
from tests.test_auth_jwt import ISSUER, RESOURCE, SECRET, FakeClock, claims, credentials
from tests.test_auth_tokens import Terminal, call

SOURCE = "portico-auth-test.yaml"


def hs256_auth(clock: FakeClock | None = None, **options: Any) -> Auth:
    validated = AuthOptions.model_validate(
        {
            "resource": RESOURCE,
            "issuers": [{"issuer": ISSUER, "secret": SECRET}],
            "token_store": None,
            **options,
        }
    )
    return Auth(validated) if clock is None else Auth(validated, now=clock.time, monotonic=clock.monotonic)


def token(**overrides: Any) -> str:
    return jwt.encode(claims(**overrides), SECRET, algorithm="HS256")


def build(options_yaml: str) -> list[NamedPlugin]:
    text = "mcpServers: {}\nplugins:\n  - name: auth\n    options:\n" + textwrap.indent(
        textwrap.dedent(options_yaml), "      "
    )
    return build_plugins(config.parse(text, source=SOURCE))


def build_error(options_yaml: str) -> str:
    with pytest.raises(ConfigError) as caught:
        build(options_yaml)
    assert "Traceback" not in caught.value.message
    assert "\n" not in caught.value.message
    return caught.value.message


# -- configuration ----------------------------------------------------------------------------------------


def test_the_plugin_loads_from_a_config_and_is_the_authenticator() -> None:
    plugins = build(
        f"""
        resource: https://GW.example.com/mcp/
        issuers:
          - issuer: {ISSUER}
            secret: {SECRET}
        token_store: null
        """
    )
    auth = plugins[0].plugin
    assert isinstance(auth, Auth)
    assert authenticator_of(plugins) is auth
    assert auth.options.resource == "https://gw.example.com/mcp"
    assert auth.options.required_claims == ("exp", "iss", "aud")


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ("issuers: [{issuer: x, secret: short}]", "an HS256 secret must be at least 32 bytes"),
        (f"issuers: [{{issuer: x, secret: {SECRET}, jwks_url: 'https://a.example/j'}}]", "exactly one of"),
        (
            "issuers: [{issuer: x}]",
            "exactly one of secret, public_key, public_key_file, jwks_url (found: none)",
        ),
        (
            f"issuers: [{{issuer: x, secret: {SECRET}, algorithms: [RS256]}}]",
            "can only verify HS256, not RS256",
        ),
        ("issuers: [{issuer: x, jwks_url: 'https://a.example/j', algorithms: [HS256]}]", "not HS256"),
        ("issuers: [{issuer: x, jwks_url: 'http://idp.example/j'}]", "must be an https:// URL"),
        ("issuers: [{issuer: x, public_key: 'not a key'}]", "not a PEM public key"),
        ("issuers: [{issuer: x, public_key_file: /nonexistent/key.pem}]", "cannot read /nonexistent/key.pem"),
        (
            "issuers: [{issuer: x, jwks_url: 'https://a.example/j', algorithms: [none]}]",
            "issuers.0.algorithms",
        ),
        ("issuers: [{issuer: x, jwks_url: 'https://a.example/j', jku: 'https://b'}]", "unknown option"),
        ("resource: 'https://gw.example.com/mcp#frag'", "must not have a query or a fragment"),
        ("resource: 'ftp://gw.example.com/mcp'", "not an absolute http:// or https:// URL"),
        ("leeway_seconds: 3600", "leeway_seconds"),
        ("token_key: short\nallow_anonymous: true", "token_key must be at least 32 bytes"),
        (
            "token_key: '${PORTICO_SURELY_UNSET_VARIABLE}'",
            "environment variable PORTICO_SURELY_UNSET_VARIABLE",
        ),
        ("token_store: null", "nothing could authenticate"),
        ("tokens: x", "unknown option"),
    ],
)
def test_bad_options_are_one_clear_config_error(options: str, says: str) -> None:
    message = build_error(options)
    assert message.startswith(f"{SOURCE}: plugins[0].options"), message
    assert says in message, message


def test_an_ec_key_cannot_be_configured_for_rs256(tmp_path: Path) -> None:
    from tests.test_auth_jwt import generate, pem

    (tmp_path / "ec.pem").write_text(pem(generate("ES256", "k").public))
    message = build_error(
        f"issuers: [{{issuer: x, public_key_file: '{tmp_path}/ec.pem', algorithms: [RS256]}}]"
    )
    assert "can only verify ES256, not RS256" in message


# -- where tokens come from --------------------------------------------------------------------------------


async def test_the_bearer_scheme_is_case_insensitive() -> None:
    auth = hs256_auth()
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert (await auth.authenticate(credentials(authorization=f"{scheme} {token()}"))).subject == "alice"


async def test_browsers_may_offer_the_token_as_a_subprotocol() -> None:
    auth = hs256_auth()
    offered = ("mcp", f"{SUBPROTOCOL_PREFIX}{token()}")
    assert SUBPROTOCOL_PREFIX == "portico.bearer."
    assert (await auth.authenticate(credentials(subprotocols=offered))).subject == "alice"


@pytest.mark.parametrize(
    "presented",
    [
        {"authorization": "Bearer TOKEN", "subprotocols": ("mcp", "portico.bearer.TOKEN")},
        {"subprotocols": ("portico.bearer.TOKEN", "portico.bearer.TOKEN")},
        {"subprotocols": ("mcp", "portico.bearer.")},
    ],
)
async def test_a_token_presented_twice_or_empty_is_an_invalid_request(presented: dict[str, Any]) -> None:
    good = token()
    filled: dict[str, Any] = {
        key: (
            value.replace("TOKEN", good)
            if isinstance(value, str)
            else tuple(v.replace("TOKEN", good) for v in value)
        )
        for key, value in presented.items()
    }
    with pytest.raises(Unauthenticated) as caught:
        await hs256_auth().authenticate(credentials(**filled))
    assert caught.value.error == "invalid_request"


async def test_no_credential_is_a_challenge_without_an_error_code() -> None:
    with pytest.raises(Unauthenticated) as caught:
        await hs256_auth().authenticate(credentials(subprotocols=("mcp",)))
    assert caught.value.error is None


async def test_anonymous_clients_only_when_allowed() -> None:
    auth = hs256_auth(allow_anonymous=True)
    assert await auth.authenticate(credentials()) is ANONYMOUS
    # Allowing anonymous clients never lets a bad token through as anonymous.
    with pytest.raises(Unauthenticated):
        await auth.authenticate(credentials(token(aud="https://elsewhere.example.com/mcp")))


# -- protected-resource metadata ---------------------------------------------------------------------------


def test_protected_resource_metadata() -> None:
    auth = hs256_auth(
        scopes_supported=["mcp:use", "offline_access", "files:read"],
        authorization_servers=["https://login.example.com"],
    )
    assert auth.protected_resource("/mcp", "http://10.0.0.5:8080/mcp") == {
        "resource": RESOURCE,
        "authorization_servers": ["https://login.example.com"],
        "scopes_supported": ["mcp:use", "files:read"],
        "bearer_methods_supported": ["header"],
        "resource_name": "Portico",
    }
    virtual = auth.protected_resource("/servers/notes/mcp", "http://10.0.0.5:8080/servers/notes/mcp")
    assert virtual["resource"] == "https://gw.example.com/servers/notes/mcp"


def test_protected_resource_defaults() -> None:
    derived = Auth(
        AuthOptions.model_validate(
            {"issuers": [{"issuer": ISSUER, "secret": SECRET}], "required_scopes": ["mcp:use"]}
        )
    )
    document = derived.protected_resource("/servers/a/mcp", "HTTP://LocalHost:80/servers/a/mcp")
    assert document["resource"] == "http://localhost/servers/a/mcp"
    assert document["authorization_servers"] == [ISSUER]
    assert document["scopes_supported"] == ["mcp:use"]
    prefixed = hs256_auth(resource="https://example.com/portico/mcp")
    assert prefixed.protected_resource("/servers/a/mcp", "http://x/")["resource"] == (
        "https://example.com/portico/servers/a/mcp"
    )


# -- every message, in the chain ---------------------------------------------------------------------------


async def dispatch(auth: Auth, session: FakeSession, principal: Principal, direction: Direction) -> Any:
    ctx = Context(session, direction, "tools/call", None, time.monotonic() + 10, principal=principal)
    return await Chain([NamedPlugin("auth", auth)], Terminal()).dispatch(ctx, call())


@pytest.mark.parametrize("direction", list(Direction))
async def test_an_expired_principal_is_refused_and_its_session_ended(direction: Direction) -> None:
    clock = FakeClock()
    auth = hs256_auth(clock, leeway_seconds=5)
    payload = claims(exp=int(clock.now) + 60)
    principal = await auth.authenticate(credentials(jwt.encode(payload, SECRET, algorithm="HS256")))
    session = FakeSession()
    assert "result" in await dispatch(auth, session, principal, direction)
    clock.now = payload["exp"] + 5
    reply = await dispatch(auth, session, principal, direction)
    assert reply["error"]["code"] == ErrorCode.UNAUTHENTICATED
    assert "expired" in reply["error"]["message"]
    assert session.ended == [reply["error"]["message"]]


async def test_an_unexpiring_principal_passes() -> None:
    session = FakeSession()
    forever = Principal(subject="svc", kind="jwt")
    assert "result" in await dispatch(hs256_auth(), session, forever, Direction.TO_BACKEND)
    assert session.ended == []


async def test_an_unauthenticated_session_is_refused_unless_anonymous_is_allowed() -> None:
    session = FakeSession()
    reply = await dispatch(hs256_auth(), session, ANONYMOUS, Direction.TO_BACKEND)
    assert reply["error"]["code"] == ErrorCode.UNAUTHENTICATED
    allowed = hs256_auth(allow_anonymous=True)
    assert "result" in await dispatch(allowed, session, ANONYMOUS, Direction.TO_BACKEND)
