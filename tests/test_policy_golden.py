"""The policies shipped in policies/: what each one allows and denies, row by row, loaded from the files an
operator copies. A change to a shipped file that changes a decision must change this table too."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from plugins.policy.engine import PolicyEngine
from proxy.chain import Principal

POLICIES = Path(__file__).resolve().parent.parent / "policies"
ALLOW, DENY = True, False


@dataclass(frozen=True)
class Row:
    subject: str
    obj: str
    action: str
    expected: bool
    roles: tuple[str, ...] = ()
    tenant: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    scopes: frozenset[str] = frozenset()

    def principal(self) -> Principal:
        return Principal(self.subject, self.roles, self.tenant, self.scopes, self.claims)

    def __str__(self) -> str:
        extra = [
            f"roles={','.join(self.roles)}" if self.roles else "",
            f"tenant={self.tenant}" if self.tenant else "",
        ]
        extra += [
            f"claims={self.claims}" if self.claims else "",
            f"scopes={sorted(self.scopes)}" if self.scopes else "",
        ]
        verdict = "allow" if self.expected else "deny"
        return " ".join([self.subject, *filter(None, extra), self.action, self.obj, "->", verdict])


RBAC = [
    # Named subjects, with roles from the policy's g lines.
    Row("alice", "weather/tool/get_forecast", "tools/call", ALLOW),
    Row("alice", "notes/tool/add_note", "tools/call", ALLOW),
    Row("alice", "anything/prompt/at_all", "prompts/get", ALLOW),
    Row("bob", "weather/tool/get_forecast", "tools/call", ALLOW),
    Row("bob", "weather/tool/get_weather", "tools/call", ALLOW),
    Row("bob", "weather/tool/get_forecast", "completion/complete", DENY),
    Row("bob", "notes/tool/list_notes", "tools/call", ALLOW),  # analysts are viewers
    Row("bob", "notes/tool/add_note", "tools/call", DENY),
    Row("bob", "notes/resource/notes://inbox/1", "resources/read", ALLOW),
    Row("bob", "notes/resource/notes://inbox/1", "resources/subscribe", DENY),
    Row("bob", "notes/template/notes://{id}", "resources/read", ALLOW),
    Row("carol", "notes/tool/add_note", "tools/call", ALLOW),
    Row("carol", "notes/resource/notes://inbox/1", "resources/subscribe", ALLOW),
    Row("carol", "weather/tool/get_forecast", "tools/call", DENY),
    Row("carol", "weather/tool/get_weather", "tools/call", ALLOW),  # editors are viewers
    Row("dave", "notes/tool/list_notes", "tools/call", ALLOW),
    Row("dave", "notes/tool/add_note", "tools/call", DENY),  # contractor: the deny wins
    # Roles from a token count like g lines, inheritance included.
    Row("zed", "weather/tool/get_forecast", "tools/call", ALLOW, roles=("role:analyst",)),
    Row("zed", "notes/tool/list_notes", "tools/call", ALLOW, roles=("role:analyst",)),
    Row("zed", "notes/tool/add_note", "tools/call", ALLOW, roles=("role:editor",)),
    Row("zed", "notes/tool/add_note", "tools/call", DENY, roles=("role:editor", "role:contractor")),
    Row("zed", "notes/tool/add_note", "tools/call", DENY, roles=("role:admin", "role:contractor")),
    Row("zed", "weather/tool/get_forecast", "tools/call", ALLOW, roles=("role:admin",)),
    Row("zed", "weather/tool/get_forecast", "tools/call", DENY),
    Row("zed", "weather/tool/get_forecast", "tools/call", DENY, roles=("analyst",)),  # not role:analyst
    # Nobody else gets anything; neither does the anonymous principal.
    Row("anonymous", "weather/tool/get_weather", "tools/call", DENY),
    Row("mallory", "notes/resource/notes://inbox/1", "resources/read", DENY),
    # keyMatch: "*" matches the rest, and only what starts with the text before it.
    Row("bob", "weatherx/tool/get_forecast", "tools/call", DENY),
    Row("bob", "weather/prompt/daily", "prompts/get", DENY),
    Row("carol", "notes/resource/other://x", "resources/read", ALLOW),  # editors: notes/resource/*
    Row("bob", "notes/resource/other://x", "resources/read", DENY),  # viewers: notes://* only
]

DOMAINS = [
    Row("erin", "notes/tool/add_note", "tools/call", ALLOW, tenant="acme"),
    Row("erin", "weather/tool/get_forecast", "tools/call", ALLOW, tenant="acme"),  # admin is member at acme
    Row("erin", "weather/tool/get_weather", "tools/call", DENY, tenant="globex"),  # erin has no globex role
    Row("erin", "notes/tool/add_note", "tools/call", DENY),  # no tenant, no domain's rules
    Row("frank", "weather/tool/get_forecast", "tools/call", ALLOW, tenant="acme"),
    Row("frank", "weather/tool/get_forecast", "tools/call", DENY, tenant="globex"),
    Row("frank", "weather/tool/get_weather", "tools/call", ALLOW, tenant="globex"),
    Row("frank", "notes/tool/list_notes", "tools/call", ALLOW, tenant="acme"),
    Row("frank", "notes/tool/list_notes", "tools/call", DENY, tenant="globex"),
    Row("frank", "notes/tool/add_note", "tools/call", DENY, tenant="acme"),
    Row("frank", "notes/resource/notes://inbox/1", "resources/read", ALLOW, tenant="acme"),
    # Token roles hold in the token's tenant.
    Row("zed", "notes/tool/add_note", "tools/call", ALLOW, roles=("role:admin",), tenant="acme"),
    Row("zed", "weather/tool/get_forecast", "tools/call", ALLOW, roles=("role:admin",), tenant="acme"),
    Row("zed", "weather/tool/get_forecast", "tools/call", ALLOW, roles=("role:admin",), tenant="globex"),
    Row("zed", "notes/tool/list_notes", "tools/call", ALLOW, roles=("role:admin",), tenant="globex"),
    Row("zed", "notes/tool/add_note", "tools/call", DENY, roles=("role:admin",), tenant="globex"),
    Row("zed", "weather/tool/get_forecast", "tools/call", DENY, roles=("role:member",), tenant="globex"),
    Row("zed", "weather/tool/get_weather", "tools/call", ALLOW, roles=("role:member",), tenant="globex"),
    Row("zed", "weather/tool/get_weather", "tools/call", DENY, roles=("role:member",), tenant="initech"),
    Row("zed", "weather/tool/get_weather", "tools/call", DENY, roles=("role:member",)),
    Row("zed", "weather/tool/get_weather", "tools/call", DENY, tenant="acme"),
]

RESEARCH = {"department": "research"}
SUPPORT = {"department": "support"}
ABAC = [
    Row("u", "weather/tool/get_weather", "tools/call", ALLOW, claims={"email_verified": True}),
    Row("u", "weather/tool/get_weather", "tools/call", DENY, claims={"email_verified": False}),
    Row("u", "weather/tool/get_weather", "tools/call", DENY, claims={"email_verified": "true"}),
    Row("u", "weather/tool/get_weather", "tools/call", DENY, claims={"email_verified": 1}),  # not True
    Row("u", "weather/tool/get_weather", "tools/call", DENY),
    Row("u", "weather/tool/get_forecast", "tools/call", ALLOW, scopes=frozenset({"weather:forecast"})),
    Row("u", "weather/tool/get_forecast", "tools/call", DENY, claims={"email_verified": True}),
    Row("u", "weather/tool/get_forecast", "tools/call", DENY, scopes=frozenset({"weather"})),
    Row("u", "notes/tool/add_note", "tools/call", ALLOW, claims=RESEARCH),
    Row("u", "notes/resource/notes://inbox/1", "resources/subscribe", ALLOW, claims=RESEARCH),
    Row("u", "notes/tool/add_note", "tools/call", DENY, claims={**RESEARCH, "contractor": True}),
    Row("u", "notes/tool/add_note", "tools/call", DENY, claims={**RESEARCH, "contractor": "true"}),
    Row("u", "notes/tool/add_note", "tools/call", ALLOW, claims={**RESEARCH, "contractor": False}),
    Row("u", "notes/tool/list_notes", "tools/call", ALLOW, claims={**RESEARCH, "contractor": True}),
    Row("u", "weather/tool/get_weather", "tools/call", DENY, claims=RESEARCH),
    Row("u", "notes/tool/list_notes", "tools/call", ALLOW, claims=SUPPORT, tenant="acme"),
    Row("u", "notes/resource/notes://inbox/1", "resources/read", ALLOW, claims=SUPPORT, tenant="acme"),
    Row("u", "notes/tool/add_note", "tools/call", DENY, claims=SUPPORT, tenant="acme"),
    Row("u", "notes/tool/list_notes", "tools/call", DENY, claims=SUPPORT, tenant="globex"),
    Row("u", "notes/tool/list_notes", "tools/call", DENY, claims=SUPPORT),
    Row("u", "notes/tool/add_note", "tools/call", ALLOW, roles=("notes-admin",)),
    Row("u", "notes/tool/add_note", "tools/call", DENY, roles=("notes-admin",), claims={"contractor": True}),
    Row("u", "notes/tool/add_note", "tools/call", DENY, roles=("role:notes-admin",)),
    Row("u", "notes/tool/add_note", "tools/call", DENY, claims={"department": "Research"}),
]

SETS = {"rbac": RBAC, "rbac_domains": DOMAINS, "abac": ABAC}


@pytest.fixture(scope="module")
def engines() -> dict[str, PolicyEngine]:
    return {
        name: PolicyEngine(str(POLICIES / f"{name}_model.conf"), str(POLICIES / f"{name}_policy.csv"))
        for name in SETS
    }


@pytest.mark.parametrize(
    ("name", "row"), [(name, row) for name, rows in SETS.items() for row in rows], ids=lambda v: str(v)
)
def test_shipped_policy(engines: dict[str, PolicyEngine], name: str, row: Row) -> None:
    decision = engines[name].evaluate(row.principal(), row.obj, row.action)
    assert decision.error is None, decision.explain()
    assert decision.allowed is row.expected, f"{row}: {decision.explain()}"
    # The cached path agrees with Casbin's own answer.
    assert engines[name].decide(row.principal(), row.obj, row.action).allowed is row.expected


def test_every_shipped_model_has_its_policy_and_a_table() -> None:
    models = sorted(path.name.removesuffix("_model.conf") for path in POLICIES.glob("*_model.conf"))
    policies = sorted(path.name.removesuffix("_policy.csv") for path in POLICIES.glob("*_policy.csv"))
    assert models == policies == sorted(SETS)


def test_the_tables_decide_both_ways() -> None:
    for rows in SETS.values():
        assert {row.expected for row in rows} == {ALLOW, DENY}
