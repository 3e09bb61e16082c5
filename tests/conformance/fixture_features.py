"""What the conformance fixture serves: the tools, resources, prompts and completions that the
official conformance suite's *server* scenarios call by name.

``@modelcontextprotocol/conformance`` tests a server by calling fixed names (``test_simple_text``,
``test://static-text``, ``test_simple_prompt``, ...) and checking what comes back. Each item below
says which scenario wants it. The expectations come from the scenario descriptions printed by the
conformance CLI and from its sources; the implementation is ours, on the mcp SDK's low-level
``Server`` (it is the tier that lets a handler return an ``InputRequiredResult`` itself, pick
error codes, and serve ``logging/setLevel`` and ``resources/subscribe`` for the 2025 era).

One server speaks both protocol eras. Where a tool needs something from the client (an elicitation,
a sampling, the roots), :func:`ask` hides the difference: in the handshake era (2025-11-25) it sends
the question as a server-to-client request on the call's back-channel; in the modern era
(2026-07-28), which forbids server-initiated requests, it answers the call with an
``InputRequiredResult`` and finds the client's answers in the retried call's ``inputResponses``.

State is process-wide (log level, subscriptions, list generations): one fixture process serves one
test run, whose scenarios run one after another.
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import warnings
import wave
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, get_args

import anyio
import mcp_types as types
from mcp.server.caching import CacheableMethod, CacheHint
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

# The 2025-era scenarios exercise logging, sampling, roots and resources/subscribe, which mcp 2.x
# marks deprecated (SEP-2577); serving them is the point here, so the warnings are only noise.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

SERVER_NAME: Final = "portico-conformance-fixture"
SERVER_VERSION: Final = "1.0.0"
LOGGER_NAME: Final = "conformance-fixture"
# The SSE ``retry`` the HTTP transport advertises; test_reconnection waits a few of these.
RECONNECT_AFTER_MS: Final = 100
LEVELS: Final[tuple[types.LoggingLevel, ...]] = get_args(types.LoggingLevel)  # ascending severity

Context = ServerRequestContext[Any, Any]
ToolOutcome = types.CallToolResult | types.InputRequiredResult
Answers = dict[str, types.InputResponse]

NO_ARGUMENTS: Final[dict[str, Any]] = {"type": "object", "properties": {}}
CONFIRM_FORM: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
}

# --- binary payloads, made here rather than pasted in as opaque base64 ---------------------------


def red_pixel_png() -> bytes:
    """A valid 1x1 red PNG (tools-call-image, resources-read-binary, prompts-get-with-image)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte 0, then one red pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def silent_wav() -> bytes:
    """10 ms of silence as a valid WAV file (tools-call-audio wants ``audio/wav``)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\x00\x00" * 80)
    return buffer.getvalue()


PNG_BASE64: Final = base64.b64encode(red_pixel_png()).decode()
WAV_BASE64: Final = base64.b64encode(silent_wav()).decode()


def text(value: str) -> types.TextContent:
    return types.TextContent(type="text", text=value)


def image() -> types.ImageContent:
    return types.ImageContent(type="image", data=PNG_BASE64, mime_type="image/png")


def embedded_text(uri: str, value: str, mime_type: str = "text/plain") -> types.EmbeddedResource:
    contents = types.TextResourceContents(uri=uri, mime_type=mime_type, text=value)
    return types.EmbeddedResource(type="resource", resource=contents)


# --- asking the client something, in either era ----------------------------------------------------


def is_modern(ctx: Context) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def elicitation(message: str, schema: dict[str, Any]) -> types.ElicitRequest:
    return types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))


def sampling(prompt: str, max_tokens: int) -> types.CreateMessageRequest:
    message = types.SamplingMessage(role="user", content=text(prompt))
    return types.CreateMessageRequest(
        params=types.CreateMessageRequestParams(messages=[message], max_tokens=max_tokens)
    )


def roots_request() -> types.ListRootsRequest:
    return types.ListRootsRequest(params=types.RequestParams())


def string_form(*names: str) -> dict[str, Any]:
    """An elicitation schema asking for the given required string fields."""
    return {
        "type": "object",
        "properties": {name: {"type": "string"} for name in names},
        "required": list(names),
    }


# What each kind of question needs the client to have declared, and the result type it gets back.
_CAPABILITY_FOR: Final[dict[str, tuple[str, types.ClientCapabilities]]] = {
    "elicitation/create": (
        "elicitation",
        types.ClientCapabilities(elicitation=types.ElicitationCapability()),
    ),
    "sampling/createMessage": ("sampling", types.ClientCapabilities(sampling=types.SamplingCapability())),
    "roots/list": ("roots", types.ClientCapabilities(roots=types.RootsCapability())),
}
_RESULT_FOR: Final[dict[str, type[types.InputResponse]]] = {
    "elicitation/create": types.ElicitResult,
    "sampling/createMessage": types.CreateMessageResult,
    "roots/list": types.ListRootsResult,
}


def client_can_answer(ctx: Context, question: types.InputRequest) -> bool:
    return ctx.session.check_client_capability(_CAPABILITY_FOR[question.method][1])


def require_capabilities(ctx: Context, questions: Mapping[str, types.InputRequest]) -> None:
    """Refuse with -32021 when a question needs a capability the client did not declare.

    A server must not rely on undeclared client capabilities (server-stateless wants the error's
    ``data.requiredCapabilities`` to be a ClientCapabilities object such as ``{"sampling": {}}``).
    """
    missing: dict[str, dict[str, Any]] = {
        _CAPABILITY_FOR[q.method][0]: {} for q in questions.values() if not client_can_answer(ctx, q)
    }
    if missing:
        raise MCPError(
            code=types.MISSING_REQUIRED_CLIENT_CAPABILITY,
            message=f"this tool needs the client capabilities {sorted(missing)}",
            data={"requiredCapabilities": missing},
        )


async def ask(
    ctx: Context,
    params: types.CallToolRequestParams,
    questions: Mapping[str, types.InputRequest],
    *,
    request_state: str | None = None,
) -> Answers | types.InputRequiredResult:
    """The client's answers to ``questions``, or the ``InputRequiredResult`` that asks for them.

    Modern era: answers come in the retried request's ``inputResponses``; any question still
    unanswered is asked (again) with an ``InputRequiredResult``, never an error, and unknown
    extra answers are ignored (input-required-result-missing-input-response, -ignore-extra-params).
    A retry must echo the ``request_state`` its round minted, if it minted one.
    Handshake era: the questions are server-to-client requests on this call's back-channel.
    """
    require_capabilities(ctx, questions)
    if is_modern(ctx):
        given = params.input_responses or {}
        if given and request_state is not None:
            check_state(params.request_state, request_state)
        missing = {key: question for key, question in questions.items() if key not in given}
        if missing:
            return types.InputRequiredResult(input_requests=missing, request_state=request_state)
        return {key: given[key] for key in questions}
    return await ask_over_back_channel(ctx, questions)


async def ask_over_back_channel(ctx: Context, questions: Mapping[str, types.InputRequest]) -> Answers:
    """Send every question at once, as an ``InputRequiredResult`` would ask them all at once."""
    metadata = ServerMessageMetadata(related_request_id=ctx.request_id)
    answers: Answers = {}

    async def send(key: str, question: types.InputRequest) -> None:
        answers[key] = await ctx.session.send_request(
            question, _RESULT_FOR[question.method], metadata=metadata
        )

    try:
        async with anyio.create_task_group() as group:
            for key, question in questions.items():
                group.start_soon(send, key, question)
    except ExceptionGroup as failures:
        # A refused question fails the call with that refusal, not with a task-group wrapper.
        raise failures.exceptions[0] from None
    return {key: answers[key] for key in questions}


def describe(answer: types.InputResponse) -> str:
    """A one-line account of an answer, for the text a tool returns."""
    if isinstance(answer, types.ElicitResult):
        return f"action={answer.action}, content={json.dumps(answer.content, sort_keys=True)}"
    if isinstance(answer, types.ListRootsResult):
        return "roots: " + ", ".join(str(root.uri) for root in answer.roots)
    blocks = answer.content if isinstance(answer.content, list) else [answer.content]
    return " ".join(b.text if isinstance(b, types.TextContent) else f"<{b.type} content>" for b in blocks)


def elicited(answer: types.InputResponse, name: str) -> object:
    """One field of an accepted elicitation (None for anything else)."""
    if isinstance(answer, types.ElicitResult) and answer.content:
        return answer.content.get(name)
    return None


def check_state(received: str | None, expected: str) -> None:
    """Refuse a retry whose (already unsealed) requestState is not the one this round minted."""
    if received != expected:
        raise MCPError(code=types.INVALID_PARAMS, message=f"unexpected requestState {received!r}")


# --- the fixture ------------------------------------------------------------------------------------

ToolBody = Callable[[Context, types.CallToolRequestParams], Awaitable[ToolOutcome]]
PromptBody = Callable[
    [Context, types.GetPromptRequestParams], Awaitable[types.GetPromptResult | types.InputRequiredResult]
]

TEMPLATE_URI: Final = "test://template/{id}/data"
TEMPLATE_PATTERN: Final = re.compile(r"^test://template/(?P<id>[^/]+)/data$")
# uri: (name, description, MIME type)
STATIC_RESOURCES: Final[dict[str, tuple[str, str, str]]] = {
    "test://static-text": ("Static text", "A static text resource (resources-read-text)", "text/plain"),
    "test://static-binary": ("Static binary", "A 1x1 PNG image (resources-read-binary)", "image/png"),
    "test://watched-resource": ("Watched", "A resource to subscribe to (resources-subscribe)", "text/plain"),
}
COMPLETIONS: Final[dict[str, tuple[str, ...]]] = {
    "arg1": ("paris", "park", "party", "test-value"),
    "arg2": ("alpha", "beta", "gamma"),
    "id": ("1", "2", "3", "123"),
}


def tool_list_description(generation: int) -> str:
    return f"Changes the tool list, now at generation {generation} (server-stateless)."


def prompt_list_description(generation: int) -> str:
    return f"A prompt without arguments, in prompt list generation {generation} (prompts-get-simple)."


@dataclass
class ToolEntry:
    name: str
    description: str
    body: ToolBody
    input_schema: dict[str, Any] = field(default_factory=lambda: dict(NO_ARGUMENTS))


@dataclass
class PromptEntry:
    name: str
    description: str
    body: PromptBody
    arguments: list[types.PromptArgument] = field(default_factory=list)


class FixtureServer(Server[Any]):
    """The low-level ``Server``, announcing ``listChanged`` to handshake-era clients.

    The 2025 handshake takes its capabilities from ``create_initialization_options()``, which the
    SDK's HTTP session manager calls without notification options; this fixture does send
    tools/prompts ``list_changed``, so it says so. (Modern-era capabilities derive from
    ``subscriptions/listen`` being served.)
    """

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        announced = notification_options or NotificationOptions(prompts_changed=True, tools_changed=True)
        return super().create_initialization_options(announced, experimental_capabilities, extensions)


class Fixture:
    """Handlers and process-wide state; :meth:`build_server` wires them into a ``FixtureServer``."""

    def __init__(self) -> None:
        self.log_level: types.LoggingLevel = "debug"
        self.subscriptions: set[str] = set()
        # Bumped by the trigger tools and shown in a listed description, so that every list_changed
        # they announce is a real change (a gateway may well drop a notification that changes nothing).
        self.tool_generation = 1
        self.prompt_generation = 1
        self.bus = InMemorySubscriptionBus()
        self.listen = ListenHandler(self.bus)
        self.tools = {tool.name: tool for tool in self._tools()}
        self.prompts = {prompt.name: prompt for prompt in self._prompts()}

    def build_server(self) -> FixtureServer:
        # Every cacheable result is immediately stale (ttl 0): the trigger tools change the lists.
        hint = CacheHint(ttl_ms=0, scope="public")
        server = FixtureServer(
            SERVER_NAME,
            version=SERVER_VERSION,
            cache_hints=dict.fromkeys(get_args(CacheableMethod), hint),
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
            on_subscribe_resource=self.subscribe,
            on_unsubscribe_resource=self.unsubscribe,
            on_subscriptions_listen=self.listen,
            on_list_prompts=self.list_prompts,
            on_get_prompt=self.get_prompt,
            on_completion=self.complete,
            on_set_logging_level=self.set_logging_level,
        )
        # Seals the requestState the MRTR tools mint and refuses a tampered echo with -32602
        # (input-required-result-tampered-state); handlers only ever see their own plaintext.
        security = RequestStateSecurity.ephemeral()
        server.middleware.append(RequestStateBoundary(security, default_audience=SERVER_NAME))
        return server

    # --- tools ---------------------------------------------------------------------------------

    def _tools(self) -> list[ToolEntry]:
        return [
            ToolEntry(
                "test_simple_text", "Returns a simple text (tools-call-simple-text).", self.simple_text
            ),
            ToolEntry(
                "test_image_content", "Returns a 1x1 PNG image (tools-call-image).", self.image_content
            ),
            ToolEntry(
                "test_audio_content", "Returns a short WAV clip (tools-call-audio).", self.audio_content
            ),
            ToolEntry(
                "test_embedded_resource",
                "Returns an embedded text resource (tools-call-embedded-resource).",
                self.embedded_resource,
            ),
            ToolEntry(
                "test_multiple_content_types",
                "Returns text, an image and a resource (tools-call-mixed-content).",
                self.multiple_content_types,
            ),
            ToolEntry(
                "test_error_handling", "Always fails with isError (tools-call-error).", self.error_handling
            ),
            ToolEntry(
                "test_tool_with_logging",
                "Logs three info messages while it runs (tools-call-with-logging).",
                self.with_logging,
            ),
            ToolEntry(
                "test_logging_tool",
                "Logs three info messages; only when the request opted in (server-stateless).",
                self.with_logging,
            ),
            ToolEntry(
                "test_tool_with_progress",
                "Reports progress 0, 50, 100 of 100 (tools-call-with-progress).",
                self.with_progress,
            ),
            ToolEntry(
                "test_sampling",
                "Asks the client's LLM (tools-call-sampling).",
                self.sampling,
                {"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]},
            ),
            ToolEntry(
                "test_elicitation",
                "Asks the user for a username and an email (tools-call-elicitation).",
                self.elicitation,
                {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
            ),
            ToolEntry(
                "test_elicitation_sep1034_defaults",
                "Elicits every primitive type with a default (elicitation-sep1034-defaults).",
                self.elicitation_defaults,
            ),
            ToolEntry(
                "test_elicitation_sep1330_enums",
                "Elicits the five enum schema variants (elicitation-sep1330-enums).",
                self.elicitation_enums,
            ),
            ToolEntry(
                "json_schema_2020_12_tool",
                "Has an input schema with JSON Schema 2020-12 keywords (json-schema-2020-12).",
                self.json_schema_tool,
                json_schema_2020_12(),
            ),
            ToolEntry(
                "test_custom_headers",
                "Takes a region also sent as Mcp-Param-Region (http-custom-header-server-validation).",
                self.custom_headers,
                {
                    "type": "object",
                    "properties": {"region": {"type": "string", "x-mcp-header": "Region"}},
                    "required": ["region"],
                },
            ),
            ToolEntry(
                "test_reconnection",
                "Closes its SSE stream mid-call and answers on the resumed one (server-sse-polling).",
                self.reconnection,
            ),
            ToolEntry(
                "test_missing_capability",
                "Needs the client's sampling capability (server-stateless).",
                self.missing_capability,
            ),
            ToolEntry(
                "test_streaming_elicitation",
                "Asks the user a question mid-call (server-stateless).",
                self.streaming_elicitation,
            ),
            ToolEntry(
                "test_trigger_tool_change",
                tool_list_description(self.tool_generation),
                self.trigger_tool_change,
            ),
            ToolEntry(
                "test_trigger_prompt_change",
                "Changes the prompt list (server-stateless).",
                self.trigger_prompt_change,
            ),
            ToolEntry(
                "test_input_required_result_elicitation",
                "Asks for a name, then greets (input-required-result-basic-elicitation).",
                self.mrtr_elicitation,
            ),
            ToolEntry(
                "test_input_required_result_sampling",
                "Asks the client's LLM a question (input-required-result-basic-sampling).",
                self.mrtr_sampling,
            ),
            ToolEntry(
                "test_input_required_result_list_roots",
                "Asks for the client's roots (input-required-result-basic-list-roots).",
                self.mrtr_list_roots,
            ),
            ToolEntry(
                "test_input_required_result_request_state",
                "Round-trips a requestState (input-required-result-request-state).",
                self.mrtr_request_state,
            ),
            ToolEntry(
                "test_input_required_result_multiple_inputs",
                "Asks three questions at once (input-required-result-multiple-input-requests).",
                self.mrtr_multiple_inputs,
            ),
            ToolEntry(
                "test_input_required_result_multi_round",
                "Asks two questions in two rounds (input-required-result-multi-round).",
                self.mrtr_multi_round,
            ),
            ToolEntry(
                "test_input_required_result_tampered_state",
                "Refuses a tampered requestState (input-required-result-tampered-state).",
                self.mrtr_tampered_state,
            ),
            ToolEntry(
                "test_input_required_result_capabilities",
                "Asks only what the client declared it can answer (input-required-result-capability-check).",
                self.mrtr_capabilities,
            ),
        ]

    async def list_tools(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        tools = [
            types.Tool(name=tool.name, description=tool.description, input_schema=tool.input_schema)
            for tool in self.tools.values()
        ]
        return types.ListToolsResult(tools=tools)

    async def call_tool(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        tool = self.tools.get(params.name)
        if tool is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {params.name}")
        return await tool.body(ctx, params)

    async def simple_text(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        return types.CallToolResult(content=[text("This is a simple text response for testing.")])

    async def image_content(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        return types.CallToolResult(content=[image()])

    async def audio_content(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        audio = types.AudioContent(type="audio", data=WAV_BASE64, mime_type="audio/wav")
        return types.CallToolResult(content=[audio])

    async def embedded_resource(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        resource = embedded_text("test://embedded-resource", "This is an embedded resource content.")
        return types.CallToolResult(content=[resource])

    async def multiple_content_types(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        data = embedded_text(
            "test://mixed-content-resource", '{"test":"data","value":123}', "application/json"
        )
        return types.CallToolResult(content=[text("Multiple content types test:"), image(), data])

    async def error_handling(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        message = text("This tool intentionally returns an error for testing")
        return types.CallToolResult(content=[message], is_error=True)

    async def with_logging(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        """Three info messages, 50 ms apart, so a client sees them arrive during the call.

        The SDK drops them on a modern request that did not set the ``logLevel`` ``_meta`` key;
        in the handshake era the level from ``logging/setLevel`` filters them here.
        """
        for index, message in enumerate(
            ("Tool execution started", "Tool processing data", "Tool execution completed")
        ):
            if index:
                await anyio.sleep(0.05)
            await self.log(ctx, "info", message)
        return types.CallToolResult(content=[text("Tool with logging executed successfully")])

    async def log(self, ctx: Context, level: types.LoggingLevel, message: str) -> None:
        if LEVELS.index(level) >= LEVELS.index(self.log_level):
            await ctx.session.send_log_message(level, message, LOGGER_NAME, related_request_id=ctx.request_id)

    async def with_progress(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        """Progress 0, 50, 100 of 100, 50 ms apart (a no-op without a progress token)."""
        for index, progress in enumerate((0, 50, 100)):
            if index:
                await anyio.sleep(0.05)
            await ctx.session.report_progress(progress, 100)
        return types.CallToolResult(content=[text("Tool with progress completed")])

    async def sampling(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        prompt = str((params.arguments or {}).get("prompt", ""))
        answers = await ask(ctx, params, {"llm": sampling(prompt, 100)})
        if isinstance(answers, types.InputRequiredResult):
            return answers
        return types.CallToolResult(content=[text(f"LLM response: {describe(answers['llm'])}")])

    async def elicitation(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        message = str((params.arguments or {}).get("message", "Please provide your information"))
        schema = {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        }
        answers = await ask(ctx, params, {"user_info": elicitation(message, schema)})
        if isinstance(answers, types.InputRequiredResult):
            return answers
        return types.CallToolResult(content=[text(f"User response: {describe(answers['user_info'])}")])

    async def elicitation_defaults(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        schema = {
            "type": "object",
            "properties": {
                "name": {"type": "string", "default": "John Doe"},
                "age": {"type": "integer", "default": 30},
                "score": {"type": "number", "default": 95.5},
                "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
                "verified": {"type": "boolean", "default": True},
            },
        }
        return await self._elicit_and_report(ctx, params, "Please review your profile", schema)

    async def elicitation_enums(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        options = ["option1", "option2", "option3"]
        schema = {
            "type": "object",
            "properties": {
                "untitledSingle": {"type": "string", "enum": options},
                "titledSingle": {
                    "type": "string",
                    "oneOf": [
                        {"const": "value1", "title": "First Option"},
                        {"const": "value2", "title": "Second Option"},
                        {"const": "value3", "title": "Third Option"},
                    ],
                },
                "legacyEnum": {
                    "type": "string",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"],
                },
                "untitledMulti": {"type": "array", "items": {"type": "string", "enum": options}},
                "titledMulti": {
                    "type": "array",
                    "items": {
                        "anyOf": [
                            {"const": "value1", "title": "First Choice"},
                            {"const": "value2", "title": "Second Choice"},
                            {"const": "value3", "title": "Third Choice"},
                        ]
                    },
                },
            },
        }
        return await self._elicit_and_report(ctx, params, "Please choose some options", schema)

    async def _elicit_and_report(
        self, ctx: Context, params: types.CallToolRequestParams, message: str, schema: dict[str, Any]
    ) -> ToolOutcome:
        answers = await ask(ctx, params, {"form": elicitation(message, schema)})
        if isinstance(answers, types.InputRequiredResult):
            return answers
        return types.CallToolResult(content=[text(f"Elicitation completed: {describe(answers['form'])}")])

    async def json_schema_tool(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        return types.CallToolResult(content=[text(f"Received: {json.dumps(params.arguments or {})}")])

    async def custom_headers(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        """The SDK's modern HTTP entry checks the ``Mcp-Param-Region`` header against the body."""
        return types.CallToolResult(content=[text(f"Region: {(params.arguments or {}).get('region')}")])

    async def reconnection(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        """Ends the POST's event stream early; the client resumes with ``Last-Event-ID`` and gets the
        result from the event store. Only a handshake-era HTTP call has a stream to close."""
        if ctx.close_sse_stream is not None:
            await anyio.sleep(0.05)
            await ctx.close_sse_stream()
            await anyio.sleep(RECONNECT_AFTER_MS / 1000 * 3)
        return types.CallToolResult(content=[text("Reconnection test completed")])

    async def missing_capability(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        """Needs sampling: without the capability, :func:`ask` refuses with -32021."""
        answers = await ask(ctx, params, {"summary": sampling("Summarise the weather", 50)})
        if isinstance(answers, types.InputRequiredResult):
            return answers
        return types.CallToolResult(content=[text(f"Sampled: {describe(answers['summary'])}")])

    async def streaming_elicitation(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        """Asks mid-call; on a modern stream that must be an InputRequiredResult, not a request."""
        question = elicitation("What should the tool stream next?", string_form("next"))
        answers = await ask(ctx, params, {"next": question})
        if isinstance(answers, types.InputRequiredResult):
            return answers
        return types.CallToolResult(content=[text(f"Streaming with {describe(answers['next'])}")])

    async def trigger_tool_change(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        self.tool_generation += 1
        self.tools["test_trigger_tool_change"].description = tool_list_description(self.tool_generation)
        await self.bus.publish(ToolsListChanged())
        if not is_modern(ctx):
            await ctx.session.send_tool_list_changed()
        return types.CallToolResult(content=[text(f"Tool list is now at generation {self.tool_generation}")])

    async def trigger_prompt_change(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        self.prompt_generation += 1
        self.prompts["test_simple_prompt"].description = prompt_list_description(self.prompt_generation)
        await self.bus.publish(PromptsListChanged())
        if not is_modern(ctx):
            await ctx.session.send_prompt_list_changed()
        return types.CallToolResult(
            content=[text(f"Prompt list is now at generation {self.prompt_generation}")]
        )

    # --- the multi-round-trip (MRTR) tools; the modern-era scenarios call them ----------------------

    async def mrtr_elicitation(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        question = elicitation("What is your name?", string_form("name"))
        answers = await ask(ctx, params, {"user_name": question})
        if isinstance(answers, types.InputRequiredResult):
            return answers
        return types.CallToolResult(content=[text(f"Hello, {elicited(answers['user_name'], 'name')}!")])

    async def mrtr_sampling(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        question = sampling("What is the capital of France?", 100)
        answers = await ask(ctx, params, {"capital_question": question})
        if isinstance(answers, types.InputRequiredResult):
            return answers
        return types.CallToolResult(
            content=[text(f"The model answered: {describe(answers['capital_question'])}")]
        )

    async def mrtr_list_roots(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        answers = await ask(ctx, params, {"client_roots": roots_request()})
        if isinstance(answers, types.InputRequiredResult):
            return answers
        return types.CallToolResult(content=[text(f"The client has {describe(answers['client_roots'])}")])

    async def mrtr_request_state(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        """Round 2 must echo the state round 1 minted; the reply says "state-ok" once it did."""
        state = "confirm-round-1"
        question = {"confirm": elicitation("Please confirm", CONFIRM_FORM)}
        answers = await ask(ctx, params, question, request_state=state)
        if isinstance(answers, types.InputRequiredResult):
            return answers
        return types.CallToolResult(content=[text(f"state-ok: {describe(answers['confirm'])}")])

    async def mrtr_multiple_inputs(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        state = "three-questions"
        questions: dict[str, types.InputRequest] = {
            "user_name": elicitation("What is your name?", string_form("name")),
            "greeting": sampling("Generate a greeting", 50),
            "client_roots": roots_request(),
        }
        answers = await ask(ctx, params, questions, request_state=state)
        if isinstance(answers, types.InputRequiredResult):
            return answers
        summary = "; ".join(f"{key}: {describe(answer)}" for key, answer in answers.items())
        return types.CallToolResult(content=[text(f"All inputs received. {summary}")])

    async def mrtr_multi_round(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        """Round 1 asks for a name; round 2 (state ``step-1``) for a colour; round 3 completes."""
        step1: dict[str, types.InputRequest] = {
            "step1": elicitation("Step 1: What is your name?", string_form("name"))
        }
        step2: dict[str, types.InputRequest] = {
            "step2": elicitation("Step 2: What is your favorite color?", string_form("color"))
        }
        require_capabilities(ctx, {**step1, **step2})
        given = params.input_responses or {}
        if not is_modern(ctx):
            answers = await ask_over_back_channel(ctx, step1) | await ask_over_back_channel(ctx, step2)
        elif "step2" in given:
            check_state(params.request_state, "step-2")
            answers = {"step2": given["step2"]}
        elif "step1" in given:
            check_state(params.request_state, "step-1")
            return types.InputRequiredResult(input_requests=step2, request_state="step-2")
        else:
            return types.InputRequiredResult(input_requests=step1, request_state="step-1")
        summary = "; ".join(f"{key}: {describe(answer)}" for key, answer in answers.items())
        return types.CallToolResult(content=[text(f"All rounds complete. {summary}")])

    async def mrtr_tampered_state(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        """Like the request-state tool; a tampered echo never gets here (the boundary refuses it)."""
        state = "integrity-protected"
        question = {"confirm": elicitation("Please confirm", CONFIRM_FORM)}
        answers = await ask(ctx, params, question, request_state=state)
        if isinstance(answers, types.InputRequiredResult):
            return answers
        return types.CallToolResult(content=[text(f"State verified: {describe(answers['confirm'])}")])

    async def mrtr_capabilities(self, ctx: Context, params: types.CallToolRequestParams) -> ToolOutcome:
        """Asks only the questions the client declared it can answer."""
        wanted: dict[str, types.InputRequest] = {
            "user_name": elicitation("What is your name?", string_form("name")),
            "greeting": sampling("Generate a greeting", 50),
            "client_roots": roots_request(),
        }
        answerable = {key: question for key, question in wanted.items() if client_can_answer(ctx, question)}
        answers = await ask(ctx, params, answerable)
        if isinstance(answers, types.InputRequiredResult):
            return answers
        summary = (
            "; ".join(f"{key}: {describe(answer)}" for key, answer in answers.items()) or "nothing asked"
        )
        return types.CallToolResult(content=[text(f"Asked what the client supports. {summary}")])

    # --- resources -------------------------------------------------------------------------------

    async def list_resources(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        resources = [
            types.Resource(uri=uri, name=name, description=description, mime_type=mime_type)
            for uri, (name, description, mime_type) in STATIC_RESOURCES.items()
        ]
        return types.ListResourcesResult(resources=resources)

    async def list_resource_templates(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        template = types.ResourceTemplate(
            uri_template=TEMPLATE_URI,
            name="Template data",
            description="JSON data for an id (resources-templates-read)",
            mime_type="application/json",
        )
        return types.ListResourceTemplatesResult(resource_templates=[template])

    async def read_resource(
        self, ctx: Context, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = params.uri
        contents: types.TextResourceContents | types.BlobResourceContents
        if uri == "test://static-text":
            contents = types.TextResourceContents(
                uri=uri, mime_type="text/plain", text="This is the content of the static text resource."
            )
        elif uri == "test://static-binary":
            contents = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG_BASE64)
        elif uri == "test://watched-resource":
            contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text="Watched content.")
        elif match := TEMPLATE_PATTERN.match(uri):
            item = match.group("id")
            data = {"id": item, "templateTest": True, "data": f"Data for ID: {item}"}
            contents = types.TextResourceContents(
                uri=uri, mime_type="application/json", text=json.dumps(data)
            )
        else:
            # SEP-2164: an unknown URI is -32602 with the URI in data, never an empty contents list.
            raise MCPError(code=types.INVALID_PARAMS, message="Resource not found", data={"uri": uri})
        return types.ReadResourceResult(contents=[contents])

    async def subscribe(self, ctx: Context, params: types.SubscribeRequestParams) -> types.EmptyResult:
        self.subscriptions.add(params.uri)
        return types.EmptyResult()

    async def unsubscribe(self, ctx: Context, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        self.subscriptions.discard(params.uri)
        return types.EmptyResult()

    # --- prompts ---------------------------------------------------------------------------------

    def _prompts(self) -> list[PromptEntry]:
        def required(name: str, description: str) -> types.PromptArgument:
            return types.PromptArgument(name=name, description=description, required=True)

        return [
            PromptEntry(
                "test_simple_prompt", prompt_list_description(self.prompt_generation), self.simple_prompt
            ),
            PromptEntry(
                "test_prompt_with_arguments",
                "A prompt with two arguments (prompts-get-with-args).",
                self.prompt_with_arguments,
                [required("arg1", "First test argument"), required("arg2", "Second test argument")],
            ),
            PromptEntry(
                "test_prompt_with_embedded_resource",
                "A prompt embedding a resource (prompts-get-embedded-resource).",
                self.prompt_with_embedded_resource,
                [required("resourceUri", "URI of the resource to embed")],
            ),
            PromptEntry(
                "test_prompt_with_image",
                "A prompt with an image (prompts-get-with-image).",
                self.prompt_with_image,
            ),
            PromptEntry(
                "test_input_required_result_prompt",
                "A prompt that first asks the user for context (input-required-result-non-tool-request).",
                self.prompt_needing_input,
            ),
        ]

    async def list_prompts(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        prompts = [
            types.Prompt(name=p.name, description=p.description, arguments=p.arguments or None)
            for p in self.prompts.values()
        ]
        return types.ListPromptsResult(prompts=prompts)

    async def get_prompt(
        self, ctx: Context, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        prompt = self.prompts.get(params.name)
        if prompt is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {params.name}")
        missing = [a.name for a in prompt.arguments if a.required and a.name not in (params.arguments or {})]
        if missing:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Missing required arguments: {missing}")
        return await prompt.body(ctx, params)

    @staticmethod
    def user(content: types.ContentBlock) -> types.PromptMessage:
        return types.PromptMessage(role="user", content=content)

    async def simple_prompt(
        self, ctx: Context, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        message = self.user(text("This is a simple prompt for testing."))
        return types.GetPromptResult(messages=[message])

    async def prompt_with_arguments(
        self, ctx: Context, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        args = params.arguments or {}
        message = self.user(text(f"Prompt with arguments: arg1='{args['arg1']}', arg2='{args['arg2']}'"))
        return types.GetPromptResult(messages=[message])

    async def prompt_with_embedded_resource(
        self, ctx: Context, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        uri = (params.arguments or {})["resourceUri"]
        messages = [
            self.user(embedded_text(uri, "Embedded resource content for testing.")),
            self.user(text("Please process the embedded resource above.")),
        ]
        return types.GetPromptResult(messages=messages)

    async def prompt_with_image(
        self, ctx: Context, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        messages = [self.user(image()), self.user(text("Please analyze the image above."))]
        return types.GetPromptResult(messages=messages)

    async def prompt_needing_input(
        self, ctx: Context, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        question = elicitation("What context should the prompt use?", string_form("context"))
        answers = await ask(ctx, params, {"user_context": question})
        if isinstance(answers, types.InputRequiredResult):
            return answers
        return types.GetPromptResult(
            messages=[self.user(text(f"Use this context: {describe(answers['user_context'])}"))]
        )

    # --- completion and logging --------------------------------------------------------------------

    async def complete(self, ctx: Context, params: types.CompleteRequestParams) -> types.CompleteResult:
        """Prefix matches for the prompt's ``arg1``/``arg2`` and the template's ``id``."""
        ref = params.ref
        known = (isinstance(ref, types.PromptReference) and ref.name == "test_prompt_with_arguments") or (
            isinstance(ref, types.ResourceTemplateReference) and ref.uri == TEMPLATE_URI
        )
        candidates = COMPLETIONS.get(params.argument.name, ()) if known else ()
        values = [value for value in candidates if value.startswith(params.argument.value)]
        return types.CompleteResult(
            completion=types.Completion(values=values, total=len(values), has_more=False)
        )

    async def set_logging_level(self, ctx: Context, params: types.SetLevelRequestParams) -> types.EmptyResult:
        self.log_level = params.level
        return types.EmptyResult()


def json_schema_2020_12() -> dict[str, Any]:
    """The input schema json-schema-2020-12 expects to survive ``tools/list`` unchanged: ``$schema``,
    ``$defs`` with an ``$anchor``, ``$ref``, ``allOf``/``anyOf``, ``if``/``then``/``else`` and
    ``additionalProperties``."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {
                "$anchor": "addressDef",
                "type": "object",
                "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
            }
        },
        "properties": {
            "name": {"type": "string"},
            "address": {"$ref": "#/$defs/address"},
            "contactMethod": {"type": "string", "enum": ["phone", "email"]},
            "phone": {"type": "string"},
            "email": {"type": "string"},
        },
        "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
        "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
        "then": {"required": ["phone"]},
        "else": {"required": ["email"]},
        "additionalProperties": False,
    }
