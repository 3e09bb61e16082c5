#!/usr/bin/env bash
# Install the peer gateways that `python -m bench.peers` compares Portico with, each into its own
# directory under bench/.peers/ (git-ignored), never into the project's .venv. Idempotent: a peer whose
# pinned version is already installed is left alone. One peer failing does not stop the others; the
# script reports each and exits non-zero if any failed (bench.peers reports a missing peer as such).
#
#   bench/peers_setup.sh            # from the repository root or anywhere
#
# Needs: the machine's python3 (for venv) and npm (Node >= 20). Registries: PyPI and npm only.
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEERS="$HERE/.peers"
mkdir -p "$PEERS"

# Pinned: the versions the figures in bench/RESULTS.md were measured with.
MCP_PROXY="mcp-proxy==0.13.0"
FASTMCP="fastmcp==4.1.2"
CONTEXTFORGE="mcp-contextforge-gateway==1.0.7.post20260921"
SUPERGATEWAY="supergateway@4.0.0"

failed=0

# python_peer NAME REQUIREMENT: a venv of its own at bench/.peers/NAME with REQUIREMENT installed.
python_peer() {
    local name="$1" requirement="$2" venv="$PEERS/$1"
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip freeze 2>/dev/null | grep -qixF "$requirement"; then
        echo "peers: $name: $requirement already installed"
        return 0
    fi
    echo "peers: $name: installing $requirement into $venv"
    if python3 -m venv "$venv" && "$venv/bin/python" -m pip install --quiet "$requirement"; then
        echo "peers: $name: ok"
    else
        echo "peers: $name: FAILED to install $requirement" >&2
        failed=1
    fi
}

python_peer mcp-proxy "$MCP_PROXY"
python_peer fastmcp "$FASTMCP"
python_peer contextforge "$CONTEXTFORGE"

# supergateway 4.0.0 declares "node": ">=20", which the machine's Node 20 satisfies.
node_version="$(node --version 2>/dev/null || echo none)"
installed="$(cd "$PEERS/node" 2>/dev/null && node -p "require('supergateway/package.json').version" 2>/dev/null)"
if [ "$installed" = "${SUPERGATEWAY#*@}" ]; then
    echo "peers: supergateway: $SUPERGATEWAY already installed (node $node_version)"
elif npm install --silent --prefix "$PEERS/node" --save-exact "$SUPERGATEWAY"; then
    echo "peers: supergateway: ok (node $node_version)"
else
    echo "peers: supergateway: FAILED to install $SUPERGATEWAY (node $node_version)" >&2
    failed=1
fi

exit "$failed"
