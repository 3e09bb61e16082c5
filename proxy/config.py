"""The gateway's configuration: read once at start-up, validated, frozen.

The file is YAML (JSON is valid YAML, so both work). Backends live under ``mcpServers`` in the shape MCP
clients already use, so an operator can paste an existing client config. Every problem is reported as one
``ConfigError`` naming the file, the key path and what is wrong; no traceback ever reaches the operator.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

from proxy.errors import ConfigError
from proxy.shared_redis import redis_url_problem

BACKEND_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
# ``${VAR}``, ``${VAR:-default}`` or ``${file:PATH}``.
_ENV_REFERENCE = re.compile(
    r"\$\{(?:file:(?P<file>[^}]+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?)\}"
)
# A ``${file:...}`` bigger than this is a mistake (a log, a device), not a credential.
_MAX_SECRET_FILE_BYTES = 64 * 1024
# ``${PORTICO_PYTHON}`` lets a config start Python backends with the interpreter running the gateway.
_BUILTIN_VARIABLES = {"PORTICO_PYTHON": sys.executable}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    # Browser origins allowed to open a session, besides localhost ones and clients that send no Origin.
    allowed_origins: tuple[str, ...] = ()
    # Host names a loopback-bound gateway answers to besides localhost ones ("*": any).
    allowed_hosts: tuple[str, ...] = ()
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    heartbeat_seconds: float = Field(20.0, gt=0)
    # Streamable HTTP sessions: closed after this long without a request or an open stream.
    session_idle_seconds: float = Field(1800.0, gt=0)
    max_sessions: int = Field(10_000, ge=1)
    # SSE events kept per HTTP session for resumption with Last-Event-ID.
    event_store_size: int = Field(1000, ge=0)
    # On SIGTERM: how long calls already in flight may take to finish before client sockets close.
    drain_seconds: float = Field(10.0, ge=0)
    # /readyz answers 200 only when at least this many backends are ready (0: whenever the config loaded).
    min_ready_backends: int = Field(1, ge=0)


class NamespacingConfig(_Strict):
    separator: str = Field("_", pattern=r"^[A-Za-z0-9_.-]{1,4}$")
    # ``always`` prefixes every name with its backend; ``never`` exposes names as they are and refuses
    # collisions at start-up.
    mode: Literal["always", "never"] = "always"
    # Popular clients cap tool names at 64 characters; longer names are shortened deterministically.
    max_tool_name_length: int = Field(64, ge=16, le=128)
    page_size: int = Field(500, ge=1, le=100_000)


class Secret(str):
    """A config value that is never shown: backend headers, environment values, client secrets.

    It is its text wherever it is used (equal to it, sent as it), but its ``repr`` is masked, so the
    repr or str of any config holding it is too, and a JSON dump of the config masks it as well.
    Deliberately a ``str``, not pydantic's ``SecretStr``: code that reads these values keeps working.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"'{SECRET_MASK}'"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls,
            core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda _: SECRET_MASK, when_used="json"
            ),
        )


SECRET_MASK = "**********"  # noqa: S105 - what is shown instead of a secret, not a password


class RetryConfig(_Strict):
    """Retries of requests that are safe to repeat (reads, lists, idempotent tools), after a transport
    failure or timeout only; ``attempts: 1`` turns them off."""

    attempts: int = Field(3, ge=1, le=10)
    initial_backoff_seconds: float = Field(0.1, gt=0)
    max_backoff_seconds: float = Field(2.0, gt=0)
    # Retries never add more than this share of extra load on the backend (a token bucket).
    budget_ratio: float = Field(0.2, ge=0, le=1)


class BreakerConfig(_Strict):
    """The circuit breaker: ``failures`` consecutive transport failures or timeouts open it; after
    ``reset_seconds`` one probe call decides whether it closes again.

    ``shared`` (remote backends, with the ``redis`` section): the gateway instances tell each other when
    the breaker opens or closes, so a backend one instance found failing is withdrawn on all of them at
    once, and the first probe that succeeds brings it back everywhere; each instance still probes on its
    own. A stdio backend runs inside each instance, so its breaker is never shared.
    """

    enabled: bool = True
    failures: int = Field(5, ge=1)
    reset_seconds: float = Field(30.0, gt=0)
    shared: bool = False


class RestartConfig(_Strict):
    """Bringing back a backend whose catalog link closed (a stdio process that exited, a WebSocket or
    HTTP+SSE connection that broke), backing off exponentially on repeated failures."""

    enabled: bool = True
    initial_backoff_seconds: float = Field(1.0, gt=0)
    max_backoff_seconds: float = Field(30.0, gt=0)


class HealthConfig(_Strict):
    """Periodic health checks on the catalog link: a check that fails or goes unanswered for
    ``timeout_seconds`` counts as one transport failure for the circuit breaker."""

    interval_seconds: float = Field(30.0, gt=0)
    timeout_seconds: float = Field(5.0, gt=0)
    method: Literal["ping", "server/discover"] = "ping"


class _BackendBase(_Strict):
    session: Literal["shared", "per-client"] = "shared"
    # Which era of MCP to speak to the backend. ``auto`` asks the backend (``server/discover``, falling
    # back to the ``initialize`` handshake) and remembers the answer; the others skip the probe.
    era: Literal["auto", "legacy", "modern"] = "auto"
    timeout_seconds: float = Field(60.0, gt=0)
    startup_timeout_seconds: float = Field(30.0, gt=0)
    # The largest message accepted from this backend; a bigger one is dropped whole, never truncated.
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    disabled: bool = False
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    restart: RestartConfig = RestartConfig()
    # Off unless configured: calls and the breaker's own probes already notice most failures.
    health: HealthConfig | None = None
    # How a pool (several ``urls``, or ``replicas`` > 1) spreads calls over its instances.
    balance: Literal["round_robin", "least_outstanding"] = "least_outstanding"

    @property
    def instance_count(self) -> int:
        """How many instances (processes or servers) serve this backend."""
        return 1


class StdioBackendConfig(_BackendBase):
    type: Literal["stdio"] = "stdio"
    command: str = Field(min_length=1)
    args: tuple[str, ...] = ()
    # Secret: never printed, logged or shown by ``portico check``.
    env: dict[str, Secret] = Field(default_factory=dict)
    cwd: str | None = None
    # Identical processes started for this backend, as a pool (see ``balance``).
    replicas: int = Field(1, ge=1, le=64)

    @field_validator("breaker")
    @classmethod
    def _breaker_of_this_instance(cls, breaker: BreakerConfig) -> BreakerConfig:
        if breaker.shared:
            raise ValueError(
                "shared is for remote backends: a stdio backend runs inside each gateway instance, "
                "so one instance's failing process says nothing about another's"
            )
        return breaker

    @property
    def instance_count(self) -> int:
        return self.replicas

    def instance(self, index: int) -> StdioBackendConfig:
        """The config of one instance of the pool."""
        return self.model_copy(update={"replicas": 1})


_SCHEMES = {
    "websocket": ("ws://", "wss://"),
    "streamable-http": ("http://", "https://"),
    "sse": ("http://", "https://"),
}


class ClientCredentialsConfig(_Strict):
    """OAuth 2.0 client credentials toward a remote backend (RFC 6749 section 4.4).

    The gateway fetches an access token from ``token_url``, caches it, refreshes it before it expires
    and sends it as ``Authorization: Bearer`` (see ``proxy.credentials``).
    """

    type: Literal["client_credentials"]
    token_url: str
    client_id: str = Field(min_length=1)
    client_secret: Secret
    scope: str | None = None
    # RFC 8707 resource indicator, sent as ``resource``; some identity providers want ``audience``.
    resource: str | None = None
    audience: str | None = None
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    # The deadline of one token request.
    timeout_seconds: float = Field(10.0, gt=0)

    @field_validator("token_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("token_url needs an http:// or https:// URL")
        return url

    @field_validator("client_secret")
    @classmethod
    def _not_empty(cls, secret: Secret) -> Secret:
        if not secret:
            raise ValueError("client_secret is empty")
        return secret


class RemoteBackendConfig(_BackendBase):
    # Client configs call this ``type`` (and say "http" for Streamable HTTP); every spelling is accepted.
    # Without one, the URL's scheme decides: ws:// is WebSocket, http:// Streamable HTTP.
    transport: Literal["websocket", "streamable-http", "sse"] | None = Field(None, alias="type")
    # One server (``url``), or a pool of servers serving the same thing (``urls``, see ``balance``).
    url: str = ""
    urls: tuple[str, ...] = ()
    # Secret: never printed, logged or shown by ``portico check``.
    headers: dict[str, Secret] = Field(default_factory=dict)
    auth: ClientCredentialsConfig | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("headers")
    @classmethod
    def _one_line_values(cls, headers: dict[str, Secret]) -> dict[str, Secret]:
        # Named, never echoed: the value is a secret.
        for name, value in headers.items():
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"the value of header {name!r} must be one line")
        return headers

    @field_validator("transport", mode="before")
    @classmethod
    def _client_spellings(cls, value: Any) -> Any:
        return {"http": "streamable-http", "streamableHttp": "streamable-http", "ws": "websocket"}.get(
            value, value
        )

    @field_validator("url")
    @classmethod
    def _fits_transport(cls, url: str, info: ValidationInfo) -> str:
        transport = info.data.get("transport")
        schemes = _SCHEMES.get(transport or "", ("ws://", "wss://", "http://", "https://"))
        if not url.startswith(schemes):
            what = f"a {transport} backend" if transport else "a remote backend"
            raise ValueError(f"{what} needs a {' or '.join(schemes)} URL, not {url!r}")
        return url

    @field_validator("urls")
    @classmethod
    def _all_fit_transport(cls, urls: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        for url in urls:
            cls._fits_transport(url, info)
        return urls

    @model_validator(mode="after")
    def _url_or_urls(self) -> RemoteBackendConfig:
        if self.url and self.urls:
            raise ValueError("set url (one server) or urls (a pool), not both")
        if not self.url and not self.urls:
            raise ValueError("a remote backend needs a url (or urls, for a pool)")
        if self.urls:
            object.__setattr__(self, "url", self.urls[0])
        return self

    @property
    def instance_count(self) -> int:
        return max(1, len(self.urls))

    def instance(self, index: int) -> RemoteBackendConfig:
        """The config of one instance of the pool: its own URL."""
        if not self.urls:
            return self
        return self.model_copy(update={"url": self.urls[index], "urls": ()})

    @model_validator(mode="after")
    def _transport_from_scheme(self) -> RemoteBackendConfig:
        if self.transport is None:
            inferred = "websocket" if self.url.startswith(("ws://", "wss://")) else "streamable-http"
            object.__setattr__(self, "transport", inferred)
        return self

    @model_validator(mode="after")
    def _one_authorization(self) -> RemoteBackendConfig:
        if self.auth is not None and any(name.lower() == "authorization" for name in self.headers):
            raise ValueError("auth and headers.Authorization both set the Authorization header; keep one")
        return self


def _backend_kind(data: Any) -> str:
    return "remote" if isinstance(data, Mapping) and ("url" in data or "urls" in data) else "stdio"


BackendConfig = Annotated[
    Annotated[StdioBackendConfig, Tag("stdio")] | Annotated[RemoteBackendConfig, Tag("remote")],
    Discriminator(_backend_kind),
]


class PluginEntry(_Strict):
    name: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)


class RequestStateConfig(_Strict):
    """The ``requestState`` the gateway issues when a legacy backend asks a modern client for input."""

    # How long a client may take to come back with its answers; the backend's call waits that long.
    ttl_seconds: float = Field(300.0, gt=0)
    # The HMAC key (at least 32 characters, e.g. ``${PORTICO_STATE_SECRET}``); a random one per process
    # when unset.
    secret: str | None = Field(None, min_length=32)


class VirtualServerConfig(_Strict):
    """A named subset of the aggregate, served at ``/servers/{name}/mcp``.

    ``include`` lists ``backend/kind/name`` patterns (``*`` matches anything, ``/`` included), the same
    objects policies name: ``weather/*`` is all of one backend, ``notes/tool/add_*`` some of its tools.
    """

    include: tuple[str, ...] = Field(min_length=1)
    description: str | None = None


class AdminConfig(_Strict):
    """The admin API under ``/admin`` (``proxy.admin``): off unless enabled; callers need ``role``."""

    enabled: bool = False
    role: str = Field("admin", min_length=1)
    # Without an authentication plugin every caller is anonymous, so the API would be open to anyone who
    # can reach the port: allowed only when the operator says so, and only on a loopback address.
    allow_anonymous_admin: bool = False
    # The web console at /console (``proxy.console``): a page that uses this API and the MCP endpoint.
    console: bool = True


class ReloadConfig(_Strict):
    """Hot reload (``proxy.reload``): the file is looked at every ``watch_seconds`` (0: only on SIGHUP
    and ``POST /admin/reload``), and its backends applied when it changed."""

    watch_seconds: float = Field(1.0, ge=0)


class TracingConfig(_Strict):
    """OpenTelemetry tracing (``proxy.tracing``): a span per client request, per plugin, per backend call.

    Off by default. ``exporter`` says where finished spans go: ``none`` (kept in the process, for tests
    and for turning tracing on before choosing a collector), ``console`` (stdout) or ``otlp`` (OTLP over
    HTTP to ``endpoint``; needs the ``otlp`` extra: ``pip install 'mcp-portico[otlp]'``).
    """

    enabled: bool = False
    exporter: Literal["none", "console", "otlp"] = "none"
    # The OTLP/HTTP traces URL (``http://collector:4318/v1/traces``); unset: the exporter's default, or
    # ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``.
    endpoint: str | None = Field(None, pattern=r"^https?://")
    service_name: str = Field("portico", min_length=1)
    # The share of new traces recorded; a client's traceparent decides for the traces it started.
    sample_ratio: float = Field(1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _exporter_installed(self) -> TracingConfig:
        import importlib.util  # only needed here, once, at start-up

        if self.enabled and self.exporter == "otlp":
            try:
                found = importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                raise ValueError("exporter 'otlp' needs the otlp extra: pip install 'mcp-portico[otlp]'")
        return self


class RedisConfig(_Strict):
    """Shared state for several gateway instances (``proxy.shared_redis``): legacy HTTP sessions, their
    SSE events, and, for every plugin with a ``redis_url`` option left unset, that plugin's state (cache,
    rate limits, token revocations, policy changes). Without this section all of it is in memory.

    ``url``: ``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS) or ``unix:///path``; a
    Secret, since it may hold a password. ``key_prefix`` starts every key the gateway itself writes, so
    several deployments can share one Redis. ``timeout_seconds`` bounds every operation.
    """

    url: Secret
    key_prefix: str = Field("portico", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    timeout_seconds: float = Field(0.5, gt=0, le=30)

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: Secret) -> Secret:
        problem = redis_url_problem(url)
        if problem is not None:
            raise ValueError(problem)
        return url


class GatewayConfig(_Strict):
    listen: ListenConfig = ListenConfig()
    namespacing: NamespacingConfig = NamespacingConfig()
    request_state: RequestStateConfig = RequestStateConfig()
    tracing: TracingConfig = TracingConfig()
    mcpServers: dict[str, BackendConfig] = Field(default_factory=dict)
    virtual_servers: dict[str, VirtualServerConfig] = Field(default_factory=dict)
    admin: AdminConfig = AdminConfig()
    reload: ReloadConfig = ReloadConfig()
    redis: RedisConfig | None = None
    plugins: tuple[PluginEntry, ...] = ()
    # Where the file was read from; resolves relative ``cwd`` values. Not part of the file.
    source: str = Field("<memory>", exclude=True)

    @field_validator("mcpServers")
    @classmethod
    def _backend_names(cls, servers: dict[str, Any]) -> dict[str, Any]:
        for name in servers:
            if not BACKEND_NAME.match(name):
                raise ValueError(
                    f"backend name {name!r} must be 1-48 characters of A-Z a-z 0-9 _ . - "
                    "and start with a letter or digit"
                )
        return servers

    @field_validator("virtual_servers")
    @classmethod
    def _virtual_server_names(cls, servers: dict[str, Any]) -> dict[str, Any]:
        for name in servers:
            if not BACKEND_NAME.match(name):
                raise ValueError(
                    f"virtual server name {name!r} must be 1-48 characters of A-Z a-z 0-9 _ . - "
                    "and start with a letter or digit"
                )
        return servers

    @field_validator("plugins", mode="before")
    @classmethod
    def _plugin_shorthand(cls, entries: Any) -> Any:
        # ``- request_log`` is shorthand for ``- name: request_log``.
        if isinstance(entries, list):
            return [{"name": e} if isinstance(e, str) else e for e in entries]
        return entries

    def enabled_backends(self) -> dict[str, StdioBackendConfig | RemoteBackendConfig]:
        return {name: cfg for name, cfg in self.mcpServers.items() if not cfg.disabled}


def load(path: str | Path) -> GatewayConfig:
    """Read, expand and validate a config file; every failure is one ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot read the config file: it is not UTF-8 text") from None
    return parse(text, source=str(path))


def parse(text: str, *, source: str = "<memory>") -> GatewayConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise ConfigError(f"{source}: not valid YAML or JSON{at}: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, not {type(raw).__name__}")
    _reject_duplicate_keys(text, source)
    raw = _expand_variables(raw, source, ())
    try:
        config = GatewayConfig.model_validate({**raw, "source": source})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    if "source" in raw:
        raise ConfigError(f"{source}: source: unknown key")
    return config


def _describe(exc: ValidationError, source: str) -> str:
    return "\n".join(f"{source}: {line}" for line in validation_problems(exc))


def validation_problems(exc: ValidationError) -> list[str]:
    """pydantic's findings about a config as ``key.path: message`` lines, in the operator's words (also
    for backends registered through the admin API)."""
    lines = []
    for problem in exc.errors():
        path = _key_path(_without_union_tag(problem["loc"]))
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key"
        elif problem["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{path or '(top level)'}: {message}")
    return list(dict.fromkeys(lines))


def _key_path(parts: Iterable[int | str]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def _without_union_tag(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # pydantic reports which member of the stdio/remote union it tried, right after the backend's name.
    if len(loc) > 2 and loc[0] == "mcpServers" and loc[2] in ("stdio", "remote"):
        return (*loc[:2], *loc[3:])
    return loc


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _reject_duplicate_keys(text: str, source: str) -> None:
    # YAML silently keeps the last of two equal keys; two backends with one name must be an error.
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        _check_node(root, (), source)


def _check_node(node: yaml.Node, path: tuple[int | str, ...], source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = str(key_node.value)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"{source}: {_key_path((*path, key))}: duplicate key (line {line})")
            seen.add(key)
            _check_node(value_node, (*path, key), source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_node(item, (*path, index), source)


def _expand_variables(value: Any, source: str, path: tuple[str, ...]) -> Any:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``${file:PATH}`` in the strings of backend entries and in
    ``request_state.secret`` (plugins expand their own options)."""
    if isinstance(value, dict):
        return {k: _expand_variables(v, source, (*path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_variables(v, source, (*path, f"[{i}]")) for i, v in enumerate(value)]
    if isinstance(value, str) and (path[:1] == ("mcpServers",) or path == ("request_state", "secret")):
        return _ENV_REFERENCE.sub(lambda m: _lookup(m, source, path), value)
    return value


def _lookup(match: re.Match[str], source: str, path: tuple[str, ...]) -> str:
    if match.group("file") is not None:
        return _file_contents(match.group("file"), source, path)
    name, default = match.group("name"), match.group("default")
    found = os.environ.get(name, _BUILTIN_VARIABLES.get(name))
    if found is not None:
        return found
    if default is not None:
        return default
    where = _key_path(int(p[1:-1]) if p.startswith("[") else p for p in path)
    raise ConfigError(f"{source}: {where}: environment variable {name} is not set and has no default")


def _file_contents(name: str, source: str, path: tuple[str, ...]) -> str:
    """A ``${file:PATH}``: the file's text less one trailing newline; PATH is relative to the config's
    directory. Errors name the key path and the file, never what it holds."""
    base = Path(source).parent if source != "<memory>" else Path.cwd()
    file = base / name
    where = _key_path(int(p[1:-1]) if p.startswith("[") else p for p in path)
    try:
        with file.open("rb") as stream:
            data = stream.read(_MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: {where}: cannot read {file}: {exc.strerror or exc}") from None
    if len(data) > _MAX_SECRET_FILE_BYTES:
        raise ConfigError(f"{source}: {where}: {file} is larger than {_MAX_SECRET_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: {where}: {file} is not UTF-8 text") from None
    # Editors end files with a newline, secret generators do not: drop exactly one.
    return text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text
