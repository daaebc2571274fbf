"""compare on the two embedded models (SmolLM2-135M and Gemma-3-270M from the registry), execution on.

One results folder is shared by every policy, the way an operator re-runs compare: each model answers each
problem once, and every later policy reads those answers from the model's run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from routerllm_cli.cli.app import app

runner = CliRunner()

CONFIG = """
models:
  large_llm:
    name: gemma3_270m
    torch_dtype: float32
  router:
    policy: cascade
    thresholds: [0.24]
    pool:
      - name: smollm2_135m
        torch_dtype: float32
      - name: gemma3_270m
        torch_dtype: float32
bench:
  num_examples: 3
  batch_size: 3
  max_new_tokens: 24
  device: cpu
"""


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    cfg = root / "laptop.yaml"
    cfg.write_text(CONFIG)
    return cfg, root / "comparison"


def run(cfg: Path, out: Path, *args: str):
    result = runner.invoke(app, ["compare", "--config", str(cfg), "--results-dir", str(out), "--json", *args])
    assert result.exit_code == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def first_compare(shared):
    """The one compare that generates: the cascade with the large model, which is also in the pool, so the
    cascade's escalations and the direct run share one load. Every later policy reads these answers."""
    cfg, out = shared
    return run(cfg, out, "--router", "cascade", "--use-large-model")


def saved_summary(out: Path, model: str) -> dict:
    return json.loads((out / "models" / model / "summary.json").read_text())


@pytest.mark.slow
def test_the_large_model_compare_loads_each_model_once(first_compare):
    large = first_compare
    assert [s["kind"] for s in large["systems"]][:2] == ["router", "large"]
    assert large["systems"][1]["name"] == "gemma3_270m (direct)"
    assert {n: m["loads"] for n, m in large["models"].items()} == {"smollm2_135m": 1, "gemma3_270m": 1}
    assert all(m["load_seconds"] > 0 for m in large["models"].values())
    # the large model alone is the direct row; it is not listed twice
    assert [s["name"] for s in large["systems"]].count("gemma3_270m (alone)") == 0
    assert "smollm2_135m (alone)" in [s["name"] for s in large["systems"]]


@pytest.mark.slow
def test_a_model_alone_reports_what_its_bench_run_reports(first_compare, shared):
    """Same answers, same numbers: p95 and mean latency, energy; CPU-only, so no GPU-hours are paid."""
    _, out = shared
    systems = {s["name"]: s for s in first_compare["systems"]}
    for name, row in (("gemma3_270m", systems["gemma3_270m (direct)"]), ("smollm2_135m",
                                                                          systems["smollm2_135m (alone)"])):
        bench = saved_summary(out, name)
        assert row["latency_p95_s"] == pytest.approx(bench["latency_s"]["p95"]) and row["latency_p95_s"] > 0
        assert row["latency_mean_s"] == pytest.approx(bench["latency_s"]["mean"])
        assert row["kwh"] == pytest.approx(bench["energy"]["kwh"]) and row["kwh"] > 0
        assert row["co2_g"] == pytest.approx(row["kwh"] * 475.0)  # the default world-average intensity
        assert row["cost_usd"] == 0.0 == bench["cost_usd"]
        assert row["accuracy"] == bench["passed"] / 3 and row["load_s"] == pytest.approx(bench["load_seconds"])


@pytest.mark.slow
def test_the_oracle_is_a_ceiling_over_answers_already_generated(first_compare, shared):
    cfg, out = shared
    first = run(cfg, out, "--router", "oracle")  # every pool model on every problem: all answered already
    names = [s["name"] for s in first["systems"]]
    assert names[0] == "RouterLLM (oracle)" and "smollm2_135m (alone)" in names and "gemma3_270m (alone)" in names
    assert "upper bound" in first["systems"][0]["extras"]["label"]
    assert any(n.startswith("RouterLLM (oracle): oracle (upper bound") for n in first["notes"])
    assert "upper bound" in (out / "comparison.md").read_text()
    oracle = first["systems"][0]
    alone = {s["name"]: s for s in first["systems"][1:]}
    assert oracle["accuracy"] >= max(s["accuracy"] for s in alone.values())  # the ceiling is a ceiling
    passed = {n: {json.loads(line)["task_id"] for line in (out / "models" / n / "executions.jsonl").read_text()
                  .splitlines() if json.loads(line)["passed"]} for n in ("smollm2_135m", "gemma3_270m")}
    assert oracle["accuracy"] == len(passed["smollm2_135m"] | passed["gemma3_270m"]) / 3
    assert all(m["loads"] == 0 for m in first["models"].values())


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["cascade", "heuristic", "random"])
def test_every_policy_reuses_the_saved_answers(first_compare, shared, policy):
    cfg, out = shared
    res = run(cfg, out, "--router", policy)
    router = res["systems"][0]
    assert router["name"] == f"RouterLLM ({policy})"
    assert sum(router["routing"].values()) == 3 and set(router["routing"]) == {"smollm2_135m", "gemma3_270m"}
    assert router["accuracy_kind"] == "pass@1" and 0.0 <= router["accuracy"] <= 1.0
    # a router's answers are its models' answers: its energy is their shares, its latency theirs (plus checks)
    alone = {s["name"].removesuffix(" (alone)"): s for s in res["systems"][1:]}
    assert 0 < router["kwh"] <= sum(s["kwh"] for s in alone.values()) + 1e-12
    latency = {n: {json.loads(line)["task_id"]: json.loads(line)["latency_s"] for line in
                   (out / "models" / n / "samples.jsonl").read_text().splitlines()} for n in alone}
    tasks = list(latency["smollm2_135m"])
    fastest = sum(min(latency[n][t] for n in latency) for t in tasks) / 3
    slowest = sum(max(latency[n][t] for n in latency) for t in tasks) / 3
    assert router["latency_mean_s"] >= fastest - 1e-9
    if policy != "cascade":  # one model per problem, no checks
        assert router["latency_mean_s"] <= slowest + 1e-9
    assert router["cost_usd"] == 0.0  # CPU only: no GPU-hours
    # every answer already existed: no model was loaded again, and the load the answers took is still shown
    assert all(m["load_seconds"] == 0 for m in res["models"].values()), res["models"]
    assert router["load_s"] > 0
    if policy == "cascade":
        assert router["routing"]["gemma3_270m"] == router["extras"]["escalated"]
        assert router["extras"]["docstring_check_seconds"] > 0
    table = json.loads((out / "comparison.json").read_text())
    assert [s["name"] for s in table["systems"]] == [s["name"] for s in res["systems"]]
    assert (out / "comparison.md").read_text().count("\n|") == len(res["systems"]) + 2  # header, rule, rows
    png = (out / "cost_quality.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_oracle_needs_execution(shared):
    cfg, out = shared
    result = runner.invoke(app, ["compare", "--config", str(cfg), "--results-dir", str(out), "--router", "oracle",
                                 "--skip-execution"])
    assert result.exit_code == 2 and "execution" in result.stderr


def test_unknown_policy_is_refused(shared):
    cfg, out = shared
    result = runner.invoke(app, ["compare", "--config", str(cfg), "--router", "smartest"])
    assert result.exit_code == 2 and "heuristic, cascade, random or oracle" in result.stderr


def test_a_missing_gguf_file_is_one_line_that_names_the_files_there(tmp_path):
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "other.gguf").write_bytes(b"GGUF")
    cfg = tmp_path / "c.yaml"
    # the second pool model is the missing one: compare refuses before the first spends any time
    cfg.write_text(CONFIG.replace("      - name: gemma3_270m\n",
                                  f"      - name: gemma3_270m\n        model_id: {folder}\n"
                                  "        gguf_file: gemma-3-270m-q4_k_m.gguf\n"))
    result = runner.invoke(app, ["compare", "--config", str(cfg), "--results-dir", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "gemma-3-270m-q4_k_m.gguf does not exist" in lines[0]
    assert "other.gguf" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_an_interrupted_compare_continues_where_it_stopped(tiny_llama_dir, tmp_path):
    """Stop after the first answer; the same compare again finishes, keeping every saved line and losing none."""
    import shutil

    from routerllm_cli.bench import BenchInterrupted, StopSignal
    from routerllm_cli.compare import run_compare
    from routerllm_cli.config import load_settings

    other = tmp_path / "tiny-llama-b"
    shutil.copytree(tiny_llama_dir, other)
    settings = load_settings(None, {
        "models": {"large_llm": {"name": "tiny-a", "model_id": str(tiny_llama_dir), "torch_dtype": "float32"},
                   "router": {"policy": "random", "pool": [
                       {"name": "tiny-a", "model_id": str(tiny_llama_dir), "torch_dtype": "float32"},
                       {"name": "tiny-b", "model_id": str(other), "torch_dtype": "float32"}]}},
        "bench": {"num_examples": 4, "batch_size": 1, "max_new_tokens": 6, "device": "cpu", "skip_execution": True},
    })
    out = tmp_path / "cmp"
    stop = StopSignal()

    def sink(kind, data):
        if kind == "batch":
            stop.request()

    with pytest.raises(BenchInterrupted) as info:
        run_compare(settings, out, stop=stop, on_event=sink)
    assert info.value.exit_code == 130 and "same `routerllm compare`" in info.value.fix
    saved = {p.parent.name: p.read_text().splitlines() for p in (out / "models").glob("*/samples.jsonl")}
    assert sum(len(lines) for lines in saved.values()) == 1  # one answer, then the stop

    result = run_compare(settings, out)
    assert [s["name"] for s in result["systems"]] == ["RouterLLM (random)", "tiny-a (alone)", "tiny-b (alone)"]
    for name, lines in saved.items():
        after = (out / "models" / name / "samples.jsonl").read_text().splitlines()
        assert after[:len(lines)] == lines  # earlier answers kept as written
        ids = [json.loads(line)["task_id"] for line in after]
        assert sorted(ids) == [f"HumanEval/{i}" for i in range(4)]  # none lost, none twice
    assert sum(result["systems"][0]["routing"].values()) == 4
