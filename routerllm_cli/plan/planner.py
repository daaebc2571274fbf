"""plan_model: budgets, reserves, placement, verdict, fixes and estimates for one model on one machine.

The batch is part of the plan. A run that pins it gets a plan for that batch; `batch_size=None` lets the planner
choose the batch and the placement together (plan/throughput.py): every candidate batch is placed with its own
KV-cache reserve, and the one whose estimated bench wall time is smallest wins.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from routerllm_cli.catalog import CATALOG, ModelRef, resolve_spec
from routerllm_cli.config import ModelSpec
from routerllm_cli.fits import check_fits
from routerllm_cli.errors import ConfigError
from routerllm_cli.estimates import Bandwidths
from routerllm_cli.hardware import HardwareReport
from routerllm_cli.units import format_bytes
from routerllm_cli.plan.availability import checkpoint_bytes
from routerllm_cli.plan.meta import ModelSizes, build_meta_model, compute_dtype, model_config, model_sizes
from routerllm_cli.plan.placement import (_balanced, device_of, find_tied, key_of, place_modules, run_devices,
                                          weightless_to_first_gpu)
from routerllm_cli.plan.types import (CPU_HEADROOM_FRACTION, CPU_HEADROOM_MIN, CUDA_CONTEXT_BYTES, DTYPE_BYTES, Device,
                                      DeviceAllocation, DevicePlan)


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
    if getattr(spec, "endpoint", None) is not None:
        raise ConfigError(f"{spec.name} is served by an endpoint ({spec.endpoint.url}): nothing to plan or load here",
                          fix="bench it (routerllm bench), or plan a cluster for its weights with "
                          "routerllm preflight --engine vllm --model HUB_ID")
    try:
        return resolve_spec(spec.name, spec.model_id, spec.gguf_file)
    except ConfigError as exc:
        entry = CATALOG.get(spec.name.lower().replace("-", "_"))
        if spec.model_id or entry is None or not entry.package:
            raise
        return ModelRef("catalog", entry.model_id, entry.name, entry=entry, extra={"unavailable": exc})


class _Planner:
    """One model on one machine: builds the meta model once, then places it under any quantization, budgets and
    batch (`at_batch` gives a planner for another batch that shares the model and its size tables)."""

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
        self._tied = find_tied(self.model)
        self._runs: dict[tuple, dict[str, Device]] = {}
        self.user_budgets: dict[Device, int] = {}  # max_memory as it applies here (set by plan_model)

    def at_batch(self, batch: int) -> "_Planner":
        other = copy.copy(self)  # the model, size tables and caches are shared
        other.batch = max(batch, 1)
        return other

    def links(self, device_map: dict[str, Device]) -> int:
        """Host links that carry offloaded weights: 1, or (offload_links auto / N) the GPUs the map uses."""
        want = self.spec.offload_links
        if self.spec.offload_engine != "routerllm" or want == 1:
            return 1
        used = len({d for d in device_map.values() if isinstance(d, int)})
        return max(1, used if want == "auto" else min(int(want), used))

    def packs_offload(self, quantization: str) -> bool:
        """Offloaded 4-bit layers are quantized while loading and held packed (routerllm's offload engine)."""
        return quantization == "4bit" and self.spec.offload_engine == "routerllm"

    def sizes(self, quantization: str) -> ModelSizes:
        if quantization not in self._sizes:
            self._sizes[quantization] = model_sizes(self.model, quantization,
                                                    host_packed=self.packs_offload(quantization))
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

    def largest(self, keys: list[str], sizes: dict[str, int]) -> int:
        """The biggest unit among `keys`; a container (all layers past the GPUs) is staged one layer at a time."""
        largest = 0
        for k in keys:
            inner = [sizes[n] for n in self.shape.layers if k == "" or n.startswith(k + ".")]
            largest = max(largest, max(inner) if inner else sizes[k])
        return largest

    def run_devices(self, device_map: dict[str, Device], engine: str) -> dict[str, Device]:
        """`placement.run_devices` (the one rule, which the offload engine follows too), cached per map."""
        key = (engine, tuple(sorted((k, str(v)) for k, v in device_map.items())))
        if key not in self._runs:
            self._runs[key] = run_devices(self.model, device_map, engine=engine)
        return self._runs[key]

    def kv_per_token(self, device_map: dict[str, Device], engine: str) -> dict[str, int]:
        """KV bytes per token held on each device: each layer's cache lives where the layer runs."""
        runs = self.run_devices(device_map, engine)
        out: dict[str, int] = defaultdict(int)
        for n in self.shape.layers:
            out[str(runs.get(key_of(n, device_map)))] += self.shape.kv_layer_token  # type: ignore[arg-type]
        return dict(out)

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
            out.setdefault(d, {})["offload_staging"] = buffers * self.largest(keys, bus)
        links = self.links(device_map)
        if links > 1 and staged:
            # each relay GPU double-buffers its share of the largest unit it carries
            eff = 0.74
            share = eff / (1 + eff * (links - 1))
            relays = sorted({d for d in device_map.values() if isinstance(d, int)})
            largest = max(self.largest(keys, bus) for keys in staged.values())
            for r in relays:
                if r not in staged or len(staged) > 1:
                    out.setdefault(r, {})["offload_relay"] = int(2 * share * largest)
        on_disk = [k for k, d in device_map.items() if d == "disk"]
        if on_disk:
            # disk layers pass through host RAM on their way to the compute device (read-ahead: two at a time)
            out["cpu"]["disk_staging"] = 2 * self.largest(on_disk, sizes.host)
        if self.packs_offload(quantization) and any(d in ("cpu", "disk") for d in device_map.values()):
            # quantizing while loading reads one 16-bit weight at a time into host memory
            out["cpu"]["quantize_staging"] = sizes.largest_linear * self.dtype_bytes
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
                self.model, place_modules(self.model, hand, self.no_split, sizes_for, largest_layer_room=False,
                                          tied=self._tied))
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
            budget = budgets.get(d, cap)
            # room left: within the operator's max_memory where one is set (it budgets weights, as accelerate's
            # does), else on the device after weights and reserves
            free = budget - weights if d in self.user_budgets else cap - weights - reserve
            out[str(d)] = DeviceAllocation(
                str(d), mods, (min(ls), max(ls)) if ls else None, weights, reserve,
                budget, free, res.get("kv_cache", 0), dict(res))
        return out


def plan_model(spec: ModelSpec, hardware: HardwareReport, *, batch_size: int | None = 1, seq_len: int = 2048,
               num_examples: int = 164, max_new_tokens: int = 384, bandwidths: Bandwidths | None = None,
               token: str | None = None, model: Any = None) -> DevicePlan:
    """Plan `spec` on `hardware` for a run of `num_examples` sequences of up to `seq_len` tokens, `max_new_tokens`
    of them generated. `batch_size=None`: the planner chooses the batch (see the module docstring).
    Raises ConfigError for a model that cannot be resolved or a config that breaks the 4-bit rule; every other
    problem is a no-go verdict with reasons and fixes."""
    from routerllm_cli.plan import throughput, verdict

    planner = _Planner(spec, hardware, batch_size=batch_size or 1, seq_len=seq_len, model=model, token=token)
    quant = spec.quantization
    sizes = planner.sizes(quant)
    entry = planner.ref.entry
    # The config-level 4-bit rule only makes sense where 4-bit can run: on GPUs.
    notes = (list(check_fits(spec, sizes.params, catalog_dtype=entry.dtype if entry else None)) if hardware.gpus
             else spec.offload_notes())
    caps = planner.hardware_caps()
    user, disk_budget = _user_budgets(spec, hardware, caps, notes)
    planner.user_budgets = user
    checkpoint = checkpoint_bytes(planner.ref, sizes.params)
    bw = bandwidths or Bandwidths()
    work = throughput.Work(num_examples=num_examples, max_new_tokens=max_new_tokens, seq_len=planner.seq,
                           checkpoint_bytes=checkpoint)
    if batch_size:
        chosen = throughput.evaluate(planner, user, caps, disk_budget, bw, work)
        considered = [chosen]
    else:
        chosen, considered = throughput.choose(planner, user, caps, disk_budget, bw, work)
    planner = chosen.planner
    if isinstance(spec.device_map, dict):
        notes.append("device_map is given explicitly in the config: used as is, only checked")
    reasons, fixes = list(chosen.reasons), list(chosen.fixes)
    missing = planner.ref.extra.get("unavailable")
    if missing is not None:
        reasons.insert(0, missing.message)
        fixes.insert(0, missing.fix)
    if reasons:
        fixes += verdict.fixes(planner, spec, hardware, chosen.devices, caps, user, fixes)
    notes += verdict.reserve_notes(planner, quant, spec.offload_engine, chosen.devices)
    notes.append(chosen.estimate_note)
    trade = throughput.trade_note(chosen, considered)
    if trade:
        notes.append(trade)
    return DevicePlan(
        model=planner.ref, model_type=planner.model.config.model_type, dtype=planner.dtype, quantization=quant,
        device_map=dict(chosen.device_map), max_memory=chosen.budgets, no_split_module_classes=planner.no_split,
        devices=chosen.devices, weight_bytes=sum(a.weight_bytes for a in chosen.devices.values()),
        num_layers=len(planner.shape.layers),
        kv_bytes_per_token=planner.shape.kv_layer_token * len(planner.shape.layers),
        batch_size=planner.batch, seq_len=planner.seq, verdict="no-go" if reasons else "go", reasons=reasons,
        fixes=verdict.dedupe(fixes), estimates=chosen.estimates, notes=notes, params=sizes.params,
        offload_engine=spec.offload_engine, checkpoint_bytes=checkpoint,
        run_devices={k: v for k, v in planner.run_devices(chosen.device_map, spec.offload_engine).items()},
        kv_per_token_by_device=planner.kv_per_token(chosen.device_map, spec.offload_engine),
        batch_mode="pinned" if batch_size else "auto", prompt_tokens=max(planner.seq - max_new_tokens, 1),
        max_new_tokens=max_new_tokens, num_examples=num_examples,
        host_format="nf4" if planner.packs_offload(quant) else "16-bit",
        alternatives=throughput.alternatives(chosen, considered), offload_links=planner.links(chosen.device_map))


def _user_budgets(spec: ModelSpec, hardware: HardwareReport, caps: dict[Device, int],
                  notes: list[str]) -> tuple[dict[Device, int], int | None]:
    """max_memory as it applies to this machine (GPUs it lacks dropped, each with a note), and the disk budget."""
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
    return user, disk_budget
