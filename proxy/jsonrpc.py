"""JSON-RPC 2.0 framing for MCP: parse once with orjson, classify, and build replies.

Messages travel through the gateway as the plain dicts orjson produced, never as SDK models: the mcp 2.x
types drop fields they do not know, and a gateway must forward what it does not understand untouched.
"""

from __future__ import annotations

import enum
import json
from typing import Any, TypeGuard

import orjson

from proxy.errors import ErrorCode, InvalidRequest, PorticoError

Message = dict[str, Any]
RequestId = str | int


class Kind(enum.Enum):
    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"


class ParseError(PorticoError):
    code = ErrorCode.PARSE_ERROR


def loads(data: bytes | str) -> Any:
    """Parse one frame; any decoding problem becomes a ParseError (-32700)."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"Parse error: {exc}") from None
    if isinstance(parsed, dict) and isinstance(parsed.get("id"), float):
        # orjson reads integers beyond 64 bits as floats; the standard library keeps them exact, so a
        # client using such an id still gets its own id back. Rare, so only this path pays for it.
        exact = json.loads(data)
        if isinstance(exact, dict) and isinstance(exact.get("id"), int):
            return exact
    return parsed


def dumps(message: Message) -> bytes:
    try:
        return orjson.dumps(message)
    except TypeError:
        # Integers beyond 64 bits (see loads) are beyond orjson too.
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def is_valid_id(value: object) -> TypeGuard[RequestId]:
    """MCP ids are strings or integers; JSON-RPC's null, floats and booleans are not allowed."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def salvage_id(obj: object) -> RequestId | None:
    """The id to put on an error reply for a message that failed validation, if it has a usable one."""
    if isinstance(obj, dict):
        candidate = obj.get("id")
        if is_valid_id(candidate):
            return candidate
    return None


def classify(obj: object) -> Kind:
    """Validate the JSON-RPC envelope and say what the message is.

    Raises InvalidRequest (-32600) for anything that is not a well-formed request, notification or
    response. Parameter shapes are checked by whoever handles the method.
    """
    if not isinstance(obj, dict):
        raise InvalidRequest("Invalid Request: a message must be a JSON object")
    if obj.get("jsonrpc") != "2.0":
        raise InvalidRequest('Invalid Request: "jsonrpc" must be "2.0"')
    if "method" in obj:
        if not isinstance(obj["method"], str) or not obj["method"]:
            raise InvalidRequest('Invalid Request: "method" must be a non-empty string')
        if "params" in obj and not isinstance(obj["params"], dict):
            raise InvalidRequest('Invalid Request: "params" must be an object in MCP')
        if "id" not in obj:
            return Kind.NOTIFICATION
        if not is_valid_id(obj["id"]):
            raise InvalidRequest('Invalid Request: "id" must be a string or an integer')
        return Kind.REQUEST
    has_result, has_error = "result" in obj, "error" in obj
    if has_result == has_error:
        raise InvalidRequest('Invalid Request: a message needs "method", or exactly one of "result"/"error"')
    if has_result and not is_valid_id(obj.get("id")):
        raise InvalidRequest('Invalid Request: a response needs a string or integer "id"')
    # JSON-RPC 2.0: a response always has "id"; an error answering something unreadable says null.
    if has_error and ("id" not in obj or (obj["id"] is not None and not is_valid_id(obj["id"]))):
        raise InvalidRequest('Invalid Request: an error response needs a string, integer or null "id"')
    if has_error and not _is_error_object(obj["error"]):
        raise InvalidRequest('Invalid Request: "error" must have an integer "code" and a string "message"')
    return Kind.RESPONSE


def _is_error_object(error: object) -> bool:
    return (
        isinstance(error, dict)
        and isinstance(error.get("code"), int)
        and not isinstance(error.get("code"), bool)
        and isinstance(error.get("message"), str)
    )


def params_of(message: Message) -> dict[str, Any]:
    params = message.get("params")
    return params if isinstance(params, dict) else {}


def request(request_id: RequestId, method: str, params: dict[str, Any] | None = None) -> Message:
    message: Message = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def notification(method: str, params: dict[str, Any] | None = None) -> Message:
    message: Message = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def result(request_id: RequestId | None, value: dict[str, Any]) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "result": value}


def error(request_id: RequestId | None, err: dict[str, Any]) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "error": err}


def error_from(request_id: RequestId | None, exc: PorticoError) -> Message:
    return error(request_id, exc.to_error())
