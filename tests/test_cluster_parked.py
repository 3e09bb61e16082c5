"""A modern client's call parked for its answers, in a real cluster (tests/cluster.py): three gateway
processes on one Redis behind nginx round-robin, so the client's retries land on other instances than the
one whose legacy backend asked the question, and still complete the call.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.gateway import TIMEOUT_META_KEY
from tests.cluster import Instance, Settings, gateway_cluster
from tests.test_input_bridge import elicitation_answer, post_with_headers, tool_call

SECRET = "the cluster's requestState secret, 32+"
ENDED = "the call this requestState resumes has ended; send it again"
INVALID_PARAMS = -32602
REQUEST_TIMEOUT = -32001


def same_secret(settings: Settings, workdir: Path) -> None:
    settings["request_state"] = {"secret": SECRET}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def answered(reply: dict[str, Any]) -> str:
    return "".join(part["text"] for part in reply["result"]["content"])


async def test_a_parked_call_completes_with_retries_that_land_on_other_instances(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with gateway_cluster(tmp_path, configure=same_secret) as cluster:
        reply, headers = await post_with_headers(http, cluster.mcp, tool_call("ev_ask_twice", 1))
        holder = cluster.answered_by(headers)
        first = reply["result"]
        assert first["resultType"] == "input_required"
        answers = {
            key: elicitation_answer(q["params"]["message"]) for key, q in first["inputRequests"].items()
        }

        # Round-robin gives the retry to the next instance; the call's next question comes back from it.
        retry = tool_call("ev_ask_twice", 2, inputResponses=answers, requestState=first["requestState"])
        reply, headers = await post_with_headers(http, cluster.mcp, retry)
        assert cluster.answered_by(headers) is not holder
        second = reply["result"]
        assert second["resultType"] == "input_required"
        [(key, question)] = second["inputRequests"].items()
        assert question["params"]["message"] == "third?"

        last = tool_call(
            "ev_ask_twice",
            3,
            inputResponses={key: elicitation_answer("c")},
            requestState=second["requestState"],
        )
        reply, headers = await post_with_headers(http, cluster.mcp, last)
        assert cluster.answered_by(headers) is not holder
        assert reply["id"] == 3 and answered(reply) == "first?,second?,c"
        assert reply["result"]["resultType"] == "complete"

        # A sampling request the same way.
        reply, headers = await post_with_headers(
            http, cluster.mcp, tool_call("ev_sample", 4, arguments={"prompt": "hi"})
        )
        holder = cluster.answered_by(headers)
        [key] = reply["result"]["inputRequests"]
        sampled = {"role": "assistant", "content": {"type": "text", "text": "sampled"}, "model": "m"}
        retry = tool_call(
            "ev_sample", 5, inputResponses={key: sampled}, requestState=reply["result"]["requestState"]
        )
        reply, headers = await post_with_headers(http, cluster.mcp, retry)
        assert cluster.answered_by(headers) is not holder
        assert answered(reply) == "sampled"


def backend_of(instance: Instance) -> int:
    [pid] = instance.children()  # the everything fixture, the instance's one stdio backend
    return pid


async def park(http: aiohttp.ClientSession, holder: Instance, request_id: int) -> dict[str, Any]:
    """An ev_ask call parked on ``holder``; its retry, with an answer, for another instance to send."""
    reply, _ = await post_with_headers(
        http, holder.mcp, tool_call("ev_ask", request_id, arguments={"question": "Q"})
    )
    [key] = reply["result"]["inputRequests"]
    return tool_call(
        "ev_ask",
        request_id + 1,
        inputResponses={key: elicitation_answer("late")},
        requestState=reply["result"]["requestState"],
    )


async def test_a_retry_is_answered_by_its_deadline_and_when_its_holder_dies(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with gateway_cluster(tmp_path, configure=same_secret) as cluster:
        holder, other, third = cluster.instances

        # The holder's backend is stuck once it has the answer: the retry on another instance is answered
        # by the deadline it asked for, and the call is cancelled on the holder, as a local retry's is.
        retry = await park(http, holder, 1)
        retry["params"]["_meta"][TIMEOUT_META_KEY] = 1.5
        stuck = backend_of(holder)
        os.kill(stuck, signal.SIGSTOP)
        try:
            reply, _ = await asyncio.wait_for(post_with_headers(http, other.mcp, retry), 10)
        finally:
            os.kill(stuck, signal.SIGCONT)
        assert reply["error"]["code"] == REQUEST_TIMEOUT, reply
        reply, _ = await post_with_headers(http, holder.mcp, retry)
        assert reply["error"]["code"] == INVALID_PARAMS and ENDED in reply["error"]["message"], reply

        # The holder dies while another instance waits for it: that one tells the client within seconds,
        # long before the request's deadline (60 s).
        retry = await park(http, holder, 3)
        stuck = backend_of(holder)
        os.kill(stuck, signal.SIGSTOP)
        waiting = asyncio.ensure_future(post_with_headers(http, other.mcp, retry))
        try:
            await asyncio.sleep(1.5)
            assert not waiting.done()
            await cluster.kill(holder.index)
            reply, _ = await asyncio.wait_for(waiting, 10)
        finally:
            waiting.cancel()
            os.kill(stuck, signal.SIGCONT)
        assert reply["error"]["code"] == INVALID_PARAMS and ENDED in reply["error"]["message"], reply

        # ...and a retry that comes after is told at once.
        reply, _ = await asyncio.wait_for(post_with_headers(http, third.mcp, retry), 5)
        assert reply["error"]["code"] == INVALID_PARAMS and ENDED in reply["error"]["message"], reply
