"""Time estimates from a placement: load time, seconds per decode step, HumanEval bench time.

Decoding is memory-bound: every step reads every weight once, wherever it lives. So a step costs
GPU-resident bytes / GPU memory bandwidth + CPU-offloaded bytes / host-to-device bandwidth + disk-offloaded bytes /
disk throughput, plus a per-layer launch overhead that dominates small models. The defaults are field numbers
measured for routerllm (see FIELD_NOTES): H100 device copies at 3.02 TB/s, pinned host-to-device at 54.8 GB/s
(what routerllm's offload engine reaches), stock accelerate offload at an effective 7.7 GB/s (15.9 GB of CPU layers in
2.07 s per step), NVMe at ~2 GB/s, and plain `generate` at 63.6 ms per step for a 32-layer 8B model whose weights
take 5.3 ms to read: ~1.8 ms of overhead per decoder layer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# Measured device-to-device copy rate / spec sheet, 3.02 / 3.35 TB/s on the H100 SXM, applied to other cards.
_MEASURED_OVER_SPEC = 0.9
_GPU_SPEC_BANDWIDTH = [  # (substring of the NVML name, spec bytes/s), most specific first
    ("GH200", 4.0e12), ("H200", 4.8e12), ("H100 PCIE", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12),
    ("H800", 3.35e12), ("B200", 8.0e12), ("A100-SXM4-80GB", 2.04e12), ("A100 80GB PCIE", 1.94e12),
    ("A100", 1.56e12), ("L40S", 0.864e12), ("L40", 0.864e12), ("A6000", 0.768e12), ("RTX 4090", 1.008e12),
    ("A10G", 0.6e12), ("A10", 0.6e12), ("L4", 0.3e12), ("T4", 0.32e12), ("V100", 0.9e12),
]
H100_BYTES_PER_S = 3.0e12


@dataclass
class Bandwidths:
    """Rates the estimates use; every one can be overridden (e.g. `preflight --disk-gbps 6`)."""

    gpu_bytes_per_s: float | None = None  # None: from each GPU's name (or size, for assumed GPUs)
    h2d_pinned_bytes_per_s: float = 54.8e9  # routerllm offload engine: pinned, double-buffered copies
    h2d_stock_bytes_per_s: float = 7.7e9  # stock accelerate hooks: synchronous pageable copies, effective
    disk_bytes_per_s: float = 2.0e9  # NVMe sequential read, conservative
    cpu_bytes_per_s: float = 20e9  # when the CPU itself computes (no GPU): DRAM streaming rate
    gpu_flops: float = 4.0e14  # bf16 dense, ~40% of an H100's peak: prefill is compute-bound
    cpu_flops: float = 2.0e11
    per_layer_overhead_s: float = 1.8e-3  # kernel launches and Python per decoder layer per step
    # Each relay GPU adds this fraction of one link's pinned rate (2x H200, NVLink: both links feeding one GPU
    # 95.8 GB/s against 55.0 for one), unless the aggregate rate is measured or given (`--assume-link-gbps`)
    relay_efficiency: float = 0.74
    h2d_links_bytes_per_s: float | None = None

    def h2d_rate(self, engine: str, links: int = 1) -> float:
        """Host-to-GPU bytes/s of offloaded weights over `links` host links (routerllm's engine only)."""
        if engine != "routerllm":
            return self.h2d_stock_bytes_per_s
        if links > 1 and self.h2d_links_bytes_per_s:
            return self.h2d_links_bytes_per_s
        return self.h2d_pinned_bytes_per_s * (1 + self.relay_efficiency * (max(links, 1) - 1))

    def gpu_rate(self, name: str, total_bytes: int) -> tuple[float, str]:
        """Bytes/s for one GPU, and where the number came from."""
        if self.gpu_bytes_per_s:
            return self.gpu_bytes_per_s, "configured"
        upper = name.upper()
        if upper.startswith("ASSUMED"):  # a what-if card: guess its class from its size
            if total_bytes >= 120e9:
                return 4.8e12 * _MEASURED_OVER_SPEC, "assumed H200 class (>=120 GB)"
            if total_bytes >= 70e9:
                return H100_BYTES_PER_S, "assumed H100 class (80 GB)"
            if total_bytes >= 40e9:
                return 1.56e12 * _MEASURED_OVER_SPEC, "assumed A100 40GB class"
            return 1.0e12, "assumed card: 1 TB/s"
        for key, spec in _GPU_SPEC_BANDWIDTH:
            if key in upper:
                return spec * _MEASURED_OVER_SPEC, f"{key} class"
        return 1.0e12, "unknown card: 1 TB/s assumed"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepBytes:
    """What one decode step reads and computes, by where it comes from."""

    gpu: dict[str, tuple[int, float]]  # device -> (bytes resident there, its bandwidth)
    cpu_bus: int  # offloaded bytes crossing host->device every step
    disk: int  # disk-offloaded bytes read every step
    cpu_compute: int  # bytes the CPU computes with itself (no GPU)
    kv_read: int  # KV cache bytes read per step at the planned batch and an average context
    layers: int
    flops: float = 0.0  # multiply-adds x 2 of one step: 2 x params x batch


def seconds_per_step(sb: StepBytes, bw: Bandwidths, *, engine: str, on_gpu: bool = True,
                     links: int = 1) -> tuple[float, float]:
    """(estimate, bandwidth floor) for one decode step (one new token for each sequence in the batch).

    Two paths take time: the transfer of offloaded weights (host->device copies, disk reads) and the compute
    path (reading GPU-resident weights and the KV cache, the matrix work of the batch, per-layer launch
    overhead). routerllm's engine prefetches offloaded units on a copy stream, so the two overlap and the slower
    one sets the step; accelerate's hooks copy synchronously, so they add up."""
    gpu = sum(b / rate for b, rate in sb.gpu.values())
    kv_rate = min((rate for _, rate in sb.gpu.values()), default=bw.cpu_bytes_per_s)
    h2d = bw.h2d_rate(engine, links)
    transfer = sb.cpu_bus / h2d + sb.disk / bw.disk_bytes_per_s
    memory = gpu + sb.kv_read / kv_rate + sb.cpu_compute / bw.cpu_bytes_per_s
    compute = memory + sb.flops / (bw.gpu_flops if on_gpu else bw.cpu_flops) + sb.layers * bw.per_layer_overhead_s
    if engine == "routerllm":
        return max(transfer, compute), max(transfer, memory)
    return transfer + compute, transfer + memory


def estimate(sb: StepBytes, bw: Bandwidths, *, engine: str, read_bytes: int, disk_write_bytes: int, params: float,
             batch_size: int, prompt_tokens: int, max_new_tokens: int, num_examples: int,
             on_gpu: bool, links: int = 1) -> dict[str, float]:
    """load_seconds, seconds_per_token (one decode step), bench_seconds (generation for all examples, upper
    bound: every sample runs to max_new_tokens), total_seconds (load + bench).

    The bench runs `num_examples` sequences `batch_size` at a time (continuous batching refills finished rows;
    in the upper bound every row runs to `max_new_tokens`, so that is ceil(n / batch) rounds). A round's prefill
    costs at least one pass over the weights and at most its compute."""
    load = read_bytes / bw.disk_bytes_per_s + disk_write_bytes / bw.disk_bytes_per_s
    step, floor = seconds_per_step(sb, bw, engine=engine, on_gpu=on_gpu, links=links)
    flops = bw.gpu_flops if on_gpu else bw.cpu_flops
    prefill = max(step, 2.0 * params * batch_size * prompt_tokens / flops)
    batches = math.ceil(num_examples / max(batch_size, 1))
    bench = batches * (prefill + max_new_tokens * step)
    return {
        "load_seconds": round(load, 2),
        "seconds_per_token": round(step, 4),
        "seconds_per_token_floor": round(floor, 4),
        "tokens_per_second": round(batch_size / step, 3) if step > 0 else 0.0,
        "prefill_seconds": round(prefill, 3),
        "bench_seconds": round(bench, 1),
        "total_seconds": round(load + bench, 1),
    }
