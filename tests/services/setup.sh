#!/usr/bin/env bash
# Installs the real programs some tests run against, from Debian's packages: redis-server (the cache and
# rate-limit plugins' shared back end) and chromium (the web console's browser tests, driven by Playwright
# for Python with this browser, never one Playwright downloads). Idempotent: does nothing when present.
# Needs root (or sudo) only when something is missing. Exits non-zero on any failure.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
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
fi
command -v redis-server >/dev/null
[ -x /usr/bin/chromium ]
