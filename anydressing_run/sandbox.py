"""The folders a ComfyUI instance writes, pointed at one folder of our own.

Left alone, ComfyUI writes beside its code: uploads into ``input/``, pictures into ``output/``, previews into
``temp/`` (which it empties at every start), the editor's settings and workflows into ``user/``, and its sqlite
database into ``user/comfyui.db`` of the ComfyUI folder, even when ``--base-directory`` moves everything else.
A server the runner starts and a ComfyUI loaded in-process by the tests get all of these under a folder that
they created, so nothing in the user's ComfyUI is created, changed or deleted.

Imports no ComfyUI module: the in-process function takes ComfyUI's ``folder_paths`` module as an argument.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

WRITABLE = ("input", "output", "temp", "user")


def own_folders(root) -> dict:
    """Create ``root/{input,output,temp,user}``; returns ``{name: Path}`` plus ``"database"`` (a file path)."""
    root = Path(root).resolve()
    folders = {name: root / name for name in WRITABLE}
    for path in folders.values():
        path.mkdir(parents=True, exist_ok=True)
    folders["database"] = folders["user"] / "comfyui.db"
    return folders


def database_url(path: Path) -> str:
    """A SQLAlchemy sqlite URL for an absolute file path (``sqlite:////tmp/x.db``, ``sqlite:///C:/x.db``)."""
    return f"sqlite:///{Path(path).resolve().as_posix()}"


def server_args(root, input_directory=None, output_directory=None) -> list:
    """``main.py`` flags that send every write of a server to ``root`` (input and output may point elsewhere)."""
    folders = own_folders(root)
    return ["--input-directory", str(input_directory or folders["input"]),
            "--output-directory", str(output_directory or folders["output"]),
            # ComfyUI appends "temp" to this flag's value (and empties that folder when it starts)
            "--temp-directory", str(folders["temp"].parent),
            "--user-directory", str(folders["user"]),
            "--database-url", database_url(folders["database"])]


def isolate_in_process(folder_paths, root=None, args=None) -> Path:
    """Point an in-process ComfyUI at ``root`` through ``folder_paths``' public setters (and its database URL
    through ComfyUI's parsed ``args`` when given). Without ``root``, a new temporary folder removed at exit.
    Call it right after importing ``folder_paths``, before any node runs. Returns the root."""
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="anydressing-comfyui-"))
        atexit.register(shutil.rmtree, root, True)
    folders = own_folders(root)
    folder_paths.set_input_directory(str(folders["input"]))
    folder_paths.set_output_directory(str(folders["output"]))
    folder_paths.set_temp_directory(str(folders["temp"]))
    folder_paths.set_user_directory(str(folders["user"]))
    if args is not None:
        args.database_url = database_url(folders["database"])
    return Path(root)
