"""Decisions: who may do what to which object, under the policy in force, with a bounded cache.

Casbin takes some hundreds of microseconds per decision (it compiles the matcher on every call), and a
list filter asks once per listed item, so decisions are cached per principal, object, action and policy
version. The cache is cleared whenever a new policy is installed.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import orjson

from plugins.policy.loader import LoadedPolicy, load_policy_files
from plugins.policy.subject import Subject
from proxy.chain import Principal

log = logging.getLogger("portico.policy")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one question to the policy, and the policy rule that settled it."""

    allowed: bool
    # The deciding ``p`` rule's fields (without the leading ``p``); empty when no rule matched.
    rule: tuple[str, ...] = ()
    # Why the policy could not be evaluated (the decision is then a deny).
    error: str | None = None

    def explain(self) -> str:
        """``allow by: p, role:analyst, weather/tool/*, tools/call, allow``, ``deny: no rule matched ...``."""
        verdict = "allow" if self.allowed else "deny"
        if self.error is not None:
            return f"{verdict}: the policy could not be evaluated: {self.error}"
        if not self.rule:
            return f"{verdict}: no rule matched (default {verdict})"
        return f"{verdict} by: p, {', '.join(self.rule)}"


class PolicyEngine:
    """The policy in force (a model and a policy file), its version, and the decisions made under it."""

    def __init__(self, model_path: str, policy_path: str, *, cache_size: int = 10_000) -> None:
        self.model_path = model_path
        self.policy_path = policy_path
        self.cache_size = cache_size
        self.version = 1
        self._decisions: OrderedDict[Hashable, Decision] = OrderedDict()
        # Raises PolicyFileError: a policy that cannot be read at start-up is a configuration error.
        self._policy = load_policy_files(model_path, policy_path)

    @property
    def policy(self) -> LoadedPolicy:
        return self._policy

    def load(self) -> LoadedPolicy:
        """Read the files afresh (blocking IO); raises ``PolicyFileError``. ``install`` puts it in force."""
        return load_policy_files(self.model_path, self.policy_path)

    def install(self, policy: LoadedPolicy) -> None:
        self._policy = policy
        self.version += 1
        self._decisions.clear()

    def decide(self, principal: Principal, obj: str, action: str) -> Decision:
        """The cached decision for ``principal`` doing ``action`` on ``obj``."""
        identity = _identity(principal)
        if identity is None or self.cache_size == 0:
            return self.evaluate(principal, obj, action)
        key = (identity, obj, action, self.version)
        decision = self._decisions.get(key)
        if decision is not None:
            self._decisions.move_to_end(key)
            return decision
        decision = self.evaluate(principal, obj, action)
        self._decisions[key] = decision
        if len(self._decisions) > self.cache_size:
            self._decisions.popitem(last=False)
        return decision

    def evaluate(self, principal: Principal, obj: str, action: str) -> Decision:
        """Ask Casbin, uncached. A matcher that fails on this request (a claim of an unexpected type, say)
        is a deny: the policy never lets through what it could not decide on."""
        policy = self._policy
        if policy.uses_eval and policy.rule_count == 0:
            # Casbin refuses eval() without rules; no rule can allow anything.
            return Decision(allowed=False)
        subject = Subject.of(principal)
        request = (subject, subject.tenant, obj, action) if policy.with_domain else (subject, obj, action)
        try:
            allowed, rule = policy.enforcer.enforce_ex(*request)
        except Exception as exc:
            log.warning(
                "policy: %r may not %s %r: the matcher failed: %s: %s",
                principal.subject,
                action,
                obj,
                type(exc).__name__,
                exc,
            )
            return Decision(allowed=False, error=f"{type(exc).__name__}: {exc}")
        return Decision(allowed=bool(allowed), rule=tuple(rule))

    @property
    def cached_decisions(self) -> int:
        return len(self._decisions)


def _identity(principal: Principal) -> Hashable | None:
    """What makes two principals the same to the policy. A credential names a token, whose roles, tenant
    and claims are fixed; without one, everything Casbin may read is part of the key (None when the claims
    cannot be frozen into a key: such decisions are not cached)."""
    if principal.credential:
        return ("credential", principal.kind, principal.credential, principal.tenant)
    claims = b""
    if principal.claims:
        try:
            claims = orjson.dumps(principal.claims, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
        except TypeError:
            return None
    return (
        "principal",
        principal.kind,
        principal.subject,
        principal.roles,
        principal.tenant,
        principal.scopes,
        claims,
    )
