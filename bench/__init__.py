"""Benchmarks for Portico: a null MCP backend and the WebSocket core throughput/latency harness."""
