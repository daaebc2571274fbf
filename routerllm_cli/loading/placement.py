"""Where a loaded model's modules are and what memory they use, against the plan."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The loader's modules read device maps through these names; the one implementation is routerllm_cli.device_map.
from routerllm_cli.device_map import device_of, gpu_indices, offloaded_devices  # noqa: F401
from routerllm_cli.device_map import device_of as module_device  # noqa: F401

if TYPE_CHECKING:
    from routerllm_cli.plan import DevicePlan


_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer|block)\.(\d+)$")


# ------------------------------------------------------------------------------------------- measuring
class PeakRSS:
    """The process's peak resident set size while the block runs, sampled every `interval` seconds on a thread
    (what host memory a load really needed, packed offload buffers and mapped shard pages included)."""

    def __init__(self, interval: float = 0.02):
        import threading

        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="routerllm-rss", daemon=True)

    def _rss(self) -> int:
        import psutil

        return int(psutil.Process().memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _tensor_bytes(t: Any) -> int:
    return t.numel() * t.element_size()


def summarize_placement(model: Any, plan: "DevicePlan") -> dict[str, dict]:
    """{device: {"layers", "bytes", "modules"}} from the loaded model's own tensors (shapes and dtypes as loaded,
    so 4-bit layers count packed and offloaded 16-bit layers count 16-bit)."""
    out: dict[str, dict] = {}
    seen: set[int] = set()
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, t in tensors:
        if id(t) in seen:
            continue
        seen.add(id(t))
        dev = device_of(name, plan.device_map)
        key = str(dev) if dev is not None else "cpu"
        out.setdefault(key, {"layers": "", "bytes": 0, "modules": 0})["bytes"] += _tensor_bytes(t)
        qs = getattr(t, "quant_state", None)  # NF4 absmax and friends live beside the packed weight
        if qs is not None and hasattr(qs, "absmax"):
            out[key]["bytes"] += _tensor_bytes(qs.absmax)
    for key, dev in plan.device_map.items():
        entry = out.setdefault(str(dev), {"layers": "", "bytes": 0, "modules": 0})
        entry["modules"] += 1
    for dev, entry in out.items():
        alloc = plan.devices.get(dev) if isinstance(plan.devices, dict) else None
        rng = getattr(alloc, "layers", None)
        if rng is None:
            idx = sorted(int(m.group(1)) for k, d in plan.device_map.items()
                         if str(d) == dev and (m := _LAYER_RE.search(k)))
            rng = (idx[0], idx[-1]) if idx else None
        entry["layers"] = "" if rng is None else (str(rng[0]) if rng[0] == rng[1] else f"{rng[0]}-{rng[1]}")
    order = {d: i for i, d in enumerate(sorted((d for d in out if d.isdigit()), key=int) + ["cpu", "disk"])}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], 99)))


def _nvml_process_bytes(index: int) -> tuple[int | None, int | None]:
    """(bytes this process holds on GPU `index`, bytes used on it in all) from NVML, matched by UUID."""
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        try:
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
            used = pynvml.nvmlDeviceGetMemoryInfo(handle).used
            mine = next((p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                         if p.pid == os.getpid() and p.usedGpuMemory), None)
            return mine, int(used)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML absent or restricted (containers often hide other pids): torch's figures remain
        return None, None


def measure_memory(plan: "DevicePlan", rss_before: int, offload_folder: Path | None) -> tuple[dict[str, int], dict[str, dict]]:
    """Memory actually used: per GPU NVML's figure for this process (torch reserved where NVML cannot say), the
    process RSS for cpu, and the offload folder's bytes for disk."""
    import psutil
    import torch

    used: dict[str, int] = {}
    detail: dict[str, dict] = {}
    for i in gpu_indices(plan.device_map):
        if not torch.cuda.is_available() or i >= torch.cuda.device_count():
            continue
        allocated, reserved = torch.cuda.memory_allocated(i), torch.cuda.memory_reserved(i)
        mine, total_used = _nvml_process_bytes(i)
        used[str(i)] = int(mine) if mine else int(reserved)
        detail[str(i)] = {"torch_allocated": allocated, "torch_reserved": reserved, "nvml_process": mine,
                          "nvml_device_used": total_used}
    rss = psutil.Process().memory_info().rss
    used["cpu"] = int(rss)
    detail["cpu"] = {"rss": int(rss), "rss_before_load": int(rss_before), "rss_growth": int(rss - rss_before)}
    if "disk" in {str(v) for v in plan.device_map.values()} and offload_folder is not None:
        files = [p for p in Path(offload_folder).rglob("*") if p.is_file() and not p.name.startswith(".routerllm")]
        used["disk"] = sum(p.stat().st_size for p in files)
        detail["disk"] = {"offload_folder": str(offload_folder), "files": len(files)}
    return used, detail


def first_input_device(model: Any) -> Any:
    import torch

    emb = model.get_input_embeddings()
    hook = getattr(emb, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device("cuda", dev) if isinstance(dev, int) else torch.device(dev)
    weight = getattr(emb, "weight", None)
    if weight is None or weight.device.type == "meta":
        return torch.device("cpu")
    return weight.device
