"""The MCP Inspector CLI (2.12.0) against a real `python -m proxy serve` process on loopback, with the
reference servers behind it (server-everything, server-memory, mcp-server-time).

Two things are proven here that test_interop.py does not: that resources and prompts, not only tools,
work through the gateway for a client nobody here wrote, over Streamable HTTP and HTTP+SSE; and that
the Inspector's modern era (2026-07-28, stateless) really is spoken end to end. The Inspector's output
hides the protocol's own fields (resultType, ttlMs on lists), so the modern tests put a recording relay
between the Inspector and the gateway and check the wire as well: a silent fall-back to the initialize
handshake would pass every output check, but not those.

Installed by `bash tests/interop/setup.sh`; missing software fails the tests (they never skip).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.gateway_process import GatewayProcess, serve_gateway
from tests.interop.helpers import (
    INSPECTOR,
    NODE,
    SERVER_EVERYTHING,
    SERVER_MEMORY,
    SERVER_TIME,
    Completed,
    node_env,
    parse_json,
    reference_backends,
    require_installed,
    run_process,
    text_of,
)

# Each test starts one gateway (about a second with its three backends) and runs the Inspector a few
# times (each run is bounded by helpers.PROCESS_TIMEOUT); this bounds the whole test.
pytestmark = pytest.mark.timeout(90)

MODERN = "2026-07-28"
LEGACY_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
SERVER_INFO = "io.modelcontextprotocol/serverInfo"
PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"

STATIC_DOC = "portico://everything/demo://resource/static/document/features.md"
DYNAMIC_TEXT = "portico://everything/demo://resource/dynamic/text/{resourceId}"
GRAPH = "portico://memory/memory://knowledge-graph"

# The results 2026-07-28 requires ttlMs and cacheScope on (CacheableResult, SEP-2549).
CACHEABLE = frozenset(
    {"tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"}
)


# --- The Inspector -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inspector:
    """The Inspector CLI aimed at one server, either ad hoc (--transport/--server-url, the legacy era by
    default) or through a --config file (whose protocolEra chooses the era)."""

    target: tuple[str, ...]
    env: dict[str, str]

    @classmethod
    def ad_hoc(cls, transport: str, url: str, home: Path) -> Inspector:
        return cls(("--transport", transport, "--server-url", url), _inspector_env(home))

    @classmethod
    def configured(cls, config: Path, home: Path) -> Inspector:
        env = _inspector_env(home)
        del env["MCP_CATALOG_PATH"]  # the Inspector refuses a writable catalog and --config together
        return cls(("--config", str(config), "--server", "portico"), env)

    async def outcome(self, method: str, *args: str) -> Completed:
        """Run one method; return how the Inspector ended, whatever its exit status."""
        command: list[str | Path] = [NODE, INSPECTOR, "--cli", *self.target, "--format", "json"]
        return await run_process([*command, "--method", method, *args], self.env)

    async def result(self, method: str, *args: str) -> dict[str, Any]:
        """Run one method that must succeed; return the result the Inspector printed."""
        done = await self.outcome(method, *args)
        assert done.returncode == 0, done.describe()
        printed = parse_json(done.stdout)
        assert isinstance(printed, dict) and isinstance(printed.get("result"), dict), done.describe()
        result: dict[str, Any] = printed["result"]
        return result


def _inspector_env(home: Path) -> dict[str, str]:
    # No keychain here: keep the Inspector's secrets in memory rather than have it probe D-Bus or write
    # a plaintext file into HOME.
    return {**node_env(home), "MCP_INSPECTOR_SECRET_STORE": "memory"}


def era_config(tmp_path: Path, url: str, era: str) -> Path:
    """An Inspector --config file naming the gateway's /mcp (or a relay in front of it) with an era."""
    path = tmp_path / f"inspector-{era}.json"
    path.write_text(json.dumps({"mcpServers": {"portico": {"type": "http", "url": url, "protocolEra": era}}}))
    return path


# --- A recording relay between the Inspector and the gateway ------------------------------------


HOP_BY_HOP = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding"}
)


@dataclass
class Exchange:
    """One HTTP request the Inspector made, and the gateway's answer as it streamed through."""

    verb: str
    headers: dict[str, str]  # names lower-cased
    body: Any
    status: int = 0
    reply_headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    reply: bytearray = field(default_factory=bytearray)

    @property
    def method(self) -> str | None:
        return self.body.get("method") if isinstance(self.body, dict) else None

    def messages(self) -> list[Any]:
        """The JSON-RPC messages of the answer: the JSON body, or the data of each SSE event."""
        text = self.reply.decode()
        if not self.reply_headers.get("content-type", "").startswith("text/event-stream"):
            return [json.loads(text)] if text.strip() else []
        found: list[Any] = []
        for event in text.replace("\r\n", "\n").split("\n\n"):
            data = [line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:")]
            if data:
                found.append(json.loads("\n".join(data)))
        return found

    def response(self) -> dict[str, Any]:
        """The JSON-RPC response to this request (the last message of its answer)."""
        messages = self.messages()
        assert messages, f"no answer to {self.method}: HTTP {self.status}"
        reply = messages[-1]
        assert isinstance(reply, dict) and ("result" in reply or "error" in reply), messages
        return reply


class WireRecorder:
    """A loopback HTTP relay to the gateway's /mcp that keeps every exchange and streams answers through
    as they come (a listen stream stays open; closing the client's side closes the gateway's)."""

    def __init__(self, upstream: str, http: aiohttp.ClientSession) -> None:
        self.upstream = upstream
        self.http = http
        self.exchanges: list[Exchange] = []
        self.url = ""

    async def relay(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers_seen = {k.lower(): v for k, v in request.headers.items()}
        exchange = Exchange(request.method, headers_seen, json.loads(raw) if raw else None)
        self.exchanges.append(exchange)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self.http.request(request.method, self.upstream, headers=headers, data=raw) as upstream:
            exchange.status = upstream.status
            exchange.reply_headers = {k.lower(): v for k, v in upstream.headers.items()}
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP},
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                exchange.reply += chunk
                await response.write(chunk)
            await response.write_eof()
            return response

    def of(self, method: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == method]


@contextlib.asynccontextmanager
async def wire_recorder(upstream: str) -> AsyncIterator[WireRecorder]:
    """A relay on 127.0.0.1 in front of ``upstream``, for the duration of the block."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as http:
        recorder = WireRecorder(upstream, http)
        app = web.Application()
        app.router.add_route("*", "/mcp", recorder.relay)
        # TestServer cancels a handler whose client went away, so an open listen stream ends with it.
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        recorder.url = str(server.make_url("/mcp"))
        try:
            yield recorder
        finally:
            await server.close()


# --- The gateway ---------------------------------------------------------------------------------


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """`python -m proxy serve` on 127.0.0.1 with the three reference servers behind it; stopped at the
    end of the test (with its children), and its stderr checked for tracebacks."""
    require_installed(INSPECTOR, SERVER_EVERYTHING, SERVER_MEMORY, SERVER_TIME)
    with serve_gateway(tmp_path, {"listen": {"host": "127.0.0.1"}, **reference_backends(tmp_path)}) as gw:
        yield gw


# --- The legacy era (the Inspector's default) over Streamable HTTP and HTTP+SSE ------------------


@pytest.mark.parametrize(("transport", "path"), [("http", "/mcp"), ("sse", "/sse")])
async def test_legacy_era_resources_prompts_and_tools(
    gateway: GatewayProcess, tmp_path: Path, transport: str, path: str
) -> None:
    """Everything the three backends offer is usable through the gateway's own names over each HTTP
    transport: resources listed and read by their exposed portico:// URIs (templates too), prompts
    listed and rendered with arguments, tools of every backend called, and state kept across calls."""
    inspector = Inspector.ad_hoc(transport, gateway.base + path, tmp_path / "home")
    hello, resources, templates, doc, dynamic, prompts, prompt, total, now = await asyncio.gather(
        inspector.result("initialize"),
        inspector.result("resources/list"),
        inspector.result("resources/templates/list"),
        inspector.result("resources/read", "--uri", STATIC_DOC),
        inspector.result("resources/read", "--uri", DYNAMIC_TEXT.format(resourceId=7)),
        inspector.result("prompts/list"),
        inspector.result("prompts/get", "--prompt-name", "everything_args-prompt",
                         "--prompt-args", "city=Paris", "state=IDF"),
        inspector.result("tools/call", "--tool-name", "everything_get-sum", "--tool-arg", "a=2", "b=40"),
        inspector.result("tools/call", "--tool-name", "time_get_current_time",
                         "--tool-arg", "timezone=Europe/Paris"),
    )  # fmt: skip
    assert hello["protocolVersion"] in LEGACY_VERSIONS, hello  # the handshake era, the Inspector's default
    assert hello["serverInfo"]["name"] == "portico"

    uris = [r["uri"] for r in resources["resources"]]
    assert len(uris) == len(set(uris)), uris
    assert all(uri.startswith(("portico://everything/", "portico://memory/")) for uri in uris), uris
    assert {STATIC_DOC, GRAPH} <= set(uris), uris
    assert DYNAMIC_TEXT in {t["uriTemplate"] for t in templates["resourceTemplates"]}, templates

    [content] = doc["contents"]
    assert content["uri"] == STATIC_DOC  # the URI comes back as the client asked for it, not the backend's
    assert content["mimeType"] == "text/markdown"
    assert content["text"].startswith("# Everything Server - Features"), content["text"][:200]
    [generated] = dynamic["contents"]
    assert generated["uri"] == DYNAMIC_TEXT.format(resourceId=7)
    assert generated["text"].startswith("Resource 7: "), generated

    listed = {p["name"]: p for p in prompts["prompts"]}
    assert {"everything_simple-prompt", "everything_args-prompt", "everything_resource-prompt"} <= set(listed)
    arguments = [(a["name"], a.get("required", False)) for a in listed["everything_args-prompt"]["arguments"]]
    assert arguments == [("city", True), ("state", False)]
    assert prompt["messages"] == [
        {"role": "user", "content": {"type": "text", "text": "What's weather in Paris, IDF?"}}
    ]

    assert text_of(total) == "The sum of 2 and 40 is 42."
    assert now.get("isError") is not True, now
    assert now["structuredContent"]["timezone"] == "Europe/Paris"
    assert json.loads(text_of(now))["timezone"] == "Europe/Paris"

    # Two separate Inspector connections: what one stores in server-memory, a later one reads back as
    # memory's resource, so both reached the same backend through the gateway.
    entity = {"name": f"portico-{transport}", "entityType": "gateway", "observations": ["speaks MCP"]}
    created = await inspector.result(
        "tools/call", "--tool-name", "memory_create_entities",
        "--tool-args-json", json.dumps({"entities": [entity]}),
    )  # fmt: skip
    assert created.get("isError") is not True, created
    graph = await inspector.result("resources/read", "--uri", GRAPH)
    [stored] = graph["contents"]
    assert stored["uri"] == GRAPH
    assert json.loads(stored["text"])["entities"] == [entity]


async def test_resource_embedded_in_a_prompt_is_readable_through_the_gateway(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    """A resource a prompt embeds or links is one the client may fetch from the server it asked (2026-07-28
    prompts: "a URI that can be fetched by the client"); through a gateway that server is the gateway, so
    the URI must come back in its exposed form (README: "URIs in results come back in the exposed form").
    Tool results already do; a prompt's messages must too."""
    inspector = Inspector.ad_hoc("http", gateway.mcp, tmp_path / "home")
    exposed = DYNAMIC_TEXT.format(resourceId=2)

    tool = await inspector.result(
        "tools/call", "--tool-name", "everything_get-resource-reference",
        "--tool-arg", "resourceType=Text", "resourceId=2",
    )  # fmt: skip
    assert [c["resource"]["uri"] for c in tool["content"] if c["type"] == "resource"] == [exposed], tool

    prompt = await inspector.result(
        "prompts/get", "--prompt-name", "everything_resource-prompt",
        "--prompt-args", "resourceType=Text", "resourceId=2",
    )  # fmt: skip
    embedded = [m["content"]["resource"] for m in prompt["messages"] if m["content"]["type"] == "resource"]
    assert [r["uri"] for r in embedded] == [exposed], prompt
    read = await inspector.result("resources/read", "--uri", embedded[0]["uri"])
    assert read["contents"][0]["text"].startswith("Resource 2: "), read


# --- The modern era (2026-07-28) over Streamable HTTP, chosen by the Inspector's --config ---------


@pytest.mark.parametrize("era", ["modern", "auto"])
async def test_modern_era_over_streamable_http(gateway: GatewayProcess, tmp_path: Path, era: str) -> None:
    """With protocolEra "modern" (pinned) or "auto" (negotiated), the Inspector lists and calls tools,
    reads a resource and renders a prompt in 2026-07-28: no handshake on the wire, every request carries
    its version in headers and _meta, and every result carries resultType and the gateway's serverInfo
    (plus ttlMs/cacheScope on lists and reads)."""
    async with wire_recorder(gateway.mcp) as recorder:
        inspector = Inspector.configured(era_config(tmp_path, recorder.url, era), tmp_path / "home")
        hello, tools, echoed, now, doc, prompt = await asyncio.gather(
            inspector.result("initialize"),
            inspector.result("tools/list"),
            inspector.result("tools/call", "--tool-name", "everything_echo",
                             "--tool-arg", "message=modern hello"),
            inspector.result("tools/call", "--tool-name", "time_get_current_time",
                             "--tool-arg", "timezone=UTC"),
            inspector.result("resources/read", "--uri", STATIC_DOC),
            inspector.result("prompts/get", "--prompt-name", "everything_args-prompt",
                             "--prompt-args", "city=Lyon"),
        )  # fmt: skip

    # What the Inspector printed: the era it settled on, and the gateway's results in it.
    assert hello["protocolVersion"] == MODERN, {k: v for k, v in hello.items() if k != "instructions"}
    assert hello["serverInfo"]["name"] == "portico"
    names = {t["name"] for t in tools["tools"]}
    assert {"everything_echo", "memory_read_graph", "time_get_current_time"} <= names, names
    assert text_of(echoed) == "Echo: modern hello"
    assert now["structuredContent"]["timezone"] == "UTC"
    [content] = doc["contents"]
    assert content["uri"] == STATIC_DOC
    assert content["text"].startswith("# Everything Server - Features")
    assert isinstance(doc["ttlMs"], int) and doc["cacheScope"] in ("public", "private"), doc
    assert prompt["messages"] == [
        {"role": "user", "content": {"type": "text", "text": "What's weather in Lyon?"}}
    ]
    for result in (echoed, now, doc, prompt):
        assert result["_meta"][SERVER_INFO]["name"] == "portico", result  # 2026-07-28 results name the server

    # What went over the wire: the modern era only, never the handshake.
    methods = [e.method for e in recorder.exchanges]
    assert not {"initialize", "notifications/initialized"} & set(methods), methods
    assert {"server/discover", "tools/list", "tools/call", "resources/read", "prompts/get"} <= set(methods)
    for exchange in recorder.exchanges:
        assert exchange.verb == "POST", (exchange.verb, methods)  # no GET stream, no DELETE
        assert exchange.headers.get("mcp-protocol-version") == MODERN, exchange.headers
        assert exchange.headers.get("mcp-method") == exchange.method, exchange.headers
        assert exchange.body["params"]["_meta"][PROTOCOL_VERSION] == MODERN, exchange.body
        assert "mcp-session-id" not in exchange.reply_headers, exchange.reply_headers  # stateless
    for discover in recorder.of("server/discover"):
        assert MODERN in discover.response()["result"]["supportedVersions"]
    for method in ("tools/list", "tools/call", "resources/read", "prompts/get"):
        for exchange in recorder.of(method):
            assert exchange.status == 200, (method, exchange.status, exchange.reply)
            result = exchange.response()["result"]
            assert result["resultType"] == "complete", (method, result)
            assert result["_meta"][SERVER_INFO]["name"] == "portico", (method, result)
            if method in CACHEABLE:
                assert isinstance(result["ttlMs"], int) and result["ttlMs"] >= 0, (method, result)
                assert result["cacheScope"] in ("public", "private"), (method, result)


async def test_modern_listen_stream_is_acknowledged(gateway: GatewayProcess, tmp_path: Path) -> None:
    """Every 2026-07-28 implementation MUST support the message patterns, Subscribe and Notify among them
    (basic/index), and the gateway advertises listChanged and resources.subscribe, notifications that in
    that era travel only on a subscriptions/listen stream. The Inspector opens one on connect; it must
    open with notifications/subscriptions/acknowledged, not be refused as an unknown method."""
    async with wire_recorder(gateway.mcp) as recorder:
        inspector = Inspector.configured(era_config(tmp_path, recorder.url, "modern"), tmp_path / "home")
        hello = await inspector.result("initialize")
    assert hello["protocolVersion"] == MODERN
    assert hello["capabilities"]["tools"].get("listChanged") is True, hello["capabilities"]

    listens = recorder.of("subscriptions/listen")
    assert listens, f"the Inspector opened no listen stream: {[e.method for e in recorder.exchanges]}"
    for listen in listens:
        assert listen.status == 200, (listen.status, listen.reply.decode())
        content_type = listen.reply_headers.get("content-type", "")
        assert content_type.startswith("text/event-stream"), listen.reply_headers
        messages = listen.messages()
        assert messages, "the listen stream carried nothing"
        assert messages[0].get("method") == "notifications/subscriptions/acknowledged", messages


@pytest.mark.parametrize(("era", "code"), [("legacy", -32002), ("modern", -32602)])
async def test_unknown_resource_error_code_follows_the_era(
    gateway: GatewayProcess, tmp_path: Path, era: str, code: int
) -> None:
    """A URI no backend owns is refused by the gateway itself, with the code of the request's era: -32002
    up to 2025-11-25; 2026-07-28 replaced it by -32602 and says implementations MUST NOT emit -32002."""
    async with wire_recorder(gateway.mcp) as recorder:
        inspector = Inspector.configured(era_config(tmp_path, recorder.url, era), tmp_path / "home")
        done = await inspector.outcome("resources/read", "--uri", "demo://no-backend-owns-this")
    assert done.returncode != 0, done.describe()
    assert "not found" in done.stderr.lower(), done.describe()
    [read] = recorder.of("resources/read")
    assert read.response()["error"]["code"] == code, (era, read.status, read.reply.decode())
