"""Where a client's bearer token comes from: the ``Authorization`` header, or (for browsers, whose
WebSocket API cannot set headers) a WebSocket subprotocol ``portico.bearer.<token>`` offered beside
``mcp``. Never the query string: URLs end up in logs, histories and Referer headers.
"""

from __future__ import annotations

import re

from proxy.chain import Credentials
from proxy.errors import Unauthenticated

SUBPROTOCOL_PREFIX = "portico.bearer."
# Query parameters that name a token outright (RFC 6750 section 2.3 and a common variant).
_TOKEN_PARAMETERS = ("access_token", "token")
# RFC 6750's b64token: what a bearer token may consist of.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def presented_token(credentials: Credentials, max_bytes: int) -> str | None:
    """The one bearer token in ``credentials``, or None when there is none.

    Raises ``Unauthenticated`` with ``invalid_request`` for a token in the query string, a token presented
    twice, a scheme other than Bearer or a malformed token, and ``invalid_token`` for an oversized one
    (refused before any parsing).
    """
    for name in _TOKEN_PARAMETERS:
        if name in credentials.query:
            raise _in_query()
    from_header = _from_header(credentials.authorization, max_bytes)
    from_subprotocol = _from_subprotocols(credentials.subprotocols, max_bytes)
    if from_header is not None and from_subprotocol is not None:
        raise Unauthenticated(
            "present the token once: in the Authorization header or a subprotocol, not both",
            error="invalid_request",
        )
    token = from_header if from_header is not None else from_subprotocol
    if token is not None and token in credentials.query.values():
        raise _in_query()
    return token


def _from_header(authorization: str | None, max_bytes: int) -> str | None:
    if authorization is None:
        return None
    # The scheme, one or more spaces and the token; measured before it is split, so nothing big is copied.
    _refuse_oversized(authorization, max_bytes + len("Bearer  "))
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated(
            "only Bearer credentials are accepted in the Authorization header", error="invalid_request"
        )
    return _well_formed(token.strip(), max_bytes)


def _from_subprotocols(subprotocols: tuple[str, ...], max_bytes: int) -> str | None:
    offered = [p for p in subprotocols if p.startswith(SUBPROTOCOL_PREFIX)]
    if not offered:
        return None
    if len(offered) > 1:
        raise Unauthenticated(
            f"offer at most one {SUBPROTOCOL_PREFIX}<token> subprotocol", error="invalid_request"
        )
    return _well_formed(offered[0].removeprefix(SUBPROTOCOL_PREFIX), max_bytes)


def _well_formed(token: str, max_bytes: int) -> str:
    _refuse_oversized(token, max_bytes)
    if not token:
        raise Unauthenticated("the bearer token is empty", error="invalid_request")
    if not _B64TOKEN.fullmatch(token):
        raise Unauthenticated("the bearer token is malformed", error="invalid_request")
    return token


def _refuse_oversized(text: str, limit: int) -> None:
    # len() counts characters; a non-ASCII character takes at least one byte, so this never under-counts
    # the bytes of an acceptable (ASCII-only) token.
    if len(text) > limit:
        raise Unauthenticated(f"the token is larger than {limit} bytes")


def _in_query() -> Unauthenticated:
    return Unauthenticated("tokens are not accepted in the query string", error="invalid_request")
