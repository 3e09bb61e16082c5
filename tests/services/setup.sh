#!/usr/bin/env bash
# Installs the real programs some tests run against, from Debian's packages: redis-server (the cache and
# rate-limit plugins' shared back end), nginx (the load balancer in front of the cluster tests' gateway
# instances, tests/cluster.py) and chromium (the web console's browser tests, driven by Playwright
# for Python with this browser, never one Playwright downloads). Idempotent: does nothing when present.
# Needs root (or sudo) only when something is missing. Exits non-zero on any failure.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# Debian puts nginx in /usr/sbin, which an unprivileged user's PATH may lack.
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=(nginx)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing ${missing[*]} (Debian packages)" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged service; the tests run their own instances on free ports instead.
if command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
  $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
fi
# Without systemd the package's scripts may still have started nginx on port 80 (invoke-rc.d): stop it.
if [ -x /usr/sbin/nginx ] && [ -f /run/nginx.pid ]; then
  $SUDO /usr/sbin/nginx -s quit >/dev/null 2>&1 || true
fi
command -v redis-server >/dev/null
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null
[ -x /usr/bin/chromium ]
