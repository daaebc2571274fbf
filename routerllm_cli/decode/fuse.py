"""Kernel fusion for the static decode step: every decoder layer runs through one function compiled by inductor.

Captured as a CUDA graph, an unfused step of a 32-layer Llama still launches ~1,300 small kernels (RMSNorm in
six, rotary in a dozen, SiLU*mul, residual adds, casts), a few microseconds each, next to the GEMMs that read the
weights. Inductor fuses each run of them into one kernel and leaves the GEMMs and the attention to cuBLAS and
SDPA, as eager does.

The unit compiled is one decoder layer, not the whole model: the layers run the same code on tensors of the same
shapes, so one compile per (batch, length) bucket serves all of them (each layer hands it its own weights and its
own slice of the static cache), where a whole-model graph costs tens of seconds per shape. The compiled layers are
then captured by hand exactly as the plain step is (`static.StepGraphs`), so inductor's own CUDA graphs are off:
the default mode, which also keeps cuBLAS for the GEMMs without max-autotune's minutes of benchmarking GEMM
templates (for decode's skinny GEMMs cuBLAS is what it would pick). `fullgraph=True`: a graph break would split a
layer back into small kernels without saying so; `dynamic=False`: every bucket is a static shape.

The compile cache (inductor's FX graph cache, AOTAutograd's, Triton's kernels) lives under routerllm's cache
folder (`$ROUTERLLM_CACHE/torch_compile`) unless TORCHINDUCTOR_CACHE_DIR is set, so a second run of the same model
loads what the first compiled.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from routerllm_cli.decode.static import UnsupportedStep

# Each bucket is one more compiled entry of the same function (and compare runs several models in one process).
_RECOMPILE_LIMIT = 512
_COUNTERS = (("inductor", "fxgraph_cache_hit"), ("inductor", "fxgraph_cache_miss"),
             ("aot_autograd", "autograd_cache_hit"), ("aot_autograd", "autograd_cache_miss"))


def _limits(config: Any) -> dict[str, int]:
    """Dynamo's recompile limits, raised (torch < 2.6 spells them cache_size_limit)."""
    names = (("recompile_limit", "accumulated_recompile_limit") if hasattr(config, "recompile_limit")
             else ("cache_size_limit", "accumulated_cache_size_limit"))
    return {names[0]: max(getattr(config, names[0]), _RECOMPILE_LIMIT),
            names[1]: max(getattr(config, names[1]), 4 * _RECOMPILE_LIMIT)}


class UnsupportedFusion(RuntimeError):
    """The model's layers cannot be run through the compiled layer function."""


def compile_cache_dir() -> Path:
    """Where torch's compile cache goes: TORCHINDUCTOR_CACHE_DIR if the user set it, else
    `$ROUTERLLM_CACHE/torch_compile`. (torch writes its own default, a folder in /tmp, into the variable the first
    time anything asks, loading a model for one, so that value counts as unset.)"""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if given and os.path.abspath(given) != os.path.abspath(default_cache_dir()):
        return Path(given)
    return Path(os.environ.get("ROUTERLLM_CACHE", Path.home() / ".cache" / "routerllm")) / "torch_compile"


def use_compile_cache() -> Path:
    """Point inductor at `compile_cache_dir()` (it reads the variable at each compile)."""
    path = compile_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def decoder_layers(model: Any, *, allow_hooks: bool = False) -> list[Any]:
    """The model's decoder layers in order, each with the `self_attn.layer_idx` its cache slot is read by.
    `allow_hooks`: the caller puts each layer's inputs on its device itself (split.py), so accelerate's hooks on
    the layers may stay (they are called past)."""
    import torch

    found: list[Any] = []
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) > len(found):
            found = list(layers)
    if not found:
        raise UnsupportedFusion("no decoder layer list (`model.layers`) found")
    if [getattr(getattr(layer, "self_attn", None), "layer_idx", None) for layer in found] != list(range(len(found))):
        raise UnsupportedFusion("the decoder layers do not carry their cache index as self_attn.layer_idx")
    for layer in [] if allow_hooks else found:
        own = layer.__dict__.get("forward")  # a hook replaces forward on the instance (a removed one leaves it bound)
        if getattr(layer, "_hf_hook", None) is not None or (
                own is not None and getattr(own, "__func__", None) is not type(layer).forward):
            raise UnsupportedFusion("the decoder layers have hooks on their forward (accelerate dispatch)")
    return found


class _LayerCache:
    """One layer's keys and values of the static batch: what its compiled forward is handed as the cache. It holds
    the tensors themselves, so no layer index reaches the compiled code and all layers share one compile."""

    def __init__(self, batch: Any, keys: Any, values: Any, index: tuple[Any, Any]):
        self.batch, self.keys, self.values, self.index = batch, keys, values, index

    def update(self, key_states: Any, value_states: Any, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        return self.batch.write_step(self.keys, self.values, key_states, value_states, self.index)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        raise UnsupportedStep("the model reads the cache length on the host during a step")


def _layer_forward(layer: Any, cache: Any, cache_kw: str, args: tuple, kwargs: dict) -> Any:
    """The function inductor compiles: one decoder layer's own forward, with this layer's slice of the cache."""
    return type(layer).forward(layer, *args, **{**kwargs, cache_kw: cache})


class LayerFusion:
    """While `active()`, each decoder layer of the static batch's model runs through `_layer_forward` compiled.

    `backend` is torch.compile's (inductor; another one only to see a compile fail). Compiling happens at the first
    call of each bucket's shapes: `compiling()` around it counts the compile cache's hits and misses."""

    def __init__(self, batch: Any, *, backend: Any = "inductor"):
        import torch

        self.layers = decoder_layers(batch.model, allow_hooks=batch.split is not None)
        if len(self.layers) != len(batch.keys):
            raise UnsupportedFusion(f"{len(self.layers)} decoder layers but {len(batch.keys)} cache layers")
        self.views = [_LayerCache(batch, k, v, at) for k, v, at in zip(batch.keys, batch.values, batch.index_of)]
        self.cache_dir = use_compile_cache()
        self.compiled = torch.compile(_layer_forward, backend=backend, fullgraph=True, dynamic=False)
        self.counts = {name: 0 for _, name in _COUNTERS}

    def _call(self, layer: Any, view: _LayerCache, *args: Any, **kwargs: Any) -> Any:
        cache_kw = "cache" if "cache" in kwargs else "past_key_values"
        kwargs.pop(cache_kw, None)
        return self.compiled(layer, view, cache_kw, args, kwargs)

    def call(self, index: int, *args: Any, **kwargs: Any) -> Any:
        """Decoder layer `index` through the compiled function (split.py calls the layers one by one)."""
        return self._call(self.layers[index], self.views[index], *args, **kwargs)

    def limits(self) -> Any:
        import torch

        return torch._dynamo.config.patch(**_limits(torch._dynamo.config))

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        import functools

        saved = [layer.__dict__.get("forward") for layer in self.layers]
        for layer, view in zip(self.layers, self.views):
            layer.forward = functools.partial(self._call, layer, view)
        try:
            with self.limits():
                yield
        finally:
            for layer, own in zip(self.layers, saved):
                if own is None:
                    layer.__dict__.pop("forward", None)
                else:
                    layer.forward = own

    @contextlib.contextmanager
    def compiling(self) -> Iterator[dict[str, int]]:
        """Around a bucket's first call: yields the compile cache's hit/miss counts of that call (filled on exit)."""
        from torch._dynamo.utils import counters

        before = {name: counters[group][name] for group, name in _COUNTERS}
        delta: dict[str, int] = {}
        try:
            yield delta
        finally:
            for group, name in _COUNTERS:
                delta[name] = counters[group][name] - before[name]
                self.counts[name] += delta[name]


def cache_state(counts: dict[str, int]) -> str:
    """How a compile met the cache: cold (compiled), warm (all loaded from the cache), mixed, or reused (this
    process had compiled the same shapes already, so nothing was looked up)."""
    hits = counts.get("fxgraph_cache_hit", 0) + counts.get("autograd_cache_hit", 0)
    misses = counts.get("fxgraph_cache_miss", 0) + counts.get("autograd_cache_miss", 0)
    if hits and misses:
        return "mixed"
    return "warm" if hits else "cold" if misses else "reused"
