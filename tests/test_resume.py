"""Resuming a bench run from its folder alone, through the real CLI: the printed command works as printed, a
config or flags that would change the run's results or problems are set aside or refused, never a shrunken run."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from routerllm_cli.cli import bench as cli_bench
from routerllm_cli.cli.app import app

runner = CliRunner()


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_config(path: Path, model: str, **bench) -> Path:
    settings = {"num_examples": 3, "batch_size": 1, "max_new_tokens": 8, "device": "cpu", "skip_execution": True,
                **bench}
    lines = ["models:", "  large_llm:", f"    name: {json.dumps(model)}", "    torch_dtype: float32", "bench:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def printed_command(stderr: str) -> list[str]:
    """The resume command the interruption message names, as argv for the CLI app (without `routerllm`)."""
    match = re.search(r"resume with `(routerllm bench [^`]+)`", " ".join(stderr.split()))
    assert match, stderr
    argv = shlex.split(match.group(1))
    assert argv[:2] == ["routerllm", "bench"]
    return argv[1:]


def interrupted_after_first_answer(monkeypatch, args: list[str]) -> tuple[list[str], Path]:
    """Run `routerllm bench ARGS` and press Ctrl-C (a real SIGINT to this process) once the first answer is saved."""
    original = cli_bench.BenchScreen.on_batch

    def on_batch(self, d):
        original(self, d)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(cli_bench.BenchScreen, "on_batch", on_batch)
    result = runner.invoke(app, ["bench", *args])
    monkeypatch.setattr(cli_bench.BenchScreen, "on_batch", original)
    assert result.exit_code == 130, result.output
    argv = printed_command(result.stderr)
    run_dir = Path(argv[argv.index("--run-dir") + 1])
    assert len(read_lines(run_dir / "samples.jsonl")) == 1
    return argv, run_dir


@pytest.fixture()
def started(tiny_llama_dir, tmp_path, monkeypatch):
    """`bench --config cfg -n 4` (the config says num_examples 3) interrupted after its first answer."""
    cfg = write_config(tmp_path / "cfg.yaml", str(tiny_llama_dir))
    argv, run_dir = interrupted_after_first_answer(monkeypatch, ["--config", str(cfg), "-n", "4"])
    return argv, run_dir, cfg


def test_the_printed_resume_command_finishes_the_run(started):
    argv, run_dir, _ = started
    first = read_lines(run_dir / "samples.jsonl")
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    samples = read_lines(run_dir / "samples.jsonl")
    ids = [s["task_id"] for s in samples]
    assert sorted(ids) == [f"HumanEval/{i}" for i in range(4)] and samples[0] == first[0]  # none lost, none twice
    assert {s["new_tokens"] for s in samples} <= set(range(1, 9))  # the run's max_new_tokens, not the default 384
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and (summary["done"], summary["total"]) == (4, 4)
    assert "1/4 already done" in result.stderr


def test_a_config_with_another_num_examples_finishes_the_runs_own_problems(started):
    argv, run_dir, cfg = started
    result = runner.invoke(app, [*argv, "--config", str(cfg)])  # the config says num_examples 3, the run has 4
    assert result.exit_code == 0, result.output
    assert "num_examples 3 set aside: the run has 4" in " ".join(result.stderr.split())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["done"], summary["total"]) == ("finished", 4, 4)
    assert len({s["task_id"] for s in read_lines(run_dir / "samples.jsonl")}) == 4


def test_a_config_that_changes_results_is_set_aside_for_the_runs_settings(started, tiny_llama_dir, tmp_path):
    argv, run_dir, _ = started
    other = write_config(tmp_path / "other.yaml", str(tiny_llama_dir), max_new_tokens=20, num_examples=4)
    result = runner.invoke(app, [*argv, "--config", str(other)])
    assert result.exit_code == 0, result.output
    assert "max_new_tokens 20 set aside: the run has 8" in " ".join(result.stderr.split())
    assert max(s["new_tokens"] for s in read_lines(run_dir / "samples.jsonl")) <= 8


@pytest.mark.parametrize("flags,named", [(["-n", "2"], "leave out -n/--tasks"),
                                          (["--max-new-tokens", "9"], "drop --max-new-tokens")])
def test_flags_that_would_shrink_or_change_the_run_are_refused_in_one_line(started, flags, named):
    argv, run_dir, _ = started
    before = (run_dir / "samples.jsonl").read_text()
    result = runner.invoke(app, [*argv, *flags])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert named in lines[0] and f"routerllm bench --run-dir {run_dir}" in lines[0]
    assert (run_dir / "samples.jsonl").read_text() == before
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"


def test_a_larger_n_extends_the_run(started):
    argv, run_dir, _ = started
    result = runner.invoke(app, [*argv, "-n", "5", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["done"], summary["total"]) == (5, 5)
    assert json.loads((run_dir / "run.json").read_text())["task_ids"] == [f"HumanEval/{i}" for i in range(5)]


def test_resume_latest_run_uses_its_own_settings(started, tiny_llama_dir):
    _, run_dir, _ = started
    result = runner.invoke(app, ["bench", "--model", str(tiny_llama_dir), "--resume",
                                 "--results-dir", str(run_dir.parent), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run_dir"] == str(run_dir) and (summary["done"], summary["total"]) == (4, 4)


@pytest.mark.slow
def test_embedded_model_interrupted_and_resumed_with_the_printed_command(tmp_path):
    """The operator's night with the real embedded SmolLM2: Ctrl-C (SIGINT) after the first answer, the printed
    command resumes, a config with another num_examples finishes the run's own 4, nothing is generated twice."""
    cfg = tmp_path / "laptop.yaml"
    cfg.write_text("models:\n  large_llm:\n    name: smollm2_135m\n    torch_dtype: float32\n"
                   "bench:\n  num_examples: 2\n  batch_size: 1\n  max_new_tokens: 24\n  device: cpu\n"
                   "  skip_execution: true\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "routerllm_cli"]

    def interrupt_after(args: list[str], answers: int) -> subprocess.CompletedProcess:
        proc = subprocess.Popen([*cli, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            found = list(Path("results").glob("*/samples.jsonl"))
            if found and found[0].read_text().count("\n") >= answers:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=600)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    first = interrupt_after(["bench", "--config", str(cfg), "-n", "4"], 1)
    assert first.returncode == 130, first.stderr[-2000:]
    argv = printed_command(first.stderr)
    run_dir = Path(argv[argv.index("--run-dir") + 1])
    assert 1 <= len(read_lines(run_dir / "samples.jsonl")) < 4
    # the config says num_examples 2: the run's own 4 are what this session works on
    second = interrupt_after([*argv, "--config", str(cfg)], len(read_lines(run_dir / "samples.jsonl")) + 1)
    assert second.returncode in (0, 130), second.stderr[-2000:]
    assert "/4 already done" in second.stderr and "num_examples 2 set aside" in " ".join(second.stderr.split())
    third = subprocess.run([*cli, *argv], env=env, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stderr[-2000:]
    ids = [s["task_id"] for s in read_lines(run_dir / "samples.jsonl")]
    assert sorted(ids) == [f"HumanEval/{i}" for i in range(4)]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["done"], summary["total"]) == ("finished", 4, 4)
    assert "Traceback" not in first.stderr + second.stderr + third.stderr
