#!/usr/bin/env bash
# The main job on a built-in default: set up, then dress a generated person in three sample garments
# (upper + lower + hat) that the pack draws itself.  Uses $ANYDRESSING_CHECKPOINT (a real SD1.5 file) when
# set, otherwise a tiny random checkpoint (the picture is then noise: the run proves the pipeline, not quality).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$repo/scripts/setup_env.sh" | tail -n 1)"
cd "$repo"
exec "$py" -m anydressing_run demo "$@"
