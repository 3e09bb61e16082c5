"""The README's "Writing a plugin" example, taken verbatim from README.md, run in a real gateway."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy import config
from proxy.errors import ConfigError
from proxy.plugin_loader import build_plugins
from tests.conftest import StartGateway, everything

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## Writing a plugin"


@dataclass(frozen=True)
class Example:
    module_name: str
    python: str
    plugins: list[Any]


def readme_example() -> Example:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{HEADING}\n")
    following = text.find("\n## ", start + 1)
    section = text[start : following if following != -1 else len(text)]
    python_blocks = re.findall(r"^```python\n(.*?)^```$", section, flags=re.M | re.S)
    yaml_blocks = re.findall(r"^```yaml\n(.*?)^```$", section, flags=re.M | re.S)
    assert len(python_blocks) == 1, "the section holds one python example"
    assert len(yaml_blocks) == 1, "the section holds one yaml example"
    python = python_blocks[0]
    first_line = python.splitlines()[0]
    match = re.fullmatch(r"# (?:\S+/)?(\w+)\.py", first_line.strip())
    assert match, f"the example's first line names its file: {first_line!r}"
    section_yaml = yaml.safe_load(yaml_blocks[0])
    assert set(section_yaml) == {"plugins"}
    return Example(match.group(1), python, section_yaml["plugins"])


EXAMPLE = readme_example()


@pytest.fixture
def example_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The README's python block as a module file on sys.path, under the name its first line gives."""
    folder = tmp_path / "site"
    folder.mkdir()
    path = folder / f"{EXAMPLE.module_name}.py"
    path.write_text(EXAMPLE.python, encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    importlib.invalidate_caches()
    sys.modules.pop(EXAMPLE.module_name, None)
    yield path
    sys.modules.pop(EXAMPLE.module_name, None)


def test_the_readme_example_is_what_this_test_expects() -> None:
    assert EXAMPLE.module_name == "no_deletes"
    assert EXAMPLE.plugins == [{"name": "no_deletes", "options": {"word": "delete"}}]


def test_the_example_imports_by_its_name(example_module: Path) -> None:
    module = importlib.import_module(EXAMPLE.module_name)
    assert Path(inspect.getfile(module)) == example_module
    assert callable(module.plugin)
    assert inspect.iscoroutinefunction(module.plugin.__call__)


async def test_the_readme_plugin_refuses_deletes_and_stamps_results(
    start_gateway: StartGateway, example_module: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything("readme")}, "plugins": EXAMPLE.plugins})
    [named] = gw.gateway.plugins
    # The plugin in the chain is the README's code, loaded by the name the README's config gives.
    assert named.name == "no_deletes"
    assert Path(inspect.getfile(type(named.plugin))) == example_module

    # Every call the gateway forwards to the backend is recorded.
    backend = gw.gateway.backends["ev"]
    forwarded: list[tuple[str, dict[str, Any]]] = []
    real_call = backend.call

    async def recording_call(
        session: Any, method: str, params: dict[str, Any], timeout: float, **options: Any
    ) -> Any:
        forwarded.append((method, params))
        return await real_call(session, method, params, timeout, **options)

    monkeypatch.setattr(backend, "call", recording_call)

    client = await gw.client()

    # A normal tool works and its result carries the stamp.
    reply = await client.request("tools/call", {"name": "ev_echo", "arguments": {"text": "hello"}})
    assert "error" not in reply, reply
    assert reply["result"]["content"][0]["text"] == "hello"
    assert reply["result"]["_meta"]["example.com/stamp"] == "checked-by-no-deletes"
    assert forwarded == [("tools/call", {"name": "echo", "arguments": {"text": "hello"}})]

    # The backend grows a tool named delete_all, and the gateway learns of it.
    added = await client.call("tools/call", {"name": "ev_add_tool", "arguments": {"name": "delete_all"}})
    assert added["content"][0]["text"] == "added delete_all"
    await client.wait_notification("notifications/tools/list_changed")
    async with asyncio.timeout(10):
        while True:
            listed = await client.call("tools/list")
            if "ev_delete_all" in [t["name"] for t in listed["tools"]]:
                break
            await asyncio.sleep(0.05)
    forwarded.clear()

    # Calling it through the gateway is refused with a JSON-RPC error, and the backend never sees it.
    reply = await client.request("tools/call", {"name": "ev_delete_all", "arguments": {}})
    assert "result" not in reply
    assert reply["error"]["code"] == -32060
    assert "'delete_all'" in reply["error"]["message"]
    assert "'ev'" in reply["error"]["message"]
    assert forwarded == []

    # The refusal leaves the session usable, and other tools still get their stamp.
    reply = await client.request("tools/call", {"name": "ev_add", "arguments": {"a": 2, "b": 3}})
    assert reply["result"]["content"][0]["text"] == "5"
    assert reply["result"]["_meta"] == {"example.com/stamp": "checked-by-no-deletes"}
    assert [method for method, _ in forwarded] == ["tools/call"]


async def test_the_stamp_is_not_added_to_other_methods(
    start_gateway: StartGateway, example_module: Path
) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything("readme")}, "plugins": EXAMPLE.plugins})
    client = await gw.client()
    prompt = await client.call("prompts/get", {"name": "ev_greet", "arguments": {"name": "Ada"}})
    assert "_meta" not in prompt
    # A tool error (isError) is a result too, and is stamped.
    failed = await client.call("tools/call", {"name": "ev_fail", "arguments": {}})
    assert failed["isError"] is True
    assert failed["_meta"]["example.com/stamp"] == "checked-by-no-deletes"


def test_a_wrong_option_of_the_readme_plugin_names_it(tmp_path: Path, example_module: Path) -> None:
    # "a wrong option stops start-up with a message naming plugins[0].options.word"
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"plugins": [{"name": "no_deletes", "options": {"word": ["not", "text"]}}]})
    )
    with pytest.raises(ConfigError) as caught:
        build_plugins(config.load(path))
    assert caught.value.message.startswith(f"{path}: plugins[0].options.word: ")
