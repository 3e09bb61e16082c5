"""Virtual servers: named subsets of the aggregate, each served at its own ``/servers/{name}/mcp``.

A virtual server lists ``backend/kind/name`` patterns, the same objects policies name, where ``*``
matches any run of characters (``/`` included). A session opened on a virtual server's endpoint sees
and reaches only what its patterns include; a policy still decides on top of that.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from proxy.chain import Route
from proxy.config import VirtualServerConfig


class VirtualServer:
    """One named subset of the aggregate."""

    def __init__(self, name: str, config: VirtualServerConfig) -> None:
        self.name = name
        self.path = f"/servers/{name}/mcp"
        self.description = config.description
        self._pattern = re.compile("|".join(_glob(p) for p in config.include))

    def allows(self, route: Route) -> bool:
        return self._pattern.fullmatch(route.object) is not None


def build_virtual_servers(configs: Mapping[str, VirtualServerConfig]) -> dict[str, VirtualServer]:
    return {name: VirtualServer(name, config) for name, config in configs.items()}


def _glob(pattern: str) -> str:
    return "(?:" + ".*".join(re.escape(part) for part in pattern.split("*")) + ")"
