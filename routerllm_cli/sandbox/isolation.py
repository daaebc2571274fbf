"""The built-in isolation layer and the lockdown every sandboxed process gets, run inside the child.

Each step is best effort and reports what it put in force: namespaces (user where not root, mount, PID, network,
IPC, UTS), a private root built from the harness's layout and entered with pivot_root (or, where that fails,
every host mount read-only with a capped tmpfs as the work folder), rlimits, no capabilities, the seccomp filter,
and the reference evaluator's reliability_guard.

Standard library only: the text of this file is sent into the sandbox ahead of child_boot.py.
"""

import os
import signal
import sys

def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return ctypes, libc


def _pdeathsig(ctypes, libc):
    U = ctypes.c_ulong  # prctl is variadic: pass full-width arguments
    libc.prctl(1, U(signal.SIGKILL), U(0), U(0), U(0))  # PR_SET_PDEATHSIG: a killed parent takes us along


def builtin_layer(hdr):
    """Namespaces and a private root, each best effort; returns what was put in force."""
    ctypes, libc = _libc()
    _pdeathsig(ctypes, libc)
    iso = {"net": "socket-patch", "pid": "session", "ipc": "host", "fs": "guard"}
    uid, gid, mnt = os.getuid(), os.getgid(), os.readlink("/proc/self/ns/mnt")
    NEWNS, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET = 0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
    if libc.unshare(NEWNS | NEWUTS | NEWIPC | NEWPID | NEWNET | (0 if uid == 0 else NEWUSER)) == 0:
        if uid != 0:
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        fresh_mnt = os.readlink("/proc/self/ns/mnt") != mnt  # never remount anything in the caller's namespace
        iso.update(net="namespace", pid="namespace", ipc="namespace")
        child = os.fork()
        if child:  # outside the PID namespace: wait, then end the way the program ended
            status = os.waitpid(child, 0)[1]
            if os.WIFSIGNALED(status):
                try:
                    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
                except (OSError, ValueError):
                    pass  # SIGKILL needs no reset
                os.kill(os.getpid(), os.WTERMSIG(status))
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        _pdeathsig(ctypes, libc)  # die with the outer process
        if fresh_mnt:
            iso["fs"] = _private_root(hdr, ctypes, libc)
    elif libc.unshare(NEWNET) == 0:
        iso["net"] = "namespace"
    return iso


RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18


def _mount(ctypes, libc, source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), target)


def _kept_flags(path):
    # A user namespace may not clear flags the host set on a mount: keep them on remount.
    try:
        f = os.statvfs(path).f_flag
    except OSError:
        return 0
    return (f & (NOEXEC | NODEV | 1024 | 2048)) | ((1 << 21) if f & os.ST_RELATIME else 0)


def _private_root(hdr, ctypes, libc):
    mount = lambda *a: _mount(ctypes, libc, *a)  # noqa: E731
    root = hdr["root"]
    try:
        mount(None, "/", None, REC | PRIVATE)
        mount("tmpfs", root, "tmpfs", NOSUID | NODEV, "size=1m,mode=755")
        for m in hdr["layout"]:
            dest = root + m["path"]
            if m["kind"] == "symlink":
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.symlink(m["target"], dest)
                continue
            if m["kind"] == "hide":
                mount("tmpfs", dest, "tmpfs", RDONLY | NOSUID | NODEV, "size=4k,mode=755")
                continue
            _make_point(m["path"], dest)
            mount(m["path"], dest, None, BIND | REC)
            mount(None, dest, None, REMOUNT | BIND | RDONLY | NOSUID | NODEV | _kept_flags(m["path"]))
        for dev in hdr["devices"]:
            _make_point(dev, root + dev)
            mount(dev, root + dev, None, BIND)
            mount(None, root + dev, None, REMOUNT | BIND | RDONLY | NOSUID | (_kept_flags(dev) & ~NODEV))
        os.makedirs(root + "/tmp")
        mount("tmpfs", root + "/tmp", "tmpfs", NOSUID | NODEV, f"size={hdr['write_bytes']},mode=1777")
        mount(None, root, None, REMOUNT | BIND | RDONLY | NOSUID | NODEV)
        os.chdir(root)
        number = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine)
        if number is None or libc.syscall(number, b".", b".") != 0:  # pivot_root(".", "."): old root on top
            raise OSError(ctypes.get_errno(), "pivot_root failed")
        if libc.umount2(b".", 2) != 0:  # MNT_DETACH: the host's tree leaves this namespace
            raise OSError(ctypes.get_errno(), "could not detach the old root")
        os.chdir("/")
        os.chdir("/tmp")
        os.environ["HOME"] = os.environ["TMPDIR"] = "/tmp"
        return "private-root"
    except OSError:
        libc.umount2(root.encode(), 2)
        return _read_only_host(hdr, mount)


def _make_point(source, dest):
    if os.path.isdir(source):
        os.makedirs(dest, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if not os.path.lexists(dest):
            open(dest, "w").close()


def _read_only_host(hdr, mount):
    """Where a private root cannot be built: every host mount read-only, a capped tmpfs as the work folder."""
    import re

    try:
        unescape = lambda p: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), p)  # noqa: E731 ("\040": space)
        points = [unescape(line.split()[4]) for line in open("/proc/self/mountinfo")]
        mount("tmpfs", hdr["root"], "tmpfs", NOSUID | NODEV, f"size={hdr['write_bytes']},mode=700")
        os.chdir(hdr["root"])  # the old cwd is on a mount about to turn read-only
        complete = True
        for point in points:
            try:
                mount(None, point, None, REMOUNT | BIND | RDONLY | NOSUID | NODEV | _kept_flags(point))
            except OSError:
                complete = False
        return "read-only" if complete else "read-only (partial)"
    except OSError:
        return "guard"


def limits(hdr):
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big file is an OSError, not a silent death
    for lim, val in ((resource.RLIMIT_AS, hdr["memory"]), (resource.RLIMIT_FSIZE, hdr["fsize"]),
                     (resource.RLIMIT_NOFILE, hdr["nofile"]), (resource.RLIMIT_CORE, 0),
                     (resource.RLIMIT_NPROC, hdr["nproc"]),
                     (resource.RLIMIT_CPU, int(hdr["timeout"]) + 3)):  # the kernel's backstop for a spinner
        try:
            resource.setrlimit(lim, (val, val))
        except (ValueError, OSError):
            pass


def lock_down(hdr):
    """No capabilities, no new privileges, the seccomp filter: True when the filter is in force."""
    ctypes, libc = _libc()
    U = ctypes.c_ulong

    class CapHeader(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    libc.capset(ctypes.byref(CapHeader(0x20080522, 0)), (ctypes.c_uint32 * 6)())
    if not hdr.get("seccomp"):
        return False

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    code = bytes.fromhex(hdr["seccomp"])
    buf = ctypes.create_string_buffer(code, len(code))
    libc.prctl(38, U(1), U(0), U(0), U(0))  # PR_SET_NO_NEW_PRIVS
    prog = Prog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    return libc.prctl(22, U(2), ctypes.byref(prog), U(0), U(0)) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


def guard(network_namespace):
    """The reference evaluator's reliability_guard, so verdicts fail where its verdicts fail."""
    if not network_namespace:
        import _socket
        import socket

        class NoNetwork(socket.socket):
            def __init__(self, *args, **kwargs):
                raise OSError("network access is disabled in the sandbox")

        socket.socket = _socket.socket = NoNetwork
    import builtins
    import faulthandler
    import shutil
    import subprocess

    faulthandler.disable()
    builtins.exit = builtins.quit = builtins.help = None
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
                 "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
                 "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
        setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


