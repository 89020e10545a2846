#!/usr/bin/env bash
# Run ON the GPU machine: the ablation (docs/BENCHMARK.md) at a larger size and budget than the CPU run:
# 128x128 images (32x32 tokens), 3 seeds, 4,000 training samples, 2,000 steps per setting, batch 16, 8 worker
# processes sharing the GPU. --time-limit (LIMIT, default 400 s) measures the step time first and scales the steps
# down if they would not fit, so the job ends well inside 10 minutes. It needs only torch, numpy, opencv and
# safetensors (no ComfyUI): on the GPU machine, from the repo root,
#   bash benchmarks/gpu/ablation.sh
# Extra arguments replace the defaults. A CPU smoke run of this script:
#   DEVICE=cpu PYTHON=.venv/bin/python bash benchmarks/gpu/ablation.sh --quick --jobs 2 --time-limit 300
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
out="${OUT:-$repo/benchmarks/results/ablation-gpu}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--size 128 --n-train 4000 --n-val 192 --steps 2000 --base-steps 3000 --batch 16
                               --jobs 8 --time-limit "${LIMIT:-400}")
"$py" -m benchmarks.ablation --device "${DEVICE:-cuda}" --out "$out" "${args[@]}" 2>&1 | tee "$out/ablation.log"
exit "${PIPESTATUS[0]}"
