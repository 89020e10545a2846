#!/usr/bin/env bash
# The test command: every tier (core, nodes in-process, e2e server + browser).  Run after setup_env.sh.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ANYDRESSING_VENV:-$repo/.venv}"
cd "$repo"
"$venv/bin/python" -m pytest "$@"
rc=$?
# pytest exits 5 when nothing was collected: for us that is a failure, never a pass
[ "$rc" -eq 5 ] && echo "no tests ran" && exit 1
exit "$rc"
