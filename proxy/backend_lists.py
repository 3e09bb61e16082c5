"""Reading one backend's lists (tools, prompts, resources, templates) page by page on its catalog link,
with the caching hints a modern backend gives along with them."""

from __future__ import annotations

from typing import Any

from proxy.config import RemoteBackendConfig, StdioBackendConfig
from proxy.errors import BackendUnavailable, ErrorCode
from proxy.router import LIST_METHODS, BackendLists
from proxy.upstream import UpstreamLink

_MAX_LIST_PAGES = 1000
# The capability a backend must declare for each list to be asked for.
LIST_CAPABILITY = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resources",
}
# Which lists to read again when the backend says one changed.
LIST_CHANGED = {
    "notifications/tools/list_changed": ("tools/list",),
    "notifications/prompts/list_changed": ("prompts/list",),
    "notifications/resources/list_changed": ("resources/list", "resources/templates/list"),
}

CacheHint = tuple[int, str]


async def read_lists(
    link: UpstreamLink,
    methods: tuple[str, ...],
    capabilities: dict[str, Any],
    cache_hints: dict[str, CacheHint],
    config: StdioBackendConfig | RemoteBackendConfig,
) -> dict[str, tuple[dict[str, Any], ...]]:
    """The lists ``methods`` name that the backend offers, by key ("tools", ...); ``cache_hints`` is
    updated in place with what the backend said of each."""
    changes: dict[str, tuple[dict[str, Any], ...]] = {}
    for method in methods:
        if LIST_CAPABILITY[method] not in capabilities:
            continue
        items, pages = await fetch_list(link, method, config.timeout_seconds)
        if pages:
            hint = cache_hint_of(pages)
            if hint is None:
                cache_hints.pop(method, None)
            else:
                cache_hints[method] = hint
        changes[LIST_METHODS[method][0]] = items
    return changes


async def fetch_list(
    link: UpstreamLink, method: str, timeout: float
) -> tuple[tuple[dict[str, Any], ...], list[dict[str, Any]]]:
    """Every item of one list, following cursors, and the pages it came in (none for a list it lacks).

    A list the backend does not know (``METHOD_NOT_FOUND``) is an empty one; any other failure raises
    ``BackendUnavailable``."""
    key = LIST_METHODS[method][0]
    items: list[dict[str, Any]] = []
    pages: list[dict[str, Any]] = []
    params: dict[str, Any] = {}
    for _ in range(_MAX_LIST_PAGES):
        reply = await link.request(method, params, timeout=timeout)
        result = reply.get("result")
        if not isinstance(result, dict) and reply.get("error", {}).get("code") == ErrorCode.METHOD_NOT_FOUND:
            # Offering resources without templates (say) is common: a list it lacks is an empty one.
            return (), []
        if not isinstance(result, dict):
            error = reply.get("error", {}).get("message", "no result")
            raise BackendUnavailable(f"{method} failed: {error}")
        items.extend(item for item in result.get(key) or () if isinstance(item, dict))
        pages.append(result)
        cursor = result.get("nextCursor")
        if not cursor:
            break
        params = {"cursor": cursor}
    return tuple(items), pages


def cache_hint_of(pages: list[dict[str, Any]]) -> CacheHint | None:
    """A list is as fresh as its stalest page and as private as its most private one; a page that says
    nothing leaves the whole list without a hint."""
    ttls = [ttl for page in pages if isinstance(ttl := page.get("ttlMs"), int) and ttl >= 0]
    scopes = [scope for page in pages if (scope := page.get("cacheScope")) in ("public", "private")]
    if len(ttls) < len(pages) or len(scopes) < len(pages):
        return None
    return min(ttls), "private" if "private" in scopes else "public"


def as_dict(lists: BackendLists) -> dict[str, tuple[dict[str, Any], ...]]:
    return {key: getattr(lists, key) for key, _ in LIST_METHODS.values()}
