"""A run's summary: pass@k, latency, throughput, memory, energy, CO2 and cost, from its saved records."""

from __future__ import annotations

from typing import Any

from routerllm_cli.config import ModelSpec, Settings
from routerllm_cli.bench.run import parses_as_python


def memory_now(loaded: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                out[f"cuda:{i}"] = int(torch.cuda.max_memory_allocated(i))
    except Exception:  # noqa: BLE001 - memory is informative only
        pass
    try:
        import psutil

        out["cpu_rss"] = int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001
        pass
    return out


def _peak_memory(prior: dict[str, Any], loaded: Any) -> dict[str, int]:
    """The run's peak per device over all its sessions: a session that loaded nothing (everything was answered
    already) keeps what the generating sessions measured."""
    peak = {k: int(v) for k, v in (prior.get("peak_memory") or {}).items()}
    if loaded is not None:
        for k, v in memory_now(loaded).items():
            peak[k] = max(peak.get(k, 0), v)
    return peak


def decode_summary(info: dict[str, Any] | None, decoder: Any) -> dict[str, Any] | None:
    from routerllm_cli.decode import decode_report

    return decode_report(info, decoder)


def summarize(folder: Any, problems: list[dict], settings: Settings, spec: ModelSpec, model_name: str,
             load_seconds: float, gen_seconds: float, first_batch_at: float | None, reading: Any, status: str,
             loaded: Any, decode: dict[str, Any] | None = None) -> dict[str, Any]:
    from routerllm_cli import metrics
    from routerllm_cli.energy import co2_grams

    b = settings.bench
    ids = {p["task_id"] for p in problems}
    prompts = {p["task_id"]: p["prompt"] for p in problems}
    samples = [s for s in folder.samples() if s["task_id"] in ids]
    execs = folder.executions()  # {(task_id, k): {...}}
    latencies = [metrics.answer_latency(s) for s in samples]
    tokens = sum(s.get("new_tokens") or 0 for s in samples if isinstance(s.get("new_tokens"), int))
    gen_ok = sum(parses_as_python(prompts[s["task_id"]], str(s.get("completion") or "")) for s in samples)
    summary: dict[str, Any] = {
        "model": model_name, "status": status, "run_dir": str(folder.path),
        "total": len(problems) * b.samples, "done": len(samples),
        "generation_success_rate": gen_ok / len(samples) if samples else 0.0,
        "latency_s": metrics.latency_summary(latencies),
        "throughput": {"problems_per_min": 60 * len(samples) / gen_seconds if gen_seconds else 0.0,
                       "tokens_per_s": tokens / gen_seconds if gen_seconds else 0.0},
        "time_to_first_batch_s": first_batch_at, "load_seconds": load_seconds, "generation_seconds": gen_seconds,
        "peak_memory": _peak_memory(folder.read_summary() or {}, loaded), "skip_execution": b.skip_execution,
    }
    if decode is not None:
        summary["decode"] = decode
    if not b.skip_execution:
        per_task: dict[str, list[bool]] = {}
        for s in samples:
            ex = execs.get((s["task_id"], s.get("sample_idx", 0)))
            if ex is not None:
                per_task.setdefault(s["task_id"], []).append(bool(ex.get("passed")))
        executed = sum(len(v) for v in per_task.values())
        summary["executed"] = executed
        summary["passed"] = sum(sum(v) for v in per_task.values())
        summary["pass_at_k"] = metrics.pass_at_k_table(per_task, b.samples)
        summary["pass@1"] = summary["pass_at_k"].get("pass@1", 0.0)
    if reading is not None:
        summary["energy"] = reading.to_dict()
        summary["co2_g"] = co2_grams(reading.kwh, settings.energy.carbon_intensity_g_per_kwh)
        summary["cost_usd"] = metrics.run_cost_usd(gen_seconds + load_seconds, samples, spec, settings.energy,
                                                   metrics.measured_gpus(summary["energy"]))
    if spec.endpoint is not None:
        from routerllm_cli.endpoints.source import endpoint_accounting

        summary.update(endpoint_accounting(spec, settings, samples, gen_seconds))
    return summary
