"""The config file: YAML and JSON load; every bad file is one clean ConfigError naming file, key, problem."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from proxy import config
from proxy.config import GatewayConfig, RemoteBackendConfig, StdioBackendConfig
from proxy.errors import ConfigError

GOOD_YAML = """\
listen:
  host: 192.0.2.7
  port: 9001
  allowed_origins: [https://app.example.com]
namespacing:
  separator: "__"
  mode: never
  max_tool_name_length: 40
mcpServers:
  weather-api:
    command: uvx
    args: [mcp-server-weather]
    env: {API_KEY: secret}
    session: per-client
    timeout_seconds: 5
  remote:
    url: ws://127.0.0.1:9000/mcp
    transport: websocket
    headers: {Authorization: Bearer x}
plugins:
  - name: request_log
    options: {level: debug}
"""


def write(tmp_path: Path, text: str, name: str = "portico.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, name: str = "portico.yaml") -> GatewayConfig:
    return config.load(write(tmp_path, text, name))


def error_of(tmp_path: Path, text: str, name: str = "portico.yaml") -> str:
    """Load a bad file; return the ConfigError's message after the checks every such message must pass."""
    path = write(tmp_path, text, name)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    message = caught.value.message
    assert message == str(caught.value)
    assert str(path) in message, message
    assert "Traceback" not in message
    return message


# -- good files ------------------------------------------------------------------------------------------


def test_yaml_file_loads_every_section(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, GOOD_YAML)
    assert cfg.source == str(tmp_path / "portico.yaml")
    assert cfg.listen.host == "192.0.2.7"
    assert cfg.listen.port == 9001
    assert cfg.listen.allowed_origins == ("https://app.example.com",)
    assert cfg.namespacing.separator == "__"
    assert cfg.namespacing.mode == "never"
    assert cfg.namespacing.max_tool_name_length == 40
    assert list(cfg.mcpServers) == ["weather-api", "remote"]
    weather = cfg.mcpServers["weather-api"]
    assert isinstance(weather, StdioBackendConfig)
    assert weather.command == "uvx"
    assert weather.args == ("mcp-server-weather",)
    assert weather.env == {"API_KEY": "secret"}
    assert weather.session == "per-client"
    assert weather.timeout_seconds == 5
    remote = cfg.mcpServers["remote"]
    assert isinstance(remote, RemoteBackendConfig)
    assert remote.url == "ws://127.0.0.1:9000/mcp"
    assert remote.transport == "websocket"
    assert remote.headers == {"Authorization": "Bearer x"}
    assert [(p.name, p.options) for p in cfg.plugins] == [("request_log", {"level": "debug"})]


def test_json_file_loads(tmp_path: Path) -> None:
    document = {
        "listen": {"port": 9100},
        "mcpServers": {
            "files": {"command": "node", "args": ["server.js", "--root", "/srv"]},
            "remote": {"type": "websocket", "url": "wss://mcp.example.com/mcp"},
        },
        "plugins": [{"name": "request_log"}],
    }
    cfg = load_text(tmp_path, json.dumps(document, indent=2), name="portico.json")
    assert cfg.listen.port == 9100
    files = cfg.mcpServers["files"]
    assert isinstance(files, StdioBackendConfig)
    assert files.args == ("server.js", "--root", "/srv")
    remote = cfg.mcpServers["remote"]
    assert isinstance(remote, RemoteBackendConfig)
    assert remote.url == "wss://mcp.example.com/mcp"
    assert [p.name for p in cfg.plugins] == ["request_log"]


def test_an_existing_client_config_can_be_pasted_in(tmp_path: Path) -> None:
    # The shape Claude Desktop and other MCP clients use.
    pasted = {"mcpServers": {"fs": {"command": "npx", "args": ["-y", "@mcp/fs"], "env": {"A": "b"}}}}
    cfg = load_text(tmp_path, json.dumps(pasted), name="claude_desktop_config.json")
    assert list(cfg.enabled_backends()) == ["fs"]


def test_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "mcpServers:\n  a:\n    command: x\n")
    assert cfg.listen.host == "127.0.0.1"
    assert cfg.listen.port == 8765
    assert cfg.listen.max_message_bytes == 4 * 1024 * 1024
    assert cfg.listen.allowed_origins == ()
    assert cfg.namespacing.separator == "_"
    assert cfg.namespacing.mode == "always"
    assert cfg.namespacing.max_tool_name_length == 64
    assert cfg.plugins == ()
    backend = cfg.mcpServers["a"]
    assert isinstance(backend, StdioBackendConfig)
    assert backend.session == "shared"
    assert backend.args == ()
    assert backend.env == {}
    assert backend.disabled is False


def test_an_empty_file_is_all_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "")
    assert cfg.mcpServers == {}
    assert cfg.listen.port == 8765


def test_yaml_anchors_and_merge_keys_load(tmp_path: Path) -> None:
    # Valid YAML that yaml.safe_load accepts: one backend's settings reused for another.
    text = """\
mcpServers:
  a: &common
    command: python3
    args: [server.py]
    timeout_seconds: 7
  b:
    <<: *common
    args: [other.py]
"""
    cfg = load_text(tmp_path, text)
    b = cfg.mcpServers["b"]
    assert isinstance(b, StdioBackendConfig)
    assert (b.command, b.args, b.timeout_seconds) == ("python3", ("other.py",), 7)


# -- variables --------------------------------------------------------------------------------------------


def test_variables_are_expanded_with_and_without_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTICO_TEST_TOKEN", "s3cret")
    monkeypatch.delenv("PORTICO_TEST_UNSET", raising=False)
    text = """\
mcpServers:
  a:
    command: "${PORTICO_TEST_UNSET:-/usr/bin/env}"
    args: ["--token=${PORTICO_TEST_TOKEN}", "${PORTICO_TEST_UNSET:-}", "plain"]
    env: {TOKEN: "${PORTICO_TEST_TOKEN}", MODE: "${PORTICO_TEST_UNSET:-fast}"}
  r:
    url: "ws://${PORTICO_TEST_UNSET:-localhost}:9000/mcp"
    headers: {Authorization: "Bearer ${PORTICO_TEST_TOKEN}"}
"""
    cfg = load_text(tmp_path, text)
    a = cfg.mcpServers["a"]
    assert isinstance(a, StdioBackendConfig)
    assert a.command == "/usr/bin/env"
    assert a.args == ("--token=s3cret", "", "plain")
    assert a.env == {"TOKEN": "s3cret", "MODE": "fast"}
    r = cfg.mcpServers["r"]
    assert isinstance(r, RemoteBackendConfig)
    assert r.url == "ws://localhost:9000/mcp"
    assert r.headers == {"Authorization": "Bearer s3cret"}


def test_a_set_variable_wins_over_its_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTICO_TEST_CMD", "/bin/true")
    cfg = load_text(tmp_path, "mcpServers:\n  a:\n    command: ${PORTICO_TEST_CMD:-/bin/false}\n")
    a = cfg.mcpServers["a"]
    assert isinstance(a, StdioBackendConfig)
    assert a.command == "/bin/true"


def test_portico_python_is_the_running_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTICO_PYTHON", raising=False)
    cfg = load_text(tmp_path, "mcpServers:\n  a:\n    command: ${PORTICO_PYTHON}\n    args: [-m, x]\n")
    a = cfg.mcpServers["a"]
    assert isinstance(a, StdioBackendConfig)
    assert a.command == sys.executable


def test_unset_variable_without_default_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTICO_TEST_MISSING", raising=False)
    text = "mcpServers:\n  weather:\n    command: x\n    env:\n      KEY: ${PORTICO_TEST_MISSING}\n"
    message = error_of(tmp_path, text)
    assert "mcpServers.weather.env.KEY" in message
    assert "PORTICO_TEST_MISSING" in message
    assert "not set" in message


def test_unset_variable_in_a_list_names_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTICO_TEST_MISSING", raising=False)
    text = "mcpServers:\n  w:\n    command: x\n    args: [ok, '${PORTICO_TEST_MISSING}']\n"
    message = error_of(tmp_path, text)
    assert "mcpServers.w.args[1]" in message
    assert "PORTICO_TEST_MISSING" in message


# -- backends ---------------------------------------------------------------------------------------------


def test_type_is_accepted_for_transport(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "mcpServers:\n  r:\n    type: websocket\n    url: ws://h:1/mcp\n")
    r = cfg.mcpServers["r"]
    assert isinstance(r, RemoteBackendConfig)
    assert r.transport == "websocket"


def test_an_unsupported_transport_is_an_error(tmp_path: Path) -> None:
    message = error_of(tmp_path, "mcpServers:\n  r:\n    type: carrier-pigeon\n    url: ws://h:1/mcp\n")
    assert "mcpServers.r.type" in message
    assert "websocket" in message and "streamable-http" in message and "sse" in message


@pytest.mark.parametrize("name", ["api", "remote"])
def test_http_url_for_a_websocket_backend_is_an_error(tmp_path: Path, name: str) -> None:
    message = error_of(tmp_path, f"mcpServers:\n  {name}:\n    type: websocket\n    url: http://h:1/mcp\n")
    assert f"mcpServers.{name}.url" in message, message
    assert "ws://" in message


@pytest.mark.parametrize(
    ("entry", "transport"),
    [
        ("url: ws://h:1/mcp", "websocket"),
        ("url: http://h:1/mcp", "streamable-http"),
        ("{url: http://h:1/mcp, type: http}", "streamable-http"),
        ("{url: https://h/sse, type: sse}", "sse"),
    ],
)
def test_the_transport_follows_the_type_or_the_url(tmp_path: Path, entry: str, transport: str) -> None:
    text = f"mcpServers:\n  r: {entry if entry.startswith('{') else '{' + entry + '}'}\n"
    path = tmp_path / "portico.yaml"
    path.write_text(text)
    backend = config.load(path).mcpServers["r"]
    assert isinstance(backend, config.RemoteBackendConfig) and backend.transport == transport


def test_an_sse_backend_needs_an_http_url(tmp_path: Path) -> None:
    message = error_of(tmp_path, "mcpServers:\n  r:\n    type: sse\n    url: ws://h:1/mcp\n")
    assert "mcpServers.r.url" in message and "http://" in message


@pytest.mark.parametrize("name", ["stdio", "remote"])
def test_backends_named_like_a_transport_keep_their_name_in_messages(tmp_path: Path, name: str) -> None:
    # "stdio" and "remote" are legal backend names; the key path must still name the backend.
    message = error_of(tmp_path, f"mcpServers:\n  {name}:\n    args: [x]\n    timeout_seconds: 0\n")
    assert f"mcpServers.{name}.timeout_seconds" in message, message


def test_disabled_backend_is_not_enabled(tmp_path: Path) -> None:
    text = """\
mcpServers:
  first: {command: a}
  old-one: {command: node, args: [server.js], disabled: true}
  last: {url: "ws://h:1/mcp", disabled: false}
"""
    cfg = load_text(tmp_path, text)
    assert list(cfg.mcpServers) == ["first", "old-one", "last"]
    assert list(cfg.enabled_backends()) == ["first", "last"]


def test_missing_command_is_an_error(tmp_path: Path) -> None:
    message = error_of(tmp_path, "mcpServers:\n  weather-api:\n    args: [x]\n")
    assert "mcpServers.weather-api.command: required key is missing" in message


def test_duplicate_backend_name_is_an_error(tmp_path: Path) -> None:
    text = "mcpServers:\n  weather:\n    command: a\n  notes:\n    command: b\n  weather:\n    command: c\n"
    message = error_of(tmp_path, text)
    assert "duplicate" in message
    assert "weather" in message
    assert "line 6" in message
    # The key path, as for every other problem.
    assert "mcpServers.weather" in message, message


def test_duplicate_key_in_json_is_an_error(tmp_path: Path) -> None:
    text = '{"mcpServers": {"a": {"command": "x"}, "a": {"command": "y"}}}'
    message = error_of(tmp_path, text, name="portico.json")
    assert "duplicate" in message
    assert "mcpServers.a" in message


@pytest.mark.parametrize("name", ["bad name", "-leading-dash", "x" * 49, "slash/name", "ünïcode"])
def test_bad_backend_name_is_an_error(tmp_path: Path, name: str) -> None:
    message = error_of(tmp_path, json.dumps({"mcpServers": {name: {"command": "x"}}}))
    assert "mcpServers" in message
    assert repr(name) in message
    assert "backend name" in message


@pytest.mark.parametrize("name", ["a", "weather-api", "v1.2_x", "9lives", "x" * 48])
def test_good_backend_names_are_accepted(tmp_path: Path, name: str) -> None:
    cfg = load_text(tmp_path, json.dumps({"mcpServers": {name: {"command": "x"}}}))
    assert list(cfg.mcpServers) == [name]


# -- bad files --------------------------------------------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, "listen: {}\nmcpServer: {}\n")
    assert "mcpServer: unknown key" in message


def test_source_is_not_a_key_of_the_file(tmp_path: Path) -> None:
    message = error_of(tmp_path, "source: elsewhere.yaml\n")
    assert "source: unknown key" in message


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("listen:\n  hots: x\n", "listen.hots"),
        ("namespacing:\n  seperator: '-'\n", "namespacing.seperator"),
        ("mcpServers:\n  a:\n    command: x\n    comand: y\n", "mcpServers.a.comand"),
        ("mcpServers:\n  r:\n    url: ws://h/mcp\n    header: {}\n", "mcpServers.r.header"),
        ("plugins:\n  - name: request_log\n    option: {}\n", "plugins[0].option"),
    ],
)
def test_unknown_nested_key(tmp_path: Path, text: str, path: str) -> None:
    message = error_of(tmp_path, text)
    assert f"{path}: unknown key" in message


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("listen:\n  port: eighty\n", "listen.port"),
        ("listen:\n  port: 70000\n", "listen.port"),
        ("listen: [1, 2]\n", "listen"),
        ("namespacing:\n  mode: sometimes\n", "namespacing.mode"),
        ("namespacing:\n  separator: '/'\n", "namespacing.separator"),
        ("namespacing:\n  max_tool_name_length: 500\n", "namespacing.max_tool_name_length"),
        ("mcpServers:\n  a:\n    command: x\n    args: 5\n", "mcpServers.a.args"),
        ("mcpServers:\n  a:\n    command: x\n    session: private\n", "mcpServers.a.session"),
        ("mcpServers:\n  a:\n    command: x\n    timeout_seconds: -1\n", "mcpServers.a.timeout_seconds"),
        ("mcpServers:\n  a:\n    command: x\n    env: {N: [1]}\n", "mcpServers.a.env.N"),
        ("mcpServers: [a, b]\n", "mcpServers"),
        ("mcpServers:\n  a: 5\n", "mcpServers.a"),
        ("plugins: request_log\n", "plugins"),
        ("plugins:\n  - 5\n", "plugins[0]"),
    ],
)
def test_wrong_type_names_the_key_path(tmp_path: Path, text: str, path: str) -> None:
    message = error_of(tmp_path, text)
    line = next(line for line in message.splitlines() if f": {path}: " in line)
    problem = line.split(f": {path}: ", 1)[1]
    assert problem.strip(), message


def test_every_problem_is_reported_one_per_line(tmp_path: Path) -> None:
    text = "listen:\n  port: -1\nbogus: 1\nmcpServers:\n  a:\n    args: []\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    lines = caught.value.message.splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") for line in lines)
    joined = "\n".join(lines)
    assert "listen.port" in joined
    assert "bogus: unknown key" in joined
    assert "mcpServers.a.command: required key is missing" in joined


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("42\n", "int"), ("just words\n", "str")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    message = error_of(tmp_path, text)
    assert "top level must be a mapping" in message
    assert kind in message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("listen:\n  host: [unclosed\nmcpServers: {}\n", None),
        ("listen:\n\thost: x\n", 2),
        ('{"mcpServers": {"a": {"command": "x"},}', None),
        ("mcpServers:\n  a:\n    command: x\n   args: [y]\n", 4),
    ],
)
def test_invalid_yaml_syntax(tmp_path: Path, text: str, line: int | None) -> None:
    message = error_of(tmp_path, text)
    assert "not valid YAML or JSON" in message
    assert "line " in message
    if line is not None:
        assert f"line {line}" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(path) in caught.value.message
    assert "cannot read" in caught.value.message
    assert "No such file" in caught.value.message


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(tmp_path)
    assert str(tmp_path) in caught.value.message
    assert "cannot read" in caught.value.message


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"\xff\xfe\x00 listen: {}\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(path) in caught.value.message


def test_the_request_state_secret_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTICO_STATE_SECRET", "s" * 40)
    cfg = config.parse('request_state: {secret: "${PORTICO_STATE_SECRET}"}')
    assert cfg.request_state.secret == "s" * 40
    monkeypatch.delenv("PORTICO_STATE_SECRET")
    with pytest.raises(ConfigError) as unset:
        config.parse('request_state: {secret: "${PORTICO_STATE_SECRET}"}')
    assert "request_state.secret" in unset.value.message and "PORTICO_STATE_SECRET" in unset.value.message
