"""Host folders the built-in layer needs (the mount point of the private root, or the work folder where no mount
namespace can be made), and the sweep that removes those a killed harness left behind.

Each folder is `<tmp>/routerllm-sandbox-XXXX` with a marker naming its owner (pid, the pid's start time, host).
The sweep at each `Sandbox()` start removes only folders that carry such a marker, belong to this user, are not
links, and whose owner is gone (no such pid, or a pid reused by a process that started at another time).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

PREFIX = "routerllm-sandbox-"
MARKER = ".routerllm-sandbox"


def _start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot, /proc/<pid>/stat field 22), or None if there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def make() -> Path:
    folder = Path(tempfile.mkdtemp(prefix=PREFIX))
    (folder / MARKER).write_text(json.dumps({"pid": os.getpid(), "start": _start_ticks(os.getpid()),
                                             "host": socket.gethostname()}))
    return folder


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _owner_gone(marker: Path) -> bool:
    try:
        data = json.loads(marker.read_text())
        pid, start, host = int(data["pid"]), data.get("start"), str(data.get("host", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return False  # not a marker we wrote: leave the folder alone
    if host != socket.gethostname():
        return False
    now = _start_ticks(pid)
    return now is None or (start is not None and now != start)


def sweep(base: Path | str | None = None) -> list[Path]:
    """Remove the folders of dead owners under `base` (the temp folder); returns what was removed."""
    removed = []
    root = Path(base or tempfile.gettempdir())
    try:
        candidates = list(root.glob(PREFIX + "*"))
    except OSError:
        return removed
    for folder in candidates:
        try:
            st = folder.lstat()
        except OSError:
            continue
        if folder.is_symlink() or not folder.is_dir() or st.st_uid != os.getuid():
            continue
        marker = folder / MARKER
        if marker.is_file() and not marker.is_symlink() and _owner_gone(marker):
            remove(folder)
            removed.append(folder)
    return removed
