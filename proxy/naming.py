"""Exposed names: what a client sees for each backend's tools and prompts.

Names become ``{backend}{separator}{name}`` (or stay as they are with mode ``never``). Every exposed name
satisfies MCP's rule (1-128 characters of ``[A-Za-z0-9_.-]``) and the configured length budget: a name
that is too long, or carries other characters, is shortened deterministically to a readable head plus a
hash of the backend and the original name, so it stays the same across restarts. Routing never parses an
exposed name back; it looks it up in the table built here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

VALID_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_DIGEST_LENGTHS = (8, 12, 16, 24, 32)


class NameCollision(Exception):
    """Two backends expose the same name and the namespacing mode cannot tell them apart."""


@dataclass(frozen=True, slots=True)
class NamingRules:
    separator: str = "_"
    mode: str = "always"
    budget: int = 64


def build_name_table(
    owned: Sequence[tuple[str, str]], rules: NamingRules, kind: str
) -> dict[tuple[str, str], str]:
    """Map each (backend, original name) to its exposed name, collision-free.

    ``owned`` is in config order; with mode ``never`` a name offered by two backends raises NameCollision
    naming both, because routing by name would be ambiguous.
    """
    if rules.mode == "never":
        _refuse_shared_names(owned, kind)
    table: dict[tuple[str, str], str] = {}
    claimed: dict[str, tuple[str, str]] = {}
    pending: list[tuple[str, str]] = []
    for backend, name in owned:
        natural = _natural(backend, name, rules)
        if VALID_NAME.fullmatch(natural) and len(natural) <= rules.budget and natural not in claimed:
            table[(backend, name)] = natural
            claimed[natural] = (backend, name)
        else:
            pending.append((backend, name))
    # Shortened names come second so that they never take a natural name away from its owner.
    for backend, name in pending:
        exposed = _shortened(backend, name, rules, claimed)
        table[(backend, name)] = exposed
        claimed[exposed] = (backend, name)
    return table


def _refuse_shared_names(owned: Sequence[tuple[str, str]], kind: str) -> None:
    owners: dict[str, str] = {}
    for backend, name in owned:
        first = owners.setdefault(name, backend)
        if first != backend:
            raise NameCollision(
                f"{kind} {name!r} is offered by backends {first!r} and {backend!r}; with namespacing mode "
                "'never' names must be unique (use mode 'always', or disable one of them)"
            )


def _natural(backend: str, name: str, rules: NamingRules) -> str:
    return name if rules.mode == "never" else f"{backend}{rules.separator}{name}"


def _shortened(backend: str, name: str, rules: NamingRules, claimed: dict[str, tuple[str, str]]) -> str:
    digest = hashlib.sha256(f"{backend}\0{name}".encode()).hexdigest()
    readable = _INVALID_CHARS.sub("_", _natural(backend, name, rules))
    for length in _DIGEST_LENGTHS:
        head = readable[: max(0, rules.budget - length - 1)]
        candidate = f"{head}_{digest[:length]}" if head else digest[: rules.budget]
        if candidate not in claimed:
            return candidate
    raise NameCollision(f"cannot find a unique name for {name!r} of backend {backend!r}")  # pragma: no cover
