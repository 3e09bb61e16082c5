"""The README's complete security example, taken verbatim from README.md, run in a real gateway with the
shipped RBAC policy and the demo backends: who may see and call what, redaction on the way in, a virtual
server, and `portico policy check` on the same file."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from proxy import config
from proxy.plugin_loader import build_plugins
from tests.conftest import StartGateway
from tests.rawclient import RawClient, RpcError

ROOT = Path(__file__).resolve().parent.parent
SECRET = "the README example's HS256 secret, long enough to pass"
GITHUB_TOKEN = "ghp_" + "R3dact10nCanaryXyZ" * 2 + "ab"


def readme_example() -> dict[str, Any]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Security\n")
    section = text[start : text.index("\n## ", start + 1)]
    block = next(
        b for b in re.findall(r"^```yaml\n(.*?)^```$", section, flags=re.M | re.S) if "# portico.yaml" in b
    )
    settings: dict[str, Any] = yaml.safe_load(block)
    return settings


EXAMPLE = readme_example()
AUTH = next(p["options"] for p in EXAMPLE["plugins"] if isinstance(p, dict) and p["name"] == "auth")
ISSUER = AUTH["issuers"][0]["issuer"]


def bearer(subject: str, audience: str = AUTH["resource"], roles: tuple[str, ...] = ()) -> dict[str, str]:
    claims = {
        "sub": subject,
        "iss": ISSUER,
        "aud": audience,
        "exp": int(time.time()) + 600,
        "roles": list(roles),
    }
    return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}


@pytest.fixture
def example_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory as an operator's would be: the shipped policies beside the config."""
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORTICO_JWT_SECRET", SECRET)
    return tmp_path


async def connect(gw: Any, path: str, headers: dict[str, str]) -> RawClient:
    url = str(gw.server.make_url(path)).replace("http://", "ws://")
    client = await RawClient.connect(gw.http, url, headers=headers)
    gw.clients.append(client)
    await client.initialize()
    return client


async def tool_names(client: RawClient) -> set[str]:
    return {t["name"] for t in await client.list_all("tools/list", "tools")}


async def test_the_readme_security_example_runs_as_documented(
    start_gateway: StartGateway, example_dir: Path
) -> None:
    gw = await start_gateway(EXAMPLE)
    # bob is an analyst in policies/rbac_policy.csv: every weather tool, and what viewers may use.
    bob = await connect(gw, "/mcp", bearer("bob"))
    assert await tool_names(bob) == {"weather_get_weather", "weather_get_forecast", "notes_list_notes"}
    with pytest.raises(RpcError) as denied:
        await bob.call("tools/call", {"name": "notes_add_note", "arguments": {"title": "t", "text": "x"}})
    assert denied.value.code == -32063 and "'bob' may not tools/call 'notes/tool/add_note'" in str(
        denied.value
    )
    # A token's own roles count (role_prefix makes "editor" the policy's role:editor).
    erin = await connect(gw, "/mcp", bearer("erin", roles=("editor",)))
    text = f"deploy key {GITHUB_TOKEN} for EMP-123456"
    await erin.call("tools/call", {"name": "notes_add_note", "arguments": {"title": "keys", "text": text}})
    read = await erin.call("tools/call", {"name": "notes_read_note", "arguments": {"title": "keys"}})
    stored = read["content"][0]["text"]
    # Redacted on the way in: the backend itself never held the secret.
    assert GITHUB_TOKEN not in stored and "[REDACTED:github_token]" in stored
    assert "EMP-123456" not in stored and "[HASHED:employee_id:" in stored
    # The virtual server offers weather tools only, to a token issued for its own endpoint.
    forecasts = AUTH["resource"].replace("/mcp", "/servers/forecasts/mcp")
    virtual = await connect(gw, "/servers/forecasts/mcp", bearer("bob", audience=forecasts))
    assert await tool_names(virtual) == {"weather_get_weather", "weather_get_forecast"}


def test_portico_policy_check_reads_the_same_example(example_dir: Path) -> None:
    (example_dir / "portico.yaml").write_text(yaml.safe_dump(EXAMPLE))
    command = [sys.executable, "-m", "proxy", "policy", "check", "--config", "portico.yaml"]
    allowed = subprocess.run(
        [*command, "--subject", "bob", "--object", "weather/tool/get_forecast", "--action", "tools/call"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.strip() == "allow by: p, role:analyst, weather/tool/*, tools/call, allow"
    denied = subprocess.run(
        [*command, "--subject", "bob", "--object", "notes/tool/add_note", "--action", "tools/call"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert denied.returncode == 1 and denied.stdout.startswith("deny"), denied.stdout + denied.stderr


def test_the_traffic_section_examples_are_valid_configs(example_dir: Path) -> None:
    """The README's traffic and resilience examples (the plugin chain, a backend's resilience settings)
    load and build exactly as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Traffic and resilience\n")
    section = text[start : text.index("\n## ", start + 1)]
    blocks = [yaml.safe_load(b) for b in re.findall(r"^```yaml\n(.*?)^```$", section, flags=re.M | re.S)]
    assert [sorted(b) for b in blocks] == [["plugins"], ["mcpServers"], ["mcpServers"]]
    cfg = config.parse(yaml.safe_dump({**blocks[0], **blocks[1]}))
    names = [p.name for p in build_plugins(cfg)]
    assert names == ["auth", "policy", "ratelimit", "redact", "cache", "dedup"]
    weather = cfg.mcpServers["weather"]
    assert (weather.retry.attempts, weather.breaker.failures, weather.restart.max_backoff_seconds) == (
        3,
        5,
        30,
    )


def test_the_pool_example_is_a_valid_backend(example_dir: Path) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n### Health checks, reconnection and pools")
    section = text[start : text.index("\n### ", start + 1)]
    (block,) = re.findall(r"^```yaml\n(.*?)^```$", section, flags=re.M | re.S)
    search = config.parse(block).mcpServers["search"]
    assert isinstance(search, config.RemoteBackendConfig)
    assert search.instance_count == 2 and search.health is not None and search.balance == "least_outstanding"
