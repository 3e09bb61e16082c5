"""The two eras of MCP meet here, so no other module needs to know which one a peer speaks.

- Legacy (2024-11-05 .. 2025-11-25): an ``initialize`` handshake opens a session that carries the
  protocol version and the client's capabilities.
- Modern (2026-07-28): no handshake and no session; every request carries the version and the client's
  capabilities in ``params._meta``, every result says ``resultType``, and list results say how long they
  may be cached (``ttlMs``) and by whom (``cacheScope``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.errors import InvalidParams, PorticoError

# Legacy (handshake) revisions the gateway speaks to clients, newest first.
HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
LATEST_HANDSHAKE_VERSION = HANDSHAKE_VERSIONS[0]
MODERN_VERSIONS = ("2026-07-28",)
SUPPORTED_VERSIONS = (*MODERN_VERSIONS, *HANDSHAKE_VERSIONS)

PROTOCOL_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CLIENT_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO_KEY = "io.modelcontextprotocol/clientInfo"
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
LOG_LEVEL_KEY = "io.modelcontextprotocol/logLevel"
SUBSCRIPTION_ID_KEY = "io.modelcontextprotocol/subscriptionId"
MODERN_VERSION = MODERN_VERSIONS[0]

HEADER_MISMATCH = -32020
MISSING_CLIENT_CAPABILITY = -32021
UNSUPPORTED_PROTOCOL_VERSION = -32022

VERSION_HEADER = "MCP-Protocol-Version"
METHOD_HEADER = "Mcp-Method"
NAME_HEADER = "Mcp-Name"
# Methods whose named target is mirrored in the Mcp-Name header, and the param that holds it.
NAME_BEARING_METHODS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
# The HTTP status of a modern-era error reply; any other error travels with 200.
HTTP_STATUS_OF_ERROR = {
    -32700: 400,
    -32600: 400,
    -32602: 400,
    HEADER_MISMATCH: 400,
    MISSING_CLIENT_CAPABILITY: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    -32601: 404,
}

# Methods of the legacy era that the modern one removed (subscriptions/listen and per-request _meta
# replace them).
LEGACY_ONLY_METHODS = frozenset(
    {"initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"}
)
# Severity levels of MCP logging, least severe first.
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
# Results that carry caching directives in the modern era.
CACHEABLE_METHODS = frozenset(
    {
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "server/discover",
    }
)


class UnsupportedProtocolVersion(PorticoError):
    code = UNSUPPORTED_PROTOCOL_VERSION


class HeaderMismatch(PorticoError):
    code = HEADER_MISMATCH


class MissingClientCapability(PorticoError):
    """The request needs a capability its client did not declare; ``data`` names it, as the era says."""

    code = MISSING_CLIENT_CAPABILITY

    def __init__(self, message: str, capability: str) -> None:
        super().__init__(message, data={"requiredCapabilities": {capability: {}}})


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a modern request says about its client, in its own ``_meta``."""

    version: str
    capabilities: dict[str, Any]
    client_info: dict[str, Any]
    # The least severe log level the client wants with this request's reply; None: no logs at all.
    log_level: str | None = None


def negotiate(params: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Check ``initialize`` params; return (version, client capabilities, client info).

    A client asking for a version the gateway does not speak gets the latest one, and decides itself
    whether it can go on, as the specification says.
    """
    requested = params.get("protocolVersion")
    capabilities = params.get("capabilities", {})
    client_info = params.get("clientInfo", {})
    if not isinstance(requested, str):
        raise InvalidParams('Invalid params: initialize needs a string "protocolVersion"')
    if not isinstance(capabilities, dict):
        raise InvalidParams('Invalid params: "capabilities" must be an object')
    if not isinstance(client_info, dict):
        raise InvalidParams('Invalid params: "clientInfo" must be an object')
    version = requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE_VERSION
    return version, capabilities, client_info


def is_modern(message: dict[str, Any]) -> bool:
    """A request speaks the modern era when its ``_meta`` names a protocol version (an ``initialize`` that
    does is a modern request for a method the modern era removed)."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and PROTOCOL_VERSION_KEY in meta


def envelope(message: dict[str, Any], headers: Mapping[str, str] | None = None) -> Envelope:
    """Validate a modern request, in the specification's order; the first failure wins.

    1. ``params._meta`` carries the protocol version and the client capabilities (else -32602);
    2. over HTTP, ``MCP-Protocol-Version``, ``Mcp-Method`` and ``Mcp-Name`` agree with the body (else
       -32020), so a client that disagrees with itself is told so before anything else;
    3. the version is one the gateway speaks (else -32022, with the supported list).
    """
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        needed = f"{PROTOCOL_VERSION_KEY!r} and {CLIENT_CAPABILITIES_KEY!r}"
        raise InvalidParams(f"Invalid params: params._meta must be an object carrying {needed}")
    missing = [key for key in (PROTOCOL_VERSION_KEY, CLIENT_CAPABILITIES_KEY) if key not in meta]
    if missing:
        raise InvalidParams(f"Invalid params: params._meta is missing {', '.join(missing)}")
    version, capabilities = meta[PROTOCOL_VERSION_KEY], meta[CLIENT_CAPABILITIES_KEY]
    if headers is not None:
        _check_headers(message, version, headers)
    if not isinstance(version, str):
        raise InvalidParams(f"Invalid params: {PROTOCOL_VERSION_KEY} must be a string")
    if version not in MODERN_VERSIONS:
        raise UnsupportedProtocolVersion(
            f"Unsupported protocol version {version!r}",
            data={"supported": list(MODERN_VERSIONS), "requested": version},
        )
    if not isinstance(capabilities, dict):
        raise InvalidParams(f"Invalid params: {CLIENT_CAPABILITIES_KEY} must be an object")
    client_info = meta.get(CLIENT_INFO_KEY)
    log_level = meta.get(LOG_LEVEL_KEY)
    if log_level is not None and log_level not in LOG_LEVELS:
        raise InvalidParams(f"Invalid params: {LOG_LEVEL_KEY} must be one of {', '.join(LOG_LEVELS)}")
    return Envelope(version, capabilities, client_info if isinstance(client_info, dict) else {}, log_level)


def _check_headers(message: dict[str, Any], version: object, headers: Mapping[str, str]) -> None:
    if headers.get(VERSION_HEADER) != version:
        raise HeaderMismatch(
            f"Header mismatch: {VERSION_HEADER} does not match params._meta's protocol version"
        )
    if headers.get(METHOD_HEADER) != message.get("method"):
        raise HeaderMismatch(f"Header mismatch: {METHOD_HEADER} does not match the body's method")
    name_key = NAME_BEARING_METHODS.get(str(message.get("method")))
    if name_key is not None:
        value = message["params"].get(name_key)
        if value is not None and decode_header_value(headers.get(NAME_HEADER)) != value:
            raise HeaderMismatch(f"Header mismatch: {NAME_HEADER} does not match the body's {name_key!r}")


def decode_header_value(value: str | None) -> str | None:
    """A header value as sent, or decoded from the ``=?base64?...?=`` form used for unsafe characters.

    A malformed encoding decodes to None, so it can never match a body value by accident.
    """
    if value is None or not (value.startswith("=?base64?") and value.endswith("?=")):
        return value
    payload = value[len("=?base64?") : -len("?=")]
    try:
        decoded = base64.b64decode(payload, validate=True)
        if base64.b64encode(decoded).decode("ascii") != payload:
            return None
        return decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def encode_header_value(value: str) -> str:
    """A value as an HTTP header carries it: as it is when plain visible ASCII, else in the base64 form."""
    plain = (
        value == value.strip(" \t")
        and all(c in "\t" or 0x20 <= ord(c) <= 0x7E for c in value)
        and not (value.startswith("=?base64?") and value.endswith("?="))
    )
    if plain:
        return value
    return "=?base64?" + base64.b64encode(value.encode("utf-8")).decode("ascii") + "?="


def request_headers(message: dict[str, Any]) -> dict[str, str]:
    """The headers a modern POST must carry: they repeat what the body says, for intermediaries."""
    method = str(message.get("method"))
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(PROTOCOL_VERSION_KEY) if isinstance(meta, dict) else None
    headers = {VERSION_HEADER: str(version or MODERN_VERSION), METHOD_HEADER: method}
    name_key = NAME_BEARING_METHODS.get(method)
    if name_key is not None and isinstance(params, dict) and isinstance(params.get(name_key), str):
        headers[NAME_HEADER] = encode_header_value(params[name_key])
    return headers


ENVELOPE_KEYS = frozenset({PROTOCOL_VERSION_KEY, CLIENT_CAPABILITIES_KEY, CLIENT_INFO_KEY, LOG_LEVEL_KEY})
# Parameters of the modern era's multi-round-trip requests, which a handshake-era server would not know.
RETRY_KEYS = ("inputResponses", "requestState")


def for_legacy_backend(params: dict[str, Any]) -> dict[str, Any]:
    """A modern request's params as a backend in a handshake session expects them: without the envelope.

    A legacy session already told the backend who the client is; servers that speak both eras refuse the
    modern envelope on a handshake connection.
    """
    meta = params.get("_meta")
    if not isinstance(meta, dict) or not ENVELOPE_KEYS.intersection(meta):
        return params
    kept = {key: value for key, value in meta.items() if key not in ENVELOPE_KEYS}
    trimmed = {key: value for key, value in params.items() if key != "_meta"}
    if kept:
        trimmed["_meta"] = kept
    return trimmed


def with_envelope(
    params: dict[str, Any] | None,
    capabilities: dict[str, Any],
    client_info: dict[str, Any],
    log_level: str | None = None,
) -> dict[str, Any]:
    """Params for a modern backend: the caller's own envelope where it sent one, else the one given."""
    params = dict(params or {})
    meta = params.get("_meta")
    stamped = dict(meta) if isinstance(meta, dict) else {}
    stamped.setdefault(PROTOCOL_VERSION_KEY, MODERN_VERSION)
    stamped.setdefault(CLIENT_CAPABILITIES_KEY, capabilities)
    if client_info:  # optional, but when present it must name the client: no empty object
        stamped.setdefault(CLIENT_INFO_KEY, client_info)
    if log_level is not None:
        stamped.setdefault(LOG_LEVEL_KEY, log_level)
    params["_meta"] = stamped
    return params


def input_required(result: object) -> bool:
    """Whether a result asks the client for more input before the request can complete (MRTR)."""
    return isinstance(result, dict) and result.get("resultType") == "input_required"


# The legacy era's "resource not found"; the modern era reports it as invalid params.
LEGACY_RESOURCE_NOT_FOUND = -32002


def modern_error(error: dict[str, Any]) -> dict[str, Any]:
    """An error as the modern era spells it (it has no -32002, from a legacy backend or the gateway)."""
    if error.get("code") == LEGACY_RESOURCE_NOT_FOUND:
        return {**error, "code": -32602}
    return error


def complete_result(method: str, result: dict[str, Any], server_info: dict[str, Any]) -> dict[str, Any]:
    """Give a result the fields the modern era requires of it, keeping whatever it already says.

    Where nothing said how long a result may be cached, it is immediately stale and private: a legacy
    backend gives no caching directives, and the aggregate is no more cacheable than its parts.
    """
    completed = dict(result)
    completed.setdefault("resultType", "complete")
    if method in CACHEABLE_METHODS:
        completed.setdefault("ttlMs", 0)
        completed.setdefault("cacheScope", "private")
    meta = completed.get("_meta")
    completed["_meta"] = {**(meta if isinstance(meta, dict) else {}), SERVER_INFO_KEY: server_info}
    return completed
