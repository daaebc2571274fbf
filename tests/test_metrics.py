"""The numbers bench and compare report: one percentile, one pass@k, one cost rule, the same for both."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from routerllm_cli import metrics, runs
from routerllm_cli.bench import BenchRun, _summary
from routerllm_cli.compare import ComparePipeline, ModelRun, _index
from routerllm_cli.config import ModelSpec, load_settings
from routerllm_cli.energy import DEFAULT_USD_PER_GPU_HOUR, JOULES_PER_KWH, EnergyReading

# Five answers whose p95 differs by rule: linear interpolation gives 8.8 s, nearest rank 10 s.
LATENCIES = [1.0, 4.0, 2.0, 10.0, 3.0]


def test_percentile_interpolates_linearly_like_numpy():
    assert metrics.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert metrics.percentile(LATENCIES, 0.95) == pytest.approx(8.8)
    assert metrics.percentile(LATENCIES, 0.0) == 1.0 and metrics.percentile(LATENCIES, 1.0) == 10.0
    assert metrics.percentile([7.0], 0.95) == 7.0 and metrics.percentile([], 0.95) == 0.0
    # statistics' "inclusive" method is the same rule (numpy's default, Hyndman & Fan type 7)
    cuts = statistics.quantiles(LATENCIES, n=20, method="inclusive")
    assert metrics.percentile(LATENCIES, 0.95) == pytest.approx(cuts[18])
    assert metrics.percentile(LATENCIES, 0.5) == pytest.approx(statistics.median(LATENCIES))
    with pytest.raises(ValueError):
        metrics.percentile(LATENCIES, 95)


def test_pass_at_k_matches_the_closed_form():
    assert metrics.pass_at_k(10, 5, 1) == pytest.approx(0.5)
    assert metrics.pass_at_k(1, 1, 1) == 1.0 and metrics.pass_at_k(1, 0, 1) == 0.0
    assert metrics.pass_at_k(5, 0, 5) == 0.0 and metrics.pass_at_k(5, 1, 5) == 1.0
    assert metrics.pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)  # 1 - C(7,2)/C(10,2)
    for n, c, k in [(200, 10, 10), (200, 37, 100), (20, 4, 3), (100, 1, 1), (164, 11, 1)]:
        assert metrics.pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), rel=1e-12)
    with pytest.raises(ValueError):
        metrics.pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        metrics.pass_at_k(5, 2, 6)
    assert metrics.mean_pass_at_k([(10, 5), (10, 0)], 1) == pytest.approx(0.25)


def test_pass_at_k_table_leaves_out_tasks_with_too_few_samples():
    verdicts = {"a": [True, False, False, False, False, False, False, False, False, False], "b": [False, True]}
    table = metrics.pass_at_k_table(verdicts, samples=10)
    assert set(table) == {"pass@1", "pass@10"}
    assert table["pass@1"] == pytest.approx((0.1 + 0.5) / 2)
    assert table["pass@10"] == 1.0  # only "a" has 10 samples, and one of them passed
    assert metrics.pass_at_k_table({"a": [False]}, samples=10)["pass@10"] == 0.0  # no task has 10: 0, no crash


def test_cost_uses_the_models_price_else_the_energy_sections_and_tokens_when_priced_so():
    settings = load_settings(None, {"energy": {"price_per_gpu_hour": 2.0}})
    e = settings.energy
    record = {"seconds": 1800.0, "prompt_tokens": 1_000_000, "new_tokens": 500_000}
    assert metrics.answer_cost_usd(record, ModelSpec(), e, gpus=2) == pytest.approx(0.5 * 2 * 2.0)
    assert metrics.answer_cost_usd(record, ModelSpec(price_per_gpu_hour=3.0), e, gpus=2) == pytest.approx(3.0)
    assert metrics.answer_cost_usd(record, ModelSpec(), e, gpus=0) == 0.0  # CPU only: no GPU-hours
    api = ModelSpec(usd_per_mtok_in=1.0, usd_per_mtok_out=4.0)
    assert metrics.answer_cost_usd(record, api, e, gpus=2) == pytest.approx(1.0 + 2.0)
    assert metrics.run_cost_usd(3600.0, [record, record], api, e, gpus=8) == pytest.approx(6.0)
    assert metrics.run_cost_usd(3600.0, [record], ModelSpec(), e, gpus=1) == pytest.approx(2.0)
    assert load_settings().energy.price_per_gpu_hour == DEFAULT_USD_PER_GPU_HOUR
    assert metrics.joules_per_answer({"kwh": 0.001}, 4) == pytest.approx(0.001 * JOULES_PER_KWH / 4)
    assert metrics.kwh(JOULES_PER_KWH) == 1.0 and metrics.joules_per_answer(None, 3) == 0.0


def _saved_run(path: Path, problems: list[dict]) -> runs.RunFolder:
    folder = runs.RunFolder.create(path, fingerprint={"model": "smollm2_135m"})
    for p, latency in zip(problems, LATENCIES):
        folder.append_sample({"task_id": p["task_id"], "sample_idx": 0, "completion": "    return 1\n",
                              "raw": "", "new_tokens": 4, "prompt_tokens": 50, "seconds": latency / 2,
                              "latency_s": latency})
    return folder


def test_bench_and_compare_report_the_same_p95_for_the_same_answers(tmp_path):
    from routerllm_cli import humaneval

    settings = load_settings(None, {"bench": {"skip_execution": True, "num_examples": 5},
                                    "models": {"router": {"policy": "random"}}})
    problems = humaneval.select(humaneval.load_problems("package")[0], n=5)
    spec = settings.models.router.pool[0]
    folder = _saved_run(tmp_path / "run", problems)
    reading = EnergyReading(seconds=10.0, gpu_joules={}, cpu_joules=36.0, cpu_source="estimate", gpu_source="none")
    bench = _summary(folder, problems, settings, spec, spec.name, 1.0, 10.0, 0.5, reading, "finished", None)

    pipe = ComparePipeline(settings, tmp_path / "cmp", policy="random", use_large_model=False)
    run = BenchRun(folder.path, bench, 0.0, folder.samples())
    pipe.runs[spec.name] = ModelRun(spec, run, _index(run), metrics.joules_per_answer(bench["energy"], 5))
    alone = pipe.metrics(spec.name, "pool model", pipe.single(spec, problems), problems)

    assert bench["latency_s"]["p95"] == pytest.approx(8.8)  # interpolated, not the slowest answer
    assert alone["latency_p95_s"] == pytest.approx(bench["latency_s"]["p95"])
    assert alone["latency_mean_s"] == pytest.approx(bench["latency_s"]["mean"]) == pytest.approx(4.0)
    assert alone["kwh"] == pytest.approx(bench["energy"]["kwh"])  # every answer's share adds up to the run
