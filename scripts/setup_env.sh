#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment from nothing but Python, and installs what the
# pack, its tests and the host ComfyUI need.  Prints the venv's python path on its last line.
#
#   ANYDRESSING_VENV   where the venv lives (default: <repo>/.venv)
#   COMFYUI_PATH       the host ComfyUI (default: ~/ComfyUI); its requirements are installed when found
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

# torch is ComfyUI's to own (never pinned in requirements.txt).  ComfyUI imports torchvision, and on
# this kind of machine only this pair imports together on a CPU (HOST.md).
if ! "$py" -c "import torch, torchvision" 2>/dev/null; then
  log "installing torch + torchvision (ComfyUI's pair for this machine)"
  "$py" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" >&2
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
