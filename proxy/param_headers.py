"""``Mcp-Param-*`` headers (2026-07-28): tool arguments a tool asks to see mirrored in HTTP headers.

A tool marks a property of its ``inputSchema`` with ``x-mcp-header: Name``; a modern Streamable HTTP
request calling it carries ``Mcp-Param-Name: <value>``, so intermediaries can route on it without
reading the body. The gateway is on both sides of that rule: toward a backend it adds the headers, and
from a client it checks them against the body (-32020 when they disagree). A tool whose annotations
break the specification's constraints is left out of the catalog, as clients must do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from proxy import eras

HEADER_PREFIX = "Mcp-Param-"
# RFC 9110 token characters, the only ones a header name may have.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_NOT_REACHABLE = ("items", "oneOf", "anyOf", "allOf", "not", "if", "then", "else", "$ref", "prefixItems")

Path = tuple[str, ...]


class InvalidAnnotation(ValueError):
    """An ``x-mcp-header`` annotation the specification forbids; the message says which and why."""


def annotated_paths(input_schema: object) -> dict[str, Path]:
    """Header name -> the property path it mirrors; raises InvalidAnnotation for a forbidden annotation."""
    found: dict[str, Path] = {}
    _walk(input_schema, (), found, reachable=True)
    return found


def _walk(schema: object, path: Path, found: dict[str, Path], *, reachable: bool) -> None:
    if isinstance(schema, list):
        for item in schema:
            _walk(item, path, found, reachable=False)
        return
    if not isinstance(schema, dict):
        return
    if "x-mcp-header" in schema:
        _check(schema, path, found, reachable=reachable)
        found[str(schema["x-mcp-header"])] = path
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            for name, sub in value.items():
                _walk(sub, (*path, name), found, reachable=reachable)
        elif key in _NOT_REACHABLE or isinstance(value, dict | list):
            _walk(value, path, found, reachable=False)


def _check(schema: dict[str, Any], path: Path, found: dict[str, Path], *, reachable: bool) -> None:
    name = schema["x-mcp-header"]
    where = ".".join(path) or "the schema root"
    if not reachable or not path:
        raise InvalidAnnotation(f"x-mcp-header on {where} is not reachable through properties alone")
    if not isinstance(name, str) or not name or not _TOKEN.match(name):
        raise InvalidAnnotation(f"x-mcp-header {name!r} on {where} is not a valid header name")
    if name.lower() in (other.lower() for other in found):
        raise InvalidAnnotation(f"x-mcp-header {name!r} is used twice")
    if schema.get("type") not in ("string", "integer", "boolean"):
        raise InvalidAnnotation(f"x-mcp-header on {where} needs type string, integer or boolean")


def valid_tools(backend: str, tools: tuple[dict[str, Any], ...], log: Any) -> tuple[dict[str, Any], ...]:
    """The tools whose ``x-mcp-header`` annotations are valid; the others are logged and left out."""
    kept = []
    for tool in tools:
        try:
            annotated_paths(tool.get("inputSchema"))
        except InvalidAnnotation as exc:
            log.warning("backend %s: tool %r is left out: %s", backend, tool.get("name"), exc)
            continue
        kept.append(tool)
    return tuple(kept)


def headers_for(paths: Mapping[str, Path], arguments: object) -> dict[str, str]:
    """The ``Mcp-Param-*`` headers for a call with these arguments (absent or null values: none)."""
    headers = {}
    for name, path in paths.items():
        value = _value_at(arguments, path)
        if value is not None:
            headers[HEADER_PREFIX + name] = eras.encode_header_value(_as_text(value))
    return headers


def mismatch(paths: Mapping[str, Path], arguments: object, headers: Mapping[str, str]) -> str | None:
    """Why the request's ``Mcp-Param-*`` headers disagree with its arguments, or None if they agree."""
    for name, path in paths.items():
        value = _value_at(arguments, path)
        sent = headers.get(HEADER_PREFIX + name)
        if value is None and sent is not None:
            return f"{HEADER_PREFIX}{name} was sent but the arguments have no {'.'.join(path)}"
        if value is not None and sent is None:
            return f"{HEADER_PREFIX}{name} is missing for argument {'.'.join(path)}"
        if value is not None and eras.decode_header_value(sent) != _as_text(value):
            return f"{HEADER_PREFIX}{name} does not match argument {'.'.join(path)}"
    return None


def _value_at(arguments: object, path: Path) -> Any:
    node = arguments
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
