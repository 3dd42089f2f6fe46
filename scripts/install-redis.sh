#!/usr/bin/env bash
# Install what keel's Redis engine and its tests need: redis-server (the harness starts it on
# 127.0.0.1, also with TLS: Debian's build has it), redis-cli and the sqlite3 tool (the kv interop
# tests read views with them), wrk (load tests) and the redis/hiredis Python packages (the `redis` extra).
# Idempotent: installs only what is missing, so .ci/run can call it every time.
set -euo pipefail

apt_missing=()
[ -x /usr/bin/redis-server ] || command -v redis-server >/dev/null 2>&1 || apt_missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || apt_missing+=(redis-tools)
command -v sqlite3 >/dev/null 2>&1 || apt_missing+=(sqlite3)
command -v wrk >/dev/null 2>&1 || apt_missing+=(wrk)

if [ ${#apt_missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
    # The Debian package enables a system-wide service; keel's tests start their own server.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
        $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
    fi
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import redis, hiredis" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet "redis>=5.0" "hiredis>=2.3"
fi

echo "redis: $(redis-server --version | head -n1)"
echo "wrk: $(command -v wrk)"
"$PYTHON" -c "import redis, hiredis; print('redis-py', redis.__version__, '+ hiredis', hiredis.__version__)"
