"""NF4 packing for offloaded linears, so a 4-bit model moves 4-bit bytes over the bus.

transformers keeps CPU- and disk-offloaded modules of a bitsandbytes 4-bit model as plain 16-bit `nn.Linear`
(quantized modules cannot be dispatched to the CPU), so every decode step would copy four times the quantized
bytes. The offload engine quantizes each offloaded linear once, at attach time, with the same bitsandbytes call
`Linear4bit` uses, keeps the packed tensors in its host buffer, and runs `NF4Linear` over views of the GPU
staging buffer. bitsandbytes is imported inside functions so the engine imports without it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from routerllm_cli.errors import ConfigError

NF4_BLOCKSIZE = 64

# Order of the packed tensors in the flat layout; the nested ones exist only with compress_statistics.
PACKED_NAMES = ("weight_packed", "absmax", "code")
NESTED_NAMES = ("offset", "absmax2", "code2")


def require_bitsandbytes() -> Any:
    try:
        import bitsandbytes
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "keeping offloaded layers 4-bit needs bitsandbytes, which is not installed",
            fix="pip install bitsandbytes, or load without keep_4bit",
        ) from exc
    return bitsandbytes


class NF4Linear(nn.Module):
    """A linear whose NF4-packed tensors are buffers the offload engine binds before each forward.

    Between forwards the buffers are meta placeholders; the engine points them at staging views.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        compute_dtype: torch.dtype,
        blocksize: int,
        nested: bool,
        blocksize2: int | None,
        bias: nn.Parameter | None,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.compute_dtype = compute_dtype
        self.blocksize = blocksize
        self.nested = nested
        self.blocksize2 = blocksize2
        for name in PACKED_NAMES + (NESTED_NAMES if nested else ()):
            self.register_buffer(name, None, persistent=False)
        self.bias = bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nf4, nested={self.nested}"

    def quant_state(self) -> Any:
        from bitsandbytes.functional import QuantState

        state2 = None
        if self.nested:
            state2 = QuantState(absmax=self.absmax2, code=self.code2, blocksize=self.blocksize2, dtype=torch.float32)
        return QuantState(
            absmax=self.absmax,
            shape=torch.Size((self.out_features, self.in_features)),
            code=self.code,
            blocksize=self.blocksize,
            quant_type="nf4",
            dtype=self.compute_dtype,
            offset=self.offset if self.nested else None,
            state2=state2,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import bitsandbytes as bnb

        inp_dtype = x.dtype
        x = x.to(self.compute_dtype)
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return bnb.matmul_4bit(x, self.weight_packed, bias=bias, quant_state=self.quant_state()).to(inp_dtype)


def quantize_nf4(weight: torch.Tensor, *, compress_statistics: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """Quantize one 2-D weight (on the device that will run it) and return its packed tensors and layout facts.

    The tensors come back on the CPU, named as `NF4Linear` buffers, in layout order.
    """
    require_bitsandbytes()
    from bitsandbytes.functional import quantize_4bit

    if weight.dim() != 2 or weight.numel() % 2:
        raise ConfigError(f"cannot pack a weight of shape {tuple(weight.shape)} as NF4", fix="load without keep_4bit")
    packed, state = quantize_4bit(
        weight,
        blocksize=NF4_BLOCKSIZE,
        compress_statistics=compress_statistics,
        quant_type="nf4",
        quant_storage=torch.uint8,
    )
    tensors = {"weight_packed": packed, "absmax": state.absmax, "code": state.code}
    facts = {"blocksize": state.blocksize, "nested": bool(state.nested), "blocksize2": None}
    if state.nested:
        tensors["offset"] = torch.as_tensor(state.offset, dtype=torch.float32, device=packed.device)
        tensors["absmax2"] = state.state2.absmax
        tensors["code2"] = state.state2.code
        facts["blocksize2"] = state.state2.blocksize
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, facts


def nf4_module_for(linear: nn.Linear, facts: dict, compute_dtype: torch.dtype) -> NF4Linear:
    """An `NF4Linear` shaped like `linear`; the bias object is shared so the engine binds it like any param."""
    return NF4Linear(
        linear.in_features,
        linear.out_features,
        compute_dtype=compute_dtype,
        blocksize=facts["blocksize"],
        nested=facts["nested"],
        blocksize2=facts["blocksize2"],
        bias=linear.bias,
    )


def pack_unit(model: Any, unit: Any, reader: Any, *, compress_statistics: bool) -> None:
    """Swap each plain linear of the unit for an NF4Linear whose packed tensors become flat-buffer entries.
    Each weight is read (from the module, a file region or Accelerate's weights map) and quantized on the unit's
    device one at a time, so at most one 16-bit weight exists at once."""
    from routerllm_cli.offload.sources import Entry, Source
    from routerllm_cli.offload.units import read_entry

    require_bitsandbytes()
    by_tensor = {(id(e.module), e.name): e for e in unit.entries}
    skip = not_quantized(model)
    linears = [
        (rel, m)
        for rel, m in unit.module.named_modules()
        if type(m) is torch.nn.Linear and not matches(f"{unit.name}.{rel}" if rel else unit.name, skip)
    ]
    for rel, lin in linears:
        w_entry = by_tensor.pop((id(lin), "weight"))
        weight = read_entry(w_entry, reader, count_disk=unit.read_from_disk).to(unit.device)
        packed, facts = quantize_nf4(weight, compress_statistics=compress_statistics)
        del weight
        nf4 = nf4_module_for(lin, facts, compute_dtype=w_entry.dtype)
        if rel:
            parent_name, _, child = rel.rpartition(".")
            parent = unit.module.get_submodule(parent_name) if parent_name else unit.module
        else:  # the unit is itself a linear (an offloaded lm_head): swap it in the model
            parent_name, _, child = unit.name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            unit.module = nf4
        setattr(parent, child, nf4)
        unit.swapped.append((parent, child, lin))
        unit.entries.remove(w_entry)
        bias_entry = by_tensor.pop((id(lin), "bias"), None)
        if bias_entry is not None:
            bias_entry.module = nf4
        for name, t in packed.items():
            e = Entry(nf4, name, False, tuple(t.shape), t.dtype, source=Source(tensor=t))
            e.placeholder = torch.empty(e.shape, dtype=e.dtype, device="meta")
            unit.entries.append(e)

def _not_quantized(self) -> list[str]:
    """What transformers keeps in 16-bit even on the GPU: the output embeddings and configured skips."""
    skip = []
    out_emb = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
    skip += [name for name, m in self.model.named_modules() if out_emb is not None and m is out_emb]
    qc = getattr(getattr(self.model, "config", None), "quantization_config", None)
    extra = qc.get("llm_int8_skip_modules") if isinstance(qc, dict) else getattr(qc, "llm_int8_skip_modules", None)
    skip += list(extra or [])
    skip += list(getattr(self.model, "_keep_in_fp32_modules", None) or [])
    return skip


def not_quantized(model: Any) -> list[str]:
    """What transformers keeps in 16-bit even on the GPU: the output embeddings and configured skips."""
    skip = []
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip += [name for name, m in model.named_modules() if out_emb is not None and m is out_emb]
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    extra = qc.get("llm_int8_skip_modules") if isinstance(qc, dict) else getattr(qc, "llm_int8_skip_modules", None)
    skip += list(extra or [])
    skip += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    return skip


def matches(name: str, patterns: list[str]) -> bool:
    return any(f".{p}." in f".{name}." for p in patterns if p)
