"""A modern backend's ``InputRequiredResult``, answered for a legacy client by asking it directly.

A modern (stateless) backend that needs input from the client (sampling, elicitation, roots) answers the
call with the requests it needs; a legacy client expects them as server-to-client requests instead. Each
one is put to the client as the request it used to be, and the call is then sent again with the answers
and the backend's own ``requestState``, until it completes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from proxy import eras, jsonrpc
from proxy.errors import BackendError, ErrorCode, PorticoError
from proxy.jsonrpc import Message
from proxy.upstream import UpstreamLink

# How many times one call may come back asking for input before the gateway gives up on it.
_MAX_INPUT_ROUNDS = 16
_INPUT_METHODS = frozenset({"sampling/createMessage", "elicitation/create", "roots/list"})

# Puts one request to the calling client and returns its response message.
AskClient = Callable[[Message], Awaitable[Message]]


async def bridge_input_requests(
    backend: str,
    ask_client: AskClient,
    link: UpstreamLink,
    method: str,
    params: dict[str, Any],
    reply: Message,
    deadline: float,
) -> Message:
    """The final reply to ``method``, after as many rounds of input as the backend asks for."""
    for _ in range(_MAX_INPUT_ROUNDS):
        result = reply.get("result")
        if not eras.input_required(result) or not isinstance(result, dict):
            return reply
        retry = {key: value for key, value in params.items() if key not in eras.RETRY_KEYS}
        requests = result.get("inputRequests")
        if requests:
            retry["inputResponses"] = await _ask_client_for_inputs(backend, ask_client, requests)
        if isinstance(result.get("requestState"), str):
            retry["requestState"] = result["requestState"]
        params = retry
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        reply = await link.request(method, params, timeout=remaining)
    raise BackendError(f"backend {backend!r} kept asking for input ({_MAX_INPUT_ROUNDS} rounds)")


async def _ask_client_for_inputs(backend: str, ask_client: AskClient, requests: object) -> dict[str, Any]:
    if not isinstance(requests, dict) or not all(
        isinstance(r, dict) and r.get("method") in _INPUT_METHODS for r in requests.values()
    ):
        raise BackendError(f"backend {backend!r} sent malformed inputRequests")
    keys = list(requests)
    replies = await asyncio.gather(
        *(
            ask_client(jsonrpc.request(0, requests[key]["method"], requests[key].get("params")))
            for key in keys
        )
    )
    answers: dict[str, Any] = {}
    for key, answer in zip(keys, replies, strict=True):
        if "error" in answer:
            error = answer["error"]
            raise PorticoError(
                f"the backend needed {requests[key]['method']} from the client, which failed: "
                f"{error.get('message')}",
                code=error.get("code") if isinstance(error.get("code"), int) else ErrorCode.INTERNAL_ERROR,
            )
        answers[key] = answer.get("result")
    return answers
