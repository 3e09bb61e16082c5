"""Finds the plugins named in the config and builds them with validated, frozen options.

A config entry ``name`` is looked up, in order, as:
1. an entry point of the group ``portico.plugins`` (installed distributions register plugins there);
2. a module of the bundled ``plugins`` package (``request_log`` -> ``plugins.request_log``);
3. any importable ``module`` or ``module:attribute``.

A plugin module exposes its class as ``plugin``. The class may declare ``Options``, a frozen dataclass or
pydantic model; the entry's ``options`` are validated against it and passed to the constructor.

Shared state: when the config has a ``redis`` section, a plugin whose options have a ``redis_url`` field
that its entry leaves out gets ``redis.url`` there, so one line puts every such plugin's state in Redis.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

from pydantic import TypeAdapter, ValidationError

from proxy.chain import NamedPlugin, Plugin
from proxy.config import GatewayConfig, PluginEntry
from proxy.errors import ConfigError

ENTRY_POINT_GROUP = "portico.plugins"


def build_plugins(config: GatewayConfig) -> list[NamedPlugin]:
    return [_build(entry, config, index) for index, entry in enumerate(config.plugins)]


def plugin_options(config: GatewayConfig, name: str) -> Any:
    """The validated options of the first plugin entry called ``name`` (for commands that work with a
    plugin's files without running it: ``portico token``, ``portico policy``), or None if there is none."""
    for index, entry in enumerate(config.plugins):
        if entry.name == name:
            where = f"{config.source}: plugins[{index}]"
            options_type = getattr(_resolve(entry.name, where), "Options", None)
            if options_type is None:
                return None
            return _options(options_type, _with_inherited(entry, options_type, config), where)
    return None


def _with_inherited(entry: PluginEntry, options_type: Any, config: GatewayConfig) -> PluginEntry:
    """``entry`` with ``redis_url`` from the ``redis`` section, if its plugin takes one and it names none."""
    if config.redis is None or "redis_url" in entry.options or "redis_url" not in _field_names(options_type):
        return entry
    return entry.model_copy(update={"options": {**entry.options, "redis_url": str(config.redis.url)}})


def _field_names(options_type: Any) -> set[str]:
    if dataclasses.is_dataclass(options_type):
        return {field.name for field in dataclasses.fields(options_type)}
    return set(getattr(options_type, "model_fields", {}))


def _build(entry: PluginEntry, config: GatewayConfig, index: int) -> NamedPlugin:
    where = f"{config.source}: plugins[{index}]"
    factory = _resolve(entry.name, where)
    options_type = getattr(factory, "Options", None)
    if options_type is not None:
        entry = _with_inherited(entry, options_type, config)
    try:
        if options_type is None:
            if entry.options:
                raise ConfigError(f"{where}.options: plugin {entry.name!r} takes no options")
            instance = factory()
        else:
            instance = factory(_options(options_type, entry, where))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{where}: plugin {entry.name!r} failed to start: {exc}") from None
    if not callable(instance) or not inspect.iscoroutinefunction(type(instance).__call__):
        raise ConfigError(f"{where}: {entry.name!r} is not a plugin (it needs an async __call__)")
    plugin: Plugin = instance
    return NamedPlugin(name=entry.name, plugin=plugin)


def _options(options_type: Any, entry: PluginEntry, where: str) -> Any:
    _refuse_unknown_options(options_type, entry.options, where)
    try:
        return TypeAdapter(options_type).validate_python(entry.options)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        message = "unknown option" if first["type"] == "extra_forbidden" else first["msg"]
        # pydantic prefixes the messages of a validator's ValueError; the operator needs only the message.
        message = message.removeprefix("Value error, ")
        raise ConfigError(f"{where}.options{'.' + path if path else ''}: {message}") from None


def _resolve(name: str, where: str) -> Any:
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name == name:
            try:
                return point.load()
            except Exception as exc:
                raise ConfigError(f"{where}: plugin {name!r} (entry point) failed to load: {exc}") from None
    module_name, _, attribute = name.partition(":")
    candidates = [module_name] if "." in module_name else [f"plugins.{module_name}", module_name]
    for candidate in candidates:
        module = _import(candidate, where)
        if module is not None:
            found = getattr(module, attribute or "plugin", None)
            if found is None:
                raise ConfigError(f"{where}: module {candidate!r} has no {attribute or 'plugin'!r} attribute")
            return found
    raise ConfigError(f"{where}: no plugin named {name!r} (not an entry point, bundled plugin or module)")


def _import(module_name: str, where: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only "this module does not exist" means try the next candidate; a missing dependency inside an
        # existing plugin module is that plugin's error.
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            return None
        raise ConfigError(f"{where}: plugin module {module_name!r} failed to import: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"{where}: plugin module {module_name!r} failed to import: {exc}") from None


def _refuse_unknown_options(options_type: Any, options: dict[str, Any], where: str) -> None:
    # pydantic ignores unknown keys when it validates a plain dataclass; a misspelt option must not be
    # silently dropped. (A pydantic model says for itself, with extra="forbid".)
    if dataclasses.is_dataclass(options_type):
        known = {field.name for field in dataclasses.fields(options_type)}
        for key in options:
            if key not in known:
                raise ConfigError(f"{where}.options.{key}: unknown option")
