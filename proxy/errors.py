"""Portico's exception tree: every failure the gateway reports to a client starts here.

    PorticoError                      base; carries a JSON-RPC code, message and optional data
    ├── ConfigError                   a bad config file (raised at start-up only, never to clients)
    ├── Rejection                     a plugin refused a message (auth, policy, rate limit, ...)
    │   ├── Unauthenticated           no, or no longer, a valid credential (HTTP 401 and a challenge)
    │   │   └── InsufficientScope     a valid credential without a scope the request needs (HTTP 403)
    │   ├── AccessDenied              a policy said no (names subject, object and action)
    │   └── RateLimited               over a rate limit; ``data.retryAfterSeconds`` (HTTP 429)
    ├── InvalidRequest / InvalidParams / MethodNotFound
    │                                 the client's own mistake, reported with the client's id
    └── BackendError                  the backend's fault, never the client's
        ├── BackendUnavailable        not started, died, or its connection closed
        └── BackendTimeout            no answer before the request's deadline

Foreign exceptions (aiohttp, OSError, subprocess) are mapped to these at the boundary they cross, in the
connectors. The one place that turns a ``PorticoError`` into a JSON-RPC error reply is
``proxy.chain.Chain.dispatch``.
"""

from __future__ import annotations

from typing import Any


class ErrorCode:
    """JSON-RPC error codes the gateway uses, stable across releases."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    # The server-defined range (-32000 .. -32099). -32001 matches the reference SDKs' timeout code.
    REQUEST_TIMEOUT = -32001
    BACKEND_UNAVAILABLE = -32050
    CLIENT_REQUEST_UNDELIVERABLE = -32051
    REJECTED = -32060
    UNAUTHENTICATED = -32061
    INSUFFICIENT_SCOPE = -32062
    ACCESS_DENIED = -32063
    REDACTION_BLOCKED = -32064
    RATE_LIMITED = -32065


class PorticoError(Exception):
    """An error with the JSON-RPC shape it takes when it reaches a client."""

    code: int = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, *, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.data = data

    def to_error(self) -> dict[str, Any]:
        """The JSON-RPC ``error`` member for this exception."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ConfigError(PorticoError):
    """The config file is unusable; the message names the file, the key path and the problem."""


class Rejection(PorticoError):
    """A plugin refused the message. Plugins raise it (or a subclass) with their own stable code."""

    code = ErrorCode.REJECTED


class Unauthenticated(Rejection):
    """The client presented no valid credential, or its credential expired or was revoked.

    Over HTTP this is a 401 whose ``WWW-Authenticate: Bearer`` challenge carries ``error`` (RFC 6750:
    ``invalid_request`` or ``invalid_token``; None when no credential was presented at all) and the
    protected-resource metadata URL.
    """

    code = ErrorCode.UNAUTHENTICATED

    def __init__(self, message: str, *, error: str | None = "invalid_token") -> None:
        super().__init__(message)
        self.error = error


class InsufficientScope(Unauthenticated):
    """A valid credential that lacks scopes the request needs: HTTP 403, ``error="insufficient_scope"``."""

    code = ErrorCode.INSUFFICIENT_SCOPE

    def __init__(self, message: str, scopes: tuple[str, ...]) -> None:
        super().__init__(message, error="insufficient_scope")
        self.scopes = scopes


class AccessDenied(Rejection):
    """A policy refused the request; the message names the subject, the object and the action."""

    code = ErrorCode.ACCESS_DENIED


class RateLimited(Rejection):
    """Over a rate limit: try again after ``retry_after`` seconds (in the error's data, and as HTTP 429
    with ``Retry-After`` over HTTP)."""

    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, data={"retryAfterSeconds": round(retry_after, 3)})
        self.retry_after = retry_after


class InvalidRequest(PorticoError):
    code = ErrorCode.INVALID_REQUEST


class InvalidParams(PorticoError):
    code = ErrorCode.INVALID_PARAMS


class MethodNotFound(PorticoError):
    code = ErrorCode.METHOD_NOT_FOUND


class BackendError(PorticoError):
    """Something went wrong on the backend's side of the gateway."""

    code = ErrorCode.INTERNAL_ERROR


class BackendUnavailable(BackendError):
    code = ErrorCode.BACKEND_UNAVAILABLE


class BackendTimeout(BackendError):
    code = ErrorCode.REQUEST_TIMEOUT
