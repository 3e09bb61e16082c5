"""What the admin API shows of the gateway (``proxy.admin`` routes them; the web console polls them).

Pure readings of a running gateway as JSON-ready dicts. None of them ever shows a backend's command,
environment or headers, a session's credential, or a request's arguments and results (the audit entries
are the audit plugin's own records, which hold payloads only when the operator enabled them).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from proxy import __version__
from proxy.backend import Backend
from proxy.backend_pool import BackendPool
from proxy.config import StdioBackendConfig
from proxy.gateway import Gateway
from proxy.session import Session

# The most audit entries one overview carries (the audit plugin keeps its own, smaller, window).
MAX_AUDIT_ENTRIES = 1000


def describe_backend(backend: Backend) -> dict[str, Any]:
    """What an operator wants to see of one backend; never its command, environment or headers."""
    config = backend.config
    instances = backend.instances if isinstance(backend, BackendPool) else [backend]
    shown = [
        {
            "name": instance.name,
            "state": instance.state,
            "breaker": instance.breaker.state if instance.breaker is not None else "disabled",
            "restarts": instance.restarter.restarts if instance.restarter is not None else 0,
        }
        for instance in instances
    ]
    lists = backend.lists
    return {
        "name": backend.name,
        "transport": "stdio" if isinstance(config, StdioBackendConfig) else config.transport,
        "era": backend.era,
        "ready": backend.ready,
        "state": backend.state,
        "instances": shown,
        "tools": len(lists.tools),
        # The backend's own names (clients see them namespaced, see README "Namespacing").
        "tool_names": sorted(str(tool.get("name")) for tool in lists.tools),
        "prompts": len(lists.prompts),
        "resources": len(lists.resources),
        "resource_templates": len(lists.resourceTemplates),
        "restarts": sum(i["restarts"] for i in shown),
    }


def describe_session(session: Session) -> dict[str, Any]:
    """One client session as an operator sees it; never its credential."""
    return {
        "id": session.id,
        "transport": session.transport,
        "era": session.era,
        "principal": session.principal.subject,
        "remote": session.remote,
        "calls_in_flight": len(session.calls_in_flight()),
    }


def overview(gateway: Gateway, audit_limit: int) -> dict[str, Any]:
    """Everything the console shows, in one reading (so one poll is one audited admin call)."""
    ready, not_ready = gateway.readiness()
    sessions = list(gateway.sessions.values())
    return {
        "gateway": {
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - gateway.created, 3),
            "ready": len(ready) >= gateway.config.listen.min_ready_backends,
            "not_ready": not_ready,
        },
        "traffic": {
            **gateway.metrics.traffic(),
            "in_flight": sum(len(s.calls_in_flight()) for s in sessions),
        },
        "sessions": {
            "total": len(sessions),
            "by_transport": dict(Counter(s.transport for s in sessions)),
        },
        "backends": [describe_backend(b) for b in gateway.backends.values()],
        "audit": recent_audit(gateway, audit_limit),
    }


def recent_audit(gateway: Gateway, limit: int) -> dict[str, Any]:
    """The latest audit records, newest first, from the plugins that keep them (``recent_records``);
    ``enabled`` is false when no such plugin is in the chain."""
    limit = max(0, min(limit, MAX_AUDIT_ENTRIES))
    keepers = [
        keeper
        for named in gateway.plugins
        if callable(keeper := getattr(named.plugin, "recent_records", None))
    ]
    entries: list[dict[str, Any]] = []
    for keeper in keepers:
        entries.extend(keeper(limit))
    # Records carry RFC 3339 UTC times with a fixed width, so the text order is the time order.
    entries.sort(key=lambda entry: str(entry.get("time", "")), reverse=True)
    return {"enabled": bool(keepers), "entries": entries[:limit]}
