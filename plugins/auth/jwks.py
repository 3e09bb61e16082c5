"""An issuer's JSON Web Key Set, fetched from its configured URL and nowhere else.

A token's ``kid`` is only ever a key into the cached set: it is never a URL, a path or a query, and the
``jku``/``x5u``/``jwk`` headers a token may carry are never looked at. An unknown ``kid`` (a key
rotation, or an attacker's guess) refetches the set at most once per ``min_refresh_seconds`` and only one
fetch runs at a time, so a burst of forged tokens cannot turn the gateway against the issuer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from plugins.auth.keys import Algorithm, PublicKey, algorithm_of

log = logging.getLogger("portico.auth")

# A JWKS is a few kilobytes; anything much larger is not one.
MAX_JWKS_BYTES = 512 * 1024


class JwksUnavailable(Exception):
    """The key set could not be fetched or read; the message says why."""


@dataclass(frozen=True, slots=True)
class KeySet:
    """Usable public keys by ``kid``, and those published without one."""

    by_kid: Mapping[str, PublicKey]
    unnamed: tuple[PublicKey, ...]

    def all(self) -> list[PublicKey]:
        return [*self.by_kid.values(), *self.unnamed]


EMPTY = KeySet({}, ())


class JwksKeys:
    """The keys of one issuer's JWKS endpoint, cached, refreshed on demand and rate-limited."""

    def __init__(
        self,
        url: str,
        min_refresh_seconds: float,
        timeout_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.min_refresh_seconds = min_refresh_seconds
        self.timeout_seconds = timeout_seconds
        self.keys = EMPTY
        self.fetches = 0
        # Why the last fetch failed (None after a good one): an empty set then means "unavailable".
        self.last_error: str | None = None
        self._monotonic = monotonic
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None

    async def key_for(self, kid: str | None, algorithm: Algorithm) -> PublicKey | None:
        """The key that verifies a token with this ``kid`` and ``alg``, refreshing the set once if it is
        not known yet (and the rate limit allows); None if there is none."""
        found = self._lookup(kid, algorithm)
        if found is None:
            await self._refresh()
            found = self._lookup(kid, algorithm)
        return found

    def _lookup(self, kid: str | None, algorithm: Algorithm) -> PublicKey | None:
        if kid is not None:
            return self.keys.by_kid.get(kid)
        # No kid: acceptable only when exactly one key could have signed it.
        candidates = [key for key in self.keys.all() if algorithm_of(key) == algorithm]
        return candidates[0] if len(candidates) == 1 else None

    async def _refresh(self) -> None:
        # One fetch at a time, shared by everyone who needs it; it runs as its own task (shielded), so a
        # client that goes away mid-fetch cannot cancel it and leave the issuer without keys for a whole
        # interval.
        if self._inflight is None:
            now = self._monotonic()
            if self._last_attempt is not None and now - self._last_attempt < self.min_refresh_seconds:
                return
            self._last_attempt = now
            self._inflight = asyncio.get_running_loop().create_task(self._load())
        await asyncio.shield(self._inflight)

    async def _load(self) -> None:
        self.fetches += 1
        try:
            self.keys = parse_key_set(await self._fetch())
            self.last_error = None
        except JwksUnavailable as exc:
            self.last_error = str(exc)
            log.warning("cannot refresh the JWKS at %s: %s", self.url, exc)
        finally:
            self._inflight = None

    async def _fetch(self) -> bytes:
        timeout = aiohttp.ClientTimeout(total=self.timeout_seconds)
        try:
            async with (
                asyncio.timeout(self.timeout_seconds),
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(self.url, allow_redirects=False, headers={"Accept": "application/json"}) as reply,
            ):
                if reply.status != 200:
                    raise JwksUnavailable(f"HTTP {reply.status}")
                body = await reply.content.read(MAX_JWKS_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise JwksUnavailable(str(exc) or type(exc).__name__) from None
        if len(body) > MAX_JWKS_BYTES:
            raise JwksUnavailable(f"larger than {MAX_JWKS_BYTES} bytes")
        return body


def parse_key_set(body: bytes) -> KeySet:
    """The usable signature keys of a JWKS document; keys that are symmetric, private-only, meant for
    encryption, restricted to another algorithm or too weak are left out."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise JwksUnavailable(f"not JSON: {exc}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksUnavailable('not a JWK Set (no "keys" list)')
    by_kid: dict[str, PublicKey] = {}
    unnamed: list[PublicKey] = []
    for entry in entries:
        key = _usable_key(entry)
        if key is None:
            continue
        kid = entry.get("kid")
        if isinstance(kid, str):
            by_kid.setdefault(kid, key)
        else:
            unnamed.append(key)
    return KeySet(by_kid, tuple(unnamed))


def _usable_key(entry: Any) -> PublicKey | None:
    if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
        # Symmetric ("oct") keys have no place in a published set: accepting one would let anyone who
        # reads the set sign tokens.
        return None
    if entry.get("use", "sig") != "sig":
        return None
    try:
        loaded: object = jwt.PyJWK(entry).key
    except (jwt.PyJWKError, ValueError, TypeError, KeyError) as exc:
        log.info("ignoring a JWK the gateway cannot use: %s", exc)
        return None
    if isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        loaded = loaded.public_key()
    if not isinstance(loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        return None
    algorithm = algorithm_of(loaded)
    if algorithm is None or entry.get("alg", algorithm) != algorithm:
        return None
    return loaded
