"""The auth plugin's options, validated once at start-up (a bad value is one clear config error)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from plugins.auth.keys import (
    ASYMMETRIC,
    MIN_SECRET_BYTES,
    Algorithm,
    algorithm_of,
    expand_variables,
    public_key_from_pem,
    read_pem_file,
)
from plugins.auth.resource import canonical_uri
from proxy.shared_redis import checked_redis_url

DEFAULT_TOKEN_STORE = ".portico/tokens.sqlite"  # noqa: S105  # a file path, not a password
KEY_FILE_NAME = "tokens.key"
# Claims every token must carry, whatever ``required_claims`` adds.
ALWAYS_REQUIRED_CLAIMS = ("exp", "iss", "aud")


def long_secret(value: str | None, option: str, what: str) -> str | None:
    """The option's value with ``${ENV}`` expanded, refused when shorter than a safe HMAC key."""
    if value is None:
        return None
    value = expand_variables(value, option)
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"{what} must be at least {MIN_SECRET_BYTES} bytes long")
    return value


class IssuerOptions(BaseModel):
    """One trusted token issuer and exactly one source of its verification keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Compared with the token's ``iss`` character for character.
    issuer: str = Field(min_length=1)
    # Accepted ``alg`` values; by default the one algorithm of the key (all asymmetric ones for a JWKS).
    algorithms: tuple[Algorithm, ...] | None = None
    # An HS256 shared secret of at least 32 bytes; ``${NAME}`` takes it from the environment.
    secret: str | None = None
    public_key: str | None = None
    public_key_file: str | None = None
    jwks_url: str | None = None
    # On an unknown ``kid`` the JWKS is fetched again, at most once per this many seconds.
    jwks_min_refresh_seconds: float = Field(60.0, ge=1, le=86400)
    jwks_timeout_seconds: float = Field(5.0, gt=0, le=60)

    @field_validator("secret")
    @classmethod
    def _secret_is_long(cls, value: str | None) -> str | None:
        return long_secret(value, "secret", "an HS256 secret")

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url_is_safe(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme == "https" and parts.hostname:
            return value
        if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
            return value
        raise ValueError("jwks_url must be an https:// URL (plain http only for a loopback address)")

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerOptions:
        sources = [
            name
            for name in ("secret", "public_key", "public_key_file", "jwks_url")
            if getattr(self, name) is not None
        ]
        if len(sources) != 1:
            found = ", ".join(sources) or "none"
            raise ValueError(
                "give exactly one of secret, public_key, public_key_file, jwks_url "
                f"(found: {found}) for issuer {self.issuer!r}"
            )
        possible = self.key_algorithms()
        if self.algorithms is not None:
            wrong = [a for a in self.algorithms if a not in possible]
            if wrong or not self.algorithms:
                raise ValueError(
                    f"issuer {self.issuer!r}: its {sources[0]} can only verify {', '.join(possible)}, "
                    f"not {', '.join(wrong) or 'an empty list'}"
                )
        return self

    def key_algorithms(self) -> tuple[Algorithm, ...]:
        """What this issuer's key source can verify at all (loading a PEM key to find out)."""
        if self.secret is not None:
            return ("HS256",)
        if self.jwks_url is not None:
            return ASYMMETRIC
        pem = self.public_key if self.public_key is not None else read_pem_file(str(self.public_key_file))
        algorithm = algorithm_of(public_key_from_pem(pem))
        # public_key_from_pem refuses keys without an algorithm; this only satisfies the type checker.
        return (algorithm,) if algorithm is not None else ()

    def accepted_algorithms(self) -> tuple[Algorithm, ...]:
        return self.algorithms if self.algorithms is not None else self.key_algorithms()


class AuthOptions(BaseModel):
    """Options of the ``auth`` plugin (see the package docstring for each one's meaning)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resource: str | None = None
    audiences: tuple[str, ...] = ()
    issuers: tuple[IssuerOptions, ...] = ()
    leeway_seconds: float = Field(30.0, ge=0, le=300)
    required_claims: tuple[str, ...] = ALWAYS_REQUIRED_CLAIMS
    max_token_bytes: int = Field(4096, ge=64, le=8192)
    subject_claim: str = Field("sub", min_length=1)
    roles_claims: tuple[str, ...] = ("roles",)
    # Put before every role a token grants ("role:" makes "admin" the policy's "role:admin"), so the
    # roles an identity provider hands out never share a name with a subject.
    role_prefix: str = ""
    tenant_claim: str | None = None
    scopes_claim: str = Field("scope", min_length=1)
    required_scopes: tuple[str, ...] = ()
    authorization_servers: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()
    allow_anonymous: bool = False
    # Gateway-issued tokens: their SQLite store (None turns them off) and the key their hashes use.
    token_store: str | None = DEFAULT_TOKEN_STORE
    token_key: str | None = None
    token_key_file: str | None = None
    verified_cache_size: int = Field(10_000, ge=0, le=1_000_000)
    # Gateway tokens in Redis, shared by every instance (inherited from the config's ``redis`` section).
    redis_url: str | None = None
    redis_prefix: str = Field("portico:auth:", min_length=1, max_length=100)
    # The deadline of one round trip to Redis; the first requests wait at most this long for the tokens.
    redis_timeout_seconds: float = Field(1.0, gt=0, le=30)

    @field_validator("resource")
    @classmethod
    def _resource_is_canonical(cls, value: str | None) -> str | None:
        return None if value is None else canonical_uri(value, strict=True)

    @field_validator("token_key")
    @classmethod
    def _token_key_is_long(cls, value: str | None) -> str | None:
        return long_secret(value, "token_key", "token_key")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return checked_redis_url(value)

    @field_validator("required_claims")
    @classmethod
    def _always_require(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*ALWAYS_REQUIRED_CLAIMS, *value)))

    @field_validator("authorization_servers")
    @classmethod
    def _servers_are_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for server in value:
            canonical_uri(server)
        return value

    @model_validator(mode="after")
    def _coherent(self) -> AuthOptions:
        names = [issuer.issuer for issuer in self.issuers]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"issuer {duplicates[0]!r} is listed twice")
        if not self.issuers and self.token_store is None and not self.allow_anonymous:
            raise ValueError("nothing could authenticate: configure issuers or a token_store")
        return self

    def key_file(self) -> Path:
        """Where the gateway-token key lives when ``token_key`` is not given."""
        if self.token_key_file is not None:
            return Path(self.token_key_file)
        return Path(self.token_store or DEFAULT_TOKEN_STORE).parent / KEY_FILE_NAME

    def issuer_servers(self) -> list[str]:
        """The RFC 9728 ``authorization_servers``: as configured, else the trusted issuers."""
        return list(self.authorization_servers or (issuer.issuer for issuer in self.issuers))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
