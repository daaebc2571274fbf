"""The offload folder: a marker that routerllm made it, a lock while a model uses it, and a safe clean.

`load` holds `.routerllm.lock` (JSON with the owner's pid) for as long as the model is loaded. When `load`
creates the folder (or finds it empty) it writes `.routerllm-offload`, a marker recording the folder's own
identity (device and inode, so a copied marker does not count). `offload clean` deletes only inside a folder that
carries a valid marker, and refuses: `/`, system folders (/usr, /etc, /bin, ...) and anything in them, the home
folder, the current folder and any folder above it, a repository root, anything outside the configured folder,
and any path in, above or below a folder whose lock a live process holds. It never follows a symlink out (links
are removed as links), and `--dry-run` lists every file it would delete with its size.
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
MARKER_NAME = ".routerllm-offload"
# System folders: refused themselves and everything inside them, whatever a marker says.
_SYSTEM = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin", "/snap",
           "/sys", "/usr", "/var/lib", "/var/log", "/var/run", "/var/spool", "/var/cache", "/var/mail")


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
        mark_if_ours(self.folder)
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


def _marker_for(folder: Path) -> dict:
    st = folder.stat()
    return {"made_by": "routerllm", "path": str(folder.resolve()), "dev": st.st_dev, "ino": st.st_ino,
            "created": time.time()}


def mark_if_ours(folder: Path) -> bool:
    """Create `folder` if needed and mark it as routerllm's when it is new or empty. True when it is marked."""
    folder = Path(folder)
    fresh = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if is_marked(folder):
        return True
    if fresh or not [p for p in folder.iterdir() if p.name not in (LOCK_NAME, MARKER_NAME)]:
        tmp = folder / f"{MARKER_NAME}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(_marker_for(folder)))
        os.replace(tmp, folder / MARKER_NAME)
        return True
    return False  # a folder that already held other files stays the user's: clean will refuse it


def is_marked(folder: Path) -> bool:
    marker = Path(folder) / MARKER_NAME
    try:
        if marker.is_symlink() or not marker.is_file():
            return False
        data = json.loads(marker.read_text())
        st = Path(folder).stat()
        return data.get("made_by") == "routerllm" and (data.get("dev"), data.get("ino")) == (st.st_dev, st.st_ino)
    except (OSError, ValueError, AttributeError):
        return False


@dataclass
class CleanPlan:
    folder: Path
    files: list[Path] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)
    sizes: dict[Path, int] = field(default_factory=dict)
    total_bytes: int = 0
    stale_locks: list[tuple[Path, LockInfo]] = field(default_factory=list)
    skipped_links: list[Path] = field(default_factory=list)

    @property
    def stale_lock(self) -> LockInfo | None:
        return self.stale_locks[0][1] if self.stale_locks else None

    def as_dict(self) -> dict:
        return {"folder": str(self.folder), "files": len(self.files), "dirs": len(self.dirs),
                "bytes": self.total_bytes, "links_removed_not_followed": [str(p) for p in self.skipped_links],
                "stale_lock_pid": self.stale_lock.pid if self.stale_lock else None,
                "entries": [{"path": str(p), "bytes": self.sizes.get(p, 0)} for p in self.files]}


def _repo_root_of(path: Path) -> bool:
    return (path / ".git").exists() or (path / "pyproject.toml").is_file()


def _refuse(path: Path, why: str) -> ConfigError:
    return ConfigError(f"refusing to clean {path}: {why}", fix="set offload_folder to a dedicated folder such as "
                       "./offload (routerllm creates and marks it on the first load)")


def check_clean_target(target: Path, configured: Path) -> Path:
    """Return the folder to clean, or raise ConfigError naming why it is refused."""
    configured_abs = Path(os.path.abspath(configured.expanduser()))
    target_abs = Path(os.path.abspath(target.expanduser()))
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    for candidate in (target_abs, target_abs.resolve()):
        if candidate in (Path("/"), home, Path.home()):
            raise _refuse(candidate, "it is / or your home directory")
        if any(str(candidate) == s or str(candidate).startswith(s + "/") for s in _SYSTEM):
            raise _refuse(candidate, "it is a system folder")
        if candidate == cwd or candidate in cwd.parents:
            raise _refuse(candidate, "it is the current folder or holds it")
        if candidate in home.parents:
            raise _refuse(candidate, "it holds your home directory")
        if _repo_root_of(candidate):
            raise _refuse(candidate, "it is a repository root")
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
    if configured_abs.exists() and not is_marked(configured_abs):
        raise ConfigError(f"refusing to clean {configured_abs}: routerllm did not make it (no valid {MARKER_NAME} "
                          "marker)", fix="delete its files yourself if they are only offloaded weights; routerllm marks "
                          "the folders it creates (set offload_folder to a new path)")
    return target_abs


def _live_locks(folder: Path, root: Path) -> tuple[list[tuple[Path, LockInfo]], list[tuple[Path, LockInfo]]]:
    """(live, stale) locks that cover `folder`: its own, those of folders above it up to `root`, and those below."""
    places = [folder, *[p for p in folder.parents if p == root or root in p.parents]]
    found = [(p / LOCK_NAME) for p in places]
    if folder.is_dir():
        found += [p for p in folder.rglob(LOCK_NAME) if p.parent != folder]
    live, stale = [], []
    for lock_path in found:
        info = OffloadLock(lock_path.parent).read()
        if info is not None:
            (live if info.alive else stale).append((lock_path, info))
    return live, stale


def _locked_error(folder: Path, lock_path: Path, info: LockInfo) -> FolderLocked:
    where = "" if lock_path.parent == folder else f" (the lock of {lock_path.parent} covers it)"
    return FolderLocked(f"offload folder {folder} is in use by pid {info.pid} ({info.command}){where}",
                        fix="stop that process first; cleaning now would corrupt its offloaded weights")


def plan_clean(target: Path, configured: Path) -> CleanPlan:
    folder = check_clean_target(target, configured)
    root = Path(os.path.abspath(configured.expanduser()))
    plan = CleanPlan(folder)
    live, plan.stale_locks = _live_locks(folder, root)
    if live:
        raise _locked_error(folder, *live[0])
    if not folder.exists():
        return plan
    for walk_root, dirnames, filenames in os.walk(folder, topdown=True, followlinks=False):
        root_p = Path(walk_root)
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
            if p.name == MARKER_NAME and root_p == root:
                continue  # the folder stays routerllm's
            plan.files.append(p)
            if p.is_symlink():
                plan.skipped_links.append(p)
            else:
                plan.sizes[p] = p.lstat().st_size
                plan.total_bytes += plan.sizes[p]
    return plan


def execute_clean(plan: CleanPlan, configured: Path) -> int:
    """Delete what the plan lists (links as links), deepest folders last. Returns bytes freed."""
    # Check again: a load may have started, or the folder been swapped, since the plan was shown.
    check_clean_target(plan.folder, configured)
    live, _ = _live_locks(plan.folder, Path(os.path.abspath(configured.expanduser())))
    if live:
        raise _locked_error(plan.folder, *live[0])
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
