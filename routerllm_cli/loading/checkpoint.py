"""Finding a checkpoint's files (local folder, hub cache, GGUF) and reading its shards ahead of the load."""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from routerllm_cli import hub
from routerllm_cli.errors import ConfigError
from routerllm_cli.loading.placement import gpu_indices, module_device

if TYPE_CHECKING:
    from routerllm_cli.plan import DevicePlan


PREFETCH_MIN_BYTES = 64 * 2**20  # below this a load is over before read-ahead could matter


# ------------------------------------------------------------------------------------------- checkpoint
@dataclass
class Checkpoint:
    """The files a load will read, as far as they are known before loading (a hub model not yet cached: none)."""

    folder: Path | None
    files: list[Path]
    total_bytes: int | None
    tensor_bytes: dict[str, tuple[int, int]]  # tensor name -> (file index, bytes), from safetensors headers
    fmt: str  # "safetensors" | "bin" | "gguf" | "unknown"


def _safetensors_header(path: Path) -> dict[str, dict]:
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return header


def _checkpoint_in(folder: Path, gguf_file: str | None) -> Checkpoint:
    if gguf_file:
        path = folder / gguf_file
        return Checkpoint(folder, [path], path.stat().st_size if path.is_file() else None, {}, "gguf")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / n for n in names]
    else:
        files = sorted(folder.glob("*.safetensors"))
    fmt = "safetensors"
    if not files:
        files, fmt = sorted(folder.glob("pytorch_model*.bin")), "bin"
    files = [f for f in files if f.is_file()]
    sizes: dict[str, tuple[int, int]] = {}
    if fmt == "safetensors":
        for i, f in enumerate(files):
            try:
                header = _safetensors_header(f)
            except (OSError, ValueError, struct.error):
                continue
            for k, v in header.items():
                sizes[k] = (i, v["data_offsets"][1] - v["data_offsets"][0])
    return Checkpoint(folder, files, sum(f.stat().st_size for f in files) if files else None, sizes,
                      fmt if files else "unknown")


def _hub_snapshot(repo_id: str, token: str | None) -> Path | None:
    """The cached snapshot folder of a hub model, or None. Raises ConfigError when offline and it is missing."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(hub.cache_dir()))
    if isinstance(cached, str):
        return Path(cached).parent
    if hub.offline():
        raise ConfigError(
            f"{repo_id} is not in the Hugging Face cache ({hub.cache_dir()}) and HF_HUB_OFFLINE is set",
            fix=f"download it first with network access (`hf download {repo_id}`), point HF_HOME at the cache "
            "that holds it, or unset HF_HUB_OFFLINE",
        )
    return None


def locate_checkpoint(ref: Any, token: str | None = None) -> Checkpoint:
    source = Path(ref.source).expanduser()
    if source.is_dir():
        return _checkpoint_in(source, ref.gguf_file)
    snapshot = _hub_snapshot(ref.source, token)
    if snapshot is None:
        return Checkpoint(None, [], None, {}, "unknown")
    return _checkpoint_in(snapshot, ref.gguf_file)


# ------------------------------------------------------------------------------------------- read-ahead
def natural_key(name: str) -> tuple:
    """transformers' order of loading tensors: dotted parts, digits numerically."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


class ShardPrefetcher:
    """Reads checkpoint shards sequentially, in large blocks, in the order the load consumes them and at most
    `window_bytes` ahead of it, so transformers' per-tensor mmap faults find the page cache warm.

    Why: transformers reads tensors through mmap page faults (small kernel read-ahead), and with bitsandbytes
    quantization or a "disk" entry it does so from one thread, which leaves a fast disk mostly idle. One big
    sequential reader keeps it busy; the window keeps what it reads from being evicted before use.
    Set ROUTERLLM_PREFETCH=0 to turn it off (benchmarks/load_speed.py compares both)."""

    BLOCK = 16 * 2**20

    def __init__(self, files: list[Path], starts: list[int], window_bytes: int):
        import threading

        self.files, self.starts, self.window = files, starts, window_bytes
        self.consumed = 0
        self.read_bytes = 0
        self.seconds = 0.0
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="routerllm-prefetch", daemon=True)

    def start(self) -> "ShardPrefetcher":
        self._thread.start()
        return self

    def advance(self, consumed_bytes: int) -> None:
        with self._cond:
            self.consumed = consumed_bytes
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        buf = bytearray(self.BLOCK)
        start = time.perf_counter()
        for path, offset in zip(self.files, self.starts):
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self.consumed + self.window >= offset)
                if self._stop:
                    break
            try:
                with open(path, "rb", buffering=0) as fh:
                    os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                    while not self._stop and (n := fh.readinto(buf)):
                        self.read_bytes += n
            except OSError:  # read-ahead is an optimisation: the load itself reports real I/O errors
                pass
        self.seconds = time.perf_counter() - start


def plan_prefetch(ckpt: Checkpoint, plan: "DevicePlan") -> ShardPrefetcher | None:
    """A prefetcher for the shards this load reads now (not those only disk entries use), or None when reading
    ahead would not help: not safetensors, tiny, or no GPU in the plan. ROUTERLLM_PREFETCH=0 turns it off,
    =1 forces it on (also on CPU-only loads)."""
    switch = os.environ.get("ROUTERLLM_PREFETCH", "auto").strip().lower()
    if switch in ("0", "false", "no", "off"):
        return None
    if ckpt.fmt != "safetensors" or not ckpt.tensor_bytes or (ckpt.total_bytes or 0) < PREFETCH_MIN_BYTES:
        return None
    # Without a GPU, CPU tensors in the checkpoint's dtype stay mmapped (the load reads nothing up front), and a
    # converting load keeps the cores busy: a reader thread competed with them (slower on a 2-core machine).
    if not gpu_indices(plan.device_map) and switch not in ("1", "true", "yes", "on"):
        return None
    order: list[int] = []
    for name in sorted(ckpt.tensor_bytes, key=natural_key):
        index = ckpt.tensor_bytes[name][0]
        if index not in order and module_device(name, plan.device_map) != "disk":
            order.append(index)
    if not order:
        return None
    files = [ckpt.files[i] for i in order]
    sizes = [f.stat().st_size for f in files]
    starts = [sum(sizes[:i]) for i in range(len(files))]
    try:
        import psutil

        room = psutil.virtual_memory().available // 4
    except Exception:
        room = 4 * 2**30
    window = max(min(2 * max(sizes), room), 256 * 2**20)
    return ShardPrefetcher(files, starts, window)
