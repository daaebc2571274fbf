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
