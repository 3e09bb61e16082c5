"""Protocol versions and the legacy handshake, kept in one place so no other module needs to know them."""

from __future__ import annotations

from typing import Any

from proxy.errors import InvalidParams

# Legacy (handshake) revisions the gateway speaks to clients, newest first.
HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
LATEST_HANDSHAKE_VERSION = HANDSHAKE_VERSIONS[0]


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
