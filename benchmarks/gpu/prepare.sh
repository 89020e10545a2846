#!/usr/bin/env bash
# Run HERE (the CPU machine), once before a GPU run, on the machine that sends the job.
# It puts what the device machine lacks into two git-ignored folders of the repo that `run` can carry:
#   .host/ComfyUI  the host ComfyUI (from COMFYUI_PATH or ~/ComfyUI; never committed)
#   .whl/          Python 3.12 wheels the H200 image does not have: torchsde + trampoline (ComfyUI's
#                  samplers import it) and av (comfy_api imports it)
# Together about 52 MiB. Then, on the GPU machine, with both folders copied along:
#   bash benchmarks/gpu/run.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
host="${COMFYUI_PATH:-$HOME/ComfyUI}"
[ -d "$host/comfy" ] || { echo "no ComfyUI at $host: set COMFYUI_PATH to a ComfyUI checkout" >&2; exit 2; }
cd "$repo"
for d in /.host/ /.whl/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
rm -rf .host .whl && mkdir -p .host/ComfyUI .whl
tar -C "$host" --exclude=./output --exclude=./tests --exclude=./tests-unit --exclude=./custom_nodes --exclude=.git \
    -cf - . | tar -C .host/ComfyUI -xf -
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl torchsde==0.2.6 trampoline==0.1.2 "av>=14.2.0,<20"
du -sh .host .whl
echo "ready: run(command=\"bash benchmarks/gpu/run.sh\", carry=[\".host\", \".whl\"], timeout_s=560)"
