"""Find a ComfyUI install and run it headless as a subprocess, with this pack loaded.

Imports no ComfyUI module: the server is a separate process (``python main.py --listen 127.0.0.1 --port N``),
so this works from any Python that has the standard library. The pack is added to a server that does not
already have it through ``--extra-model-paths-config`` (its ``custom_nodes`` key points at a temporary folder
holding a symlink to the pack). Everything the server writes (uploads, pictures, previews, settings, its
database) goes to that temporary work folder (``sandbox.server_args``): the user's ComfyUI folder is only read.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import RunnerError
from .sandbox import server_args

log = logging.getLogger(__name__)

PACK_DIR = Path(__file__).resolve().parents[1]
PACK_LINK_NAME = "ComfyUI-AnyDressing"


def find_comfyui(explicit: str | os.PathLike | None = None) -> Path:
    """The ComfyUI folder: ``explicit``, else ``$COMFYUI_PATH``, else ``~/ComfyUI``, else the ComfyUI that holds
    this pack in ``custom_nodes/``. Raises RunnerError naming every place it looked."""
    candidates = []
    if explicit:
        candidates.append(Path(explicit).expanduser())
    elif os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]).expanduser())
    else:
        candidates.append(Path.home() / "ComfyUI")
        if PACK_DIR.parent.name == "custom_nodes":
            candidates.append(PACK_DIR.parent.parent)
    for c in candidates:
        if (c / "main.py").is_file() and (c / "comfy").is_dir():
            return c.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise RunnerError(f"no ComfyUI found (looked in: {looked}); expected a folder with main.py and comfy/. "
                      "Pass --comfyui PATH or set COMFYUI_PATH.", exit_code=3)


def comfyui_python(comfyui: Path, explicit: str | None = None) -> str:
    """The Python that runs ComfyUI (the runner itself may run on any Python 3.10+): ``explicit``, else
    ``$COMFYUI_PYTHON``, else the portable build's ``python_embeded``, else a venv inside the ComfyUI folder,
    else this Python when it has torch. Raises RunnerError saying how to point at it."""
    chosen = explicit or os.environ.get("COMFYUI_PYTHON")
    if chosen:
        if not Path(chosen).expanduser().is_file():
            raise RunnerError(f"ComfyUI's Python not found at {chosen} (--python / COMFYUI_PYTHON)", exit_code=3)
        return str(Path(chosen).expanduser())
    comfyui = Path(comfyui)
    for candidate in (comfyui.parent / "python_embeded" / "python.exe",
                      *(comfyui / venv / sub for venv in ("venv", ".venv")
                        for sub in ("bin/python", "Scripts/python.exe"))):
        if candidate.is_file():
            return str(candidate)
    if importlib.util.find_spec("torch") is None:
        raise RunnerError(f"this Python ({sys.executable}) has no torch, so it cannot run ComfyUI: pass --python "
                          "with ComfyUI's own Python (portable build: python_embeded\\python.exe; a venv: its "
                          "bin/python) or set COMFYUI_PYTHON", exit_code=3)
    return sys.executable


def pack_installed_in(comfyui: Path) -> bool:
    """True when ``comfyui/custom_nodes`` already holds this pack (as a folder or a symlink to it)."""
    folder = comfyui / "custom_nodes"
    if not folder.is_dir():
        return False
    for entry in folder.iterdir():
        try:
            if entry.resolve() == PACK_DIR:
                return True
            # a separate copy of the pack (e.g. a git clone): use it rather than loading the nodes twice
            if (entry / "anydressing_run" / "__init__.py").is_file() and (entry / "nodes" / "apply.py").is_file():
                log.warning("using the copy of ComfyUI-AnyDressing installed at %s", entry)
                return True
        except OSError:
            continue
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    """Raise RunnerError when something already listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise RunnerError(f"port {port} on {host} is taken ({exc.strerror}); pass another --port, or "
                              f"--server http://{host}:{port} if a ComfyUI already runs there", exit_code=3) from None


def has_gpu() -> bool:
    """A cheap guess without importing torch: NVIDIA or ROCm device nodes present."""
    return any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/kfd", "/dev/dxg"))


def _yaml_block(name: str, folders: dict) -> str:
    """A minimal extra_model_paths YAML block (no PyYAML needed): ``{key: [absolute paths]}``."""
    lines = [f"{name}:"]
    for key, paths in folders.items():
        paths = [str(p) for p in paths]
        if len(paths) == 1:
            lines.append(f"    {key}: {_quote(paths[0])}")
        else:
            lines.append(f"    {key}: |")
            lines.extend(f"        {p}" for p in paths)
    return "\n".join(lines) + "\n"


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


class ComfyServer:
    """A headless ComfyUI subprocess. Use as a context manager; ``url`` is ready on entry.

    ``model_folders``: extra ``{folder_key: [paths]}`` (e.g. ``{"checkpoints": [dir]}``).
    ``base_directory``: also take models and custom_nodes from that folder (and keep input, output, temp, user
    and the database there); without it they all live in the temporary work folder, removed by ``cleanup``.
    The server's own log goes to ``<work>/comfyui.log``; its tail is in every start-up error.
    """

    def __init__(self, comfyui=None, *, port: int | None = None, host: str = "127.0.0.1", cpu: bool | None = None,
                 model_folders: dict | None = None, base_directory=None, output_directory=None,
                 input_directory=None, python: str | None = None, extra_args=(), load_pack: bool = True,
                 startup_timeout: float = 120.0):
        self.comfyui = find_comfyui(comfyui)
        self.host = host
        self.port = port
        self.cpu = (not has_gpu()) if cpu is None else cpu
        self.model_folders = dict(model_folders or {})
        self.base_directory = Path(base_directory) if base_directory else None
        self.output_directory = output_directory
        self.input_directory = input_directory
        self.python = comfyui_python(self.comfyui, python)
        self.extra_args = list(extra_args)
        self.load_pack = load_pack
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.work: Path | None = None
        self._own_work = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def data_root(self) -> Path:
        """The folder holding the server's input, output, temp and user folders."""
        return self.base_directory or self.work

    @property
    def log_path(self) -> Path:
        return self.work / "comfyui.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def command(self) -> list:
        cmd = [self.python, "main.py", "--listen", self.host, "--port", str(self.port),
               "--disable-auto-launch", "--preview-method", "none"]
        if self.cpu:
            cmd.append("--cpu")
        if self.base_directory:
            cmd += ["--base-directory", str(self.base_directory)]
        # [choice] the server writes only into a folder the runner created: the runner uploads what a run needs
        # and downloads what it saved, so the user's input/output/user folders are never touched
        cmd += server_args(self.base_directory or self.work, self.input_directory, self.output_directory)
        folders = dict(self.model_folders)
        if self.load_pack and not self._pack_present():
            nodes_dir = self.work / "custom_nodes"
            nodes_dir.mkdir(exist_ok=True)
            link = nodes_dir / PACK_LINK_NAME
            if not link.exists():
                link.symlink_to(PACK_DIR, target_is_directory=True)
            folders.setdefault("custom_nodes", []).append(nodes_dir)
        if folders:
            yaml_path = self.work / "extra_model_paths.yaml"
            yaml_path.write_text(_yaml_block("anydressing_runner", folders))
            cmd += ["--extra-model-paths-config", str(yaml_path)]
        return cmd + self.extra_args

    def _pack_present(self) -> bool:
        if self.base_directory:
            return pack_installed_in(self.base_directory)
        return pack_installed_in(self.comfyui)

    def start(self) -> "ComfyServer":
        if self.port is None:
            self.port = free_port(self.host)
        else:
            check_port_free(self.host, self.port)
        if self.base_directory:
            for sub in ("custom_nodes", "models", "input", "output", "user", "temp"):
                (self.base_directory / sub).mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="anydressing-server-"))
        self._own_work = True
        cmd = self.command()
        log.info("starting ComfyUI: %s (cwd %s)", " ".join(cmd), self.comfyui)
        logfile = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, cwd=self.comfyui, stdout=logfile, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        logfile.close()
        atexit.register(self.stop)  # never leave an orphan server behind, even when the caller forgets
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise RunnerError(f"ComfyUI exited with code {code} while starting. Server log tail:\n"
                                  f"{self.log_tail()}", exit_code=3)
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as r:
                    if r.status == 200:
                        log.info("ComfyUI ready at %s", self.url)
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.25)
        raise RunnerError(f"ComfyUI did not answer at {self.url} within {self.startup_timeout:.0f} s. "
                          f"Server log tail:\n{self.log_tail()}", exit_code=3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self.proc = None

    def cleanup(self) -> None:
        """Stop and remove the temporary work folder (the server log goes with it)."""
        self.stop()
        if self._own_work and self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()
