"""``portico status --url http://HOST:PORT``: what a running gateway says of itself.

It reads the gateway's ``/readyz`` and ``/metrics`` and prints each backend (up or down, its tools) and the
open sessions. Exit status: 0 ready, 1 not ready, 2 unreachable (or not a Portico gateway).
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

READY, NOT_READY, UNREACHABLE = 0, 1, 2


class Unreachable(Exception):
    """The gateway could not be asked, or did not answer as a Portico gateway does."""


@dataclass
class GatewayStatus:
    """What ``/readyz`` and ``/metrics`` said."""

    ready: bool
    readiness: dict[str, Any]
    up: dict[str, bool] = field(default_factory=dict)
    tools: dict[str, int] = field(default_factory=dict)
    sessions: dict[tuple[str, str], int] = field(default_factory=dict)
    in_flight: int = 0


def run_status(url: str, timeout: float) -> tuple[int, str]:
    """The exit status and the text to print (on stdout when reachable, else one line for stderr)."""
    try:
        status = fetch_status(url, timeout)
    except Unreachable as exc:
        return UNREACHABLE, f"portico: cannot reach the gateway at {url}: {exc}"
    return (READY if status.ready else NOT_READY), describe(url, status)


def fetch_status(url: str, timeout: float) -> GatewayStatus:
    base = _base_url(url)
    code, body = _get(base + "/readyz", timeout)
    if code not in (200, 503):
        raise Unreachable(f"/readyz answered HTTP {code}")
    try:
        readiness = json.loads(body)
        ready = bool(readiness["status"] == "ready")
    except (ValueError, TypeError, KeyError) as exc:
        raise Unreachable(f"/readyz did not answer as a Portico gateway does ({exc})") from None
    code, body = _get(base + "/metrics", timeout)
    if code != 200:
        raise Unreachable(f"/metrics answered HTTP {code}")
    status = GatewayStatus(ready, readiness)
    try:
        _read_metrics(status, body.decode())
    except ValueError as exc:
        raise Unreachable(f"/metrics is not in the Prometheus text format ({exc})") from None
    return status


def _read_metrics(status: GatewayStatus, text: str) -> None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "portico_backend_up":
                status.up[labels["backend"]] = sample.value >= 1
            elif sample.name == "portico_backend_tools":
                status.tools[labels["backend"]] = int(sample.value)
            elif sample.name == "portico_sessions":
                status.sessions[(labels["transport"], labels["era"])] = int(sample.value)
            elif sample.name == "portico_requests_in_flight":
                status.in_flight = int(sample.value)


def describe(url: str, status: GatewayStatus) -> str:
    readiness = status.readiness
    ready_count = len(readiness.get("ready", []))
    lines = [
        f"gateway {url}: {'ready' if status.ready else 'NOT READY'} "
        f"({ready_count} backend(s) ready, at least {readiness.get('min_ready_backends', '?')} needed)",
        "backends:" if status.up else "backends: none",
    ]
    width = max((len(name) for name in status.up), default=0)
    for name in sorted(status.up):
        state = "up" if status.up[name] else "down"
        lines.append(f"  {name:<{width}}  {state:<4}  {status.tools.get(name, 0)} tools")
    total = sum(status.sessions.values())
    detail = ", ".join(f"{transport}/{era} {n}" for (transport, era), n in sorted(status.sessions.items()))
    lines.append(f"sessions: {total}" + (f" ({detail})" if detail else ""))
    lines.append(f"requests in flight: {status.in_flight}")
    return "\n".join(lines)


def _base_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Unreachable("the URL must be http://HOST:PORT or https://HOST:PORT")
    return f"{parts.scheme}://{parts.netloc}"


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    """The status and body of a GET; any failure to get an HTTP answer at all is ``Unreachable``."""
    request = urllib.request.Request(url, headers={"Accept": "*/*"})  # noqa: S310 (scheme checked above)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (scheme checked above)
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except urllib.error.URLError as exc:
        reason = exc.reason
        raise Unreachable(getattr(reason, "strerror", None) or str(reason)) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise Unreachable(str(exc) or type(exc).__name__) from None
