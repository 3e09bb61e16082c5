"""How a principal reaches Casbin: a ``Subject`` string that carries its token's roles, tenant and claims,
and the role manager that lets Casbin's ordinary ``g(r.sub, p.sub)`` see those roles.

Casbin compares ``r.sub`` with the names in the policy (``p.sub``, ``g`` lines), so the subject has to be a
string; a ``str`` subclass keeps it one while matchers can still read ``r.sub.roles``, ``r.sub.tenant``,
``r.sub.claims["department"]`` and ``r.sub.scopes``. The roles a token grants are never written into the
role manager: ``RoleGraph.has_link`` reads them off the subject of the one request it answers, so they cannot
leak to another principal with the same name, and no entry is made for any name a request brings.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from proxy.chain import Principal


class Claims(dict[str, Any]):
    """A token's claims as matchers read them: a claim the token lacks reads as ``None`` instead of failing
    the whole decision, so ``r.sub.claims["department"] == "research"`` is simply false without it."""

    def __missing__(self, key: str) -> None:
        return None


class Subject(str):
    """The subject of one decision: the principal's name, carrying what its credential says about it."""

    roles: tuple[str, ...]
    tenant: str
    claims: Claims
    scopes: frozenset[str]
    kind: str

    @classmethod
    def of(cls, principal: Principal) -> Subject:
        subject = cls(principal.subject)
        subject.roles = principal.roles
        subject.tenant = principal.tenant or ""
        # A copy per decision: nothing a matcher does can reach the principal's own claims.
        subject.claims = Claims(principal.claims)
        subject.scopes = principal.scopes
        subject.kind = principal.kind
        return subject


class RoleGraph:
    """A Casbin role manager for one role definition (``g``, ``g2``, ...): the policy file's links, per
    domain, plus, when ``claim_roles`` is set (the subject definition ``g``), the roles the request's
    ``Subject`` brings from its token.

    Unlike Casbin's default manager it answers ``has_link`` without creating entries for the names it is
    asked about (no memory growth per unique subject), and it keeps no state between requests. Casbin only
    calls the methods below; role-name and domain pattern functions cannot be set from a model file, so
    they are not supported.
    """

    def __init__(self, *, claim_roles: bool) -> None:
        self.claim_roles = claim_roles
        # domain -> user -> the roles it was given in that domain ("" when the model has no domains).
        self._links: dict[str, dict[str, set[str]]] = {}

    def clear(self) -> None:
        self._links = {}

    def add_link(self, name1: str, name2: str, *domain: str) -> None:
        self._links.setdefault(_domain(domain), {}).setdefault(str(name1), set()).add(str(name2))

    def delete_link(self, name1: str, name2: str, *domain: str) -> None:
        self._links.get(_domain(domain), {}).get(str(name1), set()).discard(str(name2))

    def has_link(self, name1: str, name2: str, *domain: str) -> bool:
        """Whether ``name1`` is ``name2`` or inherits it, directly or through other roles."""
        return name2 in self._reachable(name1, domain)

    def get_roles(self, name: str, *domain: str) -> list[str]:
        return sorted(self._reachable(name, domain, direct_only=True) - {name})

    def get_users(self, name: str, *domain: str) -> list[str]:
        links = self._links.get(_domain(domain), {})
        return sorted(user for user, roles in links.items() if name in roles)

    @property
    def names(self) -> frozenset[str]:
        """Every user and role the policy's links mention: all the manager ever holds."""
        return frozenset(
            name for links in self._links.values() for user, roles in links.items() for name in (user, *roles)
        )

    def print_roles(self) -> None:
        """Casbin calls this after building the links; there is nothing worth logging."""

    def add_matching_func(self, fn: object) -> None:
        raise NotImplementedError("role name patterns are not supported")

    def add_domain_matching_func(self, fn: object = None) -> None:
        raise NotImplementedError("domain patterns are not supported")

    def _reachable(self, name: str, domain: tuple[str, ...], direct_only: bool = False) -> set[str]:
        in_domain = _domain(domain)
        links = self._links.get(in_domain, {})
        start: list[str] = [str(name)]
        if self.claim_roles and isinstance(name, Subject) and (not domain or in_domain == name.tenant):
            # A token's roles hold in the token's own tenant only.
            start.extend(name.roles)
        if direct_only:
            return set(start) | links.get(str(name), set())
        return _closure(start, links)


def _closure(start: Iterable[str], links: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    pending = list(start)
    while pending:
        current = pending.pop()
        if current not in seen:
            seen.add(current)
            pending.extend(links.get(current, ()))
    return seen


def _domain(domain: tuple[str, ...]) -> str:
    if len(domain) > 1:
        raise ValueError("a role link takes at most one domain")
    return str(domain[0]) if domain else ""
