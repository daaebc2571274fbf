"""What a plan is: per-device allocations, the plan itself, and the constants it is sized with."""

from __future__ import annotations

from dataclasses import dataclass, field

from routerllm_cli.catalog import ModelRef



CUDA_CONTEXT_BYTES = 1_900 * 10**6  # per GPU: CUDA context, cuBLAS workspaces and allocator slack (NVML used minus
# torch peak allocated: 1.75 and 1.83 GB on 2x H200, torch 2.11 + CUDA 13, benchmarks/plan_vs_actual.py)
CPU_HEADROOM_MIN = 3 * 10**9  # the Python process with torch/transformers, before any weights
CPU_HEADROOM_FRACTION = 0.05  # page tables, the OS, whatever else runs
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Batch limits the planner chooses within. A decode step of a batch costs about what a step of one sequence costs
# until the GPU runs out of work (an H200 ran SmolLM2-135M at 28 ms a step alone and 39 ms at 164 sequences), so
# the GPU cap is high and memory decides. On a CPU the step's compute grows with the batch and a small batch
# keeps latency low.
MAX_AUTO_BATCH = 256
CPU_BATCH = 8

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
    # Where each device_map entry computes (and keeps its KV cache): its GPU, or for an offloaded entry the GPU
    # the offload engine runs it on. The offload engine and the batch sizing read it from here.
    run_devices: dict[str, int | str] = field(default_factory=dict)
    kv_per_token_by_device: dict[str, int] = field(default_factory=dict)  # KV bytes per token held on each device
    batch_mode: str = "pinned"  # "pinned" (the run set it) | "auto" (the planner chose it for the bench's wall time)
    prompt_tokens: int = 0  # the longest prompt the KV cache is sized for
    max_new_tokens: int = 0
    num_examples: int = 0
    # "nf4": offloaded 4-bit layers are quantized while loading and held packed on CPU/disk; "16-bit": as loaded
    host_format: str = "16-bit"
    alternatives: list[dict] = field(default_factory=list)  # batches the planner weighed: batch, placement, times
    offload_links: int = 1  # host links carrying offloaded weights (GPUs relaying over P2P, offload/links.py)

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def kv_bytes_for(self, device: str, batch: int | None = None, seq_len: int | None = None) -> int:
        """KV cache held on `device` for `batch` sequences of `seq_len` tokens (the plan's own by default)."""
        return (self.kv_per_token_by_device.get(str(device), 0) * (self.batch_size if batch is None else batch)
                * (self.seq_len if seq_len is None else seq_len))

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
            "run_devices": self.run_devices, "kv_per_token_by_device": self.kv_per_token_by_device,
            "batch_mode": self.batch_mode, "prompt_tokens": self.prompt_tokens, "max_new_tokens": self.max_new_tokens,
            "num_examples": self.num_examples, "host_format": self.host_format, "alternatives": self.alternatives,
            "offload_links": self.offload_links,
        }
