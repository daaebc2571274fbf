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

from routerllm_cli.plan.availability import checkpoint_bytes, model_checks, token_source
from routerllm_cli.plan.meta import (ModelSizes, build_meta_model, compute_dtype, hub_config_path, model_config,
                                     model_sizes, quantized_weight_names)
from routerllm_cli.plan.placement import (device_of, is_offloaded, key_of, place_modules, run_devices,
                                          weightless_to_first_gpu)
from routerllm_cli.plan.planner import plan_model
from routerllm_cli.plan.preflight import PreflightReport, run_preflight
from routerllm_cli.plan.run import plan_for_run, require_go
from routerllm_cli.plan.types import (CPU_BATCH, CPU_HEADROOM_FRACTION, CPU_HEADROOM_MIN, CUDA_CONTEXT_BYTES,
                                      DTYPE_BYTES, MAX_AUTO_BATCH, DeviceAllocation, DevicePlan)

__all__ = [
    "CPU_BATCH", "MAX_AUTO_BATCH", "is_offloaded", "plan_for_run", "require_go", "run_devices",
    "CPU_HEADROOM_FRACTION", "CPU_HEADROOM_MIN", "CUDA_CONTEXT_BYTES", "DTYPE_BYTES", "DeviceAllocation", "DevicePlan",
    "ModelSizes", "PreflightReport", "build_meta_model", "checkpoint_bytes", "compute_dtype", "device_of",
    "hub_config_path", "key_of", "model_checks", "model_config", "model_sizes", "place_modules", "plan_model",
    "quantized_weight_names", "run_preflight", "token_source", "weightless_to_first_gpu",
]
