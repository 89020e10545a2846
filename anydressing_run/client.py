"""A small client for ComfyUI's HTTP and websocket API (standard library, plus ``websocket-client`` if present).

API used: ``POST /prompt`` (HTTP 400 with ``node_errors`` when invalid), ``GET /history/<id>``, ``GET /view``,
``POST /upload/image``, ``GET /object_info``, ``GET /system_stats``, ``GET``/``POST /queue`` and
``POST /interrupt`` (both take a prompt id, so a cancel touches only its own prompt), websocket ``/ws?clientId=``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from .errors import RunnerError
from .graph import before_sampling, label

log = logging.getLogger(__name__)


def _one_line(text) -> str:
    return " ".join(str(text).split())


def format_node_errors(body: dict, graph: dict | None = None) -> str:
    """Readable lines from a ``/prompt`` 400 answer: the top error, then one line per failing node
    (its title, id and type, the inputs concerned, the messages)."""
    graph = graph or {}
    lines = []
    err = body.get("error") or {}
    if isinstance(err, dict) and err and not body.get("node_errors"):
        lines.append(_one_line(err.get("message", "")) + (f" ({_one_line(err['details'])})" if err.get("details") else ""))
    elif err and not isinstance(err, dict):
        lines.append(_one_line(err))
    for node_id, info in sorted((body.get("node_errors") or {}).items(), key=lambda kv: str(kv[0])):
        node = graph.get(node_id) or {"class_type": info.get("class_type", "?")}
        by_message = {}  # one message, the inputs it was attached to (a node's own check names several at once)
        for e in info.get("errors", []):
            name = (e.get("extra_info") or {}).get("input_name")
            text = _one_line(e.get("message", ""))
            details = _one_line(e.get("details", ""))
            if details and name and details.startswith(f"{name} - "):
                details = details[len(name) + 3:]  # "input - message": the message once, without the input
            if details and details != name and details not in text:
                text += f" [{details}]"
            names = by_message.setdefault(text, [])
            if name and name not in names:
                names.append(name)
        inputs, messages = [], []
        for text, names in by_message.items():
            named = input_named_in(text, node) if len(names) > 1 else None
            for name in ([named] if named in names else names):
                if name not in inputs:
                    inputs.append(name)
            messages.append(text)
        where = f", input {', '.join(inputs)}" if inputs else ""
        lines.append(f"  {label({node_id: node}, node_id)}{where}: {'; '.join(messages)}")
    if any("Invalid image file" in line for line in lines):
        lines.append("  (a picture the workflow names is not in the server's input folder: give yours with "
                     "--garment SLOT=PATH or --image 'TITLE=PATH', or upload the shipped samples with "
                     "python -m anydressing_run upload-samples --server URL)")
    return "\n".join(lines) or json.dumps(body)


def input_named_in(message: str, node: dict) -> str | None:
    """The node input a message is about: the first input name it quotes, else the first it mentions."""
    names = sorted(node.get("inputs", {}), key=len, reverse=True)
    for pattern in (r"['`\"]{}['`\"]", r"(?<![\w.]){}(?![\w])"):
        found = [(m.start(), n) for n in names for m in [re.search(pattern.format(re.escape(n)), message)] if m]
        if found:
            return min(found)[1]
    return None


def execution_error(status: dict, graph: dict) -> "RunnerError":
    """The RunnerError of a failed prompt: one line naming the node, the input and the node's own message;
    the server's traceback as ``details``. Exit 2 when the node ran before sampling (bad input), else 4."""
    for kind, data in status.get("messages", []):
        if kind == "execution_interrupted":
            return RunnerError("the run was interrupted on the server", exit_code=4)
        if kind != "execution_error":
            continue
        node_id = str(data.get("node_id"))
        node = graph.get(node_id) or {"class_type": data.get("node_type", "?"), "inputs": {}}
        message = _one_line(data.get("exception_message", ""))
        kind_name = str(data.get("exception_type", "")).rsplit(".", 1)[-1]
        if kind_name not in ("AnyDressingError", ""):  # the pack's own errors speak for themselves
            message = f"{kind_name}: {message}"
        name = input_named_in(message, node)
        where = f", input {name}" if name else ""
        code = 2 if before_sampling(graph, node_id) else 4
        return RunnerError(f"{label({node_id: node}, node_id)}{where}: {message}", exit_code=code,
                           details="".join(data.get("traceback", [])) or None)
    return RunnerError("the workflow failed on the server: " + json.dumps(status)[:2000], exit_code=4)


class ProgressBar:
    """One-line progress on stderr from websocket events; plain lines when stderr is not a terminal."""

    def __init__(self, graph: dict, stream=None, width: int = 30):
        self.graph = graph
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.node = None
        self.done_nodes = set()
        self.timing = None  # ((node, total), monotonic time, value) of a bar's first event

    def _label(self, node) -> str:
        info = self.graph.get(str(node), {})
        title = (info.get("_meta") or {}).get("title") or info.get("class_type", "?")
        return f"{title} (node {node})"

    def _emit(self, text: str, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def executing(self, node) -> None:
        if node is None:
            return
        self.node = node
        self.done_nodes.add(str(node))
        self._emit(f"[{len(self.done_nodes)}/{len(self.graph)} nodes] {self._label(node)}")

    def progress(self, value: int, total: int, node=None, now: float | None = None) -> None:
        total = max(int(total), 1)
        now = time.monotonic() if now is None else now
        key = (str(node or self.node), total)
        if self.timing is None or self.timing[0] != key or value < self.timing[2]:
            self.timing = (key, now, value)  # first event of this bar: the clock starts here
        filled = int(self.width * value / total)
        bar = "#" * filled + "." * (self.width - filled)
        text = f"[{bar}] {value}/{total} {self._label(node or self.node)}"
        _, start, first = self.timing
        if value > first:
            per_step = (now - start) / (value - first)
            text += f"  {per_step:.2f} s/step"
            if value < total:
                text += f", about {(total - value) * per_step:.0f} s left"
        # a terminal redraws one line; a log gets the first timed step and every tenth of the way
        if self.tty or value in (1, first + 1, total) or value % max(1, total // 10) == 0:
            self._emit(text)

    def finish(self, text: str = "done") -> None:
        self._emit(text, final=True)


def content_name(filename: str, data: bytes) -> str:
    """``top.png`` -> ``top-<16 hex digits of its SHA-256>.png``: two different pictures never share a name."""
    stem, dot, suffix = Path(filename).name.rpartition(".")
    if not dot:
        stem, suffix = suffix, "png"
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40] or "image"
    return f"{safe}-{hashlib.sha256(data).hexdigest()[:16]}.{suffix.lower()}"


class ComfyClient:
    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    # -- HTTP ------------------------------------------------------------------------------------------
    def _open(self, req, timeout=None):
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RunnerError(f"cannot reach ComfyUI at {self.url} ({reason}). Start one (python main.py "
                              "--listen 127.0.0.1 --port 8188), or drop --server so that the runner "
                              "starts its own.", exit_code=3) from None

    def get_json(self, path: str):
        with self._open(self.url + path) as r:
            return json.loads(r.read())

    def get_bytes(self, path: str) -> bytes:
        with self._open(self.url + path) as r:
            return r.read()

    def post_json(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with self._open(req) as r:
            return json.loads(r.read() or b"{}")

    def ping(self) -> dict:
        return self.get_json("/system_stats")

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def upload_image(self, path: Path, subfolder: str = "anydressing", name: str | None = None) -> str:
        """Upload a local image into the server's input folder; returns the value a LoadImage input takes.

        The file is sent under ``content_name`` (its content hash) unless ``name`` is given, and never with
        ComfyUI's overwrite flag: a file already there under that name is either the same picture (ComfyUI
        keeps it) or another one (ComfyUI stores the upload as ``name (1).png``), so no file is replaced."""
        path = Path(path)
        data = path.read_bytes()
        filename = name or content_name(path.name, data)
        boundary = uuid.uuid4().hex
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts = []
        for field, value in (("subfolder", subfolder), ("type", "input")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        req = urllib.request.Request(self.url + "/upload/image", data=b"".join(parts), method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with self._open(req) as r:
                info = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise RunnerError(f"the server refused the upload of {path} (HTTP {exc.code}: "
                              f"{exc.read()[:200]!r})") from None
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def queue(self, graph: dict, prompt_id: str | None = None) -> str:
        """POST the API graph; returns the prompt id. An invalid graph raises RunnerError with node errors.

        The id is chosen here (``prompt_id`` or a new one), so a caller can know it before the server does."""
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id or uuid.uuid4().hex}
        req = urllib.request.Request(self.url + "/prompt", method="POST", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with self._open(req) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                body = json.loads(raw)
            except ValueError:
                raise RunnerError(f"ComfyUI rejected the workflow (HTTP {exc.code}): {raw[:500]!r}") from None
            err = RunnerError("ComfyUI rejected the workflow:\n" + format_node_errors(body, graph))
            err.body = body
            raise err from None
        if body.get("node_errors"):
            raise RunnerError("ComfyUI rejected the workflow:\n" + format_node_errors(body, graph))
        return body["prompt_id"]

    def queue_ids(self) -> tuple:
        """``(running prompt ids, pending prompt ids)`` on the server, as sets."""
        queue = self.get_json("/queue")
        return ({item[1] for item in queue.get("queue_running", [])},
                {item[1] for item in queue.get("queue_pending", [])})

    def cancel(self, prompt_id: str, settle_s: float = 5.0) -> str | None:
        """Take our prompt off the server: delete it from the queue, interrupt it if it is running. Both
        requests name the prompt, so other clients' prompts, queued or running, are left alone.
        Returns what happened, in words; None when the prompt was neither queued nor running."""
        running, pending = self.queue_ids()
        if prompt_id not in running | pending:
            return None
        was_running = prompt_id in running
        deadline = time.monotonic() + settle_s
        while True:
            self.post_json("/queue", {"delete": [prompt_id]})
            self.post_json("/interrupt", {"prompt_id": prompt_id})
            running, pending = self.queue_ids()
            was_running = was_running or prompt_id in running
            if prompt_id not in running | pending:
                return f"prompt {prompt_id} " + ("interrupted on the server" if was_running else
                                                 "removed from the server's queue")
            if time.monotonic() > deadline:
                return (f"prompt {prompt_id}: interrupt sent; the server stops it at the end of its current "
                        "step")
            time.sleep(0.1)

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

    def view(self, image: dict) -> bytes:
        q = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                                    "type": image.get("type", "output")})
        return self.get_bytes(f"/view?{q}")

    # -- waiting -----------------------------------------------------------------------------------------
    def wait(self, prompt_id: str, graph: dict, timeout: float = 3600.0, progress: ProgressBar | None = None,
             ws=None) -> dict:
        """Block until the prompt finished; returns its history entry. Raises RunnerError on failure."""
        if ws is not None:
            self._wait_ws(ws, prompt_id, timeout, progress)
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
                break
            if time.monotonic() > deadline:
                raise RunnerError(f"the workflow did not finish within {timeout:.0f} s", exit_code=4)
            time.sleep(0.25)
        status = entry.get("status", {})
        if status.get("status_str") == "error" or not status.get("completed"):
            raise execution_error(status, graph)
        if progress:
            progress.finish("finished")
        return entry

    def open_ws(self):
        """A connected websocket (before queueing, so no event is missed), or None without websocket-client."""
        try:
            import websocket  # websocket-client
        except ImportError:
            log.info("websocket-client not installed: polling for completion without a progress bar")
            return None
        ws_url = self.url.replace("http://", "ws://").replace("https://", "wss://") + f"/ws?clientId={self.client_id}"
        try:
            return websocket.create_connection(ws_url, timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - any failure just means no live progress
            log.warning("no websocket progress (%s); polling instead", exc)
            return None

    def _wait_ws(self, ws, prompt_id: str, timeout: float, progress: ProgressBar | None) -> None:
        deadline = time.monotonic() + timeout
        ws.settimeout(1.0)
        try:
            while time.monotonic() < deadline:
                try:
                    msg = ws.recv()
                except Exception as exc:  # noqa: BLE001
                    if type(exc).__name__ == "WebSocketTimeoutException":
                        continue
                    log.debug("websocket closed (%s); falling back to polling", exc)
                    return
                if not isinstance(msg, str):
                    continue  # binary preview frames
                event = json.loads(msg)
                kind, data = event.get("type"), event.get("data") or {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if kind == "executing":
                    if data.get("node") is None and data.get("prompt_id") == prompt_id:
                        return
                    if progress:
                        progress.executing(data.get("node"))
                elif kind == "progress" and progress:
                    progress.progress(data.get("value", 0), data.get("max", 1), data.get("node"))
                elif kind in ("execution_success", "execution_error", "execution_interrupted"):
                    return
        finally:
            try:
                ws.close()
            except Exception:  # noqa: BLE001
                pass
