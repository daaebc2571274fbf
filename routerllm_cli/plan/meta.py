"""The model before any weights: its config (catalog, cache or hub), compute dtype, meta model and sizes."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routerllm_cli import hub
from routerllm_cli.catalog import ModelRef
from routerllm_cli.config import BYTES_PER_PARAM, NF4_BYTES_PER_PARAM, ModelSpec
from routerllm_cli.errors import ConfigError
from routerllm_cli.hardware import HardwareReport


# --- where the config comes from -------------------------------------------------------------------------------


def hub_config_path(repo_id: str, token: str | None = None) -> Path:
    """config.json of a hub repo from the HF cache, fetched (a few KB) only when online."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(hub.cache_dir()))
    if isinstance(cached, str):
        return Path(cached)
    fix = f"hf download {repo_id} config.json"
    if hub.offline():
        raise ConfigError(f"config.json for {repo_id} is not in the HF cache ({hub.cache_dir()}) and HF_HUB_OFFLINE is set",
                          fix=f"{fix} (on a machine with network, same HF_HOME), or unset HF_HUB_OFFLINE")
    try:
        return Path(hf_hub_download(repo_id, "config.json", cache_dir=str(hub.cache_dir()), token=token, etag_timeout=5))
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
    """`ModelSpec.resolved_dtype` on this hardware, for this model's catalog entry."""
    entry = getattr(ref, "entry", None)
    return spec.resolved_dtype(gpus=bool(hardware.gpus), catalog_dtype=entry.dtype if entry is not None else None)


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
    # as placed on CPU/disk: 16-bit as transformers keeps offloaded modules, or packed like the GPU's when the
    # loader quantizes offloaded 4-bit layers while reading them (host_packed)
    host: dict[str, int]
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


def model_sizes(model, quantization: str, *, host_packed: bool = False) -> ModelSizes:
    """Sizes of every module prefix. `host_packed`: offloaded quantized weights are stored as on the GPU."""
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
            host[key] += g if host_packed else h
    return ModelSizes(gpu, host, params, qparams, largest)
