"""Demo MCP servers (weather, notes) that Portico can front over stdio."""
