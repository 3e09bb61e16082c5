"""What the redact plugin costs per message, in microseconds.

    .venv/bin/python -m bench.redact_cost [--iterations N]

Runs ``plugins.redact.Redact`` (default options) on three tool-call replies, one at a time: a ~1 KB clean
one, a ~10 KB clean one and a ~10 KB one with a few secrets and personal data in it. Each iteration is one
whole plugin call: the request is redacted, ``call_next`` hands back the reply, the reply is redacted. The
coroutine is driven by hand (nothing in it waits for anything at these sizes), so no event-loop overhead is
counted. Prints the median and the 99th percentile. Measures only; it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from plugins.redact import Redact
from proxy.chain import Context, Direction, Route

Message = dict[str, Any]

PROSE = (
    "The gateway forwards each request to the backend that owns the tool, waits for the reply and sends it "
    "back to the client. Version 2.4.1 was released on 2025-03-14; see https://example.com/docs/gateway for "
    "the full notes. Order 1234567890 shipped in 3 boxes at 12.50 each. "
)
CODE = (
    "def handle(request: Request) -> Response:\n"
    "    user_id = request.params.get('user_id', 42)\n"
    "    items = repository.find_items(user_id=user_id, limit=100)\n"
    "    return Response(status=200, body=[item.to_dict() for item in items])\n"
)
SECRETS = {
    "github": "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",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "email": "jane.doe@example.org",
    "card": "4111 1111 1111 1111",
}


def tool_item(index: int) -> dict[str, Any]:
    return {
        "id": f"item-{index}",
        "name": f"Widget number {index}",
        "created": "2025-01-15T10:20:30Z",
        "tags": ["blue", "large", "sale"],
        "price": 12.5 + index,
        "url": f"https://shop.example.com/items/{index}",
    }


def reply(request_id: int, text: str, items: int) -> Message:
    structured = {"items": [tool_item(i) for i in range(items)], "page": 1, "total": items}
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "result": {
            "content": [{"type": "text", "text": text}],
            "structuredContent": structured,
            "isError": False,
        },
    }


def small_clean() -> Message:
    return reply(1, PROSE * 2, 2)


def large_clean() -> Message:
    return reply(1, (PROSE + CODE) * 14, 16)


def large_with_secrets() -> Message:
    message = large_clean()
    result = message["result"]
    text = result["content"][0]["text"]
    middle = len(text) // 2
    result["content"][0]["text"] = (
        text[:middle] + f" token {SECRETS['github']} and key {SECRETS['aws']} " + text[middle:]
    )
    result["structuredContent"]["items"][3]["owner"] = SECRETS["email"]
    result["structuredContent"]["items"][7]["card"] = SECRETS["card"]
    return message


REQUEST: Message = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "search", "arguments": {"query": "blue widgets", "limit": 20}},
}


class BenchSession:
    id = "bench"
    transport = "bench"
    protocol_version = "2025-11-25"
    client_info: dict[str, Any] = {}  # noqa: RUF012 -- read-only here

    def end(self, reason: str) -> None:
        return None


def one_call(plugin: Redact, answer: Message) -> Callable[[], Message | None]:
    route = Route("shop", "tool", "search", "shop__search")

    async def call_next(ctx: Context, message: Message) -> Message | None:
        return answer

    def run() -> Message | None:
        ctx = Context(BenchSession(), Direction.TO_BACKEND, "tools/call", route, time.monotonic() + 10)
        coroutine = plugin(ctx, REQUEST, call_next)
        try:
            coroutine.send(None)
        except StopIteration as done:
            result: Message | None = done.value
            return result
        coroutine.close()
        raise RuntimeError("the plugin waited for something")

    return run


def measure(run: Callable[[], object], iterations: int) -> tuple[float, float]:
    for _ in range(min(200, iterations)):
        run()
    samples: list[float] = []
    for _ in range(iterations):
        started = time.perf_counter_ns()
        run()
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=3000)
    args = parser.parse_args(argv)
    plugin = Redact()
    print(f"Python {platform.python_version()} on {platform.machine()}, {args.iterations} iterations each")
    print(f"{'message':<24}{'bytes':>8}{'median us':>12}{'p99 us':>10}  redactions")
    for name, build in (
        ("~1 KB clean", small_clean),
        ("~10 KB clean", large_clean),
        ("~10 KB with secrets", large_with_secrets),
    ):
        answer = build()
        run = one_call(plugin, answer)
        output = run()
        outcome = plugin.redactor.redact(answer)
        found = outcome[1] if outcome is not None else {}
        median, p99 = measure(run, args.iterations)
        size = len(orjson.dumps(answer))
        summary = ", ".join(f"{k}={v}" for k, v in sorted(found.items())) or "none"
        print(f"{name:<24}{size:>8}{median:>12.1f}{p99:>10.1f}  {summary}")
        if output is None or "result" not in output:
            print(f"  unexpected output: {output!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
