"""What the gateway presents to its backends to prove who it is: headers, and OAuth access tokens.

Toward a backend the gateway is an MCP client, and a remote backend may want credentials. A connector
asks the backend's ``BackendCredentials`` provider for headers before every HTTP request (Streamable
HTTP, the POSTs of HTTP+SSE) and before every connection (WebSocket, the HTTP+SSE stream), and tells it
when the backend refused them with HTTP 401; ``send_with_credentials`` does that round for HTTP.

Two providers exist today:

- ``StaticHeaders``: the ``headers`` of the backend's config, as they are.
- ``ClientCredentials``: OAuth 2.0 client credentials (RFC 6749 section 4.4). The gateway POSTs
  ``grant_type=client_credentials`` to the token endpoint, caches the access token, fetches a new one
  before the old one expires (after 80% of its lifetime or 60 s before its end, whichever is sooner,
  but not before half of it), lets concurrent callers share one token request, and sends
  ``Authorization: Bearer``. After a 401 it forgets the refused token, so the retry gets a fresh one.
  A failed refresh leaves the current token in use while it lasts (with another try after 5 s); with
  no usable token left, the failure is a ``BackendUnavailable`` for the request.

A secret or a token never appears in a log line, an error message or a repr.

**Per-user credentials plug in here.** Every call carries the ``Principal`` the request is made for
(``None`` when there is none, as today: connectors and their links are shared by every client, so
nothing per-user is known at this level). A per-user provider (a user's own token from a 3-legged
OAuth flow, or an RFC 8693 token exchange that trades the caller's token for one scoped to the backend)
implements the same two methods: ``headers(principal)`` looks up or obtains the token for
``principal.subject`` (keyed by ``principal.credential`` so a new client token gets a new exchange),
caches it per principal as ``ClientCredentials`` does for the gateway, and refuses a ``None``
principal; ``rejected`` forgets that principal's token. ``credentials_for`` picks it from the
backend's ``auth`` config. What it needs from the rest of the gateway is per-client links that know
their principal and pass it instead of ``None``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote_plus

import aiohttp
import orjson

from proxy.chain import Principal
from proxy.config import ClientCredentialsConfig, RemoteBackendConfig
from proxy.errors import BackendUnavailable

log = logging.getLogger("portico.credentials")

# A token endpoint that says nothing of a token's lifetime: ask again after this long.
DEFAULT_TOKEN_SECONDS = 300.0
_EARLY_REFRESH_SECONDS = 60.0
# After a failed refresh, the current token (while it lasts) serves this long before the next attempt,
# so an identity provider that is down is not asked again by every request.
_RETRY_SECONDS = 5.0
# A lifetime beyond this (``"inf"``, a typo) is taken as this: a year.
_MAX_TOKEN_SECONDS = 365 * 86400.0
_MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
# OAuth error codes are short ASCII words; anything else is not repeated in our messages.
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


# How connectors report a 401 that fresh credentials did not cure.
REFUSED = "the backend refused the gateway's credentials (HTTP 401)"


class BackendCredentials(Protocol):
    """Where a connector gets the headers that authenticate the gateway (or a user) to one backend."""

    async def headers(self, principal: Principal | None) -> Mapping[str, str]:
        """The headers to send now on behalf of ``principal``; raises BackendUnavailable if none can be
        had (an unreachable token endpoint, say)."""
        ...

    async def rejected(self, headers: Mapping[str, str], principal: Principal | None) -> bool:
        """The backend answered 401 to ``headers``: forget them. True if asking ``headers`` again may
        help, so the request is worth one retry."""
        ...


class StaticHeaders:
    """The backend's configured headers, the same for every request; a 401 cannot be helped."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = dict(headers)

    async def headers(self, principal: Principal | None) -> Mapping[str, str]:
        return self._headers

    async def rejected(self, headers: Mapping[str, str], principal: Principal | None) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class _Token:
    value: str = field(repr=False)
    # Monotonic clock times: from ``refresh_at`` on a new token is fetched; the old one still serves,
    # should that fail, until ``expires_at``.
    refresh_at: float
    expires_at: float


class ClientCredentials:
    """OAuth 2.0 client credentials for one backend: one cached, refreshed access token for every
    connection to it, sent as ``Authorization: Bearer`` next to the configured ``static`` headers."""

    def __init__(
        self,
        backend: str,
        config: ClientCredentialsConfig,
        http: aiohttp.ClientSession,
        static: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.config = config
        self._http = http
        self._static = dict(static or {})
        self._clock = clock
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        # How many token requests have ended, and how the last one failed, so callers that waited for
        # a request share its outcome instead of each asking again.
        self._fetches = 0
        self._failure: str | None = None
        self._retry_at = 0.0

    async def headers(self, principal: Principal | None) -> Mapping[str, str]:
        return {**self._static, "Authorization": f"Bearer {await self._access_token()}"}

    async def rejected(self, headers: Mapping[str, str], principal: Principal | None) -> bool:
        token = self._token
        if token is not None and headers.get("Authorization") == f"Bearer {token.value}":
            log.info("backend %s refused its access token (HTTP 401); fetching a new one", self.backend)
            self._token = None
        # Refused an older token than the cached one (another request already replaced it): retry too.
        return True

    async def _access_token(self) -> str:
        token, now = self._token, self._clock()
        if token is not None and (now < token.refresh_at or now < min(token.expires_at, self._retry_at)):
            return token.value
        seen = self._fetches
        async with self._lock:
            # Only if no token request ended while this call waited for the lock: otherwise its outcome,
            # good or bad, is this call's too.
            if self._fetches == seen:
                await self._refresh()
        token = self._token
        if token is not None and self._clock() < token.expires_at:
            return token.value
        raise BackendUnavailable(self._failure or f"backend {self.backend!r}: no access token")

    async def _refresh(self) -> None:
        try:
            self._token = await self._fetch()
            self._failure = None
        except BackendUnavailable as exc:
            self._failure = exc.message
            self._retry_at = self._clock() + _RETRY_SECONDS
            if self._token is not None and self._clock() < self._token.expires_at:
                log.warning("%s; the current token serves until it expires", exc.message)
        # Counted only when the request ended, not when it was cancelled: a waiter whose turn comes
        # after a cancelled request makes its own.
        self._fetches += 1

    async def _fetch(self) -> _Token:
        """One token request, within the configured deadline."""
        url = self.config.token_url
        what = f"backend {self.backend!r}: the token endpoint {url}"
        started = self._clock()
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                status, body = await self._post_token_request()
        except TimeoutError:
            raise BackendUnavailable(
                f"{what} did not answer within {self.config.timeout_seconds:g} s"
            ) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise BackendUnavailable(f"{what} is unreachable: {exc or type(exc).__name__}") from None
        if body is None:
            raise BackendUnavailable(f"{what} answered with more than {_MAX_TOKEN_RESPONSE_BYTES} bytes")
        access_token, lifetime = _parse_token_response(status, body, what)
        log.info("backend %s: got an access token from %s, valid for %g s", self.backend, url, lifetime)
        return _Token(access_token, started + _refresh_after(lifetime), started + lifetime)

    async def _post_token_request(self) -> tuple[int, bytes | None]:
        config = self.config
        form = {"grant_type": "client_credentials"}
        for name in ("scope", "resource", "audience"):
            value = getattr(config, name)
            if value:
                form[name] = value
        headers = {"Accept": "application/json"}
        if config.auth_method == "client_secret_basic":
            headers["Authorization"] = _basic(config.client_id, config.client_secret)
        else:
            form |= {"client_id": config.client_id, "client_secret": config.client_secret}
        # No redirects: credentials go to the configured endpoint and nowhere else.
        async with self._http.post(
            config.token_url, data=form, headers=headers, allow_redirects=False
        ) as response:
            return response.status, await _read_bounded(response, _MAX_TOKEN_RESPONSE_BYTES)


def _basic(client_id: str, secret: str) -> str:
    # RFC 6749 section 2.3.1: both are form-encoded before they are joined and base64-encoded.
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None if it is longer than ``limit``."""
    body = b""
    async for chunk in response.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > limit:
            return None
    return body


def _parse_token_response(status: int, body: bytes, what: str) -> tuple[str, float]:
    """The access token and its lifetime in seconds; BackendUnavailable naming what was wrong (never a
    secret or a token: only the status and the OAuth error code are repeated)."""
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if status != 200:
        code = payload.get("error") if isinstance(payload, dict) else None
        detail = f" ({code})" if isinstance(code, str) and _ERROR_CODE.match(code) else ""
        raise BackendUnavailable(f"{what} answered HTTP {status}{detail}")
    if not isinstance(payload, dict):
        raise BackendUnavailable(f"{what} answered with something other than a JSON object")
    access_token = payload.get("access_token")
    if not isinstance(access_token, str) or not access_token.isprintable() or not access_token.strip():
        raise BackendUnavailable(f"{what} answered without a usable access_token")
    token_type = payload.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        shown = repr(token_type) if isinstance(token_type, str) and _ERROR_CODE.match(token_type) else "?"
        raise BackendUnavailable(f"{what} issued a token of type {shown}; only Bearer tokens are supported")
    return access_token, _lifetime(payload.get("expires_in"))


def _lifetime(expires_in: Any) -> float:
    # Some endpoints send the number as a string; one that sends nothing usable gets the default.
    if isinstance(expires_in, str):
        try:
            expires_in = float(expires_in)
        except ValueError:
            return DEFAULT_TOKEN_SECONDS
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        return min(float(expires_in), _MAX_TOKEN_SECONDS)
    return DEFAULT_TOKEN_SECONDS


def _refresh_after(lifetime: float) -> float:
    """When to fetch the next token: after 80% of the lifetime or 60 s before its end, whichever is
    sooner, but never before half of it (a short-lived token would otherwise be stale at once)."""
    return max(min(0.8 * lifetime, lifetime - _EARLY_REFRESH_SECONDS), 0.5 * lifetime)


# Connectors are made per link (a backend may have many), but a backend's token must be shared by all
# of them: one provider per backend for each gateway, whose HTTP session (gone with it) keys them.
_providers: weakref.WeakKeyDictionary[
    aiohttp.ClientSession, dict[str, tuple[RemoteBackendConfig, BackendCredentials]]
] = weakref.WeakKeyDictionary()


def credentials_for(
    backend: str, config: RemoteBackendConfig, http: aiohttp.ClientSession
) -> BackendCredentials:
    """The one credentials provider of ``backend`` (as ``config`` describes it) for connections made
    with ``http``."""
    providers = _providers.setdefault(http, {})
    known = providers.get(backend)
    if known is not None and known[0] is config:
        return known[1]
    provider: BackendCredentials = (
        ClientCredentials(backend, config.auth, http, config.headers)
        if config.auth is not None
        else StaticHeaders(config.headers)
    )
    providers[backend] = (config, provider)
    return provider


async def send_with_credentials(
    http: aiohttp.ClientSession,
    credentials: BackendCredentials,
    method: str,
    url: Any,
    *,
    headers: Mapping[str, str],
    principal: Principal | None = None,
    **options: Any,
) -> aiohttp.ClientResponse:
    """One HTTP request carrying the backend's credentials (``headers`` win over them on a clash).

    A 401 means the backend refused them: the provider forgets them and, if it says asking again may
    help, the request goes once more with fresh ones (it was refused before the backend did anything,
    so repeating it is safe). The caller reads and releases the response; aiohttp errors pass through.
    """
    presented = await credentials.headers(principal)
    response = await http.request(method, url, headers={**presented, **headers}, **options)
    if response.status == 401 and await credentials.rejected(presented, principal):
        response.release()
        presented = await credentials.headers(principal)
        response = await http.request(method, url, headers={**presented, **headers}, **options)
    return response
