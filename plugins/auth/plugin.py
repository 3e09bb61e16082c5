"""The ``auth`` plugin: identifies clients at the edge and re-checks their credential on every message."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from plugins.auth.bearer import presented_token
from plugins.auth.claims import ClaimMapping
from plugins.auth.gateway_tokens import REVOKED, GatewayTokens
from plugins.auth.jwt_verifier import JwtVerifier
from plugins.auth.options import AuthOptions
from plugins.auth.resource import EndpointResources
from plugins.auth.shared_tokens import UNCHECKABLE
from plugins.auth.token_store import TOKEN_PREFIX
from proxy.chain import ANONYMOUS, Context, Credentials, Handler, Principal
from proxy.errors import Unauthenticated
from proxy.jsonrpc import Message

log = logging.getLogger("portico.auth")

GATEWAY_TOKEN_KINDS = frozenset({"personal", "account"})
EXPIRED = "the token expired; connect again with a fresh token"
RESOURCE_NAME = "Portico"


class VerifiedCache:
    """The principals of recently verified tokens (least recently used ones leave first), so a long
    session or a stream of HTTP requests pays for signature verification once per token."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, Principal] = OrderedDict()

    def get(self, key: str) -> Principal | None:
        principal = self._entries.get(key)
        if principal is not None:
            self._entries.move_to_end(key)
        return principal

    def put(self, key: str, principal: Principal) -> None:
        if self.size == 0:
            return
        self._entries[key] = principal
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def discard(self, key: str) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


class Auth:
    """Authenticates clients (JWTs from trusted issuers, gateway-issued tokens) for the transports, and,
    as a chain plugin, refuses every message of a session whose credential has expired or been revoked
    since, ending that session."""

    Options = AuthOptions

    def __init__(
        self,
        options: AuthOptions,
        *,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.resources = EndpointResources(options.resource)
        self.verifier = JwtVerifier(
            options.issuers, options.required_claims, options.leeway_seconds, monotonic
        )
        self.claim_mapping = ClaimMapping(options)
        self.gateway_tokens = GatewayTokens(options, now) if options.token_store is not None else None
        self.cache = VerifiedCache(options.verified_cache_size)
        self._now = now

    # -- at the edge: every WebSocket upgrade, HTTP request and SSE stream -------------------------------

    async def authenticate(self, credentials: Credentials) -> Principal:
        """The principal of the token in ``credentials``. Raises ``Unauthenticated`` (HTTP 401; ``error``
        None when no token was presented) or ``InsufficientScope`` (HTTP 403)."""
        try:
            token = presented_token(credentials, self.options.max_token_bytes)
            if token is None:
                if self.options.allow_anonymous:
                    return ANONYMOUS
                raise Unauthenticated("this endpoint requires a bearer token", error=None)
            digest = hashlib.sha256(token.encode()).hexdigest()
            if token.startswith(TOKEN_PREFIX):
                return await self._gateway_principal(token, digest)
            return await self._jwt_principal(token, digest, credentials)
        except Unauthenticated as exc:
            log.info("refused %s client %s: %s", credentials.transport, credentials.remote, exc.message)
            raise

    def protected_resource(self, path: str, url: str) -> dict[str, Any]:
        """The RFC 9728 metadata of the endpoint at ``path`` (``url``: how the client addressed it)."""
        scopes = self.options.scopes_supported or self.options.required_scopes
        return {
            "resource": self.resources.of(path, url),
            "authorization_servers": self.options.issuer_servers(),
            # Never advertised: a long-lived refresh grant is the client's business with its issuer.
            "scopes_supported": [scope for scope in scopes if scope != "offline_access"],
            "bearer_methods_supported": ["header"],
            "resource_name": RESOURCE_NAME,
        }

    async def _jwt_principal(self, token: str, digest: str, credentials: Credentials) -> Principal:
        try:
            resource = self.resources.of(credentials.path, credentials.url)
        except ValueError:
            raise Unauthenticated(
                "cannot tell which resource was addressed", error="invalid_request"
            ) from None
        # A token is verified for one endpoint's audience: the cache must not carry it to another.
        key = f"{digest} {resource}"
        principal = self.cache.get(key)
        if principal is None:
            claims = await self.verifier.verify(token, (resource, *self.options.audiences))
            principal = self.claim_mapping.principal(claims, digest)
            self.cache.put(key, principal)
        self._refuse_if_invalid(principal, key)
        return principal

    async def _gateway_principal(self, token: str, digest: str) -> Principal:
        if self.gateway_tokens is None:
            raise Unauthenticated("gateway-issued tokens are not enabled here")
        key = f"{digest} gateway"
        principal = self.cache.get(key)
        if principal is None:
            principal = await self.gateway_tokens.verify(token)
            self.cache.put(key, principal)
        self._refuse_if_invalid(principal, key)
        return principal

    def _refuse_if_invalid(self, principal: Principal, cache_key: str) -> None:
        reason = self.invalid_because(principal)
        if reason is not None:
            self.cache.discard(cache_key)
            raise Unauthenticated(reason)

    # -- in the chain: every message, both directions ----------------------------------------------------

    async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
        principal = ctx.principal
        if principal.kind == "anonymous":
            # Fail closed: a session that reached the chain unauthenticated is refused unless anonymous
            # clients are allowed.
            if not self.options.allow_anonymous:
                raise Unauthenticated("this endpoint requires a bearer token", error=None)
        else:
            reason = self.invalid_because(principal)
            if reason is not None:
                # Revocations that cannot be heard right now (Redis unreachable) refuse the message, and
                # the session lives on: it may continue once they can.
                if reason != UNCHECKABLE:
                    ctx.session.end(reason)
                raise Unauthenticated(reason)
        return await call_next(ctx, message)

    def invalid_because(self, principal: Principal) -> str | None:
        """Why ``principal`` may no longer act (its token expired or was revoked), or None."""
        if principal.valid_until is not None and self._now() >= principal.valid_until:
            return EXPIRED
        if principal.kind in GATEWAY_TOKEN_KINDS:
            if self.gateway_tokens is None:
                return REVOKED
            if not self.gateway_tokens.checkable:
                return UNCHECKABLE
            if not self.gateway_tokens.is_active(principal.credential):
                return REVOKED
        return None

    async def start(self) -> None:
        """With tokens in Redis: follow their changes from start-up, not from the first request."""
        if self.gateway_tokens is not None and self.gateway_tokens.shared is not None:
            await self.gateway_tokens.shared.ready()

    async def close(self) -> None:
        """Close the token store's connection (the gateway may simply exit instead)."""
        if self.gateway_tokens is not None:
            await self.gateway_tokens.close()
