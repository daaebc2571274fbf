"""What the loader picks before reading weights: attention kernels and the quantization backend."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from routerllm_cli.errors import NoGoError, RunFailed
from routerllm_cli.loading.placement import gpu_indices, offloaded_devices

if TYPE_CHECKING:
    from routerllm_cli.config import ModelSpec
    from routerllm_cli.plan import DevicePlan


# ------------------------------------------------------------------------------------------- choices
def choose_attention(spec: "ModelSpec", plan: "DevicePlan") -> tuple[str, str]:
    """flash_attention_2 when asked for, importable, on a GPU and in fp16/bf16; else sdpa. Returns (impl, why)."""
    if not spec.use_flash_attention:
        return "sdpa", "use_flash_attention is off"
    if plan.dtype not in ("bfloat16", "float16"):
        return "sdpa", f"flash-attention needs fp16/bf16 and the plan computes in {plan.dtype}"
    if not gpu_indices(plan.device_map):
        return "sdpa", "flash-attention runs on CUDA GPUs and this plan places nothing on a GPU"
    try:
        import flash_attn
    except ImportError:
        return "sdpa", "flash_attn is not installed (pip install flash-attn --no-build-isolation)"
    except Exception as exc:  # a broken CUDA extension raises OSError/RuntimeError at import
        return "sdpa", f"flash_attn failed to import ({type(exc).__name__}: {str(exc)[:120]})"
    return "flash_attention_2", f"flash_attn {getattr(flash_attn, '__version__', '?')} imports and dtype is {plan.dtype}"


def choose_sdpa_backends(attn: str, device_map: dict[str, Any], cudnn_attention: bool) -> str | None:
    """Take cuDNN out of PyTorch's SDPA backend order for a GPU model, unless the spec asks for it.

    With a padding mask (every left-padded batch) PyTorch 2.5+ tries the cuDNN backend first on Hopper and newer,
    and cuDNN builds an execution plan for each new (batch, query, key length) shape. Decoding meets a new key
    length every step, so each step paid a plan build: an H200 decoded SmolLM2-135M at 70-154 ms a step on
    shapes seen once and 28-43 ms on shapes seen before (benchmarks/step_profile.py). Flash and memory-efficient
    attention need no plan. The switch is process-wide. Returns a note for the load report, or None."""
    if attn != "sdpa" or cudnn_attention or not gpu_indices(device_map):
        return None
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)
    return ("attention: PyTorch SDPA with the cuDNN backend off (it builds a plan per new shape, i.e. per decode "
            "step); set cudnn_attention: true to keep it")


def check_quantization_backend(quantization: str, device_map: dict[str, Any]) -> None:
    """bitsandbytes 4/8-bit needs a CUDA GPU and a CUDA build of its native library: fail before reading weights."""
    if quantization == "none":
        return
    import torch

    flag = "--4bit" if quantization == "4bit" else "--8bit"
    key = "use_4bit" if quantization == "4bit" else "use_8bit"
    if not torch.cuda.is_available():
        raise NoGoError(
            f"{quantization} quantization uses bitsandbytes, which needs a CUDA GPU, and this machine has none",
            fix=f"drop {flag} (set {key}: false) to load in bfloat16/float32 on the CPU, or run on a machine with an NVIDIA GPU",
        )
    if not gpu_indices(device_map):
        raise NoGoError(
            f"{quantization} quantization needs modules on a GPU, but the plan places everything on cpu/disk",
            fix="give the GPUs a max_memory budget, or drop " + flag,
        )
    try:
        import bitsandbytes  # noqa: F401
        from bitsandbytes import cextension
    except Exception as exc:
        raise RunFailed(
            f"bitsandbytes is needed for {quantization} but failed to import ({type(exc).__name__}: {str(exc)[:120]})",
            fix=f"pip install bitsandbytes (a build for CUDA {torch.version.cuda})",
        ) from None
    lib = getattr(cextension, "lib", None)
    if lib is not None and not getattr(lib, "compiled_with_cuda", True):
        raise RunFailed(
            f"bitsandbytes has no working CUDA backend here (CUDA {torch.version.cuda}), so {quantization} cannot load",
            fix=f"install a bitsandbytes wheel that ships libbitsandbytes_cuda{(torch.version.cuda or '').replace('.', '')}.so, "
            f"or drop {flag}",
        )


def quantization_config(spec: "ModelSpec", plan: "DevicePlan") -> Any | None:
    """The BitsAndBytesConfig for the plan: NF4 + double quant + bf16 compute, or int8; fp32 CPU offload allowed
    whenever the map has CPU/disk entries (those modules stay unquantized under stock transformers)."""
    if plan.quantization == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    offload = bool(offloaded_devices(plan.device_map))
    if plan.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_enable_fp32_cpu_offload=offload)
    compute = torch.float16 if plan.dtype == "float16" else torch.bfloat16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=spec.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute,
        llm_int8_enable_fp32_cpu_offload=offload,
    )
