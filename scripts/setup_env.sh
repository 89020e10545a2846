#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment from nothing but Python, and installs what the
# pack, its tests and the host ComfyUI need.  Prints the venv's python path on its last line.
#
#   ANYDRESSING_VENV         where the venv lives (default: <repo>/.venv)
#   COMFYUI_PATH             the host ComfyUI (default: ~/ComfyUI); its requirements are installed when found
#   ANYDRESSING_TORCH_INDEX  a package index for torch/torchvision/torchaudio only, e.g. PyTorch's CPU index
#                            https://download.pytorch.org/whl/cpu, whose wheels carry no CUDA libraries.
#                            Default: the configured index (PyPI), whose Linux x86_64 torch wheels always
#                            bring the CUDA libraries (measured: 4.1 GB downloaded, 6.8 GB installed)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ANYDRESSING_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"
host="${COMFYUI_PATH:-$HOME/ComfyUI}"

log() { echo "[setup] $*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment at $venv"
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip >&2

# torch is ComfyUI's to own (never pinned in requirements.txt).  ComfyUI imports torchvision at its core and
# torchaudio in its audio nodes: without torchaudio every start prints two "IMPORT FAILED" tracebacks.  The
# newest set on PyPI whose three parts import together is this one (torchaudio stops at 2.9-2.11 there).
torch_set=("torch==2.9.1" "torchvision==0.24.1" "torchaudio==2.9.1")
if ! "$py" -c "import torch, torchvision, torchaudio" 2>/dev/null; then
  index=()
  [ -n "${ANYDRESSING_TORCH_INDEX:-}" ] && index=(--index-url "$ANYDRESSING_TORCH_INDEX")
  log "installing ${torch_set[*]} ${ANYDRESSING_TORCH_INDEX:+from $ANYDRESSING_TORCH_INDEX}"
  start=$SECONDS
  "$py" -m pip install -q ${index[@]+"${index[@]}"} "${torch_set[@]}" >&2
  log "torch set installed in $((SECONDS - start)) s"
fi

if [ -f "$host/requirements.txt" ]; then
  log "installing the host ComfyUI's requirements from $host (without torch*)"
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$host/requirements.txt" > "$venv/comfyui-requirements.txt"
  "$py" -m pip install -q -r "$venv/comfyui-requirements.txt" requests >&2
else
  log "NOTE: no ComfyUI at $host (set COMFYUI_PATH); host-tier tests will be skipped"
fi

log "installing the pack's requirements and test/train extras"
"$py" -m pip install -q -r "$repo/requirements.txt" \
  "pytest>=7" "hypothesis>=6" "playwright>=1.40" "websocket-client>=1.6" requests psutil \
  "ruff>=0.17" "comfy-cli>=1.23" \
  "accelerate>=0.26" tensorboard matplotlib >&2

if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  log "installing Debian's chromium for the editor tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >&2 \
    || log "NOTE: chromium could not be installed; browser tests will be skipped"
fi
echo "$py"
