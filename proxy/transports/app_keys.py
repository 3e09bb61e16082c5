"""The typed keys under which the aiohttp application holds the gateway's shared objects."""

from __future__ import annotations

from aiohttp import web

from proxy.gateway import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
