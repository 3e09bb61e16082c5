// Portico console: polls the admin API's overview and drives a small MCP client (the playground).
// Everything received is written with textContent, never as markup: tool names, descriptions and audit
// records are a backend's or a client's words.
"use strict";

const POLL_MS = 2000;
const HISTORY_POINTS = 60; // two minutes of readings
const PROTOCOL_VERSION = "2025-11-25";
const CLIENT_INFO = { name: "portico-console", version: "1" };
const BEARER_SUBPROTOCOL = "portico.bearer.";
// Relative to the page (/console/), so the console also works behind a proxy that adds a path prefix.
const OVERVIEW_URL = "../admin/overview?audit=50";
const MCP_URL = "../mcp";
// The console's own polls are admin calls too; they would crowd out everything else in the list.
const OWN_POLL_PATH = "/admin/overview";

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function stored(key) {
  return sessionStorage.getItem(key) || "";
}

// -- the overview: gateway, traffic, backends, audit ----------------------------------------------------

const history = { rate: [], p95: [] };
let previous = null; // the last traffic reading, for rates and interval percentiles
const openTools = new Set(); // backends whose tool list the operator opened (kept across redraws)

async function poll() {
  try {
    const headers = {};
    const token = stored("portico.adminToken");
    if (token) headers.Authorization = "Bearer " + token;
    const response = await fetch(OVERVIEW_URL, { headers, cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      showProblem(`The admin API answered ${response.status}: ${body.error || response.statusText}`);
    } else {
      showProblem(null);
      render(body);
    }
  } catch (error) {
    showProblem(`The gateway cannot be reached: ${error.message}`);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function showProblem(text) {
  const problem = $("problem");
  problem.hidden = text === null;
  problem.textContent = text || "";
  if (text !== null) {
    const state = $("gateway-state");
    state.textContent = "unavailable";
    state.className = "badge bad";
  }
}

function render(overview) {
  renderGateway(overview.gateway, overview.sessions);
  renderTraffic(overview.traffic);
  renderBackends(overview.backends);
  renderAudit(overview.audit);
}

function renderGateway(gateway, sessions) {
  const state = $("gateway-state");
  state.textContent = gateway.ready ? "ready" : "not ready";
  state.className = "badge " + (gateway.ready ? "ok" : "warn");
  $("gateway-facts").textContent = `v${gateway.version} · up ${duration(gateway.uptime_seconds)}`;
  $("sessions").textContent = sessions.total;
  $("sessions-detail").textContent = Object.entries(sessions.by_transport)
    .map(([transport, count]) => `${transport} ${count}`)
    .join(" · ");
}

function renderTraffic(traffic) {
  const now = performance.now();
  $("in-flight").textContent = traffic.in_flight;
  $("errors").textContent = traffic.errors;
  if (previous !== null) {
    const seconds = (now - previous.at) / 1000;
    const done = traffic.requests - previous.traffic.requests;
    const rate = seconds > 0 ? done / seconds : 0;
    const interval = latencyDelta(previous.traffic.latency, traffic.latency);
    const p50 = quantile(interval, 0.5);
    const p95 = quantile(interval, 0.95);
    $("rate").textContent = rate.toFixed(rate < 10 ? 1 : 0);
    $("p50").textContent = p50 === null ? "—" : milliseconds(p50);
    $("p95").textContent = p95 === null ? "—" : milliseconds(p95);
    remember(history.rate, rate);
    remember(history.p95, p95 === null ? 0 : p95 * 1000);
    sparkline($("rate-chart"), history.rate);
    sparkline($("latency-chart"), history.p95);
  }
  previous = { at: now, traffic };
}

function remember(series, value) {
  series.push(value);
  if (series.length > HISTORY_POINTS) series.shift();
}

// The requests timed between two readings: cumulative bucket counts minus the earlier ones.
function latencyDelta(before, after) {
  return {
    buckets: after.buckets,
    counts: after.counts.map((count, i) => count - (before.counts[i] || 0)),
    count: after.count - before.count,
  };
}

// The q-quantile in seconds, interpolated within its bucket (as Prometheus' histogram_quantile does);
// null when nothing was timed; the last bound when the quantile lies beyond it.
function quantile(histogram, q) {
  if (histogram.count <= 0) return null;
  const rank = q * histogram.count;
  let lowerBound = 0;
  let lowerCount = 0;
  for (let i = 0; i < histogram.buckets.length; i++) {
    const count = histogram.counts[i];
    if (count >= rank) {
      const inBucket = count - lowerCount;
      const share = inBucket > 0 ? (rank - lowerCount) / inBucket : 1;
      return lowerBound + (histogram.buckets[i] - lowerBound) * share;
    }
    lowerBound = histogram.buckets[i];
    lowerCount = count;
  }
  return histogram.buckets[histogram.buckets.length - 1];
}

function milliseconds(seconds) {
  const ms = seconds * 1000;
  return (ms < 10 ? ms.toFixed(2) : ms.toFixed(0)) + " ms";
}

function duration(seconds) {
  if (seconds < 60) return `${Math.floor(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

// One bar per reading, the newest at the right edge; the tallest bar fills the height.
function sparkline(canvas, values) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  context.fillStyle = style.getPropertyValue("--line");
  context.fillRect(0, height - 1, width, 1);
  const top = Math.max(...values, 0) || 1;
  const slot = width / HISTORY_POINTS;
  context.fillStyle = style.getPropertyValue("--accent");
  values.forEach((value, i) => {
    const barHeight = Math.max(1, (value / top) * (height - 2));
    const x = width - (values.length - i) * slot;
    context.fillRect(x + 0.5, height - 1 - barHeight, Math.max(1, slot - 1), barHeight);
  });
}

function renderBackends(backends) {
  const body = $("backends").tBodies[0];
  body.replaceChildren(
    ...backends.map((backend) => {
      const row = el("tr");
      row.dataset.backend = backend.name;
      row.append(el("td", backend.name), el("td", `${backend.transport} · ${backend.era || "—"}`));
      const health = el("td");
      const healthy = backend.ready;
      health.append(el("span", healthy ? "ready" : backend.state, "badge " + (healthy ? "ok" : "bad")));
      row.append(health);
      const breakers = backend.instances.map((instance) => instance.breaker);
      const breakerCell = el("td", [...new Set(breakers)].join(", "));
      if (breakers.includes("open")) breakerCell.className = "bad";
      row.append(breakerCell, el("td", backend.restarts, "num"), toolsCell(backend));
      return row;
    }),
  );
}

function toolsCell(backend) {
  const cell = el("td");
  if (backend.tool_names.length === 0) {
    cell.textContent = "0";
    return cell;
  }
  const details = el("details");
  details.open = openTools.has(backend.name);
  details.addEventListener("toggle", () => {
    if (details.open) openTools.add(backend.name);
    else openTools.delete(backend.name);
  });
  details.append(el("summary", `${backend.tools} tools`));
  const names = el("ul", null, "names");
  names.append(...backend.tool_names.map((name) => el("li", name)));
  details.append(names);
  cell.append(details);
  return cell;
}

function renderAudit(audit) {
  $("audit-note").hidden = audit.enabled;
  const shown = audit.entries.filter((entry) => !(entry.event === "admin" && entry.path === OWN_POLL_PATH));
  $("audit").tBodies[0].replaceChildren(...shown.map(auditRow));
}

function auditRow(entry) {
  const row = el("tr");
  const time = new Date(entry.time);
  const principal = entry.principal ? entry.principal.subject : "—";
  const admin = entry.event === "admin";
  const method = admin ? `admin ${entry.method}` : entry.method;
  const target = admin ? entry.path : [entry.backend, entry.tool || entry.prompt || entry.resource].filter(Boolean).join(" / ");
  const outcome = admin ? String(entry.status) : entry.outcome;
  const good = admin ? entry.status < 400 : entry.outcome === "ok";
  const outcomeCell = el("td");
  outcomeCell.append(el("span", outcome, "badge " + (good ? "ok" : entry.outcome === "tool_error" ? "warn" : "bad")));
  row.append(
    el("td", time.toLocaleTimeString([], { hour12: false }) + "." + String(time.getMilliseconds()).padStart(3, "0")),
    el("td", principal),
    el("td", method),
    el("td", target || "—"),
    outcomeCell,
    el("td", admin ? "" : entry.ms, "num"),
  );
  return row;
}

// -- the playground: an MCP client over a WebSocket -------------------------------------------------------

class McpSocket {
  constructor(url, token) {
    this.url = url;
    this.protocols = token ? ["mcp", BEARER_SUBPROTOCOL + token] : ["mcp"];
    this.nextId = 1;
    this.waiting = new Map();
    this.onNotification = () => {};
    this.onClose = () => {};
  }

  open() {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(this.url, this.protocols);
      this.socket = socket;
      let opened = false;
      socket.onopen = () => {
        opened = true;
        resolve();
      };
      socket.onmessage = (event) => this.receive(event.data);
      socket.onclose = (event) => {
        for (const { reject: fail } of this.waiting.values()) fail(new Error("the connection closed"));
        this.waiting.clear();
        if (!opened) {
          reject(new Error("the gateway refused the connection (a missing, invalid or expired token?)"));
        } else {
          this.onClose(event.reason || `closed (${event.code})`);
        }
      };
    });
  }

  request(method, params) {
    const id = this.nextId++;
    this.socket.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
    return new Promise((resolve, reject) => this.waiting.set(id, { resolve, reject }));
  }

  notify(method, params) {
    this.socket.send(JSON.stringify({ jsonrpc: "2.0", method, ...(params ? { params } : {}) }));
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (message.method !== undefined && message.id !== undefined) {
      this.answer(message);
    } else if (message.method !== undefined) {
      this.onNotification(message);
    } else if (this.waiting.has(message.id)) {
      const { resolve } = this.waiting.get(message.id);
      this.waiting.delete(message.id);
      resolve(message);
    }
  }

  // Requests from the gateway: the console offers no capabilities, so only ping is expected.
  answer(request) {
    const reply = request.method === "ping"
      ? { jsonrpc: "2.0", id: request.id, result: {} }
      : { jsonrpc: "2.0", id: request.id, error: { code: -32601, message: "the console does not support " + request.method } };
    this.socket.send(JSON.stringify(reply));
  }

  close() {
    if (this.socket) this.socket.close(1000);
  }
}

let client = null;
let tools = [];

async function connect(event) {
  event.preventDefault();
  const token = $("playground-token").value.trim();
  sessionStorage.setItem("portico.playgroundToken", token);
  if (client) client.close();
  setTools([]);
  $("connection").textContent = "Connecting…";
  const url = new URL(MCP_URL, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const candidate = new McpSocket(url.href, token);
  try {
    await candidate.open();
    const init = await candidate.request("initialize", {
      protocolVersion: PROTOCOL_VERSION,
      capabilities: {},
      clientInfo: CLIENT_INFO,
    });
    if (init.error) throw new Error(`initialize failed: ${init.error.message}`);
    candidate.notify("notifications/initialized");
    client = candidate;
    client.onNotification = (message) => {
      if (message.method === "notifications/tools/list_changed") listTools();
    };
    client.onClose = (reason) => {
      $("connection").textContent = `Disconnected: ${reason}`;
      setTools([]);
      client = null;
    };
    const server = init.result.serverInfo || {};
    $("connection").textContent = `Connected to ${server.name || "the gateway"} as ${token ? "the token's holder" : "anonymous"} (protocol ${init.result.protocolVersion}).`;
    await listTools();
  } catch (error) {
    candidate.close();
    $("connection").textContent = error.message;
  }
}

async function listTools() {
  const found = [];
  let cursor;
  do {
    const reply = await client.request("tools/list", cursor ? { cursor } : {});
    if (reply.error) {
      $("connection").textContent = `tools/list failed: ${reply.error.message}`;
      return;
    }
    found.push(...reply.result.tools);
    cursor = reply.result.nextCursor;
  } while (cursor);
  setTools(found);
}

function setTools(list) {
  tools = list;
  const select = $("tool");
  const chosen = select.value;
  const options = [el("option", list.length ? "choose a tool…" : "—")];
  options[0].value = "";
  for (const tool of list) {
    const option = el("option", tool.name);
    option.value = tool.name;
    options.push(option);
  }
  select.replaceChildren(...options);
  select.disabled = list.length === 0;
  if (list.some((tool) => tool.name === chosen)) select.value = chosen;
  chooseTool();
}

function chooseTool() {
  const tool = tools.find((candidate) => candidate.name === $("tool").value);
  $("tool-description").textContent = tool ? tool.description || "" : "";
  $("arguments").disabled = !tool;
  $("call").disabled = !tool;
  if (tool) $("arguments").value = JSON.stringify(argumentSkeleton(tool.inputSchema), null, 2);
}

// Required arguments with an empty value of their type, for the operator to fill in.
function argumentSkeleton(schema) {
  const skeleton = {};
  const properties = (schema && schema.properties) || {};
  for (const name of (schema && schema.required) || []) {
    const property = properties[name] || {};
    const empty = { string: "", number: 0, integer: 0, boolean: false, array: [], object: {} };
    skeleton[name] = property.default !== undefined ? property.default : (empty[property.type] ?? null);
  }
  return skeleton;
}

async function callTool(event) {
  event.preventDefault();
  let args;
  try {
    args = JSON.parse($("arguments").value || "{}");
  } catch (error) {
    showOutcome("invalid arguments", "bad", `The arguments are not valid JSON: ${error.message}`, null);
    return;
  }
  $("call").disabled = true;
  try {
    const reply = await client.request("tools/call", { name: $("tool").value, arguments: args });
    if (reply.error) {
      showOutcome(`error ${reply.error.code}`, "bad", reply.error.message, reply);
    } else {
      const result = reply.result;
      const text = resultText(result);
      showOutcome(result.isError ? "tool error" : "ok", result.isError ? "warn" : "ok", text, reply);
    }
  } catch (error) {
    showOutcome("failed", "bad", error.message, null);
  } finally {
    $("call").disabled = !client;
  }
}

// The content's text; structured content when that is all there is; a note when there is nothing.
function resultText(result) {
  const content = result.content || [];
  if (content.length === 0) {
    return result.structuredContent !== undefined
      ? JSON.stringify(result.structuredContent, null, 2)
      : "(the tool returned no content)";
  }
  return content.map((item) => (item.type === "text" ? item.text : `[${item.type}]`)).join("\n");
}

function showOutcome(status, kind, text, raw) {
  $("call-outcome").hidden = false;
  $("call-status").textContent = status;
  $("call-status").className = "badge " + kind;
  $("call-result").textContent = text;
  $("call-raw").textContent = raw ? JSON.stringify(raw, null, 2) : "";
}

// -- start ------------------------------------------------------------------------------------------------

function saveAdminToken(event) {
  event.preventDefault();
  sessionStorage.setItem("portico.adminToken", $("admin-token").value.trim());
  previous = null;
}

$("admin-token").value = stored("portico.adminToken");
$("playground-token").value = stored("portico.playgroundToken");
$("admin-token-form").addEventListener("submit", saveAdminToken);
$("connect-form").addEventListener("submit", connect);
$("call-form").addEventListener("submit", callTool);
$("tool").addEventListener("change", chooseTool);
poll();
