"""The typed keys under which the aiohttp application holds the gateway's shared objects."""

from __future__ import annotations

from aiohttp import web

from proxy.gateway import Gateway
from proxy.reload import Reloader

GATEWAY = web.AppKey("gateway", Gateway)
RELOADER = web.AppKey("reloader", Reloader)
