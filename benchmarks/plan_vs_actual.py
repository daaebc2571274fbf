"""Planned vs actual memory: does `routerllm preflight`'s plan hold on real GPUs?

Builds a random Llama-shaped checkpoint (constructed and filled on the GPU, saved with save_pretrained as sharded
safetensors to local disk, reused when already there), plans it with `plan_model` on the probed hardware under
per-GPU budgets that force both GPUs plus CPU offload, loads it with that exact device map through
`routerllm_cli.loading.load_model` (or `from_pretrained(device_map=plan.device_map)` when the loader is missing),
then generates at the planned batch size and sequence length. For each GPU it prints:

  after load:        planned weights (+ offload staging)       vs torch.cuda.memory_allocated
  after generation:  planned weights + reserve - CUDA context  vs torch.cuda.max_memory_allocated
  whole process:     planned weights + reserve                 vs NVML used minus the used before start

Goal: every actual within 5% of its plan, and no OOM. JSON goes to $OUT/plan_vs_actual.json when $OUT is set.

    python benchmarks/plan_vs_actual.py                       # 12 x 1.71 GB layers (~22 GB bf16), 2 GPUs + CPU
    python benchmarks/plan_vs_actual.py --gpu-budget 10GB --batch-size 16 --seq-len 2048
    python benchmarks/plan_vs_actual.py --4bit                 # needs bitsandbytes (carried wheel, --no-deps)
    python benchmarks/plan_vs_actual.py --smoke                # tiny, on CPU: checks the script itself
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GB = 1e9


def log(msg: str = "") -> None:
    print(msg, flush=True)


def nvml_used() -> dict[int, int]:
    """Bytes used per GPU as NVML reports them (CUDA ordinals assumed equal to NVML indices)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return {i: int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used)
                    for i in range(pynvml.nvmlDeviceGetCount())}
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no driver (the smoke run)
        return {}


def write_tokenizer(path: Path, vocab_size: int) -> None:
    """A word-level tokenizer with one word per id: random weights may emit any id."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>"])}
    vocab.update({f"w{i}": i for i in range(len(vocab), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(path)


def build_checkpoint(path: Path, shape: dict, dtype: str) -> float:
    """Random weights, filled on the GPU when there is one (CPU init of billions of params takes minutes)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    marker = path / "config.json"
    if marker.is_file() and list(path.glob("*.safetensors")):
        saved = json.loads(marker.read_text())
        if all(saved.get(k) == v for k, v in shape.items()):
            log(f"reusing {path}")
            return 0.0
    start = time.perf_counter()
    config = LlamaConfig(**shape, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, max_shard_size="4GB", safe_serialization=True)
    write_tokenizer(path, shape["vocab_size"])
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return time.perf_counter() - start


def load(plan, spec):
    """The loader's own path when present; else stock transformers with the plan's dict map."""
    try:
        from routerllm_cli.loading import load_model
    except ImportError:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(plan.model.source, device_map=plan.device_map,
                                                     dtype=getattr(torch, plan.dtype),
                                                     offload_folder=spec.offload_folder)
        first = next(p.device for p in model.parameters() if p.device.type != "meta")
        return model, first, None, "transformers.from_pretrained"
    loaded = load_model(plan, spec)
    return loaded.model, loaded.input_device, loaded, "routerllm_cli.loading.load_model"


def measure(devices: list[int]) -> dict[str, dict]:
    import torch

    out: dict[str, dict] = {}
    used = nvml_used()
    for d in devices:
        free, total = torch.cuda.mem_get_info(d)
        out[str(d)] = {"allocated": torch.cuda.memory_allocated(d), "peak_allocated": torch.cuda.max_memory_allocated(d),
                       "reserved": torch.cuda.memory_reserved(d), "cuda_used": total - free, "nvml_used": used.get(d)}
    return out


def host_bytes(model) -> int:
    """Bytes of parameters and buffers the model holds in host RAM (not meta, not GPU)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type == "cpu" and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=8192)
    ap.add_argument("--intermediate", type=int, default=28672)
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--gpu-budget", default="8GB", help="max_memory per GPU (small enough to force CPU offload)")
    ap.add_argument("--cpu-budget", default=None, help="max_memory for the CPU (default: what the host has)")
    ap.add_argument("--gpus", type=int, default=2, help="GPUs to use (0, 1, ...)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024, help="prompt + new tokens, as planned")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--4bit", dest="use_4bit", action="store_true")
    ap.add_argument("--engine", choices=["routerllm", "accelerate"], default="routerllm")
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("PVA_DIR", "/tmp/routerllm_plan_vs_actual")))
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU with disk offload: checks the script")
    args = ap.parse_args()

    baseline = nvml_used()  # before this process touches CUDA
    import torch

    from routerllm_cli.config import ModelSpec
    from routerllm_cli.hardware import probe_hardware
    from routerllm_cli.plan import plan_model

    if args.smoke:
        args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads, args.vocab = 6, 64, 128, 4, 2, 512
        args.batch_size, args.seq_len, args.new_tokens = 2, 64, 8
    shape = dict(hidden_size=args.hidden, intermediate_size=args.intermediate, num_attention_heads=args.heads,
                 num_key_value_heads=args.kv_heads, num_hidden_layers=args.layers, vocab_size=args.vocab,
                 max_position_embeddings=max(4096, args.seq_len))
    on_gpu = torch.cuda.is_available() and not args.smoke
    dtype = "bfloat16" if on_gpu else "float32"
    ckpt = args.dir / ("smoke" if args.smoke else f"llama_h{args.hidden}_l{args.layers}")
    build_s = build_checkpoint(ckpt, shape, dtype)
    log(f"checkpoint {ckpt} ({sum(f.stat().st_size for f in ckpt.glob('*.safetensors')) / GB:.2f} GB"
        + (f", built in {build_s:.1f} s)" if build_s else ")"))

    offload = args.dir / "offload"
    if on_gpu:
        budgets = {i: args.gpu_budget for i in range(min(args.gpus, torch.cuda.device_count()))}
        if args.cpu_budget:
            budgets["cpu"] = args.cpu_budget
    else:  # layers on cpu and on disk, as the loader's CPU tests do
        budgets = {"cpu": "300KB"}
    spec = ModelSpec(name=str(ckpt), torch_dtype=dtype, max_memory=budgets, use_4bit=args.use_4bit,
                     offload_engine=args.engine, offload_folder=offload)
    hw = probe_hardware(offload)
    if not on_gpu:
        hw.gpus = []
    plan = plan_model(spec, hw, batch_size=args.batch_size, seq_len=args.seq_len, num_examples=1,
                      max_new_tokens=args.new_tokens)
    log(f"plan: {plan.verdict}; " + ", ".join(f"{d}: layers {a.layer_text}, {a.weight_bytes / GB:.2f} GB weights + "
                                               f"{a.reserve_bytes / GB:.2f} GB reserve" for d, a in plan.devices.items()))
    result: dict = {"command": " ".join(sys.argv), "shape": shape, "dtype": dtype, "quantization": plan.quantization,
                    "engine": args.engine, "batch_size": args.batch_size, "seq_len": args.seq_len,
                    "new_tokens": args.new_tokens, "plan": plan.to_dict(), "nvml_baseline": baseline,
                    "device": torch.cuda.get_device_name(0) if on_gpu else "cpu"}
    if plan.verdict != "go":
        log("no-go: " + "; ".join(plan.reasons))
        return finish(result, 1)

    # GPUs the plan leaves empty (not named in max_memory) are checked apart: nothing may land on them
    unused = [int(d) for d, a in plan.devices.items() if d.isdigit() and a.weight_bytes == 0]
    gpus = [int(d) for d, a in plan.devices.items() if d.isdigit() and a.weight_bytes > 0]
    for d in gpus:
        torch.cuda.reset_peak_memory_stats(d)
    start = time.perf_counter()
    model, input_device, loaded, how = load(plan, spec)
    result["load"] = {"seconds": round(time.perf_counter() - start, 2), "via": how}
    after_load = measure(gpus) if on_gpu else {}
    after_load["cpu"] = {"host_bytes": host_bytes(model)}
    log(f"loaded in {result['load']['seconds']} s via {how}")

    for d in gpus:
        torch.cuda.reset_peak_memory_stats(d)
    prompt = args.seq_len - args.new_tokens
    ids = torch.randint(4, args.vocab, (args.batch_size, prompt), generator=torch.Generator().manual_seed(0))
    oom = None
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(input_device), attention_mask=torch.ones_like(ids).to(input_device),
                                 max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                                 pad_token_id=0)
        gen = {"seconds": round(time.perf_counter() - start, 2), "new_tokens": int(out.shape[1] - prompt)}
    except torch.OutOfMemoryError as exc:
        oom = str(exc).splitlines()[0]
        gen = {"oom": oom}
    after_gen = measure(gpus) if on_gpu else {}
    result["generation"] = gen
    log(f"generation: {gen}")

    rows = compare(plan, gpus, baseline, after_load, after_gen, on_gpu, args.tolerance)
    if not on_gpu:
        planned = plan.devices["cpu"].weight_bytes
        actual = after_load["cpu"]["host_bytes"]
        rows.append({"device": "cpu", "what": "host weights after load", "planned": planned, "actual": actual,
                     "error": (actual - planned) / planned if planned else 0.0})
    untouched = {str(d): int(torch.cuda.max_memory_allocated(d)) for d in unused} if on_gpu else {}
    for d, b in untouched.items():
        log(f"GPU {d}: not in the plan; peak allocated {b / GB:.3f} GB")
    result.update(rows=rows, after_load=after_load, after_generation=after_gen, oom=oom, unused_gpus=untouched)
    log(f"{'device':<7} {'what':<44} {'planned GB':>11} {'actual GB':>10} {'error':>8}")
    for r in rows:
        log(f"{r['device']:<7} {r['what']:<44} {r['planned'] / GB:>11.3f} {r['actual'] / GB:>10.3f} "
            f"{r['error'] * 100:>+7.1f}%")
    within = all(abs(r["error"]) <= args.tolerance for r in rows if r.get("goal", True)) and not any(untouched.values())
    result["within_tolerance"] = within
    log(f"goal (within {args.tolerance:.0%} on GPUs, no OOM): {'met' if within and not oom else 'NOT met'}")
    if loaded is not None:
        loaded.close()
    return finish(result, 0 if (within and not oom) or not on_gpu else 1)


def compare(plan, gpus, baseline, after_load, after_gen, on_gpu, tolerance) -> list[dict]:
    from routerllm_cli.plan import CUDA_CONTEXT_BYTES

    rows = []
    if not on_gpu:
        return rows
    for d in gpus:
        a = plan.devices[str(d)]
        staging = a.reserve_detail.get("offload_staging", 0)
        checks = [
            ("weights (+ staging) after load", a.weight_bytes + staging, after_load[str(d)]["allocated"]),
            ("peak allocated during generation", a.weight_bytes + a.reserve_bytes - CUDA_CONTEXT_BYTES,
             after_gen[str(d)]["peak_allocated"]),
        ]
        if after_gen[str(d)]["nvml_used"] is not None and d in baseline:
            checks.append(("NVML used after generation (minus baseline)", a.weight_bytes + a.reserve_bytes,
                           after_gen[str(d)]["nvml_used"] - baseline[d]))
        for what, planned, actual in checks:
            rows.append({"device": str(d), "what": what, "planned": planned, "actual": actual,
                         "error": (actual - planned) / planned if planned else 0.0,
                         "fits": actual <= planned * (1 + tolerance)})
    return rows


def finish(result: dict, code: int) -> int:
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "plan_vs_actual.json").write_text(json.dumps(result, indent=2, default=str))
        log(f"wrote {Path(out) / 'plan_vs_actual.json'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
