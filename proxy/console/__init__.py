"""The web console at ``/console``: one page, plain HTML/CSS/JS shipped in the package (no build step).

It is a client of two things the gateway already serves, with nothing of its own on the server side:
the admin API (``GET /admin/overview``, polled every two seconds, with the operator's admin token) for
the backends, traffic, sessions and recent audit records; and the MCP endpoint (``/mcp`` over a
WebSocket, with the token the operator picks, sent as the ``portico.bearer.<token>`` subprotocol) for
the playground, which lists and calls tools exactly as that token's holder would.

Served only while the admin API is (``admin.enabled`` and ``admin.console``). The files are public (they
hold no data; every reading needs a token), but they are served with a strict Content-Security-Policy:
scripts only from the gateway itself, no inline code, connections only back to the gateway, no framing.
The page writes what it receives (tool names, descriptions, audit records: a backend's or client's words)
as text, never as markup.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from proxy.gateway import Gateway

PATH = "/console"
# The files a browser may ask for, and their types: nothing else under /console is served.
FILES = {
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page and script change with the gateway's version; a browser must ask again each time.
    "Cache-Control": "no-cache",
}


def add_console_routes(app: web.Application, gateway: Gateway) -> None:
    """Route ``/console`` when the admin API and the console are both enabled."""
    admin = gateway.config.admin
    if not (admin.enabled and admin.console):
        return
    app.router.add_get(PATH, _to_index, allow_head=False)
    app.router.add_get(PATH + "/", _serve_file, allow_head=False)
    app.router.add_get(PATH + "/{file}", _serve_file, allow_head=False)


async def _to_index(request: web.Request) -> web.Response:
    # Relative links in the page (console.js, console.css) resolve under /console/.
    raise web.HTTPPermanentRedirect(PATH + "/")


async def _serve_file(request: web.Request) -> web.Response:
    name = request.match_info.get("file") or "index.html"
    content_type = FILES.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    body = resources.files(__package__).joinpath("static", name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=SECURITY_HEADERS)
