"""JWT verification against the configured issuers, with pyjwt doing the cryptography.

The order matters: the token's (unverified) ``iss`` picks the one configured issuer, whose accepted
algorithms decide whether the header's ``alg`` is even considered; the header's ``kid`` picks a key of that
issuer whose own algorithm must equal ``alg``; only then does pyjwt verify the signature, with
``algorithms=[alg]``, the exact issuer, the accepted audiences and ``exp``/``iss``/``aud`` required (pyjwt
alone would accept a token without ``exp``).
"""

from __future__ import annotations

import binascii
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jwt
import orjson
from jwt.utils import base64url_decode

from plugins.auth.jwks import JwksKeys
from plugins.auth.keys import Algorithm, VerificationKey, algorithm_of, public_key_from_pem, read_pem_file
from plugins.auth.options import IssuerOptions
from proxy.errors import Unauthenticated


class TrustedIssuer:
    """One configured issuer: its accepted algorithms and where its keys come from."""

    def __init__(self, options: IssuerOptions, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.issuer = options.issuer
        self.algorithms: frozenset[str] = frozenset(options.accepted_algorithms())
        self.jwks: JwksKeys | None = None
        self._static: VerificationKey | None = None
        if options.secret is not None:
            self._static = options.secret.encode()
        elif options.jwks_url is not None:
            self.jwks = JwksKeys(
                options.jwks_url, options.jwks_min_refresh_seconds, options.jwks_timeout_seconds, monotonic
            )
        else:
            pem = options.public_key or read_pem_file(str(options.public_key_file))
            self._static = public_key_from_pem(pem)

    async def key_for(self, kid: str | None, algorithm: Algorithm) -> VerificationKey:
        key = self._static if self.jwks is None else await self.jwks.key_for(kid, algorithm)
        if key is None:
            if self.jwks is not None and self.jwks.last_error is not None:
                raise Unauthenticated("the token's issuer keys cannot be fetched right now")
            if kid is None:
                raise Unauthenticated("the token names no key (kid) and its issuer has several")
            raise Unauthenticated("the token's signing key (kid) is not one of its issuer's keys")
        if algorithm_of(key) != algorithm:
            raise Unauthenticated(f"the token's algorithm {algorithm} does not match its issuer's key")
        return key


class JwtVerifier:
    """Verifies JWTs against the trusted issuers; returns the verified claims or raises
    ``Unauthenticated`` (``invalid_token``) saying what is wrong, never echoing the token."""

    def __init__(
        self,
        issuers: Sequence[IssuerOptions],
        required_claims: Sequence[str],
        leeway_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuers = {options.issuer: TrustedIssuer(options, monotonic) for options in issuers}
        self.required_claims = list(required_claims)
        self.leeway_seconds = leeway_seconds

    async def verify(self, token: str, audiences: Sequence[str]) -> dict[str, Any]:
        header, unverified = _unverified_parts(token)
        issuer = self._issuer_of(unverified)
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in issuer.algorithms:
            raise Unauthenticated(f"the token's algorithm {str(algorithm)[:20]!r} is not accepted")
        if "crit" in header:
            raise Unauthenticated("the token has critical header extensions the gateway does not support")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("the token's kid is not a string")
        key = await issuer.key_for(kid, algorithm)  # type: ignore[arg-type]  # checked: in issuer.algorithms
        return self._decode(token, key, algorithm, issuer.issuer, audiences)

    def _issuer_of(self, unverified: Mapping[str, Any]) -> TrustedIssuer:
        name = unverified.get("iss")
        if name is None:
            raise Unauthenticated("the token has no iss claim")
        issuer = self.issuers.get(name) if isinstance(name, str) else None
        if issuer is None:
            raise Unauthenticated("the token's issuer is not trusted")
        return issuer

    def _decode(
        self, token: str, key: VerificationKey, algorithm: str, issuer: str, audiences: Sequence[str]
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=list(audiences),
                issuer=issuer,
                leeway=self.leeway_seconds,
                options={"require": self.required_claims, "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the token is not valid yet") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token has no {exc.claim} claim") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"the token is not for this resource ({audiences[0]})") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the token's issuer is not trusted") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the token's signature is not valid") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token is not valid: {str(exc)[:120]}") from None
        return claims


def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, read (not trusted) to choose the issuer and key."""
    parts = token.split(".")
    if len(parts) != 3:
        what = "an encrypted token (JWE)" if len(parts) == 5 else "not a signed JWT"
        raise Unauthenticated(f"the token is malformed: {what}")
    header, claims = _json_part(parts[0]), _json_part(parts[1])
    if header is None or claims is None:
        raise Unauthenticated("the token is malformed: its header and claims must be JSON objects")
    return header, claims


def _json_part(segment: str) -> dict[str, Any] | None:
    try:
        value = orjson.loads(base64url_decode(segment))
    except (binascii.Error, ValueError):
        return None
    return value if isinstance(value, dict) else None
