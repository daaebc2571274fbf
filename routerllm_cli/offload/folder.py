"""The offload folder: a lock while a model uses it, and a safe clean.

`load` holds `.routerllm.lock` (JSON with the owner's pid) for as long as the model is loaded. `offload clean`
refuses while a live process holds it, reports a stale lock from a dead pid, and only ever deletes inside the
configured folder: it refuses `/`, the home directory, a repository root, anything outside the configured folder,
and never follows a symlink out of it (links are removed as links).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from routerllm_cli.errors import ConfigError, RouterLLMError

LOCK_NAME = ".routerllm.lock"


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class LockInfo:
    pid: int
    host: str
    started: float
    command: str = ""

    @property
    def alive(self) -> bool:
        return self.host != socket.gethostname() or pid_alive(self.pid)


class FolderLocked(RouterLLMError):
    exit_code = 1


class OffloadLock:
    """An exclusive lock file in the offload folder, created atomically (O_EXCL)."""

    def __init__(self, folder: Path, command: str = "routerllm load"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self._held = False

    def read(self) -> LockInfo | None:
        try:
            data = json.loads(self.path.read_text())
            return LockInfo(int(data["pid"]), str(data.get("host", "")), float(data.get("started", 0)),
                            str(data.get("command", "")))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return LockInfo(-1, socket.gethostname(), 0.0, "unreadable lock")

    def acquire(self) -> "OffloadLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                              "command": self.command})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.read()
                if info is not None and info.alive and info.pid != os.getpid():
                    raise FolderLocked(
                        f"offload folder {self.folder} is in use by pid {info.pid} ({info.command})",
                        fix="wait for it to finish, or point offload_folder elsewhere",
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(payload)
            self._held = True
            return self
        raise FolderLocked(f"could not take the lock in {self.folder}", fix="retry; another process raced for it")

    def release(self) -> None:
        if self._held:
            info = self.read()
            if info is not None and info.pid == os.getpid():
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> "OffloadLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class CleanPlan:
    folder: Path
    files: list[Path] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)
    total_bytes: int = 0
    stale_lock: LockInfo | None = None
    skipped_links: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"folder": str(self.folder), "files": len(self.files), "dirs": len(self.dirs),
                "bytes": self.total_bytes, "links_removed_not_followed": [str(p) for p in self.skipped_links],
                "stale_lock_pid": self.stale_lock.pid if self.stale_lock else None}


def _repo_root_of(path: Path) -> bool:
    return (path / ".git").exists() or (path / "pyproject.toml").is_file()


def check_clean_target(target: Path, configured: Path) -> Path:
    """Return the resolved folder to clean, or raise ConfigError naming why it is refused."""
    configured_abs = Path(os.path.abspath(configured.expanduser()))
    target_abs = Path(os.path.abspath(target.expanduser()))
    dangerous = {Path("/"), Path.home().resolve(), Path.home()}
    for candidate in (target_abs, target_abs.resolve()):
        if candidate in dangerous:
            raise ConfigError(f"refusing to clean {candidate}: it is / or your home directory",
                              fix="set offload_folder to a dedicated folder such as ./offload")
        if _repo_root_of(candidate):
            raise ConfigError(f"refusing to clean {candidate}: it is a repository root",
                              fix="set offload_folder to a dedicated folder such as ./offload")
    if target_abs.is_symlink():
        raise ConfigError(f"refusing to clean {target_abs}: it is a symlink",
                          fix="point offload_folder at the real folder")
    if target_abs != configured_abs and configured_abs not in target_abs.parents:
        raise ConfigError(f"refusing to clean {target_abs}: it is outside the configured offload folder {configured_abs}",
                          fix="pass a path inside offload_folder, or change offload_folder in the config")
    real = target_abs.resolve()
    if real != configured_abs.resolve() and configured_abs.resolve() not in real.parents:
        raise ConfigError(f"refusing to clean {target_abs}: it resolves outside {configured_abs}",
                          fix="remove the symlink in its path")
    return target_abs


def plan_clean(target: Path, configured: Path) -> CleanPlan:
    folder = check_clean_target(target, configured)
    plan = CleanPlan(folder)
    if not folder.exists():
        return plan
    lock = OffloadLock(folder)
    info = lock.read()
    if info is not None:
        if info.alive:
            raise FolderLocked(f"offload folder {folder} is in use by pid {info.pid} ({info.command})",
                               fix="stop that process first; cleaning now would corrupt its offloaded weights")
        plan.stale_lock = info
    for root, dirnames, filenames in os.walk(folder, topdown=True, followlinks=False):
        root_p = Path(root)
        for d in list(dirnames):
            p = root_p / d
            if p.is_symlink():  # os.walk lists a dir link as a dir; remove the link, never its target
                plan.skipped_links.append(p)
                plan.files.append(p)
                dirnames.remove(d)
            else:
                plan.dirs.append(p)
        for f in filenames:
            p = root_p / f
            plan.files.append(p)
            if p.is_symlink():
                plan.skipped_links.append(p)
            else:
                plan.total_bytes += p.lstat().st_size
    return plan


def execute_clean(plan: CleanPlan) -> int:
    """Delete what the plan lists (links as links), deepest folders last. Returns bytes freed."""
    # Re-check the lock: a load may have started since the plan was shown.
    info = OffloadLock(plan.folder).read()
    if info is not None and info.alive:
        raise FolderLocked(f"offload folder {plan.folder} was locked by pid {info.pid} meanwhile",
                           fix="stop that process first")
    for p in plan.files:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
    for d in sorted(plan.dirs, key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass
    return plan.total_bytes
