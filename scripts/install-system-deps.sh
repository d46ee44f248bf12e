#!/usr/bin/env bash
# Installs the Debian packages espbridge needs, only when they are missing.
#   install-system-deps.sh          PostgreSQL and Redis servers (the test session starts its own)
#   install-system-deps.sh python   python3 with venv support (for `make demo` on a bare machine)
#   install-system-deps.sh wrk      the load generator of bench/
set -euo pipefail

what=${1:-servers}
packages=()
case "$what" in
  servers)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || packages+=(postgresql)
    command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
    ;;
  python)
    command -v python3 >/dev/null 2>&1 || packages+=(python3)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || packages+=(python3-venv)
    ;;
  wrk)
    command -v wrk >/dev/null 2>&1 || packages+=(wrk)
    ;;
  *) echo "usage: $0 [servers|python|wrk]" >&2; exit 2 ;;
esac

[ ${#packages[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing ${packages[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${packages[@]}" >/dev/null
