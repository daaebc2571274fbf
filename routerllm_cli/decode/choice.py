"""Which decode path a run takes, and why: the captured static step, or `generate` (eager).

`auto` takes the captured step when every layer of the plan sits on a GPU (one, or split over 2-3: one graph per
GPU's layers, split.py) and the model is one the static step can run; anything offloaded keeps the offload engine (its step is the host-to-GPU copy, which graphs do not
shorten). The reason is a sentence for the bench screen and the run summary.

`bench.decode_fuse` (auto | on | off) says whether that step is compiled with its decoder layers fused first
(fuse.py). auto fuses a captured step of at least FUSE_AUTO_MIN_BYTES of 16-bit weights. Fusing removes about
two dozen small launches per layer, so it saves about as much per step on a small model as on a large one of as
many layers, while compiling costs seconds to tens of seconds per batch bucket (cold cache). A small model's run
is a few hundred steps at a large batch and does not win that back; a large one decodes at the smaller batches
that fit beside its cache, so more steps, and its latency, energy and cost per token are measured on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DECODE_PATHS = ("auto", "eager", "compiled")
FUSE_SETTINGS = ("auto", "on", "off")
FUSE_AUTO_MIN_BYTES = 4 * 10**9
# Architectures whose step the CPU tests hold equal to `generate` (tests/test_resident_decode.py). Others may build
# something from the mask's shape (ALiBi, say) and would answer wrong without failing, so they stay eager.
VALIDATED_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma")

# generation_config fields that make `generate` change logits even when greedy; the static step applies none.
_LOGITS_FIELDS = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                  "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None,
                  "sequence_bias": None, "min_new_tokens": None, "forced_eos_token_id": None,
                  "exponential_decay_length_penalty": None}
_SAMPLING_FIELDS = {"min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}


@dataclass
class DecodeChoice:
    path: str  # "compiled" | "eager"
    reason: str
    capture: bool = False  # CUDA graphs (False with "compiled": the static step runs uncaptured, on a CPU)
    requested: str = "auto"
    fuse: bool = False  # the static step compiled with its decoder layers fused (fuse.py)
    fuse_reason: str = ""
    fuse_requested: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unsupported_reason(model: Any, *, sampling: bool = False) -> str | None:
    """Why the static step cannot reproduce `generate` for this model, or None."""
    config = model.config
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if getattr(config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    model_type = getattr(text, "model_type", None) or getattr(config, "model_type", None)
    if model_type not in VALIDATED_TYPES:
        return f"model type {model_type!r}: the static step is validated for {', '.join(VALIDATED_TYPES)}"
    attn = getattr(text, "_attn_implementation", None)
    if attn not in ("sdpa", "eager"):
        return f"attention {attn}: the static step builds masks for sdpa and eager attention"
    kinds = sorted({t for t in (getattr(text, "layer_types", None) or []) if t != "full_attention"})
    if kinds:
        return f"{', '.join(kinds)} layers need their own cache (the static step holds full attention only)"
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True) \
            and getattr(text, "layer_types", None) is None:
        return "sliding-window attention needs its own cache (the static step holds full attention only)"
    gen = getattr(model, "generation_config", None)
    fields = {**_LOGITS_FIELDS, **(_SAMPLING_FIELDS if sampling else {})}
    for name, neutral in fields.items():
        value = getattr(gen, name, None)
        if value is not None and value != neutral and value != [] and value != {}:
            return f"the model's generation_config sets {name}={value!r}, which the static step does not apply"
    return None


def choose_fuse(requested: str, *, capture: bool, weight_bytes: int, quantization: str = "none") -> tuple[bool, str]:
    """Whether the static step is compiled with its layers fused, and why (`requested` is bench.decode_fuse)."""
    if requested == "off":
        return False, "off was asked for"
    if requested == "on":
        return True, "on was asked for: each decoder layer compiled by inductor"
    if not capture:
        return False, "the step runs uncaptured: compiling would only add time"
    if quantization != "none":
        return False, f"{quantization} bitsandbytes layers are not fused under auto (decode_fuse: on tries them)"
    size = f"{weight_bytes / 1e9:.2g} GB of weights"
    if weight_bytes < FUSE_AUTO_MIN_BYTES:
        return False, f"{size} (under {FUSE_AUTO_MIN_BYTES / 1e9:.0f} GB): a run this short does not win back the compile"
    return True, f"{size}: each decoder layer compiled by inductor (once per batch bucket, cached on disk)"


def choose_decode(requested: str, plan: Any, *, continuous: bool, model: Any = None, sampling: bool = False,
                  cuda_available: bool | None = None, fuse: str = "auto") -> DecodeChoice:
    """`requested` is bench.decode (auto | eager | compiled), `fuse` bench.decode_fuse (auto | on | off); `plan`
    the DevicePlan the model was loaded with."""
    choice = _choose_path(requested, plan, continuous=continuous, model=model, sampling=sampling,
                          cuda_available=cuda_available)
    choice.fuse_requested = fuse
    if choice.path == "compiled":
        choice.fuse, choice.fuse_reason = choose_fuse(fuse, capture=choice.capture, weight_bytes=plan.weight_bytes,
                                                      quantization=plan.quantization)
    elif fuse == "on":
        choice.fuse_reason = "on was asked for, but the static step does not run (eager decode)"
    return choice


def _choose_path(requested: str, plan: Any, *, continuous: bool, model: Any, sampling: bool,
                 cuda_available: bool | None) -> DecodeChoice:
    def eager(reason: str) -> DecodeChoice:
        if requested == "compiled":
            reason = "compiled was asked for, but " + reason
        return DecodeChoice("eager", reason, False, requested)

    if requested == "eager":
        return DecodeChoice("eager", "eager was asked for: generate with a dynamic cache", False, requested)
    placed = set(plan.device_map.values())
    gpus = sorted(v for v in placed if isinstance(v, int))
    offloaded = sorted(str(v) for v in placed if str(v) in ("cpu", "disk"))
    if gpus and offloaded:
        return eager(f"layers on {'/'.join(offloaded)} decode through the offload engine, whose step is the copy "
                     "to the GPU")
    if not gpus and requested != "compiled":
        return eager("no GPU for CUDA graphs")
    if not continuous:
        return eager("static batching decodes through generate (the static step serves continuous batching)")
    reason = unsupported_reason(model, sampling=sampling) if model is not None else None
    if reason is not None:
        return eager(reason)
    if not gpus:
        return DecodeChoice("compiled", "no GPU for CUDA graphs: the static-cache step runs uncaptured",
                            False, requested)
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        return eager("CUDA is not available in this process")
    if len(gpus) > 1:
        reason = (f"layers split over GPUs {', '.join(map(str, gpus))}: each GPU's layers one CUDA graph per batch "
                  "bucket, the hidden state handed from one GPU to the next")
    else:
        reason = f"every layer on GPU {gpus[0]}: one CUDA graph per batch bucket"
    if plan.quantization != "none":
        reason += f"; {plan.quantization} bitsandbytes layers are captured if they allow it, else eager"
    return DecodeChoice("compiled", reason, True, requested)
