"""The official MCP conformance suite, run against our fixture backend directly and through the gateway."""
