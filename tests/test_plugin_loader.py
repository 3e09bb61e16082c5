"""Finding and building plugins: bundled names, entry points, modules, ``module:attr``; clean failures."""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import plugins.request_log
import proxy.plugin_loader
from proxy import config
from proxy.chain import NamedPlugin
from proxy.errors import ConfigError
from proxy.plugin_loader import build_plugins

SOURCE = "portico-test.yaml"
_counter = itertools.count()

PASS_THROUGH = """
class Pass:
    def __init__(self):
        self.kind = "pass"

    async def __call__(self, ctx, message, call_next):
        return await call_next(ctx, message)
"""

WITH_OPTIONS = """
from dataclasses import dataclass

@dataclass(frozen=True)
class Opts:
    word: str = "delete"
    limit: int = 3

class WithOptions:
    Options = Opts

    def __init__(self, options):
        self.options = options

    async def __call__(self, ctx, message, call_next):
        return await call_next(ctx, message)

plugin = WithOptions
"""

PYDANTIC_OPTIONS = """
from pydantic import BaseModel, ConfigDict

class Opts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rate: float = 1.0

class Limited:
    Options = Opts

    def __init__(self, options):
        self.options = options

    async def __call__(self, ctx, message, call_next):
        return await call_next(ctx, message)

plugin = Limited
"""

WriteModule = Callable[..., str]


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteModule]:
    """Write a module (or a package's module, for a dotted name) under tmp_path, importable by its name."""
    written: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str, dotted: str | None = None) -> str:
        name = dotted or f"portico_test_plugin_{next(_counter)}"
        parts = name.split(".")
        folder = tmp_path
        for package in parts[:-1]:
            folder = folder / package
            folder.mkdir(exist_ok=True)
            (folder / "__init__.py").touch()
        (folder / f"{parts[-1]}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        written.append(name)
        return name

    yield write
    for name in list(sys.modules):
        if any(name == w or name == w.split(".")[0] or name.startswith(w + ".") for w in written):
            del sys.modules[name]


def build(text: str) -> list[NamedPlugin]:
    return build_plugins(config.parse(text, source=SOURCE))


def build_error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        build(text)
    message = caught.value.message
    assert message.startswith(f"{SOURCE}: plugins["), message
    assert "Traceback" not in message
    return message


# -- finding plugins ---------------------------------------------------------------------------------------


def test_bundled_plugin_by_name_with_options() -> None:
    built = build("plugins:\n  - name: request_log\n    options: {level: debug, notifications: true}\n")
    assert [p.name for p in built] == ["request_log"]
    instance = built[0].plugin
    assert isinstance(instance, plugins.request_log.RequestLog)
    assert instance.options == plugins.request_log.RequestLogOptions(level="debug", notifications=True)


def test_plugin_shorthand_gets_default_options() -> None:
    built = build("plugins:\n  - request_log\n")
    instance = built[0].plugin
    assert isinstance(instance, plugins.request_log.RequestLog)
    assert instance.options == plugins.request_log.RequestLogOptions()


def test_bundled_plugin_is_found_in_the_plugins_package_without_entry_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without the installed distribution's entry points, the name still resolves to plugins/request_log.py.
    monkeypatch.setattr(proxy.plugin_loader, "entry_points", lambda group: [])
    built = build("plugins:\n  - request_log\n")
    assert isinstance(built[0].plugin, plugins.request_log.RequestLog)


def test_entry_point_plugins_are_found(write_module: WriteModule, monkeypatch: pytest.MonkeyPatch) -> None:
    module = write_module(WITH_OPTIONS)
    point = EntryPoint(name="audit", value=f"{module}:WithOptions", group="portico.plugins")
    monkeypatch.setattr(
        proxy.plugin_loader, "entry_points", lambda group: [point] if group == "portico.plugins" else []
    )
    built = build("plugins:\n  - name: audit\n    options: {word: drop}\n")
    assert built[0].name == "audit"
    assert type(built[0].plugin).__name__ == "WithOptions"
    assert built[0].plugin.options.word == "drop"  # type: ignore[attr-defined]


def test_an_entry_point_that_fails_to_load_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    point = EntryPoint(name="broken", value="portico_no_such_module_xyz:Thing", group="portico.plugins")
    monkeypatch.setattr(proxy.plugin_loader, "entry_points", lambda group: [point])
    message = build_error("plugins:\n  - broken\n")
    assert "plugins[0]" in message
    assert "'broken'" in message
    assert "entry point" in message


def test_plugin_by_module_name(write_module: WriteModule) -> None:
    module = write_module(WITH_OPTIONS)
    built = build(f"plugins:\n  - name: {module}\n    options: {{limit: 9}}\n")
    assert built[0].name == module
    assert built[0].plugin.options.limit == 9  # type: ignore[attr-defined]
    assert built[0].plugin.options.word == "delete"  # type: ignore[attr-defined]


def test_plugin_by_dotted_module_path(write_module: WriteModule) -> None:
    package = f"mycompany_{next(_counter)}"
    module = write_module(WITH_OPTIONS, dotted=f"{package}.portico_audit")
    built = build(f"plugins:\n  - {module}\n")
    assert built[0].name == f"{package}.portico_audit"
    assert type(built[0].plugin).__name__ == "WithOptions"


def test_plugin_by_module_and_attribute(write_module: WriteModule) -> None:
    module = write_module(PASS_THROUGH + WITH_OPTIONS)
    built = build(f"plugins:\n  - {module}:Pass\n  - {module}\n  - {module}:WithOptions\n")
    assert [type(p.plugin).__name__ for p in built] == ["Pass", "WithOptions", "WithOptions"]
    assert built[0].plugin.kind == "pass"  # type: ignore[attr-defined]


def test_plugin_options_as_a_pydantic_model(write_module: WriteModule) -> None:
    module = write_module(PYDANTIC_OPTIONS)
    built = build(f"plugins:\n  - name: {module}\n    options: {{rate: 2.5}}\n")
    assert built[0].plugin.options.rate == 2.5  # type: ignore[attr-defined]
    message = build_error(f"plugins:\n  - name: {module}\n    options: {{rat: 2.5}}\n")
    assert "plugins[0].options.rat" in message
    assert "unknown option" in message


def test_plugins_keep_the_config_order(write_module: WriteModule) -> None:
    module = write_module(PASS_THROUGH + WITH_OPTIONS)
    built = build(f"plugins:\n  - {module}:Pass\n  - request_log\n  - {module}\n")
    assert [p.name for p in built] == [f"{module}:Pass", "request_log", module]


def test_no_plugins_is_an_empty_chain() -> None:
    assert build("mcpServers: {}\n") == []


# -- failures ----------------------------------------------------------------------------------------------


def test_unknown_plugin() -> None:
    message = build_error("plugins:\n  - request_log\n  - name: no_such_plugin_xyz\n")
    assert "plugins[1]" in message
    assert "'no_such_plugin_xyz'" in message
    assert "no plugin named" in message


def test_unknown_dotted_plugin() -> None:
    message = build_error("plugins:\n  - nosuchcompany_xyz.audit\n")
    assert "'nosuchcompany_xyz.audit'" in message


def test_missing_attribute(write_module: WriteModule) -> None:
    module = write_module(PASS_THROUGH)
    message = build_error(f"plugins:\n  - {module}\n")
    assert "'plugin'" in message
    message = build_error(f"plugins:\n  - {module}:Nope\n")
    assert "'Nope'" in message


def test_bad_option_value_names_the_option() -> None:
    message = build_error("plugins:\n  - request_log\n  - name: request_log\n    options: {level: loud}\n")
    assert message.startswith(f"{SOURCE}: plugins[1].options.level: ")
    assert "debug" in message


def test_bad_option_type_names_the_option(write_module: WriteModule) -> None:
    module = write_module(WITH_OPTIONS)
    message = build_error(f"plugins:\n  - name: {module}\n    options: {{limit: lots}}\n")
    assert message.startswith(f"{SOURCE}: plugins[0].options.limit: ")


def test_an_unknown_option_is_refused() -> None:
    # A misspelt option must stop start-up rather than be silently ignored.
    message = build_error("plugins:\n  - name: request_log\n    options: {levle: debug}\n")
    assert "plugins[0].options.levle" in message
    assert "unknown option" in message


def test_an_unknown_option_of_a_dataclass_plugin_is_refused(write_module: WriteModule) -> None:
    module = write_module(WITH_OPTIONS)
    message = build_error(f"plugins:\n  - name: {module}\n    options: {{wrod: drop}}\n")
    assert "plugins[0].options.wrod" in message


def test_options_for_a_plugin_without_options(write_module: WriteModule) -> None:
    module = write_module(PASS_THROUGH)
    message = build_error(f"plugins:\n  - name: {module}:Pass\n    options: {{x: 1}}\n")
    assert message.startswith(f"{SOURCE}: plugins[0].options: ")
    assert "takes no options" in message


def test_a_plugin_without_an_async_call_is_refused(write_module: WriteModule) -> None:
    module = write_module(
        """
        class Sync:
            def __call__(self, ctx, message, call_next):
                return call_next(ctx, message)

        class NotCallable:
            pass

        def factory():
            return 42
        """
    )
    for attribute in ("Sync", "NotCallable", "factory"):
        message = build_error(f"plugins:\n  - {module}:{attribute}\n")
        assert f"'{module}:{attribute}'" in message
        assert "async __call__" in message


def test_a_module_that_fails_to_import(write_module: WriteModule) -> None:
    module = write_module("raise RuntimeError('boom at import')\n")
    message = build_error(f"plugins:\n  - {module}\n")
    assert "failed to import" in message
    assert "boom at import" in message


def test_a_module_with_a_syntax_error(write_module: WriteModule) -> None:
    module = write_module("def broken(:\n")
    message = build_error(f"plugins:\n  - {module}\n")
    assert "failed to import" in message


def test_a_module_whose_dependency_is_missing_says_so(write_module: WriteModule) -> None:
    # Not "no plugin named": the module exists, its own import failed.
    module = write_module("import portico_missing_dependency_xyz\nplugin = object\n")
    message = build_error(f"plugins:\n  - {module}\n")
    assert "failed to import" in message
    assert "portico_missing_dependency_xyz" in message


def test_a_plugin_whose_constructor_fails(write_module: WriteModule) -> None:
    module = write_module(
        """
        class Fussy:
            def __init__(self):
                raise ValueError("needs a licence key")

            async def __call__(self, ctx, message, call_next):
                return await call_next(ctx, message)
        """
    )
    message = build_error(f"plugins:\n  - {module}:Fussy\n")
    assert "failed to start" in message
    assert "needs a licence key" in message
