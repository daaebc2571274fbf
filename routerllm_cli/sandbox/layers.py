"""Which isolation layer runs a sandboxed process, and the file system it sees.

Both layers build the same root from `layout()`: the interpreter, its standard library (site-packages hidden
under an empty read-only tmpfs), the system library folders it links against, `/etc/ld.so.cache`, four device
nodes and a private `/tmp` tmpfs capped at `max_write_bytes`; everything read-only except that `/tmp`, no
`/proc`, no `/run`, no home folders. So host files (`/etc/shadow`, `/root`, the results folder) and host Unix
socket files are simply not there.

- `bwrap`: bubblewrap (Flatpak's sandbox) builds it with every namespace it supports (user, IPC, PID, network,
  UTS, cgroup), `--die-with-parent`, `--new-session`, all capabilities dropped and the spawn-allowing seccomp
  filter from a file descriptor.
- `builtin`: routerllm's own bootstrap (child_boot.py) does the same with unshare, mount and pivot_root through
  ctypes, where bubblewrap is missing or cannot run. Where it cannot make namespaces at all it keeps what it can
  (see the docstring of the package).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass

from routerllm_cli.errors import ConfigError

DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_SYSTEM_LIBS = ("/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/local/lib")
_FILES = ("/etc/ld.so.cache",)
_PROBE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Mount:
    kind: str  # "bind" (read-only), "symlink" (path -> target) or "hide" (an empty read-only tmpfs over path)
    path: str
    target: str = ""


def interpreter() -> str:
    """The real interpreter binary (a venv's python is a link to it; its site-packages are not needed)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


@functools.lru_cache(maxsize=1)
def layout() -> tuple[Mount, ...]:
    """The sandbox's root, as mounts in the order they must be made."""
    import sysconfig

    mounts: list[Mount] = []
    binds: list[str] = []
    for path in _SYSTEM_LIBS:
        if os.path.islink(path):
            mounts.append(Mount("symlink", path, os.readlink(path)))
            path = os.path.realpath(path)
        if os.path.isdir(path) and path not in binds:
            binds.append(path)
    stdlib = os.path.realpath(os.path.dirname(os.__file__))
    wanted = [interpreter(), stdlib]
    dynload = sysconfig.get_config_var("DESTSHARED")
    if dynload and os.path.isdir(dynload):
        wanted.append(os.path.realpath(dynload))
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and os.path.exists(os.path.join(libdir, soname)):
        wanted.append(os.path.realpath(os.path.join(libdir, soname)))
        if os.path.islink(os.path.join(libdir, soname)):  # the loader looks the library up by its soname
            wanted.append(os.path.join(os.path.realpath(libdir), soname))
    wanted += [f for f in _FILES if os.path.isfile(f)]
    for path in wanted:
        if os.path.islink(path):
            target = os.path.realpath(path)
            if not any(_inside(path, b) for b in binds):
                mounts.append(Mount("symlink", path, target))
            path = target
        if not any(_inside(path, b) for b in binds):
            binds = [b for b in binds if not _inside(b, path)] + [path]
    mounts += [Mount("bind", b) for b in sorted(set(binds), key=lambda p: (p.count("/"), p))]
    for name in ("site-packages", "dist-packages"):
        hidden = os.path.join(stdlib, name)
        if os.path.isdir(hidden) and not os.path.islink(hidden):
            mounts.append(Mount("hide", hidden))
    return tuple(mounts)


def child_env(home: str) -> dict[str, str]:
    # Nothing of ours leaks in: no tokens, no ROUTERLLM_*, no path to the results folder.
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1"}


def bwrap_argv(bwrap: str, *, write_bytes: int, seccomp_fd: int | None) -> list[str]:
    """bubblewrap's arguments up to (not including) the command."""
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv"]
    if os.geteuid() == 0:
        argv += ["--cap-drop", "ALL"]  # root keeps its capabilities in the new namespaces unless told
    for key, value in child_env("/tmp").items():
        argv += ["--setenv", key, value]
    for m in layout():
        if m.kind == "symlink":
            argv += ["--symlink", m.target, m.path]
        elif m.kind == "bind":
            argv += ["--ro-bind", m.path, m.path]
        else:
            argv += ["--tmpfs", m.path, "--remount-ro", m.path]
    for dev in DEVICES:
        if os.path.exists(dev):
            argv += ["--dev-bind", dev, dev]
    argv += ["--size", str(write_bytes), "--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/tmp"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return argv + ["--"]


@dataclass(frozen=True)
class BwrapStatus:
    path: str | None
    version: str | None
    usable: bool
    reason: str  # why it is not usable, or "" when it is


_probe_lock = threading.Lock()
_probed: BwrapStatus | None = None


def bwrap_status() -> BwrapStatus:
    """Whether bubblewrap is installed and can build the sandbox here (probed once per process)."""
    global _probed
    with _probe_lock:
        if _probed is None:
            _probed = _probe()
        return _probed


def _probe() -> BwrapStatus:
    path = shutil.which("bwrap")
    if path is None:
        return BwrapStatus(None, None, False, "bubblewrap is not installed")
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S)
        ver = version.stdout.strip().removeprefix("bubblewrap ") or None
        probe = subprocess.run(bwrap_argv(path, write_bytes=1 << 20, seccomp_fd=None)
                               + [interpreter(), "-I", "-S", "-c", "print('ok')"],
                               capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, env=child_env("/tmp"))
    except (OSError, subprocess.SubprocessError) as exc:
        return BwrapStatus(path, None, False, f"bubblewrap did not run: {exc}")
    if probe.returncode != 0 or probe.stdout.strip() != "ok":
        said = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
        return BwrapStatus(path, ver, False, f"bubblewrap cannot build the sandbox here: {said[:200]}")
    return BwrapStatus(path, ver, True, "")


def choose_layer(requested: str) -> str:
    """"bwrap" or "builtin" for a requested "auto" | "bwrap" | "builtin"."""
    if requested == "builtin":
        return "builtin"
    status = bwrap_status()
    if status.usable:
        return "bwrap"
    if requested == "bwrap":
        raise ConfigError(f"the bwrap sandbox layer was asked for, but {status.reason}",
                          fix="install bubblewrap (apt-get install bubblewrap), or set bench.sandbox: auto")
    return "builtin"
