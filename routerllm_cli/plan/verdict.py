"""The verdict of a placement: why it is no-go, the concrete fixes that would make it go, and the notes that say
what the plan reserved and why."""

from __future__ import annotations

import math
from typing import Any

from routerllm_cli.catalog import CATALOG
from routerllm_cli.config import NF4_BYTES_PER_PARAM, ModelSpec
from routerllm_cli.hardware import HardwareReport
from routerllm_cli.units import format_bytes
from routerllm_cli.plan.placement import device_of
from routerllm_cli.plan.types import CUDA_CONTEXT_BYTES, DTYPE_BYTES, Device, DeviceAllocation


def dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def reasons_for(planner: Any, spec: ModelSpec, hw: HardwareReport, device_map, devices, budgets,
             disk_budget) -> tuple[list[str], list[str]]:
    reasons: list[str] = []
    fixes: list[str] = []
    quant = spec.quantization
    if quant != "none" and not hw.gpus:
        reasons.append(f"{quant} quantization runs on bitsandbytes' CUDA kernels and there is no GPU")
        fixes.append("set use_4bit: false and use_8bit: false, or plan for GPUs with --assume-gpus 2x80GB")
    disk = devices.get("disk")
    if disk is not None and disk.weight_bytes:
        layers = f" (layers {disk.layer_text})" if disk.layers else ""
        if spec.offload_folder is None:
            reasons.append(f"{format_bytes(disk.weight_bytes)} of weights{layers} fit neither the GPUs nor the CPU "
                           "budget and would go to disk, but no offload_folder is set")
        else:
            free = disk.weight_bytes + disk.free_after_bytes
            limit = min(free, disk_budget) if disk_budget is not None else free
            if disk.weight_bytes > limit:
                reasons.append(f"{format_bytes(disk.weight_bytes)} must go to disk, but {spec.offload_folder} has "
                               f"{format_bytes(limit)} {'allowed' if disk_budget is not None and disk_budget < free else 'free'}")
                fixes.append(f"free {format_bytes(disk.weight_bytes - limit)} there, or point offload_folder at a larger disk")
    if isinstance(spec.device_map, dict):
        for d, a in devices.items():
            key: Device = int(d) if d.isdigit() else d
            if d.isdigit() and key not in budgets:
                reasons.append(f"device_map places modules on GPU {d}, which is not there")
            elif key in budgets and a.weight_bytes > budgets[key]:
                reasons.append(f"device_map puts {format_bytes(a.weight_bytes)} on {d}, over its "
                               f"{format_bytes(budgets[key])} budget after reserves")
        missing = [n for n, _ in planner.model.named_parameters() if device_of(n, device_map) is None]
        if missing:
            reasons.append(f"device_map does not place {len(missing)} weights (e.g. {missing[0]})")
            fixes.append('use device_map: auto, or add the missing modules (e.g. "": cpu)')
    return reasons, fixes


def gb_up(n: float, step: int = 10) -> int:
    return int(math.ceil(n / 1e9 / step) * step)


def fixes(planner: Any, spec: ModelSpec, hw: HardwareReport, devices: dict[str, DeviceAllocation],
           caps: dict[Device, int], user: dict[Device, int], known: list[str]) -> list[str]:
    """Concrete changes that turn this no-go into a go, best first."""
    fixes: list[str] = []
    disk = devices.get("disk")
    spills = disk is not None and disk.weight_bytes > 0
    engine = spec.offload_engine
    if spills and hw.gpus and spec.quantization == "none":
        for quant, flag in (("8bit", "use_8bit"), ("4bit", "use_4bit")):
            dm, _, _ = planner.place(quant, engine, user, caps)
            on_disk = any(d == "disk" for d in dm.values())
            on_cpu = any(d == "cpu" for d in dm.values())
            if quant == "8bit" and (on_disk or on_cpu):
                continue  # 8-bit is only worth naming when it keeps everything on the GPUs
            if not on_disk:
                where = "all on the GPUs" if not on_cpu else "GPUs + CPU, no disk"
                fixes.append(f"set {flag}: true ({where})")
            else:
                alloc = planner.allocation(dm, quant, {}, planner.reserves(dm, quant, engine), caps)
                need = _cpu_needed(planner, alloc, quant)
                why = "" if planner.packs_offload(quant) else " (offloaded layers load in 16-bit)"
                fixes.append(f"set use_4bit: true and raise cpu to {gb_up(need)}GB{why}")
    if spills:
        cpu = devices["cpu"]
        need = _cpu_needed(planner, devices, spec.quantization)
        if hw.assumed or "cpu" in user or need > cpu.budget_bytes:
            # the what-if carries its value, so other commands can name it as a preflight command (run.fix_for)
            fixes.append(f"raise cpu to {gb_up(need)}GB (max_memory cpu, or a machine with that much free RAM; "
                         f"--assume-cpu {gb_up(need)}GB plans for it)")
        if spec.offload_folder is None:
            fixes.append(f"add offload_folder for disk offload (set offload_folder: ./offload; needs "
                         f"{format_bytes(disk.weight_bytes)} free, and decoding reads it from disk every token)")
    if spills and hw.gpus:
        per_gpu = max(g.total_bytes for g in hw.gpus)
        gpu_weights = planner.sizes(spec.quantization).gpu[""]
        usable = per_gpu - CUDA_CONTEXT_BYTES - planner.activation_bytes(spec.quantization)
        kv_all = planner.shape.kv_layer_token * planner.batch * planner.seq * len(planner.shape.layers)
        n = math.ceil((gpu_weights + kv_all) / max(usable * 0.95, 1))
        if n > len(hw.gpus):
            fixes.append(f"use {n} GPUs of {format_bytes(per_gpu)} (check with --assume-gpus {n}x{gb_up(per_gpu, 1)}GB)")
    smaller = _smaller_model(planner, spec, hw, caps)
    if smaller and (spills or not hw.gpus):
        fixes.append(f"use {smaller}")
    return [f for f in fixes if f not in known]


def _cpu_needed(planner: Any, devices: dict[str, DeviceAllocation], quantization: str) -> int:
    """Host RAM that would hold everything now on CPU and disk, plus its reserve and the largest-layer room."""
    cpu = devices["cpu"]
    disk = devices.get("disk")
    host = planner.sizes(quantization).host
    largest = max((host[n] for n in planner.shape.layers), default=0)
    return cpu.weight_bytes + (disk.weight_bytes if disk else 0) + cpu.reserve_bytes + largest


def _smaller_model(planner: Any, spec: ModelSpec, hw: HardwareReport, caps: dict[Device, int]) -> str | None:
    """The largest catalog model that fits the GPUs (or the CPU, without GPUs) at this precision."""
    per = {"4bit": NF4_BYTES_PER_PARAM, "8bit": 1.0}.get(spec.quantization, DTYPE_BYTES[planner.dtype])
    if hw.gpus:
        room = sum(c - CUDA_CONTEXT_BYTES for d, c in caps.items() if isinstance(d, int))
    else:
        room = caps["cpu"] - planner.cpu_headroom()
    room *= 0.93  # KV cache and activations of a bench-sized batch
    me = planner.ref.entry.name if planner.ref.entry else None
    fits = [e for e in CATALOG.values() if e.name != me and not e.package and e.params * per <= room
            and e.params < planner.sizes("none").params]
    return max(fits, key=lambda e: e.params).name if fits else None


def reserve_notes(planner: Any, quant: str, engine: str, devices: dict[str, DeviceAllocation]) -> list[str]:
    s = planner.shape
    kv_token = s.kv_layer_token * len(s.layers)
    notes = [
        f"KV cache: {len(s.layers)} layers x {format_bytes(s.kv_layer_token)} per token (K and V, {planner.dtype}) = "
        f"{format_bytes(kv_token)}/token; batch {planner.batch} x {planner.seq} tokens = "
        f"{format_bytes(kv_token * planner.batch * planner.seq)}, reserved on the device that runs each layer",
        f"reserved per GPU in use: CUDA context {format_bytes(CUDA_CONTEXT_BYTES)}, prefill activations "
        f"{format_bytes(planner.activation_bytes(quant))} (one layer's prefill peak at batch {planner.batch} x "
        f"{planner.seq} tokens{', incl. one dequantized weight' if quant != 'none' else ''}); "
        f"CPU keeps {format_bytes(planner.cpu_headroom())} for the process and the OS",
    ]
    staging = {d: a.reserve_detail["offload_staging"] for d, a in devices.items()
               if a.reserve_detail.get("offload_staging")}
    if staging:
        where = ", ".join(f"{format_bytes(b)} on GPU {d}" for d, b in staging.items())
        notes.append(f"offload staging {where}: "
                     + ("routerllm's engine runs offloaded layers on the GPU before them and double-buffers the "
                        "largest one there" if engine == "routerllm" else
                        "accelerate runs offloaded layers on the first GPU, one at a time")
                     + "; their KV cache lives there too (reserved instead of accelerate's fixed largest-layer room, "
                     "which a plan without offload does not need)")
    disk_staging = devices["cpu"].reserve_detail.get("disk_staging") if "cpu" in devices else None
    if disk_staging:
        notes.append(f"disk staging {format_bytes(disk_staging)} of host RAM: disk layers are read ahead two at a time")
    if quant == "4bit":
        notes.append(f"4-bit sizes: {NF4_BYTES_PER_PARAM} bytes/param for quantized Linear weights (NF4 + fp32 absmax "
                     "per 64); double quantization stores ~0.516, so GPU totals are ~8% conservative. Embeddings, "
                     "norms and lm_head stay 16-bit")
    offloaded = sum(a.weight_bytes for d, a in devices.items() if d in ("cpu", "disk"))
    if quant != "none" and offloaded and any(d.isdigit() for d in devices):
        packed = sum(planner.sizes(quant).gpu[k] for d, a in devices.items() if d in ("cpu", "disk") for k in a.modules)
        if planner.packs_offload(quant):
            sixteen = sum(planner.sizes("none").host[k] for d, a in devices.items() if d in ("cpu", "disk")
                          for k in a.modules)
            notes.append(f"offloaded layers are quantized to NF4 while loading, one weight at a time, and never held "
                         f"in 16-bit: {format_bytes(offloaded)} on CPU/disk instead of {format_bytes(sixteen)}; "
                         "routerllm's engine moves that per token")
        else:
            notes.append(f"offloaded layers load unquantized ({format_bytes(offloaded)} in 16-bit on CPU/disk, as "
                         "transformers keeps them); " + (f"routerllm's engine then keeps them {quant} "
                         f"({format_bytes(packed)}) and moves that per token" if engine == "routerllm" else
                         "accelerate moves them in 16-bit every token"))
    return notes
