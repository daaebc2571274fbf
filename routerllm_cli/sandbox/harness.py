"""The harness: starts sandboxed processes, feeds them, bounds them in time and output, and reads the verdict.

A check starts two sandboxed processes connected by two pipes: the subject (prompt + completion) and the checker
(prompt + tests). The verdict is read from a third pipe that only the checker holds, and a line counts only if it
carries the per-run nonce that only the checker was given. The harness puts each process in its own session and
kills both groups at the end whatever happens, and keeps only the last `max_output_bytes` of their output.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

from routerllm_cli.errors import ConfigError, RunFailed
from routerllm_cli.sandbox import layers, seccomp, workdir
from routerllm_cli.sandbox.limits import ExecutionResult, SandboxLimits

_KILL_GRACE_S = 1.0  # the child times itself out; the harness kills it this much later (as the reference does)
_STARTUP_S = 15.0  # how long a child may take to start its clock (interpreter start on a loaded machine)
_ENDED = "failed: program ended before the checks finished"


@lru_cache(maxsize=1)
def _boot_text() -> str:
    here = Path(__file__).parent
    return "\n\n".join((here / name).read_text(encoding="utf-8")
                       for name in ("codec.py", "isolation.py", "child_boot.py"))


class _Tail(threading.Thread):
    """Drains a pipe, keeping only its last `cap` bytes, so a program printing gigabytes costs no memory."""

    def __init__(self, fd: int, cap: int):
        super().__init__(daemon=True)
        self.fd, self.cap, self.data = fd, cap, bytearray()

    def run(self) -> None:
        try:
            while chunk := os.read(self.fd, 1 << 16):
                self.data += chunk
                if len(self.data) > 2 * self.cap:
                    del self.data[: len(self.data) - self.cap]
        finally:
            os.close(self.fd)

    def text(self) -> str:
        return bytes(self.data[-self.cap:] if self.cap else b"").decode("utf-8", "replace")


def _ended(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        try:  # the whole group, stray children included, before the leader is reaped and its id freed
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for proc in procs:
        proc.wait()


class Sandbox:
    """Runs untrusted programs under `limits`; `check_many` runs up to `workers` checks at once."""

    def __init__(self, limits: SandboxLimits = SandboxLimits(), workers: int | None = None):
        if workers is not None and workers < 1:
            raise ConfigError(f"sandbox workers must be at least 1, got {workers}", fix="pass workers >= 1")
        self.limits = limits.validate()
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.layer = layers.choose_layer(limits.layer)
        self.isolation: dict[str, str] = {}  # what the last child put in force: layer, net, pid, ipc, fs, proc
        self._filters = (seccomp.build_filter(allow_spawn=True), seccomp.build_filter())
        workdir.sweep()  # folders of harnesses that were killed before they could clean up

    @property
    def network_isolation(self) -> str:
        """What blocks the network: "namespace" (no interface up) or "socket-patch" (no socket can be built)."""
        if "net" not in self.isolation:
            self.run_program("pass")
        return self.isolation["net"]

    def check(self, problem: dict, completion: str) -> ExecutionResult:
        """Run a HumanEval completion against the problem's tests, as the reference evaluator assembles them
        (`prompt + completion + "\\n" + test + "\\n" + check(entry_point)`), split into subject and checker."""
        entry = problem["entry_point"]
        return self.run_tests(problem["prompt"], completion, problem["test"] + "\n" + f"check({entry})", entry)

    def run_tests(self, prompt: str, completion: str, tests: str, entry_point: str) -> ExecutionResult:
        """Run trusted `tests` (which call `entry_point` by name) against `prompt + completion`."""
        headers = ({"source": prompt + completion + "\n", "entry_point": entry_point},
                   {"prompt": prompt, "tests": tests, "entry_point": entry_point})
        return self._run(headers)

    def run_program(self, program: str) -> ExecutionResult:
        """Run one program; it passes if it returns. Its verdict is as honest as the program: for untrusted
        code against trusted tests use `run_tests`/`check`."""
        return self._run(({"source": program, "main": True},))

    def check_many(self, jobs: Iterable[tuple[Any, dict, str]]) -> Iterator[tuple[Any, ExecutionResult]]:
        """jobs are (key, problem, completion); yields (key, result) as they finish."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")
        try:
            futures = {pool.submit(self.check, problem, completion): key for key, problem, completion in jobs}
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # ---------------------------------------------------------------------------------------------- running

    def _spawn(self, role: str, header: dict, fds: dict[str, int], root: Path | None, out_w: int) -> subprocess.Popen:
        lim = self.limits
        spawn_filter, full_filter = self._filters
        header = {**header, "role": role, "layer": self.layer, "fds": fds, "timeout": lim.timeout_s,
                  "memory": lim.memory_bytes, "fsize": lim.max_file_bytes, "nofile": lim.max_open_files,
                  "nproc": lim.max_processes, "max_value": lim.max_value_bytes, "write_bytes": lim.max_write_bytes,
                  "seccomp": full_filter.hex() if full_filter else None}
        pass_fds = list(fds.values())
        command = [layers.interpreter(), "-I", "-S", "-u", "-c", _boot_text()]  # -u: output survives os._exit
        filter_fd = None
        if self.layer == "bwrap":
            if spawn_filter is not None:
                filter_fd, w = os.pipe()
                os.write(w, spawn_filter)
                os.close(w)
                pass_fds.append(filter_fd)
            status = layers.bwrap_status()
            argv = layers.bwrap_argv(status.path or "bwrap", write_bytes=lim.max_write_bytes,
                                     seccomp_fd=filter_fd) + command
            env, cwd = layers.child_env("/tmp"), "/"
        else:
            assert root is not None
            root.mkdir()
            header.update(root=str(root), layout=[asdict(m) for m in layers.layout()],
                          devices=[d for d in layers.DEVICES if os.path.exists(d)])
            argv, env, cwd = command, layers.child_env(str(root)), str(root)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out_w, stderr=out_w, cwd=cwd, env=env,
                                    pass_fds=pass_fds, start_new_session=True)
        except OSError as e:
            raise RunFailed(f"could not start the sandbox ({argv[0]}): {e}",
                            fix="run routerllm from a working Python environment, or set bench.sandbox: builtin") from e
        finally:
            if filter_fd is not None:
                os.close(filter_fd)
        try:
            proc.stdin.write(json.dumps(header).encode() + b"\n")
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        return proc

    def _run(self, headers: tuple[dict, ...]) -> ExecutionResult:
        lim, nonce = self.limits, secrets.token_hex(16)
        split = len(headers) == 2
        host = workdir.make() if self.layer == "builtin" else None
        verdict_r, verdict_w = os.pipe()
        out_r, out_w = os.pipe()
        tail = _Tail(out_r, lim.max_output_bytes)
        tail.start()
        pipes: list[int] = [verdict_w, out_w]
        procs: list[subprocess.Popen] = []
        started = time.monotonic()
        try:
            try:
                if split:
                    req_r, req_w = os.pipe()
                    rep_r, rep_w = os.pipe()
                    pipes += [req_r, req_w, rep_r, rep_w]
                    procs.append(self._spawn("subject", headers[0], {"req": req_r, "rep": rep_w},
                                             host / "subject" if host else None, out_w))
                    procs.append(self._spawn("checker", {**headers[1], "nonce": nonce},
                                             {"req": req_w, "rep": rep_r, "verdict": verdict_w},
                                             host / "checker" if host else None, out_w))
                else:
                    procs.append(self._spawn("program", {**headers[0], "nonce": nonce}, {"verdict": verdict_w},
                                             host / "program" if host else None, out_w))
            finally:
                for fd in pipes:  # the children hold their ends; ours would keep the pipes from ever closing
                    os.close(fd)
            verdict, killed = self._collect(verdict_r, nonce, started)
            if split and not killed:
                try:  # the subject sees its request pipe close and ends by itself, its output flushed
                    procs[0].wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            os.close(verdict_r)
            _kill(procs)
            tail.join(timeout=1.0)
            if host is not None:
                workdir.remove(host)
        seconds = time.monotonic() - started
        if verdict == "subject ended":
            result = f"{_ENDED} ({_ended(procs[0].returncode)})"
        elif killed or (verdict is None and seconds >= lim.timeout_s):
            result = "timed out"
        elif verdict is not None and (verdict in ("passed", "timed out") or verdict.startswith("failed: ")):
            result = verdict
        elif split:
            result = f"failed: the checks ended without a verdict ({_ended(procs[-1].returncode)})"
        else:
            result = f"{_ENDED} ({_ended(procs[-1].returncode)})"
        return ExecutionResult(result == "passed", result, seconds, tail.text())

    def _collect(self, fd: int, nonce: str, started: float) -> tuple[str | None, bool]:
        """Read nonce lines until every holder of the verdict pipe is gone; (verdict, whether time ran out)."""
        lim = self.limits
        deadline = started + _STARTUP_S + lim.timeout_s + _KILL_GRACE_S
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        buf, verdict, clock_started, seen = b"", None, False, 0
        prefix = (nonce + " ").encode()
        while True:
            wait = deadline - time.monotonic()
            if wait <= 0:
                return verdict, True
            if not poller.poll(wait * 1000):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return verdict, False
            seen += len(chunk)
            if seen > 1 << 20:  # a flood on the verdict pipe: nothing honest writes this much
                buf = b""
                continue
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                if not raw.startswith(prefix):
                    continue
                text = raw[len(prefix):].decode("utf-8", "replace")
                if text == "started" and not clock_started:
                    clock_started = True
                    deadline = time.monotonic() + lim.timeout_s + _KILL_GRACE_S
                elif text.startswith("isolation "):
                    self.isolation = dict(kv.split("=", 1) for kv in text.split()[1:] if "=" in kv)
                elif text.startswith("verdict ") and verdict is None:
                    verdict = text[len("verdict "):]
