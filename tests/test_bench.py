"""bench end to end on real models: saving as it goes, interruption, exact resume, execution, the summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from routerllm_cli.bench import BenchInterrupted, StopSignal, run_bench
from routerllm_cli.cli.app import app
from routerllm_cli.config import load_settings

runner = CliRunner()


def tiny_settings(model_dir: Path, results: Path, **bench):
    return load_settings(None, {
        "models": {"large_llm": {"name": str(model_dir), "torch_dtype": "float32"}},
        "bench": {"num_examples": 6, "batch_size": 2, "max_new_tokens": 8, "device": "cpu",
                  "results_dir": str(results), **bench},
    })


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("batching", ["static", "continuous"])
def test_interrupt_then_resume_loses_and_duplicates_nothing(tiny_llama_dir, tmp_path, batching):
    settings = tiny_settings(tiny_llama_dir, tmp_path / "results", batching=batching)
    stop = StopSignal()
    seen = []

    def on_event(kind, data):
        seen.append(kind)
        if kind == "batch" and data["done"] >= 2:
            stop.request()  # what the first Ctrl-C does

    run_dir = tmp_path / "run"
    with pytest.raises(BenchInterrupted) as info:
        run_bench(settings, run_dir=run_dir, stop=stop, on_event=on_event)
    assert info.value.exit_code == 130 and "--run-dir" in info.value.fix
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    first = read_lines(run_dir / "samples.jsonl")
    # the rows in flight were finished and saved, no new problem was started
    assert len(first) == 2 if batching == "static" else 2 <= len(first) <= 4
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["done"] == len(first)

    result = run_bench(settings, run_dir=run_dir)
    samples = read_lines(run_dir / "samples.jsonl")
    ids = [s["task_id"] for s in samples]
    assert sorted(ids) == sorted(f"HumanEval/{i}" for i in range(6))  # none lost, none twice
    assert samples[:len(first)] == first  # earlier lines untouched
    executed = read_lines(run_dir / "executions.jsonl")
    assert sorted(e["task_id"] for e in executed) == sorted(ids)
    assert result.summary["status"] == "finished" and result.summary["executed"] == 6
    assert 0.0 <= result.summary["pass@1"] <= 1.0
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


def test_resume_refuses_different_settings(tiny_llama_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_bench(tiny_settings(tiny_llama_dir, tmp_path, num_examples=2, skip_execution=True), run_dir=run_dir)
    result = runner.invoke(app, ["bench", "--model", str(tiny_llama_dir), "--run-dir", str(run_dir),
                                 "--max-new-tokens", "9", "--device", "cpu", "-n", "2"])
    assert result.exit_code == 2
    assert "max_new_tokens" in result.stderr and "8" in result.stderr and "9" in result.stderr


def test_unexecuted_samples_are_executed_on_resume(tiny_llama_dir, tmp_path):
    """Generate on one machine with --skip-execution, execute on another by resuming with execution on."""
    run_dir = tmp_path / "run"
    run_bench(tiny_settings(tiny_llama_dir, tmp_path, num_examples=3, skip_execution=True), run_dir=run_dir)
    assert not (run_dir / "executions.jsonl").exists() or not read_lines(run_dir / "executions.jsonl")
    result = run_bench(tiny_settings(tiny_llama_dir, tmp_path, num_examples=3), run_dir=run_dir)
    assert len(read_lines(run_dir / "samples.jsonl")) == 3  # nothing generated again
    assert result.summary["executed"] == 3


@pytest.mark.slow
def test_sigint_in_a_real_process_saves_and_exits_130(tiny_llama_dir, tmp_path):
    """The real signal path: Ctrl-C finishes the batch in flight, saves, exits 130; --run-dir resumes."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "routerllm_cli", "bench", "--model", str(tiny_llama_dir), "--device", "cpu",
           "-n", "40", "--batch-size", "1", "--max-new-tokens", "48", "--skip-execution", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = run_dir / "samples.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (samples.exists() and samples.read_text().count("\n") >= 1):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "resume with" in err
    done = read_lines(samples)
    assert 1 <= len(done) < 40
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    ids = [s["task_id"] for s in read_lines(samples)]
    assert len(ids) == 40 and len(set(ids)) == 40


def test_bench_cli_json_summary_and_run_folder(tiny_llama_dir, tmp_path):
    result = runner.invoke(app, ["bench", "--model", str(tiny_llama_dir), "--device", "cpu", "-n", "2",
                                 "--max-new-tokens", "6", "--results-dir", str(tmp_path / "res"), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    run_dir = Path(summary["run_dir"])
    samples = read_lines(run_dir / "samples.jsonl")
    executed = read_lines(run_dir / "executions.jsonl")
    # every number is the one its records give
    assert summary["done"] == len(samples) == 2 and summary["executed"] == len(executed) == 2
    assert summary["pass@1"] == summary["passed"] / 2 == sum(e["passed"] for e in executed) / 2
    latencies = sorted(s["latency_s"] for s in samples)
    assert summary["latency_s"]["p50"] == pytest.approx(sum(latencies) / 2)  # two answers: their mean
    assert latencies[0] <= summary["latency_s"]["p95"] <= latencies[1] and latencies[0] > 0
    tokens = sum(s["new_tokens"] for s in samples)
    assert summary["throughput"]["tokens_per_s"] == pytest.approx(tokens / summary["generation_seconds"])
    assert 0 < summary["time_to_first_batch_s"] and summary["peak_memory"]["cpu_rss"] > 0
    assert 0.0 <= summary["generation_success_rate"] <= 1.0
    assert summary["energy"]["cpu_joules"] > 0 and summary["co2_g"] == pytest.approx(summary["energy"]["kwh"] * 475.0)
    assert summary["cost_usd"] == 0.0  # CPU only: no GPU-hours
    assert {"samples.jsonl", "summary.json", "run.json"} <= {p.name for p in run_dir.iterdir()}
    info = json.loads((run_dir / "run.json").read_text())
    assert info["versions"]["torch"] and info["command_line"][0] == "routerllm"
    assert summary["energy"]["cpu_source"] in ("rapl", "estimate")


def test_bench_refuses_unknown_task_ids(tiny_llama_dir):
    result = runner.invoke(app, ["bench", "--model", str(tiny_llama_dir), "--tasks", "HumanEval/999"])
    assert result.exit_code == 2 and "HumanEval/999" in result.stderr


def test_a_resumed_run_reports_energy_and_time_of_all_its_sessions(tiny_llama_dir, tmp_path):
    run_dir = tmp_path / "run"
    first = run_bench(tiny_settings(tiny_llama_dir, tmp_path, num_examples=2, skip_execution=True),
                      run_dir=run_dir).summary
    assert first["energy"]["seconds"] > 0 and first["generation_seconds"] > 0 and first["load_seconds"] > 0
    more = run_bench(tiny_settings(tiny_llama_dir, tmp_path, num_examples=3, skip_execution=True), run_dir=run_dir)
    second = more.summary
    assert second["done"] == 3
    assert second["energy"]["seconds"] > first["energy"]["seconds"]
    assert second["energy"]["cpu_joules"] > first["energy"]["cpu_joules"]
    assert second["generation_seconds"] > first["generation_seconds"]
    assert second["load_seconds"] > first["load_seconds"] and 0 < more.load_seconds < second["load_seconds"]
    again = run_bench(tiny_settings(tiny_llama_dir, tmp_path, num_examples=3, skip_execution=True), run_dir=run_dir)
    # nothing left to do: nothing loaded, nothing spent, and the run's totals are kept
    assert again.load_seconds == 0
    for key in ("generation_seconds", "load_seconds"):
        assert again.summary[key] == pytest.approx(second[key])
    assert again.summary["energy"]["kwh"] == pytest.approx(second["energy"]["kwh"])
    # and so is the peak memory its generating sessions measured
    assert second["peak_memory"]["cpu_rss"] >= first["peak_memory"]["cpu_rss"] > 0
    assert again.summary["peak_memory"] == second["peak_memory"]
