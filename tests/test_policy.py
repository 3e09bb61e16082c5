"""The policy plugin: Casbin decisions on routed requests and lists, token roles, tenants, claims, the
decision cache, reloading, and refusing broken files; in a chain and in a real gateway."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from plugins.policy import Policy, PolicyOptions
from plugins.policy.engine import PolicyEngine
from plugins.policy.loader import PolicyFileError, load_policy_files
from plugins.policy.subject import RoleGraph, Subject
from proxy import config
from proxy.chain import ANONYMOUS, Chain, Context, Direction, NamedPlugin, Principal, Route
from proxy.errors import ConfigError, ErrorCode
from proxy.jsonrpc import Message
from proxy.plugin_loader import build_plugins
from tests.conftest import StartGateway, everything
from tests.fake_session import FakeSession
from tests.rawclient import RpcError

RBAC_MODEL = """
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act, eft

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && keyMatch(r.act, p.act)
"""

RBAC_POLICY = """
p, role:viewer, weather/tool/get_weather, tools/call, allow
p, role:viewer, notes/resource/notes://*, resources/read, allow
p, role:viewer, notes/template/*, resources/read, allow
p, role:analyst, weather/tool/*, tools/call, allow
p, role:analyst, weather/prompt/*, prompts/get, allow
p, role:editor, notes/tool/*, tools/call, allow
p, role:contractor, notes/tool/add_note, tools/call, deny
g, role:analyst, role:viewer
g, bob, role:analyst
g, dave, role:editor
g, dave, role:contractor
"""

DOMAIN_MODEL = """
[request_definition]
r = sub, dom, obj, act

[policy_definition]
p = sub, dom, obj, act, eft

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = g(r.sub, p.sub, r.dom) && r.dom == p.dom && keyMatch(r.obj, p.obj) && keyMatch(r.act, p.act)
"""

DOMAIN_POLICY = """
p, role:admin, acme, notes/*, *, allow
p, role:admin, globex, weather/*, *, allow
g, erin, role:admin, acme
"""


class Terminal:
    """The end of the chain: records what reached it, and the context it came with."""

    def __init__(self) -> None:
        self.received: list[Message] = []
        self.contexts: list[Context] = []

    async def __call__(self, ctx: Context, message: Message) -> Message | None:
        self.received.append(copy.deepcopy(message))
        self.contexts.append(ctx)
        if "id" not in message:
            return None
        return {"jsonrpc": "2.0", "id": message["id"], "result": {"content": []}}


def write_files(folder: Path, model: str = RBAC_MODEL, policy: str = RBAC_POLICY) -> PolicyOptions:
    (folder / "model.conf").write_text(model)
    (folder / "policy.csv").write_text(policy)
    return PolicyOptions(model=str(folder / "model.conf"), policy=str(folder / "policy.csv"))


def tool(backend: str, name: str) -> Route:
    return Route(backend, "tool", name, f"{backend}_{name}")


def context(
    method: str,
    route: Route | None,
    principal: Principal = ANONYMOUS,
    direction: Direction = Direction.TO_BACKEND,
) -> Context:
    return Context(FakeSession(), direction, method, route, time.monotonic() + 10, principal=principal)


def request(method: str, request_id: int = 1) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {}}


@pytest.fixture
async def policy(tmp_path: Path) -> AsyncIterator[Policy]:
    plugin = Policy(write_files(tmp_path))
    yield plugin
    await settle(plugin)


async def settle(plugin: Policy) -> None:
    """Let a background look at the files finish, so no task outlives the test's loop."""
    if plugin._check is not None:
        await plugin._check


async def send(plugin: Policy, ctx: Context, message: Message) -> tuple[Message | None, Terminal]:
    terminal = Terminal()
    chain = Chain([NamedPlugin("policy", plugin)], terminal)
    return await chain.dispatch(ctx, message), terminal


def allowed(plugin: Policy, principal: Principal, obj: str, action: str = "tools/call") -> bool:
    return plugin.engine.decide(principal, obj, action).allowed


# -- routed requests ---------------------------------------------------------------------------------------


async def test_a_denied_call_is_refused_by_name_and_never_reaches_the_backend(policy: Policy) -> None:
    ctx = context("tools/call", tool("notes", "add_note"), Principal("bob"))
    reply, terminal = await send(policy, ctx, request("tools/call", 9))
    assert reply == {
        "jsonrpc": "2.0",
        "id": 9,
        "error": {
            "code": ErrorCode.ACCESS_DENIED,
            "message": "Access denied: 'bob' may not tools/call 'notes/tool/add_note'",
        },
    }
    assert terminal.received == []


async def test_an_allowed_call_reaches_the_backend(policy: Policy) -> None:
    ctx = context("tools/call", tool("weather", "get_forecast"), Principal("bob"))
    reply, terminal = await send(policy, ctx, request("tools/call"))
    assert reply is not None and "result" in reply
    assert [m["method"] for m in terminal.received] == ["tools/call"]


async def test_the_action_is_the_method(policy: Policy) -> None:
    # bob may call weather tools but holds no rule for completing them.
    route = Route("weather", "prompt", "daily", "weather_daily")
    reply, _ = await send(policy, context("prompts/get", route, Principal("bob")), request("prompts/get"))
    assert reply is not None and "result" in reply
    reply, terminal = await send(
        policy, context("completion/complete", route, Principal("bob")), request("completion/complete")
    )
    assert reply is not None and reply["error"]["message"] == (
        "Access denied: 'bob' may not completion/complete 'weather/prompt/daily'"
    )
    assert terminal.received == []


async def test_a_deny_rule_wins_over_an_allow(policy: Policy) -> None:
    # dave is an editor (notes tools allowed) and a contractor (add_note denied).
    dave = Principal("dave")
    assert allowed(policy, dave, "notes/tool/list_notes")
    assert not allowed(policy, dave, "notes/tool/add_note")
    assert (
        "deny by: p, role:contractor"
        in policy.engine.evaluate(dave, "notes/tool/add_note", "tools/call").explain()
    )


@pytest.mark.parametrize(
    "method",
    ["initialize", "ping", "server/discover", "logging/setLevel", "subscriptions/listen", "tools/call"],
)
async def test_requests_that_address_no_backend_object_pass_restricted(policy: Policy, method: str) -> None:
    # tools/call without a route: its target does not exist, and the gateway says so as without a policy.
    # What such a request shows (a listen's resource subscriptions) is limited to what may be used.
    ctx = context(method, None, Principal("nobody"))
    reply, terminal = await send(policy, ctx, request(method))
    assert reply is not None and "result" in reply
    assert len(terminal.received) == 1
    assert terminal.contexts[0].restricted
    assert not terminal.contexts[0].allows(tool("notes", "list_notes"))


async def test_notifications_and_traffic_to_the_client_pass(policy: Policy) -> None:
    route = tool("notes", "add_note")
    notification = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {}}
    reply, terminal = await send(
        policy, context("notifications/cancelled", route, Principal("bob")), notification
    )
    assert reply is None and len(terminal.received) == 1
    to_client = context("sampling/createMessage", route, Principal("bob"), Direction.TO_CLIENT)
    reply, terminal = await send(policy, to_client, request("sampling/createMessage"))
    assert reply is not None and "result" in reply and len(terminal.received) == 1


# -- lists -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method", ["tools/list", "prompts/list", "resources/list", "resources/templates/list"]
)
async def test_lists_keep_only_what_the_principal_may_use(policy: Policy, method: str) -> None:
    reply, terminal = await send(policy, context(method, None, Principal("bob")), request(method))
    assert reply is not None and "result" in reply
    ctx = terminal.contexts[0]
    assert ctx.restricted
    assert ctx.allows(tool("weather", "get_forecast"))
    assert not ctx.allows(tool("notes", "add_note"))
    # Each kind is judged by the action that using it means.
    assert ctx.allows(Route("weather", "prompt", "daily", "weather_daily"))
    assert ctx.allows(Route("notes", "resource", "notes://inbox/1", "notes://inbox/1"))
    assert ctx.allows(Route("notes", "template", "notes://{id}", "notes://{id}"))
    assert not ctx.allows(Route("weather", "template", "weather://{city}", "weather://{city}"))
    assert not ctx.allows(Route("weather", "resource", "weather://today", "weather://today"))
    # Something no action is known for is never shown.
    assert not ctx.allows(Route("weather", "backend", "tools/call", "tools/call"))


# -- roles from the token ------------------------------------------------------------------------------------


async def test_token_roles_count_like_role_lines(policy: Policy) -> None:
    zed = Principal("zed", roles=("role:analyst",), credential="token-1")
    assert allowed(policy, zed, "weather/tool/get_forecast")
    # ... and inherit through the policy's g lines (analyst -> viewer).
    assert allowed(policy, zed, "notes/resource/notes://inbox/1", "resources/read")
    assert not allowed(policy, Principal("zed"), "weather/tool/get_forecast")


async def test_token_roles_never_leak_between_principals(policy: Policy) -> None:
    analyst = Principal("zed", roles=("role:analyst",), credential="token-analyst")
    plain = Principal("zed", credential="token-plain")
    for _ in range(3):
        assert allowed(policy, analyst, "weather/tool/get_forecast")
        assert not allowed(policy, plain, "weather/tool/get_forecast")
    # Without credentials, the same subject with different roles is still two principals.
    assert allowed(policy, Principal("yan", roles=("role:analyst",)), "weather/tool/get_forecast")
    assert not allowed(policy, Principal("yan"), "weather/tool/get_forecast")
    # Nothing is cached between decisions of the uncached path either.
    assert policy.engine.evaluate(analyst, "weather/tool/get_forecast", "tools/call").allowed
    assert not policy.engine.evaluate(plain, "weather/tool/get_forecast", "tools/call").allowed


async def test_no_entry_is_made_for_the_names_requests_bring(policy: Policy) -> None:
    roles: RoleGraph = policy.engine.policy.enforcer.get_role_manager()
    before = roles.names
    for number in range(200):
        who = Principal(f"user-{number}", roles=(f"role:made-up-{number}",), credential=f"t{number}")
        policy.engine.evaluate(who, f"weather/tool/t{number}", "tools/call")
    assert roles.names == before
    assert "bob" in before and "user-1" not in roles.names


def test_a_token_role_holds_in_the_token_tenant_only() -> None:
    graph = RoleGraph(claim_roles=True)
    graph.add_link("role:admin", "role:member", "acme")
    subject = Subject.of(Principal("zed", roles=("role:admin",), tenant="acme"))
    assert graph.has_link(subject, "role:admin", "acme")
    assert graph.has_link(subject, "role:member", "acme")
    assert not graph.has_link(subject, "role:admin", "globex")
    assert not graph.has_link(subject, "role:admin", "*")
    # A role definition other than g (g2 groups objects, say) never hears of token roles.
    assert not RoleGraph(claim_roles=False).has_link(subject, "role:admin", "acme")


# -- tenants -----------------------------------------------------------------------------------------------


async def test_the_tenant_is_the_domain(tmp_path: Path) -> None:
    plugin = Policy(write_files(tmp_path, DOMAIN_MODEL, DOMAIN_POLICY))
    assert allowed(plugin, Principal("erin", tenant="acme"), "notes/tool/add_note")
    assert not allowed(plugin, Principal("erin", tenant="globex"), "weather/tool/get_weather")
    assert not allowed(plugin, Principal("erin"), "notes/tool/add_note")
    admin_at_globex = Principal("zed", roles=("role:admin",), tenant="globex", credential="t-globex")
    assert allowed(plugin, admin_at_globex, "weather/tool/get_weather")
    assert not allowed(plugin, admin_at_globex, "notes/tool/add_note")
    reply, _ = await send(
        plugin, context("tools/call", tool("notes", "add_note"), admin_at_globex), request("tools/call")
    )
    assert reply is not None and reply["error"]["code"] == ErrorCode.ACCESS_DENIED


async def test_token_roles_do_not_cross_tenants_through_the_policy_domain(tmp_path: Path) -> None:
    # A matcher that finds roles in the rule's domain (for rules that hold in every tenant, "*"): a token's
    # roles hold in its own tenant, so they never satisfy a "*" rule; the policy's own g lines can.
    model = DOMAIN_MODEL.replace(
        "g(r.sub, p.sub, r.dom) && r.dom == p.dom", "g(r.sub, p.sub, p.dom) && keyMatch(r.dom, p.dom)"
    )
    policy_text = "p, role:root, *, *, *, allow\ng, olga, role:root, *\n"
    plugin = Policy(write_files(tmp_path, model, policy_text))
    assert allowed(plugin, Principal("olga", tenant="acme"), "notes/tool/add_note")
    assert not allowed(plugin, Principal("zed", roles=("role:root",), tenant="acme"), "notes/tool/add_note")


# -- claims (ABAC) -----------------------------------------------------------------------------------------

ABAC_MODEL = RBAC_MODEL.replace(
    "m = g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && keyMatch(r.act, p.act)",
    "m = g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && keyMatch(r.act, p.act)"
    ' && (p.sub != "role:cleared" || r.sub.claims["clearance"] >= 3)',
)


async def test_claims_are_readable_in_matchers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plugin = Policy(write_files(tmp_path, ABAC_MODEL, "p, role:cleared, vault/tool/*, tools/call, allow\n"))
    cleared = Principal("zed", roles=("role:cleared",), claims={"clearance": 4}, credential="a")
    low = Principal("zed", roles=("role:cleared",), claims={"clearance": 1}, credential="b")
    assert allowed(plugin, cleared, "vault/tool/open")
    assert not allowed(plugin, low, "vault/tool/open")
    # A claim the token lacks reads as None; comparing None with 3 fails, and a failing matcher denies.
    with caplog.at_level(logging.WARNING, logger="portico.policy"):
        decision = plugin.engine.evaluate(
            Principal("zed", roles=("role:cleared",)), "vault/tool/open", "tools/call"
        )
    assert not decision.allowed and decision.error is not None and "TypeError" in decision.error
    assert any("the matcher failed" in r.getMessage() for r in caplog.records)


def test_the_subject_carries_the_principal() -> None:
    principal = Principal(
        "zed", roles=("a",), tenant="acme", scopes=frozenset({"s"}), claims={"x": 1}, kind="jwt"
    )
    subject = Subject.of(principal)
    assert subject == "zed" and isinstance(subject, str)
    assert (subject.roles, subject.tenant, subject.scopes, subject.kind) == (
        ("a",),
        "acme",
        frozenset({"s"}),
        "jwt",
    )
    assert subject.claims["x"] == 1 and subject.claims["missing"] is None
    subject.claims["x"] = 2
    assert principal.claims == {"x": 1}
    assert Subject.of(ANONYMOUS).tenant == ""


# -- the decision cache ------------------------------------------------------------------------------------


def count_casbin_calls(engine: PolicyEngine, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []
    enforcer = engine.policy.enforcer
    real = enforcer.enforce_ex

    def counted(*request: Any) -> Any:
        calls.append(request)
        return real(*request)

    monkeypatch.setattr(enforcer, "enforce_ex", counted)
    return calls


async def test_decisions_are_cached_per_principal_object_and_action(
    policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_casbin_calls(policy.engine, monkeypatch)
    bob = Principal("bob", credential="token-bob")
    for _ in range(5):
        assert allowed(policy, bob, "weather/tool/get_forecast")
    assert len(calls) == 1
    allowed(policy, bob, "weather/tool/get_weather")
    allowed(policy, bob, "weather/tool/get_weather", "tools/list")
    allowed(policy, Principal("bob", credential="another-token"), "weather/tool/get_weather")
    assert len(calls) == 4
    assert policy.engine.cached_decisions == 4


async def test_the_cache_is_bounded_least_recently_used_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = write_files(tmp_path)
    engine = PolicyEngine(options.model, options.policy, cache_size=3)
    calls = count_casbin_calls(engine, monkeypatch)
    bob = Principal("bob", credential="t")
    for name in ("a", "b", "c"):
        engine.decide(bob, f"weather/tool/{name}", "tools/call")
    engine.decide(bob, "weather/tool/a", "tools/call")  # a is now the most recently used
    engine.decide(bob, "weather/tool/d", "tools/call")  # b goes
    assert engine.cached_decisions == 3
    assert len(calls) == 4
    engine.decide(bob, "weather/tool/a", "tools/call")
    assert len(calls) == 4
    engine.decide(bob, "weather/tool/b", "tools/call")
    assert len(calls) == 5


async def test_a_cache_size_of_zero_asks_casbin_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = write_files(tmp_path)
    engine = PolicyEngine(options.model, options.policy, cache_size=0)
    calls = count_casbin_calls(engine, monkeypatch)
    for _ in range(3):
        engine.decide(Principal("bob", credential="t"), "weather/tool/a", "tools/call")
    assert len(calls) == 3 and engine.cached_decisions == 0


async def test_installing_a_policy_clears_the_cache_and_bumps_the_version(policy: Policy) -> None:
    allowed(policy, Principal("bob"), "weather/tool/a")
    assert policy.engine.cached_decisions == 1 and policy.engine.version == 1
    policy.engine.install(policy.engine.load())
    assert policy.engine.cached_decisions == 0 and policy.engine.version == 2


# -- reloading ---------------------------------------------------------------------------------------------


async def poll(plugin: Policy, done: Callable[[], bool], seconds: float = 2.0) -> float:
    """Send requests (which is what makes the plugin look at its files) until ``done``; bounded."""
    started = time.monotonic()
    while not done():
        assert time.monotonic() - started < seconds, "the policy files were not looked at in time"
        await send(plugin, context("ping", None), request("ping"))
        await asyncio.sleep(0.02)
    await settle(plugin)
    return time.monotonic() - started


async def test_an_edited_policy_is_in_force_within_a_second(policy: Policy) -> None:
    carol = Principal("carol")
    assert not allowed(policy, carol, "weather/tool/get_forecast")  # and the deny is cached
    Path(policy.options.policy).write_text(RBAC_POLICY + "g, carol, role:analyst\n")
    # Looked at every 0.25 s; in force once unchanged for one look: about half a second at worst.
    await poll(policy, lambda: policy.engine.version == 2, seconds=1.0)
    assert allowed(policy, carol, "weather/tool/get_forecast")
    # An edit to the model is picked up too.
    Path(policy.options.model).write_text(RBAC_MODEL.replace("keyMatch(r.act, p.act)", "r.act == p.act"))
    await poll(policy, lambda: policy.engine.version == 3)
    assert allowed(policy, carol, "weather/tool/get_forecast")


async def test_a_change_is_loaded_once_the_files_stay_the_same(policy: Policy) -> None:
    Path(policy.options.policy).write_text(RBAC_POLICY + "g, carol, role:analyst\n")
    await policy.check_files()  # changed since the last look: maybe still being written
    assert policy.engine.version == 1
    with Path(policy.options.policy).open("a") as still_writing:
        still_writing.write("g, carol, role:editor\n")
    await policy.check_files()
    assert policy.engine.version == 1
    await policy.check_files()  # the same as at the last look: in force
    assert policy.engine.version == 2
    assert allowed(policy, Principal("carol"), "notes/tool/add_note")
    await policy.check_files()
    assert policy.engine.version == 2


async def test_a_broken_edit_keeps_the_policy_in_force_and_is_logged_once(
    policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    def errors() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "portico.policy" and r.levelno == logging.ERROR]

    caplog.set_level(logging.INFO, logger="portico.policy")
    Path(policy.options.policy).write_text(RBAC_POLICY + "p, role:everyone, *, *, alow\n")
    await poll(policy, lambda: bool(errors()))
    [error] = errors()
    assert policy.options.policy in error.getMessage()
    assert "the effect must be allow or deny, not 'alow'" in error.getMessage()
    assert policy.engine.version == 1
    assert allowed(policy, Principal("bob"), "weather/tool/get_forecast")
    # Looked at again and again, the same broken file is not reported again.
    deadline = time.monotonic() + 0.7
    while time.monotonic() < deadline:
        await send(policy, context("ping", None), request("ping"))
        await asyncio.sleep(0.05)
    await settle(policy)
    assert len(errors()) == 1
    # A broken model is reported by its name; a fixed one is loaded.
    Path(policy.options.model).write_text(RBAC_MODEL.replace("[matchers]", "[matcher]"))
    await poll(policy, lambda: len(errors()) == 2)
    assert policy.options.model in errors()[1].getMessage()
    Path(policy.options.model).write_text(RBAC_MODEL)
    Path(policy.options.policy).write_text(RBAC_POLICY)
    await poll(policy, lambda: policy.engine.version == 2)


async def test_a_deleted_file_keeps_the_policy_in_force(
    policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="portico.policy")
    Path(policy.options.policy).unlink()
    await poll(policy, lambda: any("cannot be read" in r.getMessage() for r in caplog.records))
    assert allowed(policy, Principal("bob"), "weather/tool/get_forecast")


# -- refusing broken files at start-up ----------------------------------------------------------------------

BROKEN = [
    (RBAC_MODEL.replace("keyMatch(r.obj", "keymatch(r.obj"), RBAC_POLICY, "model", "uses 'keymatch'"),
    (RBAC_MODEL.replace("&& keyMatch(r.act", "&& && keyMatch(r.act"), RBAC_POLICY, "model", "not a valid"),
    (RBAC_MODEL.replace("r.act, p.act", "r.action, p.act"), RBAC_POLICY, "model", "'r.action'"),
    (RBAC_MODEL.replace("r.sub, p.sub", "r.sub.role, p.sub"), RBAC_POLICY, "model", "reads r.sub.role"),
    (RBAC_MODEL.replace("[matchers]", "[matcher]"), RBAC_POLICY, "model", "no [matchers] section"),
    (
        RBAC_MODEL.replace("p.eft == deny", "p.eft == denied"),
        RBAC_POLICY,
        "model",
        "unsupported policy_effect",
    ),
    (
        RBAC_MODEL.replace("r = sub, obj, act", "r = sub, act"),
        RBAC_POLICY,
        "model",
        "must be 'sub, obj, act'",
    ),
    (RBAC_MODEL.replace("g = _, _", "g = _, _, (_, _)"), RBAC_POLICY, "model", "conditions"),
    ("this is not a model\n", RBAC_POLICY, "model", "not a Casbin model"),
    (RBAC_MODEL, RBAC_POLICY + "p, x, y, z, dney\n", "policy", "line 13: the effect must be allow or deny"),
    (RBAC_MODEL, RBAC_POLICY + "p, x, y, z\n", "policy", "line 13: p takes 4 fields (sub, obj, act, eft)"),
    (RBAC_MODEL, RBAC_POLICY + "P, x, y, z, allow\n", "policy", "line 13: unknown rule type 'P'"),
    (RBAC_MODEL, RBAC_POLICY + "g2, x, y\n", "policy", "unknown rule type 'g2'"),
    (RBAC_MODEL, RBAC_POLICY + "g, x\n", "policy", "g takes 2 fields"),
    (RBAC_MODEL, RBAC_POLICY + "p, x(, y, z, allow\n", "policy", "unbalanced brackets"),
]


@pytest.mark.parametrize(("model", "policy_text", "culprit", "problem"), BROKEN)
def test_a_broken_file_is_refused_by_name(
    tmp_path: Path, model: str, policy_text: str, culprit: str, problem: str
) -> None:
    options = write_files(tmp_path, model, policy_text)
    with pytest.raises(PolicyFileError) as caught:
        Policy(options)
    assert str(caught.value).startswith(getattr(options, culprit) + ": ")
    assert problem in str(caught.value)


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    options = write_files(tmp_path)
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe p, a")
    with pytest.raises(PolicyFileError, match=r"binary\.csv: not UTF-8 text"):
        load_policy_files(options.model, str(tmp_path / "binary.csv"))
    with pytest.raises(PolicyFileError, match=r"missing\.conf: cannot be read: No such file"):
        load_policy_files(str(tmp_path / "missing.conf"), options.policy)


def test_an_empty_policy_denies_everything(tmp_path: Path) -> None:
    plugin = Policy(write_files(tmp_path, policy="# nothing yet\n"))
    assert not allowed(plugin, Principal("bob"), "weather/tool/get_weather")


def test_the_plugin_loader_reports_a_broken_policy_as_a_config_error(tmp_path: Path) -> None:
    options = write_files(tmp_path, policy=RBAC_POLICY + "p, x, y\n")
    text = f"plugins:\n  - name: policy\n    options: {{model: {options.model}, policy: {options.policy}}}\n"
    with pytest.raises(ConfigError) as caught:
        build_plugins(config.parse(text, source="portico.yaml"))
    assert caught.value.message == (
        f"portico.yaml: plugins[0]: plugin 'policy' failed to start: {options.policy}: "
        "line 13: p takes 4 fields (sub, obj, act, eft), found 2"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("{model: m.conf}", "plugins[0].options.policy: Field required"),
        (
            "{model: m, policy: p, decision_cache_size: -1}",
            "options.decision_cache_size: Input should be greater",
        ),
        (
            "{model: m, policy: p, reload_interval_seconds: 0}",
            "options.reload_interval_seconds: Input should be",
        ),
        ("{model: m, policy: p, colour: blue}", "plugins[0].options.colour: unknown option"),
    ],
)
def test_options_are_validated(options: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_plugins(config.parse(f"plugins:\n  - name: policy\n    options: {options}\n", source="x.yaml"))


# -- in a real gateway -------------------------------------------------------------------------------------


async def test_in_a_gateway_only_what_the_policy_allows_is_listed_and_called(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    options = write_files(
        tmp_path,
        policy=(
            "p, anonymous, ev/tool/echo, tools/call, allow\np, anonymous, ev/resource/memo://one, *, allow\n"
        ),
    )
    gw = await start_gateway(
        {
            "mcpServers": {"ev": everything("policy")},
            "plugins": [{"name": "policy", "options": {"model": options.model, "policy": options.policy}}],
        }
    )
    client = await gw.client()
    tools = await client.list_all("tools/list", "tools")
    assert [t["name"] for t in tools] == ["ev_echo"]
    assert (await client.call("tools/call", {"name": "ev_echo", "arguments": {"text": "hi"}}))["content"]
    with pytest.raises(RpcError) as caught:
        await client.call("tools/call", {"name": "ev_add", "arguments": {"a": 1, "b": 2}})
    assert caught.value.code == ErrorCode.ACCESS_DENIED
    assert caught.value.error["message"] == "Access denied: 'anonymous' may not tools/call 'ev/tool/add'"
    resources = await client.list_all("resources/list", "resources")
    # Listed under the gateway's name for it; decided on the backend's own (ev/resource/memo://one).
    assert [r["uri"] for r in resources] == ["portico://ev/memo://one"]
    assert (await client.call("resources/read", {"uri": "portico://ev/memo://one"}))["contents"]
    assert await client.list_all("resources/templates/list", "resourceTemplates") == []
    assert await client.list_all("prompts/list", "prompts") == []
    with pytest.raises(RpcError) as caught:
        await client.call("prompts/get", {"name": "ev_greet", "arguments": {"name": "Ada"}})
    assert caught.value.code == ErrorCode.ACCESS_DENIED
