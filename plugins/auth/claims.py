"""From a verified token's claims to a ``Principal``: subject, roles, tenant and scopes.

A claim name may be a dotted path into nested objects (Keycloak's ``realm_access.roles``); a name that
exists as it is at the top level wins, so namespaced claims such as ``https://example.com/roles`` work too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from plugins.auth.options import AuthOptions
from proxy.chain import Principal
from proxy.errors import InsufficientScope, Unauthenticated

_SEPARATORS = re.compile(r"[\s,]+")


def claim(claims: Mapping[str, Any], name: str) -> Any:
    """The value at ``name`` (a top-level name or a dotted path), or None."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def string_list(value: Any) -> list[str]:
    """A list of strings, or a space- or comma-separated string, as a list; anything else is empty."""
    if isinstance(value, str):
        return [item for item in _SEPARATORS.split(value) if item]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str) and item]
    return []


class ClaimMapping:
    """Builds principals from verified claims as the options say."""

    def __init__(self, options: AuthOptions) -> None:
        self.options = options
        self.required_scopes = frozenset(options.required_scopes)

    def principal(self, claims: dict[str, Any], credential: str) -> Principal:
        """The principal of a verified JWT whose SHA-256 is ``credential``; refuses a token without a
        subject, or (``InsufficientScope``) one without every required scope."""
        options = self.options
        subject = claim(claims, options.subject_claim)
        if isinstance(subject, int) and not isinstance(subject, bool):
            subject = str(subject)
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated(f"the token has no {options.subject_claim} claim")
        scopes = frozenset(self._scopes(claims))
        missing = sorted(self.required_scopes - scopes)
        if missing:
            raise InsufficientScope(
                f"the token lacks the required scopes: {' '.join(missing)}", tuple(options.required_scopes)
            )
        roles: dict[str, None] = {}
        for name in options.roles_claims:
            roles.update(
                dict.fromkeys(options.role_prefix + role for role in string_list(claim(claims, name)))
            )
        return Principal(
            subject=subject,
            roles=tuple(roles),
            tenant=self._tenant(claims),
            scopes=scopes,
            claims=MappingProxyType(claims),
            valid_until=float(claims["exp"]) + options.leeway_seconds,
            credential=credential,
            kind="jwt",
        )

    def _scopes(self, claims: Mapping[str, Any]) -> list[str]:
        value = claim(claims, self.options.scopes_claim)
        # OAuth's ``scope`` is a space-separated string; some issuers (Okta, Azure AD) say ``scp``.
        if value is None and self.options.scopes_claim == "scope":
            value = claims.get("scp")
        if isinstance(value, str):
            return value.split()
        return string_list(value)

    def _tenant(self, claims: Mapping[str, Any]) -> str | None:
        if self.options.tenant_claim is None:
            return None
        value = claim(claims, self.options.tenant_claim)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value if isinstance(value, str) and value else None
