"""The planner: model config + hardware -> a DevicePlan (device map, reserves, verdict, fixes, estimates).

Nothing is downloaded or loaded. The model is built from its config on the meta device (`init_empty_weights`),
every tensor is sized in the format it will have where it is placed, and modules are assigned to GPUs, then CPU,
then disk. The resulting dict `device_map` is the one `routerllm load` passes, as is, to `from_pretrained` (a dict
map is also what keeps bitsandbytes 4-bit working with CPU offload).

Why our own sizes instead of accelerate's `special_dtypes`: a tensor's size depends on where it lands. With
bitsandbytes, GPU-resident Linear weights are NF4 (0.5625 bytes/param with the absmax) or int8, but transformers
keeps CPU- and disk-offloaded modules unquantized in 16-bit, and no torch dtype is 4.5 bits wide. So
`place_modules` runs accelerate's `infer_auto_device_map` algorithm step for step (sequential fill, no split of
`_no_split_modules`, tied weights kept together, room for the largest layer on the main devices), reusing
accelerate's helpers, with a size table per device kind. `tests/test_plan.py` checks it returns exactly accelerate's
map when sizes do not depend on the device.

What accelerate does not budget is reserved here (`DeviceAllocation.reserve_bytes`): the CUDA context, the KV cache
of the bench's batch and sequence length on the device that runs each layer, prefill activations, and the offload
engine's staging buffers on the execution GPU.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from routerllm_cli.catalog import CATALOG, ModelRef, resolve_spec
from routerllm_cli.config import BYTES_PER_PARAM, NF4_BYTES_PER_PARAM, ModelSpec, Settings, check_fits
from routerllm_cli.errors import ConfigError
from routerllm_cli.estimates import Bandwidths, StepBytes, estimate
from routerllm_cli.hardware import Check, HardwareReport, hf_cache_dir, machine_checks
from routerllm_cli.units import format_bytes

CUDA_CONTEXT_BYTES = 1_900 * 10**6  # per GPU: CUDA context, cuBLAS workspaces and allocator slack (NVML used minus
# torch peak allocated: 1.75 and 1.83 GB on 2x H200, torch 2.11 + CUDA 13, benchmarks/plan_vs_actual.py)
CPU_HEADROOM_MIN = 3 * 10**9  # the Python process with torch/transformers, before any weights
CPU_HEADROOM_FRACTION = 0.05  # page tables, the OS, whatever else runs
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

Device = int | str


@dataclass
class DeviceAllocation:
    device: str  # "0", "1", ..., "cpu", "disk"
    modules: list[str]  # module names placed there (device_map keys)
    layers: tuple[int, int] | None  # first and last decoder-layer index there, inclusive
    weight_bytes: int
    reserve_bytes: int  # KV cache + activations + CUDA context held back on this device
    budget_bytes: int  # the max_memory given for this device
    free_after_bytes: int
    kv_bytes: int = 0  # the KV-cache part of reserve_bytes
    reserve_detail: dict[str, int] = field(default_factory=dict)  # reserve_bytes by reason

    @property
    def layer_text(self) -> str:
        if self.layers is None:
            return "-"
        a, b = self.layers
        return str(a) if a == b else f"{a}-{b}"

    def to_dict(self) -> dict:
        return {"layers": None if self.layers is None else self.layer_text,
                "layer_range": list(self.layers) if self.layers else None, "modules": len(self.modules),
                "weight_bytes": self.weight_bytes, "reserve_bytes": self.reserve_bytes, "kv_bytes": self.kv_bytes,
                "reserve_detail": self.reserve_detail, "budget_bytes": self.budget_bytes,
                "free_after_bytes": self.free_after_bytes}


@dataclass
class DevicePlan:
    model: ModelRef
    model_type: str
    dtype: str  # compute dtype name: "bfloat16" | "float16" | "float32"
    quantization: str  # "none" | "4bit" | "8bit"
    device_map: dict[str, int | str]  # module name -> GPU index | "cpu" | "disk"; passed AS IS to from_pretrained
    max_memory: dict[int | str, int]  # budgets handed to accelerate (after reserves)
    no_split_module_classes: list[str]
    devices: dict[str, DeviceAllocation]
    weight_bytes: int
    num_layers: int
    kv_bytes_per_token: int  # whole model, all layers
    batch_size: int
    seq_len: int
    verdict: str  # "go" | "no-go"
    reasons: list[str]
    fixes: list[str]
    estimates: dict[str, float]  # load_seconds, seconds_per_token, bench_seconds
    notes: list[str]
    params: int = 0
    offload_engine: str = "routerllm"
    checkpoint_bytes: int = 0  # what a load reads from disk

    @property
    def execution_device(self) -> int | str:
        """Where input_ids go (the embeddings' GPU: the first in the map), else the CPU."""
        return next((d for d in self.device_map.values() if isinstance(d, int)), "cpu")

    @property
    def offloaded(self) -> dict[str, int]:
        return {d: a.weight_bytes for d, a in self.devices.items() if d in ("cpu", "disk") and a.weight_bytes
                and any(isinstance(v, int) for v in self.device_map.values())}

    def to_dict(self) -> dict:
        return {
            "model": {"name": self.model.name, "source": self.model.source, "kind": self.model.kind,
                      "gguf_file": self.model.gguf_file},
            "model_type": self.model_type, "dtype": self.dtype, "quantization": self.quantization,
            "params": self.params, "weight_bytes": self.weight_bytes, "checkpoint_bytes": self.checkpoint_bytes,
            "num_layers": self.num_layers, "kv_bytes_per_token": self.kv_bytes_per_token,
            "batch_size": self.batch_size, "seq_len": self.seq_len, "offload_engine": self.offload_engine,
            "devices": {d: a.to_dict() for d, a in self.devices.items()},
            "device_map": self.device_map, "max_memory": {str(k): v for k, v in self.max_memory.items()},
            "no_split_module_classes": self.no_split_module_classes,
            "verdict": self.verdict, "reasons": self.reasons, "fixes": self.fixes,
            "estimates": self.estimates, "notes": self.notes,
        }


# --- where the config comes from -------------------------------------------------------------------------------


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_config_path(repo_id: str, token: str | None = None) -> Path:
    """config.json of a hub repo from the HF cache, fetched (a few KB) only when online."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", cache_dir=hf_cache_dir())
    if isinstance(cached, str):
        return Path(cached)
    fix = f"hf download {repo_id} config.json"
    if _offline():
        raise ConfigError(f"config.json for {repo_id} is not in the HF cache ({hf_cache_dir()}) and HF_HUB_OFFLINE is set",
                          fix=f"{fix} (on a machine with network, same HF_HOME), or unset HF_HUB_OFFLINE")
    try:
        return Path(hf_hub_download(repo_id, "config.json", cache_dir=hf_cache_dir(), token=token, etag_timeout=5))
    except Exception as exc:  # noqa: BLE001 - gated, missing, no network: all end the same way for the planner
        raise ConfigError(f"cannot fetch config.json for {repo_id}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                          fix=f"{fix}; for gated repos accept the license and run `hf auth login` (or set HF_TOKEN)") from None


def model_config(ref: ModelRef, spec: ModelSpec, token: str | None = None) -> Any:
    """The transformers config: config.json of a local dir, the catalog's shipped `arch`, GGUF metadata, or a
    hub repo's config.json from the HF cache."""
    from transformers import AutoConfig

    trust = spec.trust_remote_code
    if ref.kind == "local_dir":
        return AutoConfig.from_pretrained(ref.model_id, trust_remote_code=trust)
    if ref.entry is not None and ref.entry.arch:
        arch = dict(ref.entry.arch)
        return AutoConfig.for_model(arch.pop("model_type"), **arch)
    if ref.kind == "gguf":
        try:
            return AutoConfig.from_pretrained(ref.model_id, gguf_file=ref.gguf_file)
        except (ValueError, KeyError, OSError) as exc:
            raise ConfigError(f"cannot read the config from {ref.gguf_file}: {str(exc).splitlines()[0][:200]}",
                              fix="use a GGUF of an architecture transformers supports (llama, qwen2, gemma3, ...)") from None
    path = hub_config_path(ref.model_id, token)
    return AutoConfig.from_pretrained(path.parent, trust_remote_code=trust)


def compute_dtype(spec: ModelSpec, hardware: HardwareReport, ref: ModelRef | None = None) -> str:
    """torch_dtype as set; for `auto`, the catalog entry's dtype if it names one, else bf16 with GPUs, fp32 without."""
    if spec.torch_dtype != "auto":
        return spec.torch_dtype
    entry = getattr(ref, "entry", None)
    if entry is not None and entry.dtype:
        return entry.dtype
    return "bfloat16" if hardware.gpus else "float32"


def build_meta_model(ref: ModelRef, spec: ModelSpec, *, dtype: str | None = None, config: Any = None):
    """The model on the meta device from the catalog arch / config.json / GGUF metadata: shapes, no memory."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = config if config is not None else model_config(ref, spec)
    # init_empty_weights moves each parameter to meta once created; the meta device context creates them there
    # in the first place (0.2 s instead of 0.75 s for 405B's 1,100 tensors)
    with init_empty_weights(), torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)
    # init_empty_weights skips the tie that from_config would do; untied, BLOOM counts a 3.6B-param lm_head twice.
    model.tie_weights()
    return model.to(getattr(torch, dtype or ("float32" if spec.torch_dtype == "auto" else spec.torch_dtype)))


# --- sizes ------------------------------------------------------------------------------------------------------


@dataclass
class ModelSizes:
    """Bytes per module name (every prefix, like accelerate's compute_module_sizes) in each storage format."""

    gpu: dict[str, int]  # as placed on a GPU: quantized Linear weights when 4/8-bit
    host: dict[str, int]  # as placed on CPU/disk: transformers keeps offloaded modules in 16-bit
    params: int
    quantized_params: int
    largest_linear: int  # elements of the biggest quantized weight (bitsandbytes dequantizes it for prefill)


def quantized_weight_names(model) -> set[str]:
    """Weights bitsandbytes replaces: every nn.Linear except the output embedding (lm_head), which transformers
    keeps in 16-bit like the input embeddings and norms."""
    import torch.nn as nn

    out_emb = model.get_output_embeddings()
    skip = {name for name, mod in model.named_modules() if mod is out_emb}
    return {f"{name}.weight" for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and name not in skip and name.split(".")[-1] != "lm_head"}


def model_sizes(model, quantization: str) -> ModelSizes:
    from accelerate.utils import named_module_tensors

    per_param = {"4bit": NF4_BYTES_PER_PARAM, "8bit": BYTES_PER_PARAM["int8"]}.get(quantization)
    quantized = quantized_weight_names(model) if per_param else set()
    gpu: dict[str, int] = defaultdict(int)
    host: dict[str, int] = defaultdict(int)
    params = qparams = largest = 0
    param_names = {n for n, _ in model.named_parameters()}
    for name, tensor in named_module_tensors(model, recurse=True):
        n = tensor.numel()
        h = n * tensor.element_size()
        g = math.ceil(n * per_param) if name in quantized else h
        if name in param_names:
            params += n
        if name in quantized:
            qparams += n
            largest = max(largest, n)
        parts = name.split(".")
        for i in range(len(parts) + 1):
            key = ".".join(parts[:i])
            gpu[key] += g
            host[key] += h
    return ModelSizes(gpu, host, params, qparams, largest)


# --- placement: accelerate's infer_auto_device_map with a size table per device kind ------------------------------


def place_modules(model, max_memory: dict[Device, int], no_split: list[str],
                  sizes_for: Callable[[Device], dict[str, int]], *, largest_layer_room: bool = True) -> dict[str, Device]:
    """accelerate's `infer_auto_device_map` (1.x, without fallback_allocation), except that a module's size is
    looked up in `sizes_for(device)`. accelerate always keeps room for the largest layer on the first GPU and the
    CPU (where offloaded layers are staged), sized here in host format; `largest_layer_room=False` drops that
    room for callers that reserve staging buffers themselves, only where offload happens."""
    import torch
    from accelerate.utils import find_tied_parameters
    from accelerate.utils.modeling import clean_device_map, get_max_layer_size, get_module_size_with_ties

    devices: list[Device] = list(max_memory)
    if "disk" not in devices:
        devices.append("disk")
    gpus = [d for d in devices if d not in ("cpu", "disk")]
    main_devices = [gpus[0], "cpu"] if gpus else ["cpu"]
    host = sizes_for("cpu")
    tied_parameters = find_tied_parameters(model)
    todo: list[tuple[str, Any]] = (list(model.named_parameters(recurse=False)) + list(model.named_children())
                                   + list(model.named_buffers(recurse=False)))

    def max_layer(mods):
        return get_max_layer_size([(n, m) for n, m in mods if isinstance(m, torch.nn.Module)], host, no_split)

    device_map: dict[str, Device] = OrderedDict()
    used = {d: 0 for d in devices}
    current = 0
    max_layer_size, max_layer_names = get_max_layer_size(todo, host, no_split)
    while todo:
        name, module = todo.pop(0)
        max_layer_names = [n for n in max_layer_names if n != name and not n.startswith(name + ".")]
        if not max_layer_names:
            max_layer_size, max_layer_names = max_layer(todo)
        device = devices[current]
        sizes = sizes_for(device)
        module_size = sizes[name]
        groups = [g for g in tied_parameters
                  if any(name + "." in k + "." for k in g) and not all(name + "." in k + "." for k in g)]
        tied_params = sum([[p for p in g if name + "." not in p + "."] for g in groups], [])
        cap = max_memory.get(device) if device != "disk" else None
        reserved = 0
        if cap is not None and largest_layer_room and device in main_devices:
            cap, reserved = cap - max_layer_size, max_layer_size
        with_ties, tied_names, tied_modules = get_module_size_with_ties(tied_params, module_size, sizes, todo)
        if cap is None or used[device] + with_ties <= cap:
            used[device] += with_ties
            device_map[name] = device
            for tied_name in tied_names:
                todo = [(n, m) for n, m in todo if n != tied_name]
                device_map[tied_name] = device
            continue
        if tied_params and used[device] + module_size <= cap:  # split a tied module rather than move on
            split = False
            for tied_name, tied_module in zip(tied_names, tied_modules):
                children = list(tied_module.named_children())
                if not children or tied_module.__class__.__name__ in no_split:
                    continue
                children = [(f"{tied_name}.{n}", v) for n, v in
                            list(tied_module.named_parameters(recurse=False)) + children]
                idx = [i for i, (n, _) in enumerate(todo) if n == tied_name][0]
                todo = [(name, module)] + todo[:idx] + children + todo[idx + 1:]
                max_layer_size, max_layer_names = max_layer(todo)
                split = True
                break
            if split:
                continue
        if used[device] + module_size >= cap:
            children = [] if isinstance(module, torch.Tensor) else list(module.named_children())
            if children and module.__class__.__name__ not in no_split:
                children = list(module.named_parameters(recurse=False)) + children
                todo = [(f"{name}.{n}", v) for n, v in children] + todo
                max_layer_size, max_layer_names = max_layer(todo)
                continue
        used[device] += reserved
        current += 1
        todo = [(name, module)] + todo
    return clean_device_map(device_map)


def _has_parameters(model, name: str) -> bool:
    if not name:
        return True
    try:
        return any(True for _ in model.get_submodule(name).parameters())
    except AttributeError:  # a parameter or buffer name rather than a module
        return True


def weightless_to_first_gpu(model, device_map: dict[str, Device]) -> dict[str, Device]:
    """Modules without parameters (a rotary table: buffers computed from the config) go to the first GPU. accelerate
    lists them after the layers, so a map that spills puts them on the CPU, where every step would stage them
    through the offload path before the first layer runs; on the GPU they cost a few kilobytes."""
    gpus = [d for d in device_map.values() if isinstance(d, int)]
    if not gpus:
        return device_map
    first = min(gpus)
    out = dict(device_map)
    for name, dev in device_map.items():
        if dev in ("cpu", "disk") and name:
            module = model.get_submodule(name)
            if not any(True for _ in module.parameters()):
                out[name] = first
    return out


def key_of(name: str, device_map: dict[str, Device]) -> str | None:
    """The device-map entry that places `name`: its longest matching prefix."""
    best: str | None = None
    for key in device_map:
        if (key == "" or name == key or name.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    return best


def device_of(name: str, device_map: dict[str, Device]) -> Device | None:
    """The device of a tensor or module name under a (cleaned) device map."""
    key = key_of(name, device_map)
    return None if key is None else device_map[key]


def _balanced(budgets: dict[Device, int], gpu_total: int, buffer: int) -> dict[Device, int]:
    """transformers' device_map="auto"/"balanced" (accelerate's get_balanced_memory, low_zero off): cap every GPU
    but the last at an even share plus a buffer, so two GPUs share layers (and KV cache) instead of the first
    filling up."""
    gpus = [d for d, b in budgets.items() if isinstance(d, int) and b > 0]
    if len(gpus) < 2:
        return dict(budgets)
    per_gpu = gpu_total // len(gpus) + buffer
    return {d: (min(b, per_gpu) if d in gpus[:-1] else b) for d, b in budgets.items()}


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
        for d, cap in caps.items():
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


def checkpoint_bytes(ref: ModelRef, params: int) -> int:
    """Bytes a load reads: the files when they are here, else the published 16-bit size."""
    if ref.kind == "gguf" or ref.gguf_file:
        path = Path(ref.model_id) / str(ref.gguf_file)
        if path.is_file():
            return path.stat().st_size
    if ref.kind == "local_dir":
        files = _weight_files(Path(ref.model_id))
        if files:
            return sum(f.stat().st_size for f in files)
    snap = _cached_snapshot(ref.model_id) if ref.kind in ("catalog", "hub") else None
    if snap is not None:
        files = _weight_files(snap)
        if files:
            return sum(f.stat().st_size for f in files)
    return int(params * 2)


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    return files or sorted(folder.glob("*.bin"))


def _cached_snapshot(repo_id: str) -> Path | None:
    if "/" not in repo_id:
        return None
    repo = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        snap = repo / "snapshots" / ref.read_text().strip()
        if snap.is_dir():
            return snap
    snaps = sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    return snaps[-1] if snaps else None


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


# --- model availability ----------------------------------------------------------------------------------------


def token_source(settings_token: str | None) -> str | None:
    """Where a Hugging Face token comes from (never the token itself)."""
    if settings_token:
        return "HF_TOKEN / hf_token setting"
    try:
        from huggingface_hub import get_token

        if get_token():
            return "huggingface_hub login (token file)"
    except Exception:  # noqa: BLE001
        pass
    return None


def _access_check(repo_id: str, token: str | None, timeout: float = 5.0) -> tuple[str, str]:
    """('ok'|'fail'|'warn', detail) from huggingface_hub.auth_check, bounded by `timeout` seconds."""
    result: list[tuple[str, str]] = []

    def run() -> None:
        try:
            from huggingface_hub import auth_check

            auth_check(repo_id, token=token or None)
            result.append(("ok", f"access to {repo_id} confirmed"))
        except Exception as exc:  # noqa: BLE001
            name = type(exc).__name__
            if name == "GatedRepoError":
                result.append(("fail", f"{repo_id} is gated and this token has no access"))
            elif name == "RepositoryNotFoundError":
                result.append(("fail", f"{repo_id} does not exist or is private"))
            else:
                result.append(("warn", f"access not checked: {name}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else ("warn", f"access check timed out after {timeout:.0f} s")


def model_checks(ref: ModelRef, spec: ModelSpec, hw: HardwareReport, *, token: str | None,
                 checkpoint: int) -> list[Check]:
    entry = ref.entry
    checks: list[Check] = []
    strict = "warn" if hw.assumed else "fail"  # a what-if plan needs no weights here
    missing = ref.extra.get("unavailable")
    if missing is not None:
        return [Check("model", "fail", f"{missing.message} (planned from the catalog's shipped config)",
                      fix=missing.fix)]
    if ref.gguf_file:
        path = Path(ref.model_id) / ref.gguf_file
        where = f"embedded in the {entry.pip_name} package" if entry and entry.package else "local GGUF"
        checks.append(Check("model", "ok", f"{ref.name}: {where}, {path} ({format_bytes(checkpoint)})"))
        return checks
    if ref.kind == "local_dir":
        files = _weight_files(Path(ref.model_id))
        status = "ok" if files else strict
        checks.append(Check("model", status, f"local folder {ref.model_id}: "
                            + (f"{len(files)} weight files, {format_bytes(checkpoint)}" if files else "no weight files"),
                            fix=None if files else "point --model at a folder written by save_pretrained"))
        return checks
    repo = ref.model_id
    what = f"catalog {entry.name} = {repo} (config shipped)" if entry else f"hub {repo}"
    snap = _cached_snapshot(repo)
    cached = bool(snap and _weight_files(snap))
    offline = _offline()
    if cached:
        checks.append(Check("model", "ok", f"{what}: weights in the HF cache ({format_bytes(checkpoint)})"))
    elif offline:
        checks.append(Check("model", strict, f"{what}: weights not in the HF cache and HF_HUB_OFFLINE is set",
                            fix=f"hf download {repo} (with network, same HF_HOME), or unset HF_HUB_OFFLINE"))
    else:
        checks.append(Check("model", "info", f"{what}: not downloaded yet; the first load fetches "
                            f"{format_bytes(checkpoint)}"))
    gated = bool(entry and entry.gated)
    source = token_source(token)
    if gated or source:
        checks.append(Check("hf_token", "ok" if source else ("info" if cached else strict),
                            f"token configured ({source})" if source else f"{repo} is gated and no token is configured",
                            fix=None if source or cached else f"accept the license at https://huggingface.co/{repo}, "
                            "then `hf auth login` (or set HF_TOKEN)"))
    if offline:
        checks.append(Check("hub_access", "skip", "HF_HUB_OFFLINE=1: access not checked"))
    elif not cached:
        status, detail = _access_check(repo, token)
        if status == "fail" and hw.assumed:
            status = "warn"
        checks.append(Check("hub_access", status, detail,  # type: ignore[arg-type]
                            fix=f"accept the license at https://huggingface.co/{repo} and `hf auth login`"
                            if status != "ok" else None))
    return checks


# --- the whole preflight ---------------------------------------------------------------------------------------


@dataclass
class PreflightReport:
    verdict: str
    reasons: list[str]
    fixes: list[str]
    checks: list[Check]
    plan: DevicePlan
    hardware: HardwareReport

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "reasons": self.reasons, "fixes": self.fixes,
                "checks": [c.to_dict() for c in self.checks], "plan": self.plan.to_dict(),
                "estimates": self.plan.estimates, "hardware": self.hardware.to_dict()}


def run_preflight(settings: Settings, hardware: HardwareReport, *, batch_size: int | None = None,
                  seq_len: int | None = None, num_examples: int | None = None,
                  bandwidths: Bandwidths | None = None) -> PreflightReport:
    """Every check plus the plan for `settings.large`. The verdict is no-go when the plan is, or a check failed."""
    spec = settings.large
    bench = settings.bench
    batch = batch_size or (bench.batch_size if isinstance(bench.batch_size, int) else 1)
    seq = seq_len or bench.max_prompt_tokens + bench.max_new_tokens
    n = num_examples or (len(bench.task_ids) if bench.task_ids else bench.num_examples)
    checks = machine_checks(hardware, offload_folder=spec.offload_folder, quantization=spec.quantization,
                            flash_attention=spec.use_flash_attention, managed_folder=settings.managed_offload_folder())
    plan = plan_model(spec, hardware, batch_size=batch, seq_len=seq, num_examples=n,
                      max_new_tokens=bench.max_new_tokens, bandwidths=bandwidths, token=settings.hf_token)
    checks += model_checks(plan.model, spec, hardware, token=settings.hf_token, checkpoint=plan.checkpoint_bytes)
    if "disk" in plan.devices:
        for c in checks:
            if c.name == "offload_in_use":
                c.status = "fail"
    failed = [c for c in checks if c.status == "fail"]
    reasons = plan.reasons + [c.detail for c in failed if not any(r in c.detail for r in plan.reasons)]
    fixes = _dedupe(plan.fixes + [c.fix for c in failed if c.fix])
    if not batch_size and bench.batch_size == "auto":
        plan.notes.append("bench.batch_size is auto: planned for batch 1 (pass --batch-size to reserve more KV cache)")
    return PreflightReport("no-go" if reasons else "go", reasons, fixes, checks, plan, hardware)

