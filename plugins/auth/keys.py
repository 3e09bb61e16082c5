"""Verification keys and the one algorithm each may verify.

Algorithm confusion (an HS256 token "signed" with an RSA public key, an RS256 token checked against an
EC key) is impossible by construction: every key has exactly one algorithm, decided by its type, and a
token is only ever checked with a key whose algorithm is the token's own ``alg``.
"""

from __future__ import annotations

import os
import re
from typing import Literal, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

Algorithm: TypeAlias = Literal["HS256", "RS256", "ES256", "EdDSA"]
ALGORITHMS: tuple[Algorithm, ...] = ("HS256", "RS256", "ES256", "EdDSA")
ASYMMETRIC: tuple[Algorithm, ...] = ("RS256", "ES256", "EdDSA")
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
# An HMAC secret (bytes) or a public key.
VerificationKey: TypeAlias = bytes | PublicKey

MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def algorithm_of(key: object) -> Algorithm | None:
    """The one algorithm ``key`` may verify, or None for a key this gateway does not accept."""
    if isinstance(key, bytes):
        return "HS256" if len(key) >= MIN_SECRET_BYTES else None
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256" if key.key_size >= MIN_RSA_BITS else None
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ES256" if isinstance(key.curve, ec.SECP256R1) else None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    return None


def public_key_from_pem(pem: str) -> PublicKey:
    """A public key from PEM text (a public key or a certificate). Raises ``ValueError`` with a reason a
    person can act on."""
    data = pem.strip().encode()
    try:
        if b"BEGIN CERTIFICATE" in data:
            loaded: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            loaded = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError(f"not a PEM public key or certificate ({exc})") from None
    if not isinstance(loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise ValueError(f"unsupported key type {type(loaded).__name__} (use RSA, EC P-256 or Ed25519)")
    if algorithm_of(loaded) is None:
        raise ValueError(f"the key is too weak or of an unsupported curve ({_describe(loaded)})")
    return loaded


def read_pem_file(path: str) -> str:
    try:
        with open(path, encoding="ascii") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"cannot read {path}: {reason}") from None


def expand_variables(value: str, what: str) -> str:
    """``${NAME}`` replaced by the environment variable NAME; an unset one is an error, never empty."""

    def lookup(match: re.Match[str]) -> str:
        found = os.environ.get(match.group(1))
        if found is None:
            raise ValueError(f"{what}: environment variable {match.group(1)} is not set")
        return found

    return _VARIABLE.sub(lookup, value)


def _describe(key: PublicKey) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size} bits; at least {MIN_RSA_BITS} are required"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC curve {key.curve.name}; only P-256 (ES256) is supported"
    return type(key).__name__
