"""The numbers `bench` and `compare` report, computed one way for both: latency percentiles, pass@k, energy
and cost per answer.

Percentiles interpolate linearly between the two nearest ranks (numpy's default, Hyndman & Fan type 7), so
p50 of an even count is the mean of the middle two and p95 of few answers lies between the two slowest.
pass@k is the unbiased estimator of Chen et al. (2021). Cost is GPU-hours x the model's price per GPU-hour
(the energy section's price when the model names none), or tokens x per-million-token prices for a model
priced that way. Kept free of torch: it is arithmetic over saved records.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from routerllm_cli.energy import JOULES_PER_KWH, cost_usd, cost_usd_tokens

PASS_AT_K = (1, 10, 100)


# --- latency -------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (q in [0, 1]) by linear interpolation between closest ranks; 0.0 for no values."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile is between 0 and 1 (got {q})")
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def latency_summary(latencies: Sequence[float]) -> dict[str, float]:
    """{"mean", "p50", "p95"} in seconds (all 0.0 for no answers)."""
    return {"mean": statistics.fmean(latencies) if latencies else 0.0,
            "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95)}


def answer_latency(record: Mapping[str, Any]) -> float:
    """How long one answer took from entering a batch to its end (older records only have their share)."""
    return float(record.get("latency_s", record.get("seconds", 0.0)))


# --- pass@k --------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed (Chen et al. 2021): 1 - C(n-c, k) / C(n, k),
    computed as a product so large n does not overflow."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(per_task: Iterable[tuple[int, int]], k: int) -> float:
    """Mean pass@k over tasks given as (n, c); tasks with fewer than k samples are left out (0.0 if none)."""
    values = [pass_at_k(n, c, k) for n, c in per_task if n >= k]
    return sum(values) / len(values) if values else 0.0


def pass_at_k_table(verdicts: Mapping[str, Sequence[bool]], samples: int) -> dict[str, float]:
    """{"pass@1": ..., "pass@10": ...} for each k of 1, 10, 100 that `samples` per task allows."""
    per_task = [(len(v), sum(bool(x) for x in v)) for v in verdicts.values()]
    return {f"pass@{k}": mean_pass_at_k(per_task, k) for k in PASS_AT_K if k <= samples}


# --- energy and cost -----------------------------------------------------------------------------------


def kwh(joules: float) -> float:
    return joules / JOULES_PER_KWH


def measured_gpus(energy: Mapping[str, Any] | None) -> int:
    """GPUs whose energy a run measured (0 on a CPU-only run: no GPU-hours to pay)."""
    return len((energy or {}).get("gpu_joules") or {})


def joules_per_answer(energy: Mapping[str, Any] | None, answers: int) -> float:
    """A run's measured energy spread evenly over the answers it generated."""
    if not energy:
        return 0.0
    return float(energy.get("kwh", 0.0)) * JOULES_PER_KWH / max(answers, 1)


def price_per_gpu_hour(spec: Any, energy_settings: Any) -> float:
    """The model's own price, else the energy section's."""
    own = getattr(spec, "price_per_gpu_hour", None)
    return float(own if own is not None else energy_settings.price_per_gpu_hour)


def token_priced(spec: Any) -> bool:
    return getattr(spec, "usd_per_mtok_in", None) is not None or getattr(spec, "usd_per_mtok_out", None) is not None


def answer_cost_usd(record: Mapping[str, Any], spec: Any, energy_settings: Any, gpus: int) -> float:
    """What one answer cost: its tokens at the model's token prices, or its share of the generation time in
    GPU-hours (`energy.gpu_count` overrides the measured GPU count)."""
    if token_priced(spec):
        return cost_usd_tokens(int(record.get("prompt_tokens", 0)), int(record.get("new_tokens", 0)),
                               spec.usd_per_mtok_in or 0.0, spec.usd_per_mtok_out or 0.0)
    return cost_usd(float(record.get("seconds", 0.0)), _gpus(spec, energy_settings, gpus),
                    price_per_gpu_hour(spec, energy_settings))


def _gpus(spec: Any, energy_settings: Any, measured: int) -> int:
    """GPUs billed: an endpoint's configured serving GPUs; else `energy.gpu_count`, else those measured."""
    endpoint = getattr(spec, "endpoint", None)
    if endpoint is not None:
        return endpoint.gpus or 0
    return energy_settings.gpu_count or measured


def run_cost_usd(seconds: float, records: Iterable[Mapping[str, Any]], spec: Any, energy_settings: Any,
                 gpus: int) -> float:
    """What a run cost: its answers' tokens for a token-priced model, else all its seconds (load included)
    in GPU-hours."""
    if token_priced(spec):
        return sum(answer_cost_usd(r, spec, energy_settings, gpus) for r in records)
    return cost_usd(seconds, _gpus(spec, energy_settings, gpus), price_per_gpu_hour(spec, energy_settings))
