"""`load_model`: a DevicePlan becomes a LoadedModel, then a test generation."""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from routerllm_cli.errors import ConfigError, RouterLLMError, RunFailed
from routerllm_cli.units import format_bytes
from routerllm_cli import hub
from routerllm_cli.loading.checkpoint import Checkpoint, locate_checkpoint, plan_prefetch
from routerllm_cli.loading.choices import (check_quantization_backend, choose_attention, choose_sdpa_backends,
                                           quantization_config)
from routerllm_cli.loading.failures import translate_load_error
from routerllm_cli.loading.placement import (PeakRSS, first_input_device, gpu_indices, measure_memory,
                                             offloaded_devices, summarize_placement)
from routerllm_cli.loading.progress import WeightsProgress, transformers_progress
from routerllm_cli.loading.gguf_reader import read_once
from routerllm_cli.loading.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from routerllm_cli.config import ModelSpec
    from routerllm_cli.plan import DevicePlan


Progress = Callable[[dict], None]


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


# ------------------------------------------------------------------------------------------- loading
def _offload_folder(plan: "DevicePlan", spec: "ModelSpec") -> Path | None:
    uses_disk = "disk" in {str(v) for v in plan.device_map.values()}
    if spec.offload_folder is None:
        if uses_disk:
            raise ConfigError("the plan puts modules on disk but no offload folder is set",
                              fix="set offload_folder: ./offload (a folder on a fast local disk)")
        return None
    return Path(spec.offload_folder).expanduser()


def load_device_map(plan: "DevicePlan", ckpt: Checkpoint) -> tuple[dict[str, Any], bool]:
    """The map handed to `from_pretrained`, and whether offloaded 4-bit layers are quantized while loading.

    It is the plan's dict, as is, except under quantize-while-loading (the plan holds offloaded 4-bit layers
    packed, `host_format == "nf4"`, and the checkpoint is safetensors): then the modules the plan puts on the
    CPU are loaded as "disk". transformers leaves "disk" modules in the checkpoint's own files (no copy), so
    they never exist in 16-bit in host memory; the offload engine then reads each weight from its shard,
    quantizes it with the bitsandbytes call `Linear4bit` uses and keeps only the packed bytes."""
    cpu_layers = gpu_indices(plan.device_map) and any(str(v) == "cpu" for v in plan.device_map.values())
    # ROUTERLLM_QUANTIZE_ON_LOAD=0 loads them in 16-bit and packs after (benchmarks/quantize_on_load.py compares)
    switched_off = os.environ.get("ROUTERLLM_QUANTIZE_ON_LOAD", "1").strip().lower() in ("0", "false", "no", "off")
    if (plan.host_format == "nf4" and plan.offload_engine == "routerllm" and ckpt.fmt == "safetensors" and cpu_layers
            and not switched_off):
        return {k: ("disk" if str(v) == "cpu" else v) for k, v in plan.device_map.items()}, True
    return dict(plan.device_map), False


def _from_pretrained(plan: "DevicePlan", spec: "ModelSpec", attn: str, offload_folder: Path | None,
                     token: str | None, device_map: dict[str, Any]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    ref = plan.model
    kwargs: dict[str, Any] = dict(
        dtype=getattr(torch, plan.dtype),
        device_map=device_map,  # the planner's dict (see load_device_map): a dict keeps 4-bit CPU offload working
        attn_implementation=attn,
        cache_dir=str(hub.cache_dir()),
        local_files_only=hub.offline(),
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


def _attach_engine(model: Any, plan: "DevicePlan", spec: "ModelSpec", notes: list[str], loaded_map: dict[str, Any],
                   offload_folder: Path | None) -> Any | None:
    """Hand the cpu/disk modules to routerllm's offload engine (default), or keep accelerate's hooks. The engine
    runs each module where the plan says (plan.run_devices) and holds it where the plan put it."""
    offloaded = offloaded_devices(plan.device_map)
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
    device_map = {k: v for k, v in loaded_map.items()
                  if str(plan.device_map[k]) in offloaded or gpu_indices(plan.device_map)}
    keep_4bit = plan.quantization == "4bit"
    spill = offload_folder if (keep_4bit and "disk" in offloaded) else None
    relays = gpu_indices(plan.device_map) if plan.offload_links > 1 else []
    engine = attach_offload_engine(model, device_map, execution_devices=plan.run_devices,
                                   host_devices={k: str(plan.device_map[k]) for k in device_map},
                                   spill_folder=spill, pin_budget_bytes=spec.pin_memory_budget, keep_4bit=keep_4bit,
                                   relays=relays[: plan.offload_links])
    stats = engine.stats()
    notes.append(f"offload: routerllm engine holds {stats.offloaded_layers} modules "
                 f"({format_bytes(stats.pinned_bytes)} pinned, {format_bytes(stats.pageable_bytes)} pageable, "
                 f"{stats.streamed_layers} streamed from disk"
                 + (f", {format_bytes(stats.spilled_bytes)} packed in {spill}" if stats.spilled_bytes else "") + ")")
    if stats.pageable_reason:
        notes.append(f"offload: pageable memory because {stats.pageable_reason}")
    if stats.links:
        notes.append("offload: host links per executing GPU " + ", ".join(f"{d}: {n}" for d, n in stats.links.items()))
    notes += [f"offload: {n}" for n in stats.link_notes]
    for skipped in stats.skipped:
        notes.append(f"offload: left to accelerate: {skipped}")
    return engine


def _quantization_notes(summary: dict[str, dict], plan: "DevicePlan", engine: Any | None) -> list[str]:
    if plan.quantization == "none":
        return []
    from routerllm_cli.config import NF4_BYTES_PER_PARAM

    offloaded = offloaded_devices(plan.device_map)
    held = sum(summary.get(d, {}).get("bytes", 0) for d in offloaded)
    if not held:
        return []
    if engine is not None and getattr(engine.stats(), "quantized_4bit", False):
        return [f"quantization: the offload engine keeps the cpu/disk modules 4-bit ({format_bytes(held)}) in memory "
                "and on the bus"]
    # 16-bit weights hold 2 bytes a parameter; in the plan's format they would hold NF4 or int8 bytes instead
    per_param = NF4_BYTES_PER_PARAM if plan.quantization == "4bit" else 1.0
    quantized = int(held / 2 * per_param)
    return [f"quantization: modules on {'/'.join(sorted(offloaded))} stay unquantized in 16-bit: "
            f"{format_bytes(held)} instead of {format_bytes(quantized)} in {plan.quantization} "
            f"(+{format_bytes(held - quantized)} of host memory and bus traffic per forward)"]


def _offload_locations(summary: dict[str, dict], plan: "DevicePlan", engine: Any | None, ckpt: Checkpoint,
                       folder: Path | None, disk_bytes_in_folder: int | None) -> dict[str, dict]:
    out: dict[str, dict] = {}
    offloaded = offloaded_devices(plan.device_map)
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
    peak = PeakRSS()
    try:
        with peak, read_once(bool(plan.model.gguf_file)):
            model, tokenizer, ckpt, summary, input_device, engine, attn, why = _load(
                plan, spec, attn, folder, token, notes, emit, progress)
            attn_reason = why or attn_reason
    except BaseException:
        gc.collect()
        if lock is not None:
            lock.release()
        raise
    load_seconds = time.perf_counter() - start
    used, detail = measure_memory(plan, rss_before, folder)
    detail["cpu"]["rss_peak_during_load"] = peak.peak
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


def _load(plan: "DevicePlan", spec: "ModelSpec", attn: str, folder: Path | None, token: str | None,
          notes: list[str], emit: Callable[..., None], progress: Progress | None) -> tuple:
    """Checkpoint, tokenizer, weights and the offload engine: (model, tokenizer, ckpt, summary, input device, engine,
    attention, why it changed)."""
    attn_reason = ""
    try:
        ckpt = locate_checkpoint(plan.model, token)
        emit("checkpoint", bytes_total=ckpt.total_bytes, shards_total=len(ckpt.files) or None,
             message=str(ckpt.folder or plan.model.source))
        tokenizer = load_tokenizer(plan.model, spec, token=token, notes=notes)
        emit("tokenizer", message=type(tokenizer).__name__)
        loaded_map, quantize_on_load = load_device_map(plan, ckpt)
        if quantize_on_load:
            notes.append("quantization: offloaded 4-bit layers are read from the checkpoint and quantized to NF4 "
                         "one weight at a time, never held in 16-bit")
        elif plan.host_format == "nf4" and offloaded_devices(plan.device_map):
            why = (f"the checkpoint is {ckpt.fmt}, not safetensors" if ckpt.fmt != "safetensors"
                   else "ROUTERLLM_QUANTIZE_ON_LOAD=0")
            notes.append(f"quantization: {why}: offloaded layers load in 16-bit first and are packed after (more "
                         "host memory than planned while loading)")
        prefetcher = plan_prefetch(ckpt, plan)
        watcher = WeightsProgress(ckpt, emit if progress is not None else None, prefetcher)
        if prefetcher is not None:
            prefetcher.start()
        try:
            with transformers_progress(watcher.hook):
                try:
                    model = _from_pretrained(plan, spec, attn, folder, token, loaded_map)
                except ValueError as exc:  # an architecture without SDPA kernels: eager is always there
                    if attn != "sdpa" or "sdpa" not in str(exc).lower():
                        raise
                    attn, attn_reason = "eager", f"{type(exc).__name__}: this architecture has no SDPA support"
                    model = _from_pretrained(plan, spec, attn, folder, token, loaded_map)
        finally:
            if prefetcher is not None:
                prefetcher.stop()
                notes.append(f"read-ahead: {format_bytes(prefetcher.read_bytes)} of shards read sequentially "
                             f"ahead of the load in {prefetcher.seconds:.1f} s")
        # measured before the engine takes modules over: placement as loaded, inputs where accelerate wants them
        summary = summarize_placement(model, plan)
        input_device = first_input_device(model)
        emit("offload", message="placing offloaded modules")
        engine = _attach_engine(model, plan, spec, notes, loaded_map, folder)
        if engine is not None:
            for dev, held in engine.stats().held_bytes.items():  # what the engine holds, as it holds it
                summary.setdefault(dev, {"layers": "", "bytes": 0, "modules": 0})["bytes"] = held
    except RouterLLMError:
        raise
    except Exception as exc:
        known = translate_load_error(exc, plan, folder)
        if known is not None:
            raise known from exc
        raise
    return model, tokenizer, ckpt, summary, input_device, engine, attn, attn_reason


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


def load_and_test(settings: Any, spec: "ModelSpec | None" = None, *, prompt: str = DEFAULT_PROMPT,
                  max_new_tokens: int = 32, progress: Progress | None = None, hardware: Any = None,
                  on_plan: Callable[["DevicePlan"], None] | None = None) -> dict:
    """Plan on the probed hardware (`plan.plan_for_run`), refuse a no-go plan, load, run one greedy generation,
    close. Returns the load summary plus "plan" and "generation" (what `routerllm load --json` prints)."""
    from routerllm_cli.catalog import resolve_model_spec
    from routerllm_cli.plan import plan_for_run, require_go

    spec = spec or settings.large
    with read_once(bool(resolve_model_spec(spec).gguf_file)):  # the plan and the load parse a GGUF file once
        plan = plan_for_run(settings, "load", spec=spec, hardware=hardware, max_new_tokens=max_new_tokens)
        if on_plan is not None:
            on_plan(plan)
        require_go(plan, "load")
        loaded = load_model(plan, spec, progress=progress, token=settings.hf_token)
    try:
        generation = test_generation(loaded, prompt, max_new_tokens)
        return {**loaded.summary(), "plan": plan.to_dict(), "generation": generation}
    finally:
        loaded.close()
