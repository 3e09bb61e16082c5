"""The audit plugin: one JSON line per client request, through a real gateway with auth, policy and redact.

The lines are written by a thread, so tests wait (with a deadline) until the lines they expect are there;
lines are written in order, so once the last expected line is in, any line that should not exist would be
there too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

import plugins.audit
from plugins.audit import NOT_LOGGED, Audit, AuditOptions
from plugins.audit import sink as sink_module
from plugins.audit.sink import AuditSink
from proxy import config
from proxy.chain import ANONYMOUS, Chain, Context, Direction, NamedPlugin, Principal, Route
from proxy.errors import ConfigError, RateLimited
from proxy.jsonrpc import Message
from proxy.plugin_loader import build_plugins
from tests.conftest import RunningGateway, StartGateway, everything, fixture_server
from tests.fake_session import FakeSession
from tests.header_auth import HEADER_AUTH
from tests.rawclient import RawClient
from tests.test_redact import GITHUB

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "policies" / "rbac_model.conf"
POLICY_CSV = """\
p, rita, count/tool/lookup, tools/call, allow
p, rita, count/tool/fail, tools/call, allow
p, rita, count/tool/stats, tools/call, deny
"""
ALLOW_LOOKUP = "allow by: p, rita, count/tool/lookup, tools/call, allow"
DENY_STATS = "deny by: p, rita, count/tool/stats, tools/call, deny"

# The documented key order (see plugins/audit/__init__.py) for the lines these tests produce.
OK_LINE_KEYS = [
    "time",
    "request_id",
    "session",
    "transport",
    "principal",
    "method",
    "backend",
    "tool",
    "decision",
    "outcome",
    "ms",
    "bytes_in",
    "bytes_out",
    "redactions",
]
# A request the policy refuses never reaches redact (further in): no redactions.
DENIED_LINE_KEYS = [*OK_LINE_KEYS[:10], "error_code", *OK_LINE_KEYS[10:-1]]
PAYLOAD_KEYS = ["params", "result"]
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def audit(path: Path | None = None, **options: Any) -> dict[str, Any]:
    if path is not None:
        options["file"] = str(path)
    return {"name": "audit", "options": options}


def policy(tmp_path: Path) -> dict[str, Any]:
    csv = tmp_path / "policy.csv"
    csv.write_text(POLICY_CSV)
    return {"name": "policy", "options": {"model": str(MODEL), "policy": str(csv)}}


def read_lines(*paths: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for path in paths if path.exists() for line in path.read_text().splitlines()]


async def wait_for_lines(
    read: Callable[[], list[dict[str, Any]]], done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        lines = read()
        if done(lines):
            return lines
        assert time.monotonic() < deadline, f"the expected audit lines never came; got {lines}"
        await asyncio.sleep(0.02)


def has_id(request_id: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda lines: any(line["request_id"] == request_id for line in lines)


def one_line(lines: list[dict[str, Any]], request_id: int) -> dict[str, Any]:
    found = [line for line in lines if line["request_id"] == request_id and line["method"] == "tools/call"]
    assert len(found) == 1, found
    return found[0]


async def counting_gateway(start_gateway: StartGateway, plugins: list[dict[str, Any]]) -> RunningGateway:
    return await start_gateway(
        {"mcpServers": {"count": fixture_server("counting_server.py")}, "plugins": plugins}
    )


async def rita(gw: RunningGateway) -> RawClient:
    return await gw.client(headers={"Authorization": "Bearer rita"})


def tool_call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


# -- through a real gateway --------------------------------------------------------------------------------


async def test_allowed_denied_and_failing_calls_each_make_one_line_with_their_decision(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    log = tmp_path / "audit.log"
    gw = await counting_gateway(
        start_gateway, [audit(log), HEADER_AUTH, policy(tmp_path), {"name": "redact"}]
    )
    client = await rita(gw)
    allowed = await client.request("tools/call", tool_call("count_lookup", key="k"), id=101)
    denied = await client.request("tools/call", tool_call("count_stats"), id=102)
    unruled = await client.request("tools/call", tool_call("count_append", key="k", value="v"), id=103)
    await client.request("tools/call", tool_call("count_fail", text="no"), id=104)
    assert "result" in allowed and denied["error"]["code"] == unruled["error"]["code"] == -32063
    lines = await wait_for_lines(lambda: read_lines(log), has_id(104))

    ok = one_line(lines, 101)
    assert list(ok) == OK_LINE_KEYS
    assert RFC3339_MS.match(ok["time"])
    assert ok["principal"] == {"subject": "rita", "kind": "test"}
    assert (ok["transport"], ok["backend"], ok["tool"]) == ("websocket", "count", "lookup")
    assert (ok["decision"], ok["outcome"], ok["redactions"]) == (ALLOW_LOOKUP, "ok", {})
    sent = {"jsonrpc": "2.0", "id": 101, "method": "tools/call", "params": tool_call("count_lookup", key="k")}
    assert ok["bytes_in"] == len(orjson.dumps(sent))
    assert ok["bytes_out"] == len(orjson.dumps(allowed))
    assert isinstance(ok["ms"], float) and ok["ms"] >= 0

    refused = one_line(lines, 102)
    assert list(refused) == DENIED_LINE_KEYS
    assert (refused["tool"], refused["decision"]) == ("stats", DENY_STATS)
    assert (refused["outcome"], refused["error_code"]) == ("error -32063", -32063)
    assert refused["bytes_out"] == len(orjson.dumps(denied))
    no_rule = one_line(lines, 103)
    assert no_rule["decision"] == "deny: no rule matched (default deny)" and no_rule["error_code"] == -32063
    assert one_line(lines, 104)["outcome"] == "tool_error"
    # Requests to the gateway itself are recorded too, without a backend or a decision.
    initialize = next(line for line in lines if line["method"] == "initialize")
    assert initialize.keys().isdisjoint({"backend", "decision"})


async def test_a_secret_in_the_arguments_is_logged_masked_and_never_in_clear(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    log = tmp_path / "audit.log"
    plugins = [audit(log, include_payloads=True), HEADER_AUTH, policy(tmp_path), {"name": "redact"}]
    client = await rita(await counting_gateway(start_gateway, plugins))
    await client.request("tools/call", tool_call("count_lookup", key=f"token {GITHUB}"), id=7)
    lines = await wait_for_lines(lambda: read_lines(log), has_id(7))

    line = one_line(lines, 7)
    assert list(line) == [*OK_LINE_KEYS, *PAYLOAD_KEYS]
    assert line["params"]["arguments"] == {"key": "token [REDACTED:github_token]"}
    assert line["result"]["content"][0]["text"] == "token [REDACTED:github_token] #1"
    # Masked in the request: the backend only ever saw, and echoed, the placeholder.
    assert line["redactions"] == {"github_token": 1}
    assert GITHUB not in log.read_text()


async def test_without_redact_in_the_chain_no_payload_is_logged(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    log = tmp_path / "audit.log"
    client = await rita(
        await counting_gateway(start_gateway, [audit(log, include_payloads=True), HEADER_AUTH])
    )
    await client.request("tools/call", tool_call("count_lookup", key=f"token {GITHUB}"), id=7)
    line = one_line(await wait_for_lines(lambda: read_lines(log), has_id(7)), 7)
    assert (line["params"], line["result"]) == (NOT_LOGGED, NOT_LOGGED)
    assert "redactions" not in line and "decision" not in line
    assert GITHUB not in log.read_text()


async def test_the_file_rotates_at_max_bytes_and_keeps_its_backups(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    log = tmp_path / "audit.log"
    client = await rita(
        await counting_gateway(start_gateway, [audit(log, max_bytes=1024, backups=2), HEADER_AUTH])
    )
    for request_id in range(100, 112):
        await client.request("tools/call", tool_call("count_lookup", key="k"), id=request_id)
    files = [log, tmp_path / "audit.log.1", tmp_path / "audit.log.2"]
    await wait_for_lines(lambda: read_lines(log), has_id(111))
    assert all(path.exists() and 0 < path.stat().st_size <= 1024 for path in files)
    assert not (tmp_path / "audit.log.3").exists()
    # The newest lines are in the file itself, the oldest in the last backup; the rest were rotated away.
    ids = [line["request_id"] for line in read_lines(*reversed(files)) if line["method"] == "tools/call"]
    assert ids == sorted(ids) and ids[-1] == 111 and 100 not in ids


async def test_notifications_and_what_a_backend_sends_make_no_lines(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    log = tmp_path / "audit.log"
    gw = await start_gateway({"mcpServers": {"ev": everything()}, "plugins": [audit(log)]})
    client = await gw.client(capabilities={"sampling": {}})

    async def answer(request: Message) -> dict[str, Any]:
        return {"role": "assistant", "content": {"type": "text", "text": "hi"}, "model": "m"}

    client.handlers["sampling/createMessage"] = answer
    await client.notify("notifications/roots/list_changed")
    await client.call("tools/call", tool_call("ev_sample", prompt="hello"), id=5)
    assert [r["method"] for r in client.server_requests] == ["sampling/createMessage"]
    lines = await wait_for_lines(lambda: read_lines(log), has_id(5))
    assert [(line["method"], line.get("tool")) for line in lines] == [
        ("initialize", None),
        ("tools/call", "sample"),
    ]
    assert lines[0]["principal"] == {"subject": "anonymous", "kind": "anonymous"}


async def test_lines_go_to_stdout_by_default_and_never_to_the_operators_log(
    start_gateway: StartGateway, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    client = await rita(await counting_gateway(start_gateway, [audit(), HEADER_AUTH]))
    await client.request("tools/call", tool_call("count_lookup", key="k"), id=9)
    printed: list[str] = []

    def read() -> list[dict[str, Any]]:
        printed.extend(capsys.readouterr().out.splitlines())
        return [orjson.loads(line) for line in printed if line.startswith("{")]

    line = one_line(await wait_for_lines(read, has_id(9)), 9)
    assert line["principal"]["subject"] == "rita"
    assert not [r for r in caplog.records if '"request_id"' in r.getMessage()]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # A missing folder is made (as for the token store); a path through a file cannot be.
        ({"file": "/dev/null/audit.log"}, "cannot open the audit file '/dev/null/audit.log'"),
        ({"max_bytes": 10}, "plugins[0].options.max_bytes: Input should be greater than or equal to 1024"),
        ({"backups": 0}, "plugins[0].options.backups: Input should be greater than or equal to 1"),
        ({"payloads": True}, "plugins[0].options.payloads: unknown option"),
    ],
)
def test_bad_options_are_a_one_line_config_error(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    path = tmp_path / "portico.yaml"
    path.write_text(
        orjson.dumps({"mcpServers": {}, "plugins": [{"name": "audit", "options": options}]}).decode()
    )
    with pytest.raises(ConfigError) as refused:
        build_plugins(config.load(path))
    assert message in refused.value.message and "\n" not in refused.value.message


async def test_the_files_folder_is_made_when_missing(tmp_path: Path) -> None:
    log = tmp_path / "not" / "yet" / "audit.log"
    plugin = Audit(AuditOptions(file=str(log)))
    plugin.record_admin({"time": "2026-01-01T00:00:00.000Z", "event": "admin", "status": 200})
    await plugin.close()
    assert [line["event"] for line in read_lines(log)] == ["admin"]


def test_every_key_is_documented_in_the_module_docstring() -> None:
    doc = plugins.audit.__doc__ or ""
    for key in [*DENIED_LINE_KEYS, *PAYLOAD_KEYS, "prompt", "resource", "tenant"]:
        assert re.search(rf"^ {{4}}{key}\b|\b{key}\"?\*", doc, re.MULTILINE), key


# -- one chain, in-process (what a real gateway cannot easily provoke) --------------------------------------

ROUTE = Route("count", "tool", "lookup", "count_lookup")


def context(principal: Principal, direction: Direction = Direction.TO_BACKEND) -> Context:
    return Context(FakeSession(), direction, "tools/call", ROUTE, time.monotonic() + 10, principal=principal)


async def test_a_refusal_from_further_in_is_recorded_and_reaches_the_client_unchanged(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    plugin = Audit(AuditOptions(file=str(log)))

    async def rate_limited(ctx: Context, message: Message) -> Message | None:
        raise RateLimited("Too many calls", retry_after=2.5)

    request = {"jsonrpc": "2.0", "id": "r1", "method": "tools/call", "params": tool_call("count_lookup")}
    principal = Principal(subject="ann", tenant="acme", credential="SECRET-CREDENTIAL", kind="jwt")
    reply = await Chain([NamedPlugin("audit", plugin)], rate_limited).dispatch(context(principal), request)
    await plugin.close()
    assert reply is not None and reply["error"] == {
        "code": -32065,
        "message": "Too many calls",
        "data": {"retryAfterSeconds": 2.5},
    }
    [line] = read_lines(log)
    assert (line["outcome"], line["error_code"], line["bytes_out"]) == (
        "error -32065",
        -32065,
        len(orjson.dumps(reply)),
    )
    assert line["principal"] == {"subject": "ann", "kind": "jwt", "tenant": "acme"}
    assert "SECRET-CREDENTIAL" not in log.read_text()


@pytest.mark.parametrize("recent", [0, 2])
async def test_only_the_latest_records_are_kept_in_memory_exactly_as_written(
    tmp_path: Path, recent: int
) -> None:
    log = tmp_path / "audit.log"
    plugin = Audit(AuditOptions(file=str(log), recent=recent))

    async def answer(ctx: Context, message: Message) -> Message | None:
        return {"jsonrpc": "2.0", "id": message["id"], "result": {"content": []}}

    chain = Chain([NamedPlugin("audit", plugin)], answer)
    for request_id in range(1, 5):
        request = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": tool_call("t", k="v"),
        }
        await chain.dispatch(context(ANONYMOUS), request)
    plugin.record_admin({"time": "2026-01-01T00:00:00.000Z", "event": "admin", "status": 200})
    await plugin.close()
    kept = plugin.recent_records(10)
    written = read_lines(log)
    assert len(written) == 5
    # Newest first, the same dicts as the lines (no arguments: include_payloads is off).
    assert kept == list(reversed(written))[:recent]
    assert plugin.recent_records(1) == kept[:1]


async def test_a_cancelled_request_is_recorded_and_the_cancellation_goes_on(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    plugin = Audit(AuditOptions(file=str(log)))
    started = asyncio.Event()

    async def never_answers(ctx: Context, message: Message) -> Message | None:
        started.set()
        await asyncio.Event().wait()
        return None

    request = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": tool_call("count_lookup")}
    chain = Chain([NamedPlugin("audit", plugin)], never_answers)
    task = asyncio.create_task(chain.dispatch(context(Principal(subject="ann")), request))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await plugin.close()
    [line] = read_lines(log)
    assert (line["outcome"], line["bytes_out"]) == ("cancelled", 0) and "error_code" not in line


async def test_close_writes_every_queued_line_and_stops_the_writer_thread(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    plugin = Audit(AuditOptions(file=str(log)))

    async def answer(ctx: Context, message: Message) -> Message | None:
        return {"jsonrpc": "2.0", "id": message.get("id"), "result": {}}

    chain = Chain([NamedPlugin("audit", plugin)], answer)
    assert plugin.sink.writing
    for request_id in range(200):
        await chain.dispatch(
            context(Principal(subject="ann")), {"jsonrpc": "2.0", "id": request_id, "method": "x"}
        )
    backend_note = {"jsonrpc": "2.0", "id": 999, "method": "sampling/createMessage"}
    await chain.dispatch(context(Principal(subject="ann"), Direction.TO_CLIENT), backend_note)
    await plugin.close()
    await plugin.close()  # closing twice is harmless
    assert [line["request_id"] for line in read_lines(log)] == list(range(200))
    assert not plugin.sink.writing


class StalledOutput(logging.Handler):
    """An output that hangs (a full disk, a blocked pipe) until released."""

    def __init__(self) -> None:
        super().__init__()
        self.unstalled = threading.Event()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.unstalled.wait(10)
        self.lines.append(record.getMessage())


async def test_a_stalled_output_never_blocks_requests_lines_are_dropped_and_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    output = StalledOutput()
    monkeypatch.setattr(sink_module, "MAX_PENDING_LINES", 3)
    monkeypatch.setattr(sink_module, "_open_target", lambda options: output)
    sink = AuditSink(AuditOptions())
    for n in range(10):
        sink.write(str(n))  # returns at once although nothing can be written
    assert 6 <= sink.dropped <= 7
    assert "1 line(s) dropped so far" in caplog.text
    closing = asyncio.create_task(sink.close())
    await asyncio.sleep(0.05)
    output.unstalled.set()
    await closing  # the stop signal waits for room on the full queue instead of failing
    # Every line not dropped is written, in order (which ones were dropped depends on the writer's timing).
    written = [int(line) for line in output.lines]
    assert written == sorted(written) and len(written) == 10 - sink.dropped and written[:3] == [0, 1, 2]
    assert f"{sink.dropped} line(s) were dropped in all" in caplog.text
