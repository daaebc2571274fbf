"""The loader: a `DevicePlan` becomes a `LoadedModel` placed exactly as the plan says.

Why `from_pretrained` with the plan's concrete dict device map (and not `device_map="auto"`, nor
`init_empty_weights` + `load_checkpoint_and_dispatch`): it is the one path on which bitsandbytes 4-bit keeps working
with CPU/disk offload. transformers decides at load time which modules to quantize, and it leaves CPU/disk modules
unquantized only when `device_map` is a dict; with the string "auto" it quantizes them too and accelerate's
dispatch then fails on their meta quantization state. `load_checkpoint_and_dispatch` never quantizes at all. So the
planner's dict (every decoder layer whole on one device) goes in as is; `max_memory` is not passed because a dict
map already fixes every placement. transformers 5 reads checkpoints shard by shard and streams disk-placed
safetensors weights in place, so `offload_state_dict` has nothing left to do there.

Quantized modules placed on "cpu"/"disk" stay 16-bit under stock transformers; routerllm's offload engine
(`offload/engine.py`, the default `offload_engine: routerllm`) takes those modules over after the load and can keep
them 4-bit; `offload_engine: accelerate` keeps the stock hooks as the reference path.

Everything a user can act on is raised as a `RouterLLMError` with the fix: CUDA OOM on a named device, a gated repo,
a model missing from the cache while offline, bitsandbytes without CUDA, a full disk under the offload folder.
"""

from routerllm_cli.loading.checkpoint import Checkpoint, locate_checkpoint, plan_prefetch
from routerllm_cli.loading.choices import (check_quantization_backend, choose_attention, choose_sdpa_backends,
                                           quantization_config)
from routerllm_cli.loading.failures import translate_load_error
from routerllm_cli.loading.loader import DEFAULT_PROMPT, LoadedModel, load_and_test, load_model, test_generation
from routerllm_cli.loading.placement import measure_memory, summarize_placement
from routerllm_cli.loading.tokenizer import GGUF_SPM_MIN_TRANSFORMERS, check_gguf_tokenizer, load_tokenizer

__all__ = [
    "DEFAULT_PROMPT", "GGUF_SPM_MIN_TRANSFORMERS", "Checkpoint", "LoadedModel", "check_gguf_tokenizer",
    "check_quantization_backend", "choose_attention", "choose_sdpa_backends",
    "load_and_test", "load_model", "load_tokenizer", "locate_checkpoint", "measure_memory", "plan_prefetch",
    "quantization_config", "summarize_placement", "test_generation", "translate_load_error",
]
