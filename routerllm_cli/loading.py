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

from __future__ import annotations

import gc
import json
import os
import re
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from routerllm_cli.errors import ConfigError, NoGoError, RouterLLMError, RunFailed
from routerllm_cli.units import format_bytes

if TYPE_CHECKING:
    from routerllm_cli.config import ModelSpec
    from routerllm_cli.plan import DevicePlan

Progress = Callable[[dict], None]

PREFETCH_MIN_BYTES = 64 * 2**20  # below this a load is over before read-ahead could matter
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer|block)\.(\d+)$")


# ------------------------------------------------------------------------------------------- the result
@dataclass
class LoadedModel:
    """A model on its devices, with what the load measured. Call `close()` to free it and release the folder lock."""

    model: Any
    tokenizer: Any
    plan: "DevicePlan"
    load_seconds: float
    attn_implementation: str
    quantization: str
    offload: Any | None  # OffloadEngine or None
    device_map_summary: dict[str, dict]  # {device: {"layers": "0-39", "bytes": int, "modules": int}}
    memory_used: dict[str, int]  # {device: bytes} measured after load
    input_device: Any  # where input_ids go
    attn_reason: str = ""
    memory_detail: dict[str, dict] = field(default_factory=dict)  # torch/NVML/RSS figures behind memory_used
    offload_locations: dict[str, dict] = field(default_factory=dict)  # {"cpu"|"disk": {"bytes", "where"}}
    checkpoint_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    _lock: Any = field(default=None, repr=False)
    closed: bool = False

    @property
    def offload_stats(self) -> dict | None:
        if self.offload is None:
            return None
        from dataclasses import asdict

        return asdict(self.offload.stats())

    def close(self) -> None:
        """Detach the offload engine, drop the model, empty the CUDA cache and release the offload-folder lock."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.offload is not None:
                self.offload.detach()
        finally:
            self.offload = None
            self.model = None
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            finally:
                if self._lock is not None:
                    self._lock.release()
                    self._lock = None

    def __enter__(self) -> "LoadedModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def summary(self) -> dict:
        """JSON-ready facts about the load (what `routerllm load --json` prints besides the generation)."""
        return {
            "model": self.plan.model.name,
            "source": self.plan.model.source,
            "load_seconds": round(self.load_seconds, 3),
            "dtype": self.plan.dtype,
            "quantization": self.quantization,
            "attn_implementation": self.attn_implementation,
            "attn_reason": self.attn_reason,
            "checkpoint_bytes": self.checkpoint_bytes,
            "device_map_summary": self.device_map_summary,
            "memory_used": self.memory_used,
            "memory_detail": self.memory_detail,
            "offload_locations": self.offload_locations,
            "offload_engine": self.offload_stats,
            "input_device": str(self.input_device),
            "notes": self.notes,
        }


# ------------------------------------------------------------------------------------------- environment
def hf_cache_dir() -> str:
    """The hub cache, read from the environment at call time (HF_HUB_CACHE, else HF_HOME/hub)."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return os.path.expanduser(env["HF_HUB_CACHE"])
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _gpu_indices(device_map: dict[str, Any]) -> list[int]:
    return sorted({v for v in device_map.values() if isinstance(v, int) and not isinstance(v, bool)})


def _offloaded_devices(device_map: dict[str, Any]) -> set[str]:
    values = {str(v) for v in device_map.values()}
    return values & {"cpu", "disk"} if _gpu_indices(device_map) else values & {"disk"}


# ------------------------------------------------------------------------------------------- choices
def choose_attention(spec: "ModelSpec", plan: "DevicePlan") -> tuple[str, str]:
    """flash_attention_2 when asked for, importable, on a GPU and in fp16/bf16; else sdpa. Returns (impl, why)."""
    if not spec.use_flash_attention:
        return "sdpa", "use_flash_attention is off"
    if plan.dtype not in ("bfloat16", "float16"):
        return "sdpa", f"flash-attention needs fp16/bf16 and the plan computes in {plan.dtype}"
    if not _gpu_indices(plan.device_map):
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
    if attn != "sdpa" or cudnn_attention or not _gpu_indices(device_map):
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
    if not _gpu_indices(device_map):
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

    offload = bool(_offloaded_devices(plan.device_map))
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

    cached = try_to_load_from_cache(repo_id, "config.json", cache_dir=hf_cache_dir())
    if isinstance(cached, str):
        return Path(cached).parent
    if hf_offline():
        raise ConfigError(
            f"{repo_id} is not in the Hugging Face cache ({hf_cache_dir()}) and HF_HUB_OFFLINE is set",
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
    if not _gpu_indices(plan.device_map) and switch not in ("1", "true", "yes", "on"):
        return None
    order: list[int] = []
    for name in sorted(ckpt.tensor_bytes, key=natural_key):
        index = ckpt.tensor_bytes[name][0]
        if index not in order and _module_device(name, plan.device_map) != "disk":
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


# ------------------------------------------------------------------------------------------- progress
class _Bar:
    """A tqdm stand-in that reports to a callback instead of drawing (transformers' `set_tqdm_hook`)."""

    def __init__(self, iterable: Any = None, *args: Any, desc: str | None = None, total: int | None = None,
                 on_update: Callable[["_Bar", Any], None] | None = None, **_: Any):
        self.iterable = iterable
        self.desc = desc or ""
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total = total
        self.n = 0
        self.on_update = on_update

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            self.n += 1
            if self.on_update:
                self.on_update(self, item)

    def __len__(self) -> int:
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.on_update:
            self.on_update(self, None)

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., None]:  # set_description, set_postfix, refresh, ...
        return lambda *a, **k: None


class _WeightsProgress:
    """Turns transformers' per-tensor "Loading weights" iteration into shards/bytes/elapsed events."""

    def __init__(self, checkpoint: Checkpoint, emit: Callable[..., None] | None,
                 prefetcher: ShardPrefetcher | None = None):
        self.ckpt = checkpoint
        self.emit = emit
        self.prefetcher = prefetcher
        self.bytes_done = 0
        self.left_in_file: dict[int, int] = {}
        for _, (i, _b) in checkpoint.tensor_bytes.items():
            self.left_in_file[i] = self.left_in_file.get(i, 0) + 1
        self.shards_done = 0
        self.last = 0.0
        # tensor bytes when the headers are known (what gets placed), else the files' sizes
        self.total = sum(b for _, b in checkpoint.tensor_bytes.values()) or checkpoint.total_bytes

    def hook(self, factory: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        desc = kwargs.get("desc") or ""
        weights = desc.startswith("Loading weights")
        if self.emit is None:  # nobody listens: keep transformers' own bar, only track what it consumes
            if not weights or not args:
                return factory(*args, **kwargs)
            items, rest = args[0], args[1:]
            tracker = _Bar(items, on_update=self._weights, total=kwargs.get("total"))
            return factory(iter(tracker), *rest, **{**kwargs, "total": tracker.total})
        if weights:
            return _Bar(*args, **{**kwargs, "on_update": self._weights})
        return _Bar(*args, **{**kwargs, "on_update": self._other})

    def _other(self, bar: _Bar, _item: Any) -> None:
        if self.emit is None:
            return
        now = time.perf_counter()
        if now - self.last > 0.1 or bar.n == bar.total:
            self.last = now
            self.emit("prepare", message=bar.desc.strip(" .:"), done=bar.n, total=bar.total)

    def _weights(self, bar: _Bar, item: Any) -> None:
        name = item[0] if isinstance(item, tuple) and item else None
        known = self.ckpt.tensor_bytes.get(name) if name else None
        if known is not None:
            file_index, nbytes = known
            self.bytes_done += nbytes
            self.left_in_file[file_index] -= 1
            if self.left_in_file[file_index] == 0:
                self.shards_done += 1
        elif self.total and bar.total:
            self.bytes_done = int(self.total * bar.n / bar.total)
        if self.prefetcher is not None:
            self.prefetcher.advance(self.bytes_done)
        now = time.perf_counter()
        if self.emit is not None and (now - self.last > 0.05 or bar.n == bar.total):
            self.last = now
            total = self.total
            self.emit("weights", tensors_done=bar.n, tensors_total=bar.total,
                      bytes_done=min(self.bytes_done, total) if total else self.bytes_done, bytes_total=total,
                      shards_done=self.shards_done if self.ckpt.tensor_bytes else None,
                      shards_total=len(self.ckpt.files) or None)


@contextmanager
def _transformers_progress(hook: Callable[..., Any] | None) -> Iterator[None]:
    """Route transformers' tqdm bars through `hook` while loading (no-op where set_tqdm_hook does not exist:
    the load then works as before, only without byte counts and read-ahead pacing)."""
    from transformers.utils import logging as hf_logging

    setter = getattr(hf_logging, "set_tqdm_hook", None)
    if hook is None or setter is None:
        yield
        return
    # GGUF de-quantization (the slow part of a GGUF load) draws a plain tqdm bar that the hook does not see;
    # its module-level name is swapped for the duration of the load.
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    plain = getattr(gguf_utils, "tqdm", None)
    previous = setter(hook)
    if plain is not None:
        gguf_utils.tqdm = lambda *args, **kwargs: hook(plain, args, kwargs)
    try:
        yield
    finally:
        setter(previous)
        if plain is not None:
            gguf_utils.tqdm = plain


# ------------------------------------------------------------------------------------------- failures
def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def translate_load_error(exc: BaseException, plan: "DevicePlan", offload_folder: Path | None) -> RouterLLMError | None:
    """Map a failure during loading to a one-line error with the fix, or None when it is not a known one."""
    model_id = plan.model.source
    for e in _chain(exc):
        name = type(e).__name__
        text = str(e)
        if name == "OutOfMemoryError" or "CUDA out of memory" in text:
            m = re.search(r"GPU (\d+) has a total capacity", text) or re.search(r"cuda:(\d+)", text)
            gpus = _gpu_indices(plan.device_map)
            dev = int(m.group(1)) if m else (gpus[0] if len(gpus) == 1 else None)
            if dev is not None:
                alloc = plan.devices.get(str(dev))
                # the user's budget for that GPU (what --max-memory sets), else what accelerate was left with
                budget = (alloc.budget_bytes if alloc is not None and alloc.budget_bytes else None) or plan.max_memory.get(dev)
                planned = f"; the plan put {format_bytes(alloc.weight_bytes)} of weights there" if alloc else ""
                lower = f"{max(int((budget or 0) * 0.85) // 10**9, 1)}GB"
                return RunFailed(
                    f"CUDA out of memory while loading onto GPU {dev} (its max_memory budget is "
                    f"{format_bytes(budget) if budget else 'unset'}{planned})",
                    fix=f"lower that GPU's budget (e.g. --max-memory {dev}={lower}), enable 4-bit (--4bit), "
                    "or free the GPU (see `routerllm preflight`)",
                )
            return RunFailed("CUDA out of memory while loading",
                             fix="lower the GPUs' max_memory, enable 4-bit (--4bit), or free the GPUs (see `routerllm preflight`)")
        if name == "GatedRepoError" or "gated repo" in text.lower() or "is a gated repository" in text:
            return ConfigError(
                f"{model_id} is a gated repository and this machine has no access token for it",
                fix=f"accept the license at https://huggingface.co/{model_id}, then run `hf auth login` (or set HF_TOKEN)",
            )
        if name == "RepositoryNotFoundError" or "is not a valid model identifier" in text:
            return ConfigError(
                f"{model_id} was not found on the Hugging Face hub (or it is private)",
                fix="check the id, or log in with `hf auth login` / set HF_TOKEN if it is private",
            )
        if name == "LocalEntryNotFoundError" or "couldn't connect" in text.lower() or (
            hf_offline() and "offline" in text.lower()
        ):
            return ConfigError(
                f"{model_id} is not complete in the Hugging Face cache ({hf_cache_dir()}) and the hub cannot be reached",
                fix=f"download it with network access (`hf download {model_id}`) or point HF_HOME at the cache that holds it",
            )
        if isinstance(e, OSError) and e.errno == 28:
            where = f" under the offload folder {offload_folder}" if offload_folder else ""
            return RunFailed(
                f"disk full while writing{where} ({getattr(e, 'filename', None) or 'offloaded weights'})",
                fix="free space there, or point offload_folder at a larger disk (`routerllm preflight` shows the bytes needed)",
            )
        if "bitsandbytes" in text.lower() and ("cuda" in text.lower() or "gpu" in text.lower()):
            return RunFailed(f"bitsandbytes failed: {text.splitlines()[0][:200]}",
                             fix="install a bitsandbytes build matching your CUDA, or drop --4bit/--8bit")
    return None


# ------------------------------------------------------------------------------------------- measuring
def _module_device(name: str, device_map: dict[str, Any]) -> Any:
    best, found = -1, None
    for key, dev in device_map.items():
        if key == "" or name == key or name.startswith(key + "."):
            if len(key) > best:
                best, found = len(key), dev
    return found


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
        dev = _module_device(name, plan.device_map)
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
    for i in _gpu_indices(plan.device_map):
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


def _input_device(model: Any) -> Any:
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


# ------------------------------------------------------------------------------------------- loading
def _offload_folder(plan: "DevicePlan", spec: "ModelSpec") -> Path | None:
    uses_disk = "disk" in {str(v) for v in plan.device_map.values()}
    if spec.offload_folder is None:
        if uses_disk:
            raise ConfigError("the plan puts modules on disk but no offload folder is set",
                              fix="set offload_folder: ./offload (a folder on a fast local disk)")
        return None
    return Path(spec.offload_folder).expanduser()


def load_tokenizer(ref: Any, spec: "ModelSpec", *, token: str | None = None, notes: list[str] | None = None) -> Any:
    """The model's tokenizer, left-padded for batched generation, with a pad token (EOS when it has none). What
    had to be corrected to match a GGUF file goes to `notes`."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = dict(cache_dir=hf_cache_dir(), local_files_only=hf_offline(),
                                  trust_remote_code=spec.trust_remote_code)
    if token:
        kwargs["token"] = token
    if ref.gguf_file:
        kwargs["gguf_file"] = ref.gguf_file
    try:
        tok = AutoTokenizer.from_pretrained(ref.source, **kwargs)
    except (OSError, ValueError) as exc:
        if Path(ref.source).is_dir() and not ref.gguf_file:
            raise ConfigError(f"{ref.source} has no usable tokenizer ({str(exc).splitlines()[0][:160]})",
                              fix="save the tokenizer next to the weights (tokenizer.save_pretrained(dir))") from None
        raise
    if ref.gguf_file and Path(ref.source, ref.gguf_file).is_file():
        changed = check_gguf_tokenizer(tok, Path(ref.source, ref.gguf_file))
        if notes is not None:
            notes.extend(changed)
    tok.padding_side = "left"  # decoder-only batches must end where generation starts
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


# transformers before 5.18 splits a GGUF's SentencePiece vocabulary ("llama" tokenizer model: Gemma, Llama-2,
# Mistral) into the wrong pieces, and before 5.23 it drops the BOS token the GGUF asks for. Gemma-3-270M then
# answered every HumanEval prompt with blank lines (0/164 under transformers 5.17).
GGUF_SPM_MIN_TRANSFORMERS = (5, 18)


def check_gguf_tokenizer(tok: Any, gguf_path: Path) -> list[str]:
    """Hold a tokenizer converted from a GGUF file to what the file says: refuse a transformers known to convert
    its tokenizer model wrongly, and add the BOS token when the file asks for it and the conversion dropped it.
    Returns what was changed."""
    import transformers

    meta = _gguf_tokenizer_meta(gguf_path)
    version = tuple(int(p) for p in re.findall(r"\d+", transformers.__version__)[:2])
    if meta.get("model") == "llama" and version < GGUF_SPM_MIN_TRANSFORMERS:
        raise ConfigError(
            f"transformers {transformers.__version__} converts the SentencePiece tokenizer in {gguf_path.name} into "
            "the wrong pieces (the model then answers nonsense)",
            fix="pip install -U 'transformers>=5.23'")
    changed = []
    bos = meta.get("bos_token_id")
    if meta.get("add_bos_token") and isinstance(bos, int) and tok("a")["input_ids"][:1] != [bos]:
        _prepend_bos(tok, bos)
        changed.append(f"tokenizer: BOS {bos} added, as {gguf_path.name} asks")
    return changed


def _gguf_tokenizer_meta(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out: dict[str, Any] = {}
    for key, name in (("tokenizer.ggml.model", "model"), ("tokenizer.ggml.add_bos_token", "add_bos_token"),
                      ("tokenizer.ggml.bos_token_id", "bos_token_id")):
        field_ = reader.fields.get(key)
        if field_ is not None:
            value = field_.contents()
            out[name] = int(value) if name == "bos_token_id" else value
    return out


def _prepend_bos(tok: Any, bos: int) -> None:
    from tokenizers import processors

    piece = tok.convert_ids_to_tokens(bos)
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{piece} $A", pair=f"{piece} $A {piece} $B", special_tokens=[(piece, bos)])


def _from_pretrained(plan: "DevicePlan", spec: "ModelSpec", attn: str, offload_folder: Path | None,
                     token: str | None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    ref = plan.model
    kwargs: dict[str, Any] = dict(
        dtype=getattr(torch, plan.dtype),
        device_map=plan.device_map,  # the planner's dict, as is: see the module docstring
        attn_implementation=attn,
        cache_dir=hf_cache_dir(),
        local_files_only=hf_offline(),
        trust_remote_code=spec.trust_remote_code,
    )
    if offload_folder is not None:
        kwargs["offload_folder"] = str(offload_folder)
    if ref.gguf_file:
        kwargs["gguf_file"] = ref.gguf_file
    if token:
        kwargs["token"] = token
    qconfig = quantization_config(spec, plan)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    return AutoModelForCausalLM.from_pretrained(ref.source, **kwargs)


def _attach_engine(model: Any, plan: "DevicePlan", spec: "ModelSpec", notes: list[str]) -> Any | None:
    """Hand the cpu/disk modules to routerllm's offload engine (default), or keep accelerate's hooks."""
    offloaded = _offloaded_devices(plan.device_map)
    if not offloaded:
        return None
    if spec.offload_engine == "accelerate":
        notes.append("offload: accelerate's stock hooks (offload_engine: accelerate)")
        return None
    try:
        from routerllm_cli.offload.engine import attach_offload_engine
    except ImportError as exc:
        notes.append(f"offload: routerllm's engine is not importable ({exc}); using accelerate's hooks")
        return None
    # Without a GPU, cpu entries are where compute happens, not offload: only disk entries are worth taking over.
    device_map = {k: v for k, v in plan.device_map.items() if str(v) in offloaded or _gpu_indices(plan.device_map)}
    engine = attach_offload_engine(model, device_map, execution_device=None, pin_budget_bytes=spec.pin_memory_budget,
                                   keep_4bit=plan.quantization == "4bit")
    stats = engine.stats()
    notes.append(f"offload: routerllm engine holds {stats.offloaded_layers} modules "
                 f"({format_bytes(stats.pinned_bytes)} pinned, {format_bytes(stats.pageable_bytes)} pageable, "
                 f"{stats.streamed_layers} streamed from disk)")
    if stats.pageable_reason:
        notes.append(f"offload: pageable memory because {stats.pageable_reason}")
    for skipped in stats.skipped:
        notes.append(f"offload: left to accelerate: {skipped}")
    return engine


def _quantization_notes(summary: dict[str, dict], plan: "DevicePlan", engine: Any | None) -> list[str]:
    if plan.quantization == "none":
        return []
    from routerllm_cli.config import NF4_BYTES_PER_PARAM

    offloaded = _offloaded_devices(plan.device_map)
    held = sum(summary.get(d, {}).get("bytes", 0) for d in offloaded)
    if not held:
        return []
    if engine is not None and getattr(engine.stats(), "quantized_4bit", False):
        return [f"quantization: the offload engine keeps the {format_bytes(held)} of cpu/disk modules 4-bit on the bus"]
    # 16-bit weights hold 2 bytes a parameter; in the plan's format they would hold NF4 or int8 bytes instead
    per_param = NF4_BYTES_PER_PARAM if plan.quantization == "4bit" else 1.0
    quantized = int(held / 2 * per_param)
    return [f"quantization: modules on {'/'.join(sorted(offloaded))} stay unquantized in 16-bit: "
            f"{format_bytes(held)} instead of {format_bytes(quantized)} in {plan.quantization} "
            f"(+{format_bytes(held - quantized)} of host memory and bus traffic per forward)"]


def _offload_locations(summary: dict[str, dict], plan: "DevicePlan", engine: Any | None, ckpt: Checkpoint,
                       folder: Path | None, disk_bytes_in_folder: int | None) -> dict[str, dict]:
    out: dict[str, dict] = {}
    offloaded = _offloaded_devices(plan.device_map)
    stats = engine.stats() if engine is not None else None
    if "cpu" in offloaded:
        where = ("host RAM, in the routerllm engine's flat buffers "
                 f"({format_bytes(stats.pinned_bytes)} pinned)" if stats else "host RAM (pageable, accelerate hooks)")
        out["cpu"] = {"bytes": summary.get("cpu", {}).get("bytes", 0), "where": where}
        if stats:
            out["cpu"]["engine_host_bytes"] = stats.host_bytes
    if "disk" in offloaded:
        in_place = ckpt.fmt == "safetensors" and not disk_bytes_in_folder
        where = (f"read in place from the checkpoint shards in {ckpt.folder}" if in_place
                 else f"the offload folder {folder}")
        if stats and stats.disk_layers and stats.streamed_layers < stats.disk_layers:
            where += f"; {stats.disk_layers - stats.streamed_layers} disk modules cached in host RAM by the engine"
        out["disk"] = {"bytes": summary.get("disk", {}).get("bytes", 0), "where": where}
    return out


def load_model(plan: "DevicePlan", spec: "ModelSpec", *, progress: Progress | None = None,
               token: str | None = None) -> LoadedModel:
    """Load `plan.model` exactly as `plan.device_map` says and measure what it took.

    `progress` receives dicts with "stage" (checkpoint, tokenizer, prepare, weights, offload, done), "elapsed" and,
    for weights, tensors/bytes/shards done and total. Raises `RouterLLMError` subclasses for known failures.
    """
    import psutil

    from routerllm_cli.offload.folder import OffloadLock

    start = time.perf_counter()

    def emit(stage: str, **data: Any) -> None:
        if progress is not None:
            progress({"stage": stage, "elapsed": time.perf_counter() - start, **data})

    check_quantization_backend(plan.quantization, plan.device_map)
    attn, attn_reason = choose_attention(spec, plan)
    sdpa_note = choose_sdpa_backends(attn, plan.device_map, spec.cudnn_attention)
    folder = _offload_folder(plan, spec)
    rss_before = psutil.Process().memory_info().rss
    lock = OffloadLock(folder, command=f"routerllm load {plan.model.name}").acquire() if folder else None
    notes: list[str] = [sdpa_note] if sdpa_note else []
    try:
        try:
            ckpt = locate_checkpoint(plan.model, token)
            emit("checkpoint", bytes_total=ckpt.total_bytes, shards_total=len(ckpt.files) or None,
                 message=str(ckpt.folder or plan.model.source))
            tokenizer = load_tokenizer(plan.model, spec, token=token, notes=notes)
            emit("tokenizer", message=type(tokenizer).__name__)
            prefetcher = plan_prefetch(ckpt, plan)
            watcher = _WeightsProgress(ckpt, emit if progress is not None else None, prefetcher)
            if prefetcher is not None:
                prefetcher.start()
            try:
                with _transformers_progress(watcher.hook):
                    try:
                        model = _from_pretrained(plan, spec, attn, folder, token)
                    except ValueError as exc:  # an architecture without SDPA kernels: eager is always there
                        if attn != "sdpa" or "sdpa" not in str(exc).lower():
                            raise
                        attn, attn_reason = "eager", f"{type(exc).__name__}: this architecture has no SDPA support"
                        model = _from_pretrained(plan, spec, attn, folder, token)
            finally:
                if prefetcher is not None:
                    prefetcher.stop()
                    notes.append(f"read-ahead: {format_bytes(prefetcher.read_bytes)} of shards read sequentially "
                                 f"ahead of the load in {prefetcher.seconds:.1f} s")
            # measured before the engine takes modules over: placement as loaded, inputs where accelerate wants them
            summary = summarize_placement(model, plan)
            input_device = _input_device(model)
            emit("offload", message="placing offloaded modules")
            engine = _attach_engine(model, plan, spec, notes)
        except RouterLLMError:
            raise
        except Exception as exc:
            known = translate_load_error(exc, plan, folder)
            if known is not None:
                raise known from exc
            raise
    except BaseException:
        gc.collect()
        if lock is not None:
            lock.release()
        raise
    load_seconds = time.perf_counter() - start
    used, detail = measure_memory(plan, rss_before, folder)
    notes = _quantization_notes(summary, plan, engine) + notes
    loaded = LoadedModel(
        model=model, tokenizer=tokenizer, plan=plan, load_seconds=load_seconds, attn_implementation=attn,
        quantization=plan.quantization, offload=engine, device_map_summary=summary, memory_used=used,
        input_device=input_device, attn_reason=attn_reason, memory_detail=detail,
        offload_locations=_offload_locations(summary, plan, engine, ckpt, folder, used.get("disk")),
        checkpoint_bytes=ckpt.total_bytes, notes=notes, _lock=lock,
    )
    emit("done", load_seconds=load_seconds)
    return loaded


# ------------------------------------------------------------------------------------------- generating
class _FirstTokenClock:
    """A generation streamer that only notes when the first new token arrives (the prompt comes first)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def test_generation(loaded: LoadedModel, prompt: str, max_new_tokens: int = 64) -> dict:
    """Greedy generation of one prompt: {text, tokens, token_ids, seconds, tokens_per_second, time_to_first_token}."""
    import torch

    if loaded.closed or loaded.model is None:
        raise RunFailed("the model was closed", fix="load it again with load_model()")
    tok = loaded.tokenizer
    inputs = tok(prompt, return_tensors="pt")
    input_ids = inputs["input_ids"].to(loaded.input_device)
    attention = inputs.get("attention_mask")
    attention = attention.to(loaded.input_device) if attention is not None else None
    clock = _FirstTokenClock()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    start = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=pad, streamer=clock)
    seconds = time.perf_counter() - start
    new = out[0, input_ids.shape[1]:].tolist()
    ttft = (clock.first - start) if clock.first is not None else None
    return {
        "prompt": prompt,
        "text": tok.decode(new, skip_special_tokens=True),
        "tokens": len(new),
        "token_ids": new,
        "seconds": round(seconds, 4),
        "tokens_per_second": round(len(new) / seconds, 3) if seconds > 0 else None,
        "time_to_first_token": round(ttft, 4) if ttft is not None else None,
    }


test_generation.__test__ = False  # a library function, not a pytest test


# ------------------------------------------------------------------------------------------- plan, load, try
DEFAULT_PROMPT = 'def fibonacci(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n'


def load_and_test(spec: "ModelSpec", *, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 32,
                  progress: Progress | None = None, token: str | None = None, hardware: Any = None,
                  on_plan: Callable[["DevicePlan"], None] | None = None) -> dict:
    """Plan on the probed hardware, refuse a no-go plan, load, run one greedy generation, close.

    Returns the load summary plus "plan" and "generation" (what `routerllm load --json` prints)."""
    from routerllm_cli.hardware import probe_hardware
    from routerllm_cli.plan import plan_model

    hw = hardware if hardware is not None else probe_hardware(spec.offload_folder)
    plan = plan_model(spec, hw, batch_size=1, num_examples=1, max_new_tokens=max_new_tokens)
    if on_plan is not None:
        on_plan(plan)
    if plan.verdict != "go":
        raise NoGoError("the plan says no-go: " + "; ".join(plan.reasons or ["no reason given"]),
                        fix="; ".join(plan.fixes) or "run `routerllm preflight` to see the plan")
    loaded = load_model(plan, spec, progress=progress, token=token)
    try:
        generation = test_generation(loaded, prompt, max_new_tokens)
        return {**loaded.summary(), "plan": plan.to_dict(), "generation": generation}
    finally:
        loaded.close()
