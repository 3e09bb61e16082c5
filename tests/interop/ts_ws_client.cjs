// A WebSocket MCP client built from the official TypeScript SDK (1.x), run against Portico by
// test_interop.py. Usage: node ts_ws_client.cjs <node_modules dir> <ws url> <tool> <json args>
// Prints one JSON object on stdout: what the SDK saw at initialize, the tool names, the call result.
"use strict";
const path = require("node:path");
const { createRequire } = require("node:module");

async function main() {
  const [modules, url, tool, rawArgs] = process.argv.slice(2);
  const load = createRequire(path.join(modules, "noop.js"));
  const { Client } = load("@modelcontextprotocol/sdk/client/index.js");
  const { WebSocketClientTransport } = load("@modelcontextprotocol/sdk/client/websocket.js");
  const { LATEST_PROTOCOL_VERSION } = load("@modelcontextprotocol/sdk/types.js");
  const sdkManifest = path.join(modules, "@modelcontextprotocol", "sdk", "package.json");
  const sdkVersion = JSON.parse(require("node:fs").readFileSync(sdkManifest, "utf8")).version;

  const client = new Client({ name: "portico-interop-ts", version: "1.0.0" }, { capabilities: {} });
  const transport = new WebSocketClientTransport(new URL(url));
  let negotiated = null;
  transport.setProtocolVersion = (version) => {
    negotiated = version;
  };
  await client.connect(transport);
  const tools = [];
  let cursor;
  do {
    const page = await client.listTools(cursor ? { cursor } : {});
    tools.push(...page.tools.map((t) => t.name));
    cursor = page.nextCursor;
  } while (cursor);
  const call = await client.callTool({ name: tool, arguments: JSON.parse(rawArgs) });
  const out = {
    sdkVersion,
    requestedVersion: LATEST_PROTOCOL_VERSION,
    protocolVersion: negotiated,
    serverVersion: client.getServerVersion(),
    serverCapabilities: client.getServerCapabilities(),
    tools,
    call,
  };
  await client.close();
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`ts_ws_client failed: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  },
);
