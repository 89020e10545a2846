#!/usr/bin/env bash
# Run ON the GPU machine (benchmarks/gpu/prepare.sh says how to get it there). One call: the full-size
# random-weight SD1.5 benchmark at 512x512 and 576x768, N = 1..4, 20 steps, stopping new configurations after
# LIMIT seconds (default 420) so the call ends inside a 10-minute job limit. Everything it prints and the
# result JSON land in $OUT. Extra arguments replace the default benchmark arguments (e.g. a smoke run:
# `bash benchmarks/gpu/run.sh --gpu --res 512x512 --n 1 --steps 2 --repeats 1`).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
out="${OUT:-$repo/benchmarks/results}"
mkdir -p "$out"
py="${PYTHON:-python3}"
if ! "$py" -c "import torchsde, av" 2>/dev/null; then
    [ -d .whl ] || { echo "torchsde/av missing and no .whl carried: run benchmarks/gpu/prepare.sh here first" >&2; exit 2; }
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export COMFYUI_PATH="${COMFYUI_PATH:-$repo/.host/ComfyUI}" PYTHONUNBUFFERED=1
[ -d "$COMFYUI_PATH/comfy" ] || { echo "no ComfyUI at $COMFYUI_PATH: carry .host (prepare.sh)" >&2; exit 2; }
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--gpu --time-limit "${LIMIT:-420}")
"$py" -m benchmarks.speed "${args[@]}" --label gpu 2>&1 | tee "$out/gpu.log"
rc=${PIPESTATUS[0]}
[ "$out" = "$repo/benchmarks/results" ] || cp -f benchmarks/results/gpu.json "$out/" 2>/dev/null
exit "$rc"
