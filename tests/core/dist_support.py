"""What the trainer's process tests share: the repository root, the child environment, a free port, the result line."""

import json
import os
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def child_env() -> dict:
    """The environment of a trainer process: the repo importable, one thread, no inherited launcher variables."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def result_line(stdout: str) -> dict:
    """The JSON summary the trainer prints last."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    assert lines, stdout
    return json.loads(lines[-1])


def train_cmd(*args):
    return [sys.executable, "-m", "anydressing_core.train", *args]
