"""A small client for ComfyUI's HTTP and websocket API (standard library, plus ``websocket-client`` if present).

API used (HOST.md): ``POST /prompt`` (HTTP 400 with ``node_errors`` when invalid), ``GET /history/<id>``,
``GET /view``, ``POST /upload/image``, ``GET /object_info``, websocket ``/ws?clientId=``.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from .errors import RunnerError

log = logging.getLogger(__name__)


def format_node_errors(body: dict, graph: dict | None = None) -> str:
    """Readable lines from a ``/prompt`` 400 answer: the top error, then one line per node error."""
    lines = []
    err = body.get("error") or {}
    if isinstance(err, dict) and err:
        lines.append(f"{err.get('type', 'error')}: {err.get('message', '')}"
                     + (f" ({err['details']})" if err.get("details") else ""))
    elif err:
        lines.append(str(err))
    for node_id, info in sorted((body.get("node_errors") or {}).items(), key=lambda kv: str(kv[0])):
        cls = info.get("class_type") or (graph or {}).get(node_id, {}).get("class_type", "?")
        for e in info.get("errors", []):
            detail = f" [{e['details']}]" if e.get("details") else ""
            lines.append(f"  node {node_id} ({cls}): {e.get('message', '')}{detail}")
    return "\n".join(lines) or json.dumps(body)


class ProgressBar:
    """One-line progress on stderr from websocket events; plain lines when stderr is not a terminal."""

    def __init__(self, graph: dict, stream=None, width: int = 30):
        self.graph = graph
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.node = None
        self.done_nodes = set()

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

    def progress(self, value: int, total: int, node=None) -> None:
        total = max(int(total), 1)
        filled = int(self.width * value / total)
        bar = "#" * filled + "." * (self.width - filled)
        text = f"[{bar}] {value}/{total} {self._label(node or self.node)}"
        if self.tty or value == total or value == 1:
            self._emit(text)

    def finish(self, text: str = "done") -> None:
        self._emit(text, final=True)


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
                              "--listen 127.0.0.1 --port 8188) or let the runner start its own with "
                              "--start-server.", exit_code=3) from None

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

    def upload_image(self, path: Path, subfolder: str = "anydressing") -> str:
        """Upload a local image into the server's input folder; returns the value a LoadImage input takes."""
        path = Path(path)
        boundary = uuid.uuid4().hex
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts = []
        for name, value in (("overwrite", "true"), ("subfolder", subfolder), ("type", "input")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
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

    def queue(self, graph: dict) -> str:
        """POST the API graph; returns the prompt id. An invalid graph raises RunnerError with node errors."""
        req = urllib.request.Request(self.url + "/prompt", method="POST",
                                     data=json.dumps({"prompt": graph, "client_id": self.client_id}).encode(),
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
            raise RunnerError("the workflow failed on the server:\n" + _execution_error(status), exit_code=4)
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


def _execution_error(status: dict) -> str:
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            tb = "".join(data.get("traceback", []))
            return (f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_type')}: "
                    f"{data.get('exception_message')}\n{tb}")
        if kind == "execution_interrupted":
            return "interrupted"
    return json.dumps(status)[:2000]
