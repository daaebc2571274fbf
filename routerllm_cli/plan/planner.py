"""plan_model: budgets, reserves, placement, verdict, fixes and estimates for one model on one machine."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from routerllm_cli.catalog import CATALOG, ModelRef, resolve_spec
from routerllm_cli.config import NF4_BYTES_PER_PARAM, ModelSpec, check_fits
from routerllm_cli.errors import ConfigError
from routerllm_cli.estimates import Bandwidths, StepBytes, estimate
from routerllm_cli.hardware import HardwareReport
from routerllm_cli.units import format_bytes
from routerllm_cli.plan.availability import checkpoint_bytes
from routerllm_cli.plan.meta import ModelSizes, build_meta_model, compute_dtype, model_config, model_sizes
from routerllm_cli.plan.placement import (_balanced, _has_parameters, device_of, key_of, place_modules,
                                          weightless_to_first_gpu)
from routerllm_cli.plan.types import (CPU_HEADROOM_FRACTION, CPU_HEADROOM_MIN, CUDA_CONTEXT_BYTES, DTYPE_BYTES, Device,
                                      DeviceAllocation, DevicePlan)


# --- the plan ---------------------------------------------------------------------------------------------------


@dataclass
class _Shape:
    layers: list[str]  # decoder-layer module names, in order
    kv_layer_token: int  # KV bytes per layer per token
    hidden: int
    intermediate: int
    vocab: int
    output_module: str | None


def _shape(model, no_split: list[str], dtype_bytes: int) -> _Shape:
    cfg = model.config
    layers = [n for n, m in model.named_modules() if m.__class__.__name__ in no_split]
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")
    kv = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_kv_heads", None)
    if getattr(cfg, "model_type", "") == "falcon" and not getattr(cfg, "new_decoder_architecture", False):
        kv = 1 if getattr(cfg, "multi_query", True) else heads
    kv = kv or heads
    hidden = cfg.hidden_size
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    inter = (getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_hidden_size", None) or 4 * hidden)
    out = model.get_output_embeddings()
    out_name = next((n for n, m in model.named_modules() if m is out), None) if out is not None else None
    return _Shape(layers, 2 * kv * head_dim * dtype_bytes, hidden, inter, cfg.vocab_size, out_name)


def _resolve(spec: ModelSpec) -> ModelRef:
    """resolve_spec, except that an embedded catalog model whose package is missing still plans from its shipped
    arch (the plan then says no-go and names the package to install)."""
    try:
        return resolve_spec(spec.name, spec.model_id, spec.gguf_file)
    except ConfigError as exc:
        entry = CATALOG.get(spec.name.lower().replace("-", "_"))
        if spec.model_id or entry is None or not entry.package:
            raise
        return ModelRef("catalog", entry.model_id, entry.name, entry=entry, extra={"unavailable": exc})


class _Planner:
    """One model on one machine: builds the meta model once, then places it under any quantization/budgets."""

    def __init__(self, spec: ModelSpec, hardware: HardwareReport, *, batch_size: int, seq_len: int,
                 model: Any = None, ref: ModelRef | None = None, token: str | None = None):
        self.spec, self.hw = spec, hardware
        self.ref = ref or _resolve(spec)
        self.dtype = compute_dtype(spec, hardware, self.ref)
        self.dtype_bytes = DTYPE_BYTES[self.dtype]
        self.batch, self.seq = max(batch_size, 1), max(seq_len, 1)
        self.model = model if model is not None else build_meta_model(
            self.ref, spec, dtype=self.dtype, config=model_config(self.ref, spec, token))
        found = getattr(self.model, "_no_split_modules", None) or []
        self.no_split = sorted(found) or ([self.ref.entry.no_split] if self.ref.entry else [])
        self.shape = _shape(self.model, self.no_split, self.dtype_bytes)
        self._order = {name: i for i, (name, _) in enumerate(self.model.named_modules())}
        self._sizes: dict[str, ModelSizes] = {}

    def sizes(self, quantization: str) -> ModelSizes:
        if quantization not in self._sizes:
            self._sizes[quantization] = model_sizes(self.model, quantization)
        return self._sizes[quantization]

    # capacity before reserves: what the device has, or what the operator allows
    def hardware_caps(self) -> dict[Device, int]:
        caps: dict[Device, int] = {}
        for g in self.hw.gpus:
            caps[g.index] = g.total_bytes if self.hw.assumed else min(g.total_bytes, g.free_bytes)
        caps["cpu"] = self.hw.cpu_available_bytes
        return caps

    def cpu_headroom(self) -> int:
        return max(CPU_HEADROOM_MIN, int(CPU_HEADROOM_FRACTION * self.hw.cpu_total_bytes))

    def activation_bytes(self, quantization: str) -> int:
        s = self.shape
        # One decoder layer's prefill peak per token, besides the residual stream (2 x hidden): the MLP holds
        # act(gate), up and their product (3 x intermediate); attention holds q, rotary temporaries, K/V repeated
        # for GQA and its output (~7 x hidden). Earlier layers' temporaries are freed by then.
        per_token = (max(3 * s.intermediate, 7 * s.hidden) + 2 * s.hidden) * self.dtype_bytes
        act = self.batch * self.seq * per_token
        if quantization != "none":  # bitsandbytes dequantizes a whole weight to 16-bit for prefill matmuls
            act += self.sizes(quantization).largest_linear * self.dtype_bytes
        return act

    def logits_bytes(self) -> int:
        return 2 * self.batch * self.shape.vocab * 4  # last-position logits in fp32, plus the softmax copy

    def _largest(self, keys: list[str], sizes: dict[str, int]) -> int:
        """The biggest unit among `keys`; a container (all layers past the GPUs) is staged one layer at a time."""
        largest = 0
        for k in keys:
            inner = [sizes[n] for n in self.shape.layers if k == "" or n.startswith(k + ".")]
            largest = max(largest, max(inner) if inner else sizes[k])
        return largest

    def run_devices(self, device_map: dict[str, Device], engine: str) -> dict[str, Device]:
        """Where each map entry computes (and keeps its KV cache). GPU entries: their GPU. Offloaded entries:
        accelerate's hooks run them all on the map's first GPU; routerllm's engine runs each on the GPU of the
        last entry with weights before it, where the hidden states are (the first GPU for leading entries).
        Without a GPU in the map: the CPU."""
        host = self.sizes("none").host
        keys = sorted(device_map, key=lambda k: self._order.get(k, -1))
        first = next((d for d in device_map.values() if isinstance(d, int)), "cpu")
        previous: Device = first
        out: dict[str, Device] = {}
        for k in keys:
            d = device_map[k]
            if isinstance(d, int):
                out[k] = d
                # only a module with parameters moves the hidden states (the engine's rule too); a rotary
                # table on the first GPU holds buffers and says nothing about where the layers run
                previous = d if host[k] > 0 and _has_parameters(self.model, k) else previous
            else:
                out[k] = first if engine == "accelerate" else previous
        return out

    def reserves(self, device_map: dict[str, Device], quantization: str, engine: str) -> dict[Device, dict[str, int]]:
        sizes = self.sizes(quantization)
        gpus = [g.index for g in self.hw.gpus]
        runs = self.run_devices(device_map, engine)
        kv_layer = self.shape.kv_layer_token * self.batch * self.seq
        out: dict[Device, dict[str, int]] = {d: {} for d in gpus + ["cpu"]}
        run_on = [runs.get(key_of(n, device_map)) for n in self.shape.layers]  # type: ignore[arg-type]
        touched = set(runs.values())
        for d in gpus:
            n_layers = sum(1 for r in run_on if r == d)
            if d not in touched:
                continue  # a GPU nothing runs on costs nothing, not even a CUDA context
            out[d]["cuda_context"] = CUDA_CONTEXT_BYTES
            if n_layers:
                out[d]["kv_cache"] = n_layers * kv_layer
                out[d]["activations"] = self.activation_bytes(quantization)
        if self.shape.output_module:
            lm_dev = runs.get(key_of(self.shape.output_module, device_map))  # type: ignore[arg-type]
            if isinstance(lm_dev, int):
                out.setdefault(lm_dev, {})["logits"] = self.logits_bytes()
        bus = sizes.gpu if (quantization != "none" and engine == "routerllm") else sizes.host
        # routerllm's engine double-buffers the largest offloaded unit per execution GPU; accelerate's hooks
        # bring one offloaded module at a time to the first GPU
        buffers = 2 if engine == "routerllm" else 1
        staged: dict[Device, list[str]] = defaultdict(list)
        for k, d in device_map.items():
            if d in ("cpu", "disk") and isinstance(runs[k], int):
                staged[runs[k]].append(k)
        for d, keys in staged.items():
            out.setdefault(d, {})["offload_staging"] = buffers * self._largest(keys, bus)
        on_disk = [k for k, d in device_map.items() if d == "disk"]
        if on_disk:
            # disk layers pass through host RAM on their way to the compute device (read-ahead: two at a time)
            out["cpu"]["disk_staging"] = 2 * self._largest(on_disk, sizes.host)
        out["cpu"]["headroom"] = self.cpu_headroom()
        if not gpus:  # the CPU computes: its RAM also holds the KV cache and activations
            out["cpu"]["kv_cache"] = len(self.shape.layers) * kv_layer
            out["cpu"]["activations"] = self.activation_bytes("none") + self.logits_bytes()
        return out

    def place(self, quantization: str, engine: str, user: dict[Device, int],
              caps: dict[Device, int]) -> tuple[dict[str, Device], dict[Device, int], dict]:
        """Iterate placement and reserves until the budgets stop shrinking (KV cache depends on the layers
        a device gets, and the budgets on the KV cache). Budgets only ever go down, so this ends."""
        sizes = self.sizes(quantization)
        gpus = [d for d in caps if isinstance(d, int)]

        def sizes_for(d: Device) -> dict[str, int]:
            return sizes.gpu if isinstance(d, int) else sizes.host

        base = {d: CUDA_CONTEXT_BYTES + self.activation_bytes(quantization) for d in gpus}
        base["cpu"] = self.cpu_headroom()
        budgets: dict[Device, int] = {}
        named_gpus = any(isinstance(d, int) for d in user)
        for d, cap in caps.items():
            if isinstance(d, int) and named_gpus and d not in user:
                budgets[d] = 0  # as in accelerate: once max_memory names GPUs, the others are not used
                continue
            limit = cap - base[d]
            budgets[d] = max(0, min(user[d], limit) if d in user else limit)
        balanced = self.spec.device_map in ("auto", "balanced")
        buffer = int(1.25 * max((sizes.gpu[n] for n in self.shape.layers), default=0))
        gpu_total = sizes.gpu[""]
        for _ in range(12):
            hand = _balanced(budgets, gpu_total, buffer) if balanced else dict(budgets)
            device_map = weightless_to_first_gpu(
                self.model, place_modules(self.model, hand, self.no_split, sizes_for, largest_layer_room=False))
            res = self.reserves(device_map, quantization, engine)
            new = {d: max(0, min(b, caps[d] - sum(res.get(d, {}).values()))) for d, b in budgets.items()}
            if new == budgets:
                break
            budgets = new
        return device_map, hand, res

    def allocation(self, device_map, quantization, budgets, reserves, caps) -> dict[str, DeviceAllocation]:
        sizes = self.sizes(quantization)
        layer_idx = {n: i for i, n in enumerate(self.shape.layers)}
        by_dev: dict[Device, list[str]] = defaultdict(list)
        for k, d in device_map.items():
            by_dev[d].append(k)
        layers_on: dict[Device, list[int]] = defaultdict(list)
        for n, i in layer_idx.items():
            layers_on[device_of(n, device_map)].append(i)
        order: list[Device] = [g.index for g in self.hw.gpus] + ["cpu", "disk"]
        order += [d for d in by_dev if d not in order]
        out = {}
        for d in order:
            mods = by_dev.get(d, [])
            if d == "disk" and not mods:
                continue
            size = sizes.gpu if isinstance(d, int) else sizes.host
            weights = sum(size[k] for k in mods)
            res = reserves.get(d, {})
            reserve = sum(res.values())
            if d == "disk":
                cap = self.hw.free_disk_at(self.spec.offload_folder) or 0
            else:
                cap = caps.get(d, 0)
            ls = layers_on.get(d)
            out[str(d)] = DeviceAllocation(
                str(d), mods, (min(ls), max(ls)) if ls else None, weights, reserve,
                budgets.get(d, cap), cap - weights - reserve, res.get("kv_cache", 0), dict(res))
        return out


def plan_model(spec: ModelSpec, hardware: HardwareReport, *, batch_size: int = 1, seq_len: int = 2048,
               num_examples: int = 164, max_new_tokens: int = 384, bandwidths: Bandwidths | None = None,
               token: str | None = None, model: Any = None) -> DevicePlan:
    """Plan `spec` on `hardware`. Raises ConfigError for a model that cannot be resolved or a config that
    breaks the 4-bit rule; every other problem is a no-go verdict with reasons and fixes."""
    planner = _Planner(spec, hardware, batch_size=batch_size, seq_len=seq_len, model=model, token=token)
    quant, engine = spec.quantization, spec.offload_engine
    sizes = planner.sizes(quant)
    # The config-level 4-bit rule only makes sense where 4-bit can run: on GPUs.
    notes = list(check_fits(spec, sizes.params)) if hardware.gpus else spec.offload_notes()
    caps = planner.hardware_caps()
    user = dict(spec.max_memory)
    for d in [d for d in user if isinstance(d, int) and d not in caps]:
        notes.append(f"max_memory names GPU {d}, which {'the assumed machine' if hardware.assumed else 'this machine'} "
                     "does not have: ignored")
        user.pop(d)
    disk_budget = user.pop("disk", None)
    unnamed = [d for d in caps if isinstance(d, int) and d not in user]
    if unnamed and any(isinstance(d, int) for d in user):
        notes.append(f"max_memory names GPU {', '.join(str(d) for d in user if isinstance(d, int))} only: "
                     f"GPU {', '.join(map(str, unnamed))} left unused (add it to max_memory to use it)")
    for d, b in user.items():
        if d in caps and b > caps[d]:
            notes.append(f"max_memory[{d}] = {format_bytes(b)} is more than the {format_bytes(caps[d])} "
                         f"{'free on GPU ' + str(d) if isinstance(d, int) else 'of available host RAM'}: capped")

    if isinstance(spec.device_map, dict):
        device_map = dict(spec.device_map)
        reserves = planner.reserves(device_map, quant, engine)
        budgets = {d: max(0, min(user.get(d, caps[d]), caps[d] - sum(reserves.get(d, {}).values()))) for d in caps}
        notes.append("device_map is given explicitly in the config: used as is, only checked")
    else:
        device_map, budgets, reserves = planner.place(quant, engine, user, caps)
    devices = planner.allocation(device_map, quant, budgets, reserves, caps)

    reasons, fixes = _verdict(planner, spec, hardware, device_map, devices, budgets, disk_budget)
    missing = planner.ref.extra.get("unavailable")
    if missing is not None:
        reasons.insert(0, missing.message)
        fixes.insert(0, missing.fix)
    if reasons:
        fixes += _fixes(planner, spec, hardware, devices, caps, user, fixes)
    notes += _reserve_notes(planner, quant, engine, devices)
    weight_bytes = sum(a.weight_bytes for a in devices.values())
    checkpoint = checkpoint_bytes(planner.ref, sizes.params)
    est = _estimates(planner, devices, device_map, quant, engine, bandwidths or Bandwidths(), checkpoint,
                     num_examples=num_examples, max_new_tokens=max_new_tokens, notes=notes)
    return DevicePlan(
        model=planner.ref, model_type=planner.model.config.model_type, dtype=planner.dtype, quantization=quant,
        device_map=dict(device_map), max_memory=budgets, no_split_module_classes=planner.no_split,
        devices=devices, weight_bytes=weight_bytes, num_layers=len(planner.shape.layers),
        kv_bytes_per_token=planner.shape.kv_layer_token * len(planner.shape.layers),
        batch_size=planner.batch, seq_len=planner.seq, verdict="no-go" if reasons else "go", reasons=reasons,
        fixes=_dedupe(fixes), estimates=est, notes=notes, params=sizes.params, offload_engine=engine,
        checkpoint_bytes=checkpoint)


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _verdict(planner: _Planner, spec: ModelSpec, hw: HardwareReport, device_map, devices, budgets,
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


def _gb_up(n: float, step: int = 10) -> int:
    return int(math.ceil(n / 1e9 / step) * step)


def _fixes(planner: _Planner, spec: ModelSpec, hw: HardwareReport, devices: dict[str, DeviceAllocation],
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
                need = _cpu_needed(planner, alloc)
                fixes.append(f"set use_4bit: true and raise cpu to {_gb_up(need)}GB (offloaded layers load in 16-bit)")
    if spills:
        cpu = devices["cpu"]
        need = _cpu_needed(planner, devices)
        if hw.assumed or "cpu" in user or need > cpu.budget_bytes:
            fixes.append(f"raise cpu to {_gb_up(need)}GB (max_memory cpu, --assume-cpu, or a machine with that much "
                         "free RAM)")
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
            fixes.append(f"use {n} GPUs of {format_bytes(per_gpu)} (check with --assume-gpus {n}x{_gb_up(per_gpu, 1)}GB)")
    smaller = _smaller_model(planner, spec, hw, caps)
    if smaller and (spills or not hw.gpus):
        fixes.append(f"use {smaller}")
    return [f for f in fixes if f not in known]


def _cpu_needed(planner: _Planner, devices: dict[str, DeviceAllocation]) -> int:
    """Host RAM that would hold everything now on CPU and disk, plus its reserve and the largest-layer room."""
    cpu = devices["cpu"]
    disk = devices.get("disk")
    host = planner.sizes("none").host
    largest = max((host[n] for n in planner.shape.layers), default=0)
    return cpu.weight_bytes + (disk.weight_bytes if disk else 0) + cpu.reserve_bytes + largest


def _smaller_model(planner: _Planner, spec: ModelSpec, hw: HardwareReport, caps: dict[Device, int]) -> str | None:
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


def _reserve_notes(planner: _Planner, quant: str, engine: str, devices: dict[str, DeviceAllocation]) -> list[str]:
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
        notes.append(f"offloaded layers load unquantized ({format_bytes(offloaded)} in 16-bit on CPU/disk, as "
                     "transformers keeps them); " + (f"routerllm's engine then keeps them {quant} "
                     f"({format_bytes(packed)}) and moves that per token" if engine == "routerllm" else
                     "accelerate moves them in 16-bit every token"))
    return notes


def _estimates(planner: _Planner, devices, device_map, quant, engine, bw: Bandwidths, checkpoint: int, *,
               num_examples: int, max_new_tokens: int, notes: list[str]) -> dict[str, float]:
    sizes = planner.sizes(quant)
    gpu_rates = {str(g.index): bw.gpu_rate(g.name, g.total_bytes) for g in planner.hw.gpus}
    gpu = {d: (a.weight_bytes, gpu_rates[d][0]) for d, a in devices.items() if d in gpu_rates}
    has_gpu = bool(gpu_rates)
    cpu = devices.get("cpu")
    disk = devices.get("disk")
    bus_sizes = sizes.gpu if (quant != "none" and engine == "routerllm") else sizes.host
    cpu_bus = sum(bus_sizes[k] for k in cpu.modules) if (cpu and has_gpu) else 0
    prompt = max(planner.seq - max_new_tokens, 1)
    kv_read = planner.shape.kv_layer_token * len(planner.shape.layers) * planner.batch * (prompt + max_new_tokens // 2)
    sb = StepBytes(gpu=gpu, cpu_bus=cpu_bus, disk=disk.weight_bytes if disk else 0,
                   cpu_compute=0 if has_gpu else (cpu.weight_bytes if cpu else 0), kv_read=kv_read,
                   layers=len(planner.shape.layers))
    est = estimate(sb, bw, engine=engine, read_bytes=checkpoint, disk_write_bytes=sb.disk, params=sizes.params,
                   batch_size=planner.batch, prompt_tokens=prompt, max_new_tokens=max_new_tokens,
                   num_examples=num_examples, on_gpu=has_gpu)
    rates = sorted({f"{format_bytes(r)}/s ({why})" for r, why in gpu_rates.values()})
    notes.append(
        f"estimates: load reads {format_bytes(checkpoint)} at {format_bytes(bw.disk_bytes_per_s)}/s"
        + (f"; GPU memory {', '.join(rates)}" if rates else "; no GPU: the CPU streams weights at "
           f"{format_bytes(bw.cpu_bytes_per_s)}/s")
        + (f"; CPU->GPU {format_bytes(bw.h2d_pinned_bytes_per_s if engine == 'routerllm' else bw.h2d_stock_bytes_per_s)}/s "
           f"({engine} offload)" if cpu_bus else "")
        + f"; {bw.per_layer_overhead_s * 1e3:.1f} ms overhead per layer per step; bench = {num_examples} examples "
        f"x {max_new_tokens} new tokens (upper bound), batch {planner.batch}, prompts of {prompt} tokens")
    return est
