"""Running untrusted model-generated code under limits, for HumanEval pass@1 and the router's self-tests.

Each program runs in its own `python -I` subprocess, in a fresh temporary directory, with a stripped environment.
A bootstrap (`_CHILD`) sets the child up before it runs a line of the program, each layer best effort:
- namespaces (root, or an unprivileged user namespace): a network namespace with no interfaces up, a PID
  namespace (the harness is invisible, and every process in it dies with its PID 1), a mount namespace in which
  every mount is read-only and nodev except the temporary directory and a few /dev nodes;
- all capabilities dropped, and a seccomp filter that refuses new processes (fork, vfork, clone without
  CLONE_THREAD) and execve, so a fork bomb gets EPERM instead of a machine's worth of processes;
- rlimits (address space, file size, open files, processes, no core files);
- the reference evaluator's `reliability_guard` (os.kill, shutil.rmtree, subprocess.Popen ... set to None),
  and `socket.socket` refusing to be built where no network namespace could be made.
The harness itself puts the child in its own session, kills that process group at the end whatever happens, and
keeps only the last `max_output_bytes` of output. A program passes only if the child prints a per-run random
nonce after the program returned, so `sys.exit(0)` or `os._exit(0)` before the checks count as failures. The
nonce is in the child's memory, so this guards against early exits, not against code that reads the harness's
frames on purpose.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from routerllm_cli.errors import ConfigError, RunFailed

_KILL_GRACE_S = 1.0  # the child times itself out; the harness kills it this much later (as the reference does)


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 3.0
    memory_bytes: int = 2 * 1024**3
    max_processes: int = 64  # best effort: binds only where the seccomp filter is missing and uid != 0
    max_file_bytes: int = 16 * 1024**2
    max_open_files: int = 64
    max_output_bytes: int = 64 * 1024


@dataclass
class ExecutionResult:
    passed: bool
    result: str  # "passed" | "failed: <reason>" | "timed out"
    seconds: float
    stdout_tail: str = ""  # stdout and stderr together, at most max_output_bytes


_CHILD = r'''
import ctypes, json, os, re, signal, sys
hdr = json.loads(sys.stdin.buffer.readline())
src = sys.stdin.buffer.read().decode("utf-8", "replace")
null = os.open("/dev/null", os.O_RDONLY); os.dup2(null, 0); os.close(null)
channel, nonce, write, _exit = hdr["fd"], hdr["nonce"], os.write, os._exit
def say(text):
    write(channel, f"{nonce} {text}\n".encode())
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
U = ctypes.c_ulong  # prctl is variadic: pass full-width arguments
libc.prctl(1, U(signal.SIGKILL), U(0), U(0), U(0))  # PR_SET_PDEATHSIG: a killed harness takes its sandboxes along
iso = {"net": "socket-patch", "pid": "session", "fs": "guard", "proc": "rlimit"}
uid, gid, mnt = os.getuid(), os.getgid(), os.readlink("/proc/self/ns/mnt")
NEWNS, NEWUSER, NEWPID, NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
fresh_mnt = False
if libc.unshare(NEWNS | NEWPID | NEWNET | (0 if uid == 0 else NEWUSER)) == 0:
    if uid != 0:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    fresh_mnt = os.readlink("/proc/self/ns/mnt") != mnt  # never remount anything in the caller's namespace
    iso.update(net="namespace", pid="namespace")
    child = os.fork()
    if child:  # outside the PID namespace: wait, then end the way the program ended
        status = os.waitpid(child, 0)[1]
        if os.WIFSIGNALED(status):
            try: signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
            except (OSError, ValueError): pass  # SIGKILL needs no reset
            os.kill(os.getpid(), os.WTERMSIG(status))
        _exit(os.waitstatus_to_exitcode(status) & 0xFF)
    libc.prctl(1, U(signal.SIGKILL), U(0), U(0), U(0))  # PR_SET_PDEATHSIG: die with the outer process
elif libc.unshare(NEWNET) == 0:
    iso["net"] = "namespace"
def mount(source, target, fstype, flags):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(source), enc(target), enc(fstype), flags, None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), target)
if fresh_mnt:
    RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
    try:
        mount(None, "/", None, REC | PRIVATE)
        unescape = lambda p: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), p)  # "\040" is a space
        points = [unescape(line.split()[4]) for line in open("/proc/self/mountinfo")]
        mount(hdr["tmp"], hdr["tmp"], None, BIND)
        os.chdir(hdr["tmp"])  # the old cwd is on the mount about to turn read-only; enter through the bind
        for dev in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"):
            try: mount(dev, dev, None, BIND)
            except OSError: pass
        complete = True
        for point in points:
            try:  # flags a user namespace may not clear must be kept on remount
                f = os.statvfs(point).f_flag
                keep = (f & (NOEXEC | 1024 | 2048)) | ((1 << 21) if f & os.ST_RELATIME else 0)
            except OSError: keep = 0
            try: mount(None, point, None, REMOUNT | BIND | RDONLY | NOSUID | NODEV | keep)
            except OSError: complete = False
        iso["fs"] = "read-only" if complete else "read-only (partial)"
        try: mount("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC | RDONLY)
        except OSError: pass
    except OSError: pass
import resource
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big file is an OSError, not a silent death
for lim, val in ((resource.RLIMIT_AS, hdr["memory"]), (resource.RLIMIT_FSIZE, hdr["fsize"]),
                 (resource.RLIMIT_NOFILE, hdr["nofile"]), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, hdr["nproc"]),
                 (resource.RLIMIT_CPU, int(hdr["timeout"]) + 3)):  # the kernel's backstop for a spinner
    try: resource.setrlimit(lim, (val, val))
    except (ValueError, OSError): pass
class CapHeader(ctypes.Structure): _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
libc.capset(ctypes.byref(CapHeader(0x20080522, 0)), (ctypes.c_uint32 * 6)())
ARCH = {"x86_64": (0xC000003E, dict(clone=56, fork=57, vfork=58, execve=59, execveat=322, clone3=435)),
        "aarch64": (0xC00000B7, dict(clone=220, execve=221, execveat=281, clone3=435))}.get(os.uname().machine)
if ARCH:
    ALLOW, EPERM, ENOSYS, LD, JEQ, JGE, JSET, RET = 0x7FFF0000, 0x50001, 0x50026, 0x20, 0x15, 0x35, 0x45, 0x06
    arch, nr = ARCH
    checks = [(nr[k], "deny") for k in ("fork", "vfork", "execve", "execveat") if k in nr]
    checks += [(nr["clone3"], "nosys"), (nr["clone"], "clone")]  # ENOSYS: libc falls back to clone for threads
    # foreign arch or x32 numbering (>= 0x40000000) is refused: the same call under another number is no way out
    head = [(LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, EPERM), (LD, 0, 0, 0), (JGE, 0, 0, 0x40000000)]
    clone_at = len(head) + len(checks) + 1
    to = {"clone": clone_at, "deny": clone_at + 3, "nosys": clone_at + 4}
    head[4] = (JGE, to["deny"] - 5, 0, 0x40000000)
    prog = head + [(JEQ, to[what] - (len(head) + i) - 1, 0, n) for i, (n, what) in enumerate(checks)]
    prog += [(RET, 0, 0, ALLOW), (LD, 0, 0, 16), (JSET, 0, 1, 0x10000), (RET, 0, 0, ALLOW), (RET, 0, 0, EPERM),
             (RET, 0, 0, ENOSYS)]
    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]
    class Prog(ctypes.Structure): _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]
    insns = (Insn * len(prog))(*[Insn(*p) for p in prog])
    libc.prctl(38, U(1), U(0), U(0), U(0))  # PR_SET_NO_NEW_PRIVS
    if libc.prctl(22, U(2), ctypes.byref(Prog(len(prog), insns)), U(0), U(0)) == 0:
        iso["proc"] = "seccomp"
if iso["net"] != "namespace":
    import socket, _socket
    class NoNetwork(socket.socket):
        def __init__(self, *args, **kwargs):
            raise OSError("network access is disabled in the sandbox")
    socket.socket = _socket.socket = NoNetwork
import builtins, faulthandler, shutil, subprocess
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
say("isolation " + " ".join(f"{k}={v.replace(' ', '_')}" for k, v in iso.items()))
class Timeout(BaseException): pass
def alarm(*_): raise Timeout()
signal.signal(signal.SIGALRM, alarm)
try:
    try:
        signal.setitimer(signal.ITIMER_REAL, hdr["timeout"])
        exec(compile(src, "<program>", "exec"), {"__name__": "__main__"} if hdr["main"] else {})
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    verdict = "passed"
except Timeout:
    verdict = "timed out"
except BaseException as e:
    msg = " ".join(str(e).split())[:200]
    verdict = f"failed: {type(e).__name__}" + (f": {msg}" if msg else "")
for stream in (sys.stdout, sys.stderr):
    try: stream.flush()
    except BaseException: pass
say(verdict)
_exit(0)
'''


def _child_env(tmp: str) -> dict[str, str]:
    # Nothing of ours leaks in: no tokens, no ROUTERLLM_*, no path to the results folder.
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1"}


class _Tail(threading.Thread):
    """Drains a pipe, keeping only its last `cap` bytes, so a program printing gigabytes costs no memory."""

    def __init__(self, stream, cap: int):
        super().__init__(daemon=True)
        self.stream, self.cap, self.data = stream, cap, bytearray()

    def run(self) -> None:
        while chunk := self.stream.read1(1 << 16):
            self.data += chunk
            if len(self.data) > 2 * self.cap:
                del self.data[: len(self.data) - self.cap]

    def text(self) -> str:
        return bytes(self.data[-self.cap:] if self.cap else b"").decode("utf-8", "replace")


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait for the child to exit without reaping it (its process group stays ours to kill); True if time ran out."""
    delay = 0.001
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return False
        except ChildProcessError:
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def _read_available(fd: int, cap: int = 1 << 16) -> str:
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) < cap and (chunk := os.read(fd, 4096)):
            data += chunk
    except BlockingIOError:  # a stray holder of the pipe; what was written is already here
        pass
    return data.decode("utf-8", "replace")


def _ended(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class Sandbox:
    """Runs programs under `limits`; `check_many` runs up to `workers` of them at once."""

    def __init__(self, limits: SandboxLimits = SandboxLimits(), workers: int | None = None):
        if limits.timeout_s <= 0 or limits.memory_bytes <= 0 or limits.max_output_bytes < 0:
            raise ConfigError(f"sandbox limits must be positive, got {limits}",
                              fix="set a timeout above 0 s and a memory limit above 0 bytes", exit_code=2)
        if workers is not None and workers < 1:
            raise ConfigError(f"sandbox workers must be at least 1, got {workers}", fix="pass workers >= 1")
        self.limits = limits
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.isolation: dict[str, str] = {}  # what the last child could put in force: net, pid, fs, proc

    @property
    def network_isolation(self) -> str:
        """What blocks the network: "namespace" (no interface up) or "socket-patch" (no socket can be built)."""
        if "net" not in self.isolation:
            self.run_program("pass")
        return self.isolation["net"]

    def check(self, problem: dict, completion: str) -> ExecutionResult:
        """Run a HumanEval completion exactly as the reference evaluator assembles it."""
        program = (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
                   + f"check({problem['entry_point']})")
        return self._run(program, as_main=False)  # the reference execs into {}: __name__ is not "__main__"

    def run_program(self, program: str) -> ExecutionResult:
        """Run any test program (e.g. a prompt's own docstring examples); it passes if it returns."""
        return self._run(program, as_main=True)

    def check_many(self, jobs: Iterable[tuple[Any, dict, str]]) -> Iterator[tuple[Any, ExecutionResult]]:
        """jobs are (key, problem, completion); yields (key, result) as they finish."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")
        try:
            futures = {pool.submit(self.check, problem, completion): key for key, problem, completion in jobs}
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, program: str, *, as_main: bool) -> ExecutionResult:
        lim, nonce = self.limits, secrets.token_hex(16)
        tmp = tempfile.mkdtemp(prefix="routerllm-sandbox-")
        verdict_r, verdict_w = os.pipe()
        started = time.monotonic()
        try:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, cwd=tmp, env=_child_env(tmp), pass_fds=(verdict_w,),
                    start_new_session=True)
            except OSError as e:
                raise RunFailed(f"could not start the sandbox interpreter {sys.executable!r}: {e}",
                                fix="run routerllm from a working Python environment") from e
            finally:
                os.close(verdict_w)
            tail = _Tail(proc.stdout, lim.max_output_bytes)
            tail.start()
            header = dict(fd=verdict_w, nonce=nonce, tmp=tmp, timeout=lim.timeout_s, main=as_main,
                          memory=lim.memory_bytes, fsize=lim.max_file_bytes, nofile=lim.max_open_files,
                          nproc=lim.max_processes)
            try:
                proc.stdin.write(json.dumps(header).encode() + b"\n" + program.encode("utf-8", "replace"))
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            killed = _wait_unreaped(proc.pid, started + lim.timeout_s + _KILL_GRACE_S)
            try:  # the whole group, stray children included, before the leader is reaped and its id freed
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            seconds = time.monotonic() - started
            verdict = None
            for line in _read_available(verdict_r).splitlines():
                if line.startswith(nonce + " isolation "):
                    self.isolation = dict(kv.split("=", 1) for kv in line.split()[2:])
                elif line.startswith(nonce + " "):
                    verdict = line[len(nonce) + 1:]
            tail.join(timeout=1.0)
            if not tail.is_alive():
                proc.stdout.close()
        finally:
            os.close(verdict_r)
            shutil.rmtree(tmp, ignore_errors=True)
        if killed or (verdict is None and seconds >= lim.timeout_s):
            result = "timed out"
        elif verdict is not None and (verdict in ("passed", "timed out") or verdict.startswith("failed: ")):
            result = verdict
        else:
            result = f"failed: program ended before the checks finished ({_ended(proc.returncode)})"
        return ExecutionResult(result == "passed", result, seconds, tail.text())
