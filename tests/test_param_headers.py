"""Mcp-Param-* headers: added toward modern HTTP backends, checked from modern HTTP clients, and tools
with forbidden x-mcp-header annotations left out of the catalog."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.param_headers import InvalidAnnotation, annotated_paths, headers_for, mismatch
from tests.conftest import StartGateway, listening_fixture
from tests.test_backend_eras import modern_fixture, text_of

MODERN = "2026-07-28"


def annotated(schema_type: str = "string", name: str = "Region") -> dict[str, Any]:
    return {"type": schema_type, "x-mcp-header": name}


def test_annotations_are_found_along_properties_only() -> None:
    schema = {
        "type": "object",
        "properties": {
            "region": annotated(),
            "nested": {"type": "object", "properties": {"flag": annotated("boolean", "Flag")}},
            "count": annotated("integer", "Count"),
        },
    }
    assert annotated_paths(schema) == {"Region": ("region",), "Flag": ("nested", "flag"), "Count": ("count",)}
    assert headers_for(
        annotated_paths(schema), {"region": "é u", "nested": {"flag": True}, "count": None}
    ) == {
        "Mcp-Param-Region": "=?base64?w6kgdQ==?=",
        "Mcp-Param-Flag": "true",
    }


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"ratio": annotated("number")}},
        {"type": "object", "properties": {"list": {"type": "array", "items": annotated()}}},
        {"type": "object", "anyOf": [{"properties": {"a": annotated()}}]},
        {"type": "object", "properties": {"a": annotated(name="Bad Name")}},
        {"type": "object", "properties": {"a": annotated(name="X"), "b": annotated(name="x")}},
        {"type": "object", "$defs": {"a": annotated()}},
    ],
)
def test_forbidden_annotations_are_refused(schema: dict[str, Any]) -> None:
    with pytest.raises(InvalidAnnotation):
        annotated_paths(schema)


def test_mismatches_are_named() -> None:
    paths = {"Region": ("region",)}
    assert mismatch(paths, {"region": "eu"}, {"Mcp-Param-Region": "eu"}) is None
    assert mismatch(paths, {}, {}) is None
    assert "missing" in str(mismatch(paths, {"region": "eu"}, {}))
    assert "does not match" in str(mismatch(paths, {"region": "eu"}, {"Mcp-Param-Region": "us"}))
    assert "was sent" in str(mismatch(paths, {}, {"Mcp-Param-Region": "eu"}))


async def test_a_forbidden_annotation_keeps_the_tool_out_of_the_catalog(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"new": modern_fixture()}})
    names = {tool["name"] for tool in gw.gateway.catalog.items["tools"]}
    assert "new_route" in names and "new_bad_header" not in names


async def test_calls_to_a_modern_http_backend_carry_the_param_headers(start_gateway: StartGateway) -> None:
    args = ("--transport", "streamable-http", "--server", "modern_server")
    async with listening_fixture("http_backend.py", *args) as (url, _):
        gw = await start_gateway({"mcpServers": {"web": {"url": url}}})
        client = await gw.client()
        routed = await client.call("tools/call", {"name": "web_route", "arguments": {"region": "eu-west"}})
        assert text_of(routed) == "region=eu-west header=eu-west"


async def test_modern_http_clients_must_send_matching_param_headers(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"new": modern_fixture()}})
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "new_route", "arguments": {"region": "eu"}, "_meta": meta},
    }
    base = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "new_route",
    }
    url = gw.server.make_url("/mcp")
    for extra, status in (({}, 400), ({"Mcp-Param-Region": "us"}, 400), ({"mcp-param-region": "eu"}, 200)):
        async with gw.http.post(url, json=body, headers={**base, **extra}) as response:
            assert response.status == status, extra
            reply = await response.json()
            if status == 400:
                assert reply["error"]["code"] == -32020 and "Mcp-Param-Region" in reply["error"]["message"]
            else:
                assert reply["result"]["content"][0]["text"] == "region=eu header=None"
