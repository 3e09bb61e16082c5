"""The aggregate view: merged lists of every live backend, and the tables that route a name back.

A ``Catalog`` is an immutable snapshot built from each backend's own lists; when any backend's lists
change, a new snapshot replaces the old one in a single assignment, so a request always sees one
consistent view. Routing is a dictionary look-up: exposed tool or prompt name -> (backend, own name);
resource URIs are mapped reversibly as ``portico://{backend}/{original URI}``.
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.chain import Route
from proxy.errors import InvalidParams
from proxy.naming import NamingRules, build_name_table
from proxy.param_headers import InvalidAnnotation, annotated_paths

URI_SCHEME = "portico://"

# Each list method, the key its items live under, and what an item is called for routing.
LIST_METHODS: Mapping[str, tuple[str, str]] = {
    "tools/list": ("tools", "tool"),
    "prompts/list": ("prompts", "prompt"),
    "resources/list": ("resources", "resource"),
    "resources/templates/list": ("resourceTemplates", "template"),
}


@dataclass(frozen=True, slots=True)
class BackendLists:
    """What one backend offers, exactly as it listed it."""

    tools: tuple[dict[str, Any], ...] = ()
    prompts: tuple[dict[str, Any], ...] = ()
    resources: tuple[dict[str, Any], ...] = ()
    resourceTemplates: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Catalog:
    """One consistent snapshot of the aggregate."""

    version: int
    rules: NamingRules
    backends: tuple[str, ...]
    items: Mapping[str, tuple[dict[str, Any], ...]]
    names: Mapping[str, Mapping[str, Route]]
    # With mode "never", a resource URI routes by exact match, then by template prefix.
    uri_owners: Mapping[str, str] = field(default_factory=dict)
    template_prefixes: tuple[tuple[str, str], ...] = ()
    # Exposed tool name -> its Mcp-Param-* header names and the argument paths they mirror.
    param_paths: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    # Each list's items' routes, in the items' order: what a restricted request may see is decided on them.
    item_routes: Mapping[str, tuple[Route, ...]] = field(default_factory=dict)

    def route_name(self, kind: str, exposed: object) -> Route | None:
        if not isinstance(exposed, str):
            return None
        return self.names[kind].get(exposed)

    def route_uri(self, exposed: object, kind: str = "resource") -> Route | None:
        if not isinstance(exposed, str):
            return None
        if self.rules.mode == "never":
            backend = self.uri_owners.get(exposed) or _by_prefix(self.template_prefixes, exposed)
            return Route(backend, kind, exposed, exposed) if backend else None
        if not exposed.startswith(URI_SCHEME):
            return None
        backend, slash, original = exposed[len(URI_SCHEME) :].partition("/")
        if not slash or backend not in self.backends:
            return None
        return Route(backend, kind, original, exposed)

    def expose_uri(self, backend: str, uri: str) -> str:
        return expose_uri(self.rules, backend, uri)


def expose_uri(rules: NamingRules, backend: str, uri: str) -> str:
    """The URI a client sees for a backend's own URI (or URI template)."""
    return uri if rules.mode == "never" else f"{URI_SCHEME}{backend}/{uri}"


def _by_prefix(prefixes: Sequence[tuple[str, str]], uri: str) -> str | None:
    for prefix, backend in prefixes:
        if uri.startswith(prefix):
            return backend
    return None


def build_catalog(version: int, rules: NamingRules, lists: Mapping[str, BackendLists]) -> Catalog:
    """Merge the live backends' lists (in config order); raises NameCollision for mode "never"."""
    backends = tuple(lists)
    items: dict[str, tuple[dict[str, Any], ...]] = {}
    names: dict[str, dict[str, Route]] = {}
    for key, kind in (("tools", "tool"), ("prompts", "prompt")):
        owned = _first_of_each_name(lists, key)
        table = build_name_table([(b, item["name"]) for b, item in owned], rules, kind)
        hints = {(b, item["name"]): _hints(item) for b, item in owned}
        names[kind] = {
            exposed: Route(b, kind, n, exposed, *hints[(b, n)]) for (b, n), exposed in table.items()
        }
        items[key] = tuple({**item, "name": table[(b, item["name"])]} for b, item in owned)
    uri_owners: dict[str, str] = {}
    prefixes: list[tuple[str, str]] = []
    for backend, own in lists.items():
        for resource in own.resources:
            if isinstance(resource.get("uri"), str):
                uri_owners.setdefault(resource["uri"], backend)
        for template in own.resourceTemplates:
            if isinstance(template.get("uriTemplate"), str):
                prefixes.append((template["uriTemplate"].split("{", 1)[0], backend))
    prefixes.sort(key=lambda p: len(p[0]), reverse=True)
    routes: dict[str, tuple[Route, ...]] = {
        "tools": tuple(names["tool"][tool["name"]] for tool in items["tools"]),
        "prompts": tuple(names["prompt"][prompt["name"]] for prompt in items["prompts"]),
    }
    for key, kind, field_name in (
        ("resources", "resource", "uri"),
        ("resourceTemplates", "template", "uriTemplate"),
    ):
        owned_uris = [
            (b, item)
            for b, own in lists.items()
            for item in getattr(own, key)
            if isinstance(item.get(field_name), str)
        ]
        items[key] = tuple(
            {**item, field_name: expose_uri(rules, b, item[field_name])} for b, item in owned_uris
        )
        routes[key] = tuple(
            Route(b, kind, item[field_name], exposed[field_name])
            for (b, item), exposed in zip(owned_uris, items[key], strict=True)
        )
    param_paths = {tool["name"]: paths for tool in items["tools"] if (paths := _param_paths(tool))}
    return Catalog(version, rules, backends, items, names, uri_owners, tuple(prefixes), param_paths, routes)


def _hints(item: dict[str, Any]) -> tuple[bool, bool]:
    """(read_only, idempotent) as a tool's annotations say; a read-only tool is idempotent too. Hints
    are the backend's word, trusted only to decide what may be retried, cached or shared."""
    annotations = item.get("annotations")
    if not isinstance(annotations, dict):
        return False, False
    read_only = annotations.get("readOnlyHint") is True
    return read_only, read_only or annotations.get("idempotentHint") is True


def _param_paths(tool: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    try:
        return annotated_paths(tool.get("inputSchema"))
    except InvalidAnnotation:
        return {}  # backends' lists hold only valid tools; this is for tools added by other means


def _first_of_each_name(lists: Mapping[str, BackendLists], key: str) -> list[tuple[str, dict[str, Any]]]:
    """Items with a string name, in config order; a backend listing one name twice keeps the first."""
    seen: set[tuple[str, str]] = set()
    result = []
    for backend, own in lists.items():
        for item in getattr(own, key):
            name = item.get("name")
            if isinstance(name, str) and (backend, name) not in seen:
                seen.add((backend, name))
                result.append((backend, item))
    return result


class Pager:
    """Pages the merged lists so a client gets every item exactly once, even if the catalog changes.

    A cursor names the snapshot it was cut from; the last few snapshots are kept so that a client paging
    through a list while a backend changes still sees one consistent list.
    """

    def __init__(self, page_size: int, keep: int = 8) -> None:
        self.page_size = page_size
        self._keep = keep
        self._snapshots: OrderedDict[int, Catalog] = OrderedDict()

    def remember(self, catalog: Catalog) -> None:
        self._snapshots[catalog.version] = catalog
        while len(self._snapshots) > self._keep:
            self._snapshots.popitem(last=False)

    def page(
        self,
        current: Catalog,
        method: str,
        params: Mapping[str, Any],
        allows: Callable[[Route], bool] | None = None,
    ) -> dict[str, Any]:
        """One page of a merged list; with ``allows``, of only the items whose route it accepts (a
        restricted client's cursors count in its own list, which stays the same from page to page)."""
        key, _ = LIST_METHODS[method]
        cursor = params.get("cursor")
        catalog, offset = (current, 0) if cursor is None else self._decode(cursor, method)
        items = catalog.items[key]
        if allows is not None:
            items = tuple(
                item for item, route in zip(items, catalog.item_routes[key], strict=True) if allows(route)
            )
        end = offset + self.page_size
        page: dict[str, Any] = {key: list(items[offset:end])}
        if end < len(items):
            page["nextCursor"] = _encode(method, catalog.version, end)
        return page

    def _decode(self, cursor: object, method: str) -> tuple[Catalog, int]:
        try:
            if not isinstance(cursor, str):
                raise ValueError
            decoded = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
            list_method, version, offset = decoded["m"], decoded["v"], decoded["o"]
        except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError):
            raise InvalidParams("Invalid params: unknown cursor") from None
        if list_method != method or not isinstance(version, int) or not isinstance(offset, int) or offset < 0:
            raise InvalidParams("Invalid params: unknown cursor")
        catalog = self._snapshots.get(version)
        if catalog is None:
            raise InvalidParams("Invalid params: this cursor has expired; list again from the start")
        return catalog, offset


def _encode(method: str, version: int, offset: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"m": method, "v": version, "o": offset})).decode()
