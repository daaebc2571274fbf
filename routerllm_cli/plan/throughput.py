"""Planning for the whole bench, not for one token: the batch and the placement are chosen together.

With offload a decode step costs about the same for 1 or 64 sequences (the step is the host-to-GPU copy), so
a plan that leaves KV-cache room for one sequence wastes nearly all of it. Each candidate batch is placed with
its own KV-cache reserve (a larger batch may push a few layers off the GPUs, making the step slower), its bench
wall time is estimated (load + ceil(n / batch) rounds of prefill and decode, every row to max_new_tokens), and
the fastest feasible candidate wins. FlexGen and DeepSpeed ZeRO-Inference get their offload throughput the
same way: batch size and placement chosen together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from routerllm_cli.estimates import Bandwidths, StepBytes, estimate
from routerllm_cli.units import format_bytes, format_duration
from routerllm_cli.plan.types import CPU_BATCH, MAX_AUTO_BATCH, Device, DeviceAllocation


@dataclass(frozen=True)
class Work:
    """What the run will do: how many sequences, how long, and what a load reads."""

    num_examples: int
    max_new_tokens: int
    seq_len: int
    checkpoint_bytes: int

    @property
    def prompt_tokens(self) -> int:
        return max(self.seq_len - self.max_new_tokens, 1)


@dataclass
class Evaluation:
    """One candidate batch: its placement, verdict and estimates."""

    planner: Any
    device_map: dict[str, Device]
    budgets: dict[Device, int]
    devices: dict[str, DeviceAllocation]
    reasons: list[str]
    fixes: list[str]
    estimates: dict[str, float]
    estimate_note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.planner.batch

    @property
    def feasible(self) -> bool:
        return not self.reasons

    @property
    def uses_gpu(self) -> bool:
        return any(isinstance(d, int) for d in self.device_map.values())

    def layers_on(self, kind: str) -> int:
        """Decoder layers on the GPUs ("gpu"), the CPU or disk."""
        count = 0
        for d, a in self.devices.items():
            if a.layers is None or (kind == "gpu") != d.isdigit() or (kind != "gpu" and d != kind):
                continue
            count += a.layers[1] - a.layers[0] + 1
        return count


def candidates(num_examples: int, cap: int) -> list[int]:
    """Batches worth weighing: powers of two, and the batches that split the examples into 1..8 even rounds
    (164 problems: 164, 82, 55, 41, ...), since the upper bound pays for every round in full."""
    top = max(1, min(cap, num_examples))
    found = {1, top} | {2 ** i for i in range(0, 12) if 2 ** i <= top}
    found |= {math.ceil(num_examples / k) for k in range(1, 9) if math.ceil(num_examples / k) <= top}
    return sorted(found)


def evaluate(planner: Any, user: dict[Device, int], caps: dict[Device, int], disk_budget: int | None,
             bw: Bandwidths, work: Work) -> Evaluation:
    """Place the model for `planner.batch` sequences and judge it."""
    from routerllm_cli.plan import verdict

    spec = planner.spec
    quant, engine = spec.quantization, spec.offload_engine
    if isinstance(spec.device_map, dict):
        device_map = dict(spec.device_map)
        reserves = planner.reserves(device_map, quant, engine)
        budgets = {d: max(0, min(user.get(d, caps[d]), caps[d] - sum(reserves.get(d, {}).values()))) for d in caps}
    else:
        device_map, budgets, reserves = planner.place(quant, engine, user, caps)
    devices = planner.allocation(device_map, quant, budgets, reserves, caps)
    reasons, fixes = verdict.reasons_for(planner, spec, planner.hw, device_map, devices, budgets, disk_budget)
    est, note = estimates_for(planner, devices, bw, work, device_map)
    return Evaluation(planner, device_map, budgets, devices, reasons, fixes, est, note)


def choose(planner: Any, user: dict[Device, int], caps: dict[Device, int], disk_budget: int | None,
           bw: Bandwidths, work: Work) -> tuple[Evaluation, list[Evaluation]]:
    """The feasible batch with the smallest estimated bench wall time (load included); batch 1's plan when none
    is feasible, so its reasons and fixes speak of the smallest demand. Without GPUs the CPU computes and its
    step grows with the batch: a small fixed batch keeps each answer's latency low."""
    if not planner.hw.gpus:
        only = evaluate(planner.at_batch(min(CPU_BATCH, max(work.num_examples, 1))), user, caps, disk_budget, bw, work)
        return only, [only]
    considered: list[Evaluation] = []
    for b in candidates(work.num_examples, MAX_AUTO_BATCH):
        considered.append(evaluate(planner.at_batch(b), user, caps, disk_budget, bw, work))
        last = considered[-1]
        if len(considered) > 1 and (not last.feasible or (considered[0].uses_gpu and not last.uses_gpu)):
            break  # a larger batch only needs more memory: once one does not fit, none after it will
    # A batch whose KV cache leaves the GPUs no room for weights would run on the CPU: not a trade worth making
    on_gpu = [e for e in considered if e.feasible and (e.uses_gpu or not considered[0].uses_gpu)]
    feasible = on_gpu
    if not feasible:
        return considered[0], considered
    best = min(feasible, key=lambda e: (e.estimates["total_seconds"], e.batch))
    return best, considered


def estimates_for(planner: Any, devices: dict[str, DeviceAllocation], bw: Bandwidths, work: Work,
                  device_map: dict[str, Device]) -> tuple[dict[str, Any], str]:
    """Time estimates of a placement, and the note that says what they assume."""
    spec = planner.spec
    quant, engine = spec.quantization, spec.offload_engine
    sizes = planner.sizes(quant)
    gpu_rates = {str(g.index): bw.gpu_rate(g.name, g.total_bytes) for g in planner.hw.gpus}
    gpu = {d: (a.weight_bytes, gpu_rates[d][0]) for d, a in devices.items() if d in gpu_rates}
    # a map with no GPU entry runs on the CPU even on a machine with GPUs
    has_gpu = bool(gpu_rates) and any(a.weight_bytes for d, a in devices.items() if d in gpu_rates)
    cpu = devices.get("cpu")
    disk = devices.get("disk")
    bus_sizes = sizes.gpu if (quant != "none" and engine == "routerllm") else sizes.host
    cpu_bus = sum(bus_sizes[k] for k in cpu.modules) if (cpu and has_gpu) else 0
    prompt, new = work.prompt_tokens, work.max_new_tokens
    kv_read = planner.shape.kv_layer_token * len(planner.shape.layers) * planner.batch * (prompt + new // 2)
    sb = StepBytes(gpu=gpu, cpu_bus=cpu_bus, disk=disk.weight_bytes if disk else 0,
                   cpu_compute=0 if has_gpu else (cpu.weight_bytes if cpu else 0), kv_read=kv_read,
                   layers=len(planner.shape.layers), flops=2.0 * sizes.params * planner.batch)
    packed_disk = disk.weight_bytes if (disk and planner.packs_offload(quant)) else 0
    links = planner.links(device_map)
    kw = dict(engine=engine, read_bytes=work.checkpoint_bytes, disk_write_bytes=packed_disk or sb.disk,
              params=sizes.params, batch_size=planner.batch, prompt_tokens=prompt, max_new_tokens=new,
              num_examples=work.num_examples, on_gpu=has_gpu)
    est = estimate(sb, bw, links=links, **kw)
    est["links"] = links
    gpus_used = len({d for d in device_map.values() if isinstance(d, int)})
    if cpu_bus and engine == "routerllm" and gpus_used > 1:
        # the same placement over the other link setting: every GPU's host link, or only the executing one's
        other = gpus_used if links == 1 else 1
        alt = estimate(sb, bw, links=other, **kw)
        est["other_links"] = {"links": other, "seconds_per_token": alt["seconds_per_token"],
                              "bench_seconds": alt["bench_seconds"], "total_seconds": alt["total_seconds"]}
    rates = sorted({f"{format_bytes(r)}/s ({why})" for r, why in gpu_rates.values()})
    h2d = bw.h2d_rate(engine, links)
    note = (f"estimates: load reads {format_bytes(work.checkpoint_bytes)} at {format_bytes(bw.disk_bytes_per_s)}/s"
            + (f"; GPU memory {', '.join(rates)}" if rates else "; no GPU: the CPU streams weights at "
               f"{format_bytes(bw.cpu_bytes_per_s)}/s")
            + (f"; CPU->GPU {format_bytes(h2d)}/s ({engine} offload, {links} host link{'s' if links > 1 else ''})"
               if cpu_bus else "")
            + f"; {bw.per_layer_overhead_s * 1e3:.1f} ms overhead per layer per step; bench = {work.num_examples} "
            f"examples x {new} new tokens (upper bound), batch {planner.batch}, prompts of up to {prompt} tokens")
    return est, note


def _summary(e: Evaluation) -> dict:
    return {"batch": e.batch, "verdict": "go" if e.feasible else "no-go", "gpu_layers": e.layers_on("gpu"),
            "cpu_layers": e.layers_on("cpu"), "disk_layers": e.layers_on("disk"),
            "layers": {d: a.layer_text for d, a in e.devices.items() if a.layers is not None},
            "seconds_per_token": e.estimates["seconds_per_token"],
            "tokens_per_second": e.estimates["tokens_per_second"],
            "bench_seconds": e.estimates["bench_seconds"], "total_seconds": e.estimates["total_seconds"],
            "kv_bytes": sum(a.kv_bytes for a in e.devices.values())}


def alternatives(chosen: Evaluation, considered: list[Evaluation]) -> list[dict]:
    """The chosen plan first, then batch 1's, then the other batches weighed (for the side-by-side table)."""
    first = next((e for e in considered if e.batch == 1), None)
    order = [chosen] + ([first] if first is not None and first is not chosen else [])
    order += [e for e in considered if e not in order]
    return [{**_summary(e), "chosen": e is chosen} for e in order]


def trade_note(chosen: Evaluation, considered: list[Evaluation]) -> str | None:
    """What the chosen batch traded against batch 1, in one line."""
    one = next((e for e in considered if e.batch == 1), None)
    if one is None or one is chosen or len(considered) < 2:
        return None
    moved = chosen.layers_on("cpu") + chosen.layers_on("disk") - one.layers_on("cpu") - one.layers_on("disk")
    where = (f"{moved} more layers off the GPUs" if moved > 0 else f"{-moved} fewer layers off the GPUs" if moved < 0
             else "the same placement")
    before = format_duration(one.estimates["total_seconds"]) + ("" if one.feasible else " and no-go")
    return (f"batch {chosen.batch} chosen for the bench's wall time: {where}, step "
            f"{chosen.estimates['seconds_per_token']:.3g} s instead of {one.estimates['seconds_per_token']:.3g} s, "
            f"bench with load {format_duration(chosen.estimates['total_seconds'])} instead of {before} at batch 1 "
            "(pin it with --batch-size)")
