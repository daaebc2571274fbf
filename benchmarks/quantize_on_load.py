"""Quantize while loading, on a GPU: Llama-3.1-405B-shaped layers loaded in 4-bit with most of them on the CPU.

One process, one checkpoint (random bf16 safetensors with 405B's layer shape - hidden 16384, FFN 53248, 128 heads /
8 KV heads, 6.4 GB a layer - as many layers as the disk allows; vocabulary 32000 instead of 128256 to leave the
disk to layers). The plan puts the embeddings and the first layer(s) on the GPU under `--gpu-budget` and the rest
on the CPU. Then, with the page cache dropped before each load:

1. the disk's cold read rate (O_DIRECT) over two shards;
2. routerllm's load with quantize-while-loading (CPU layers read from the shards and packed one weight at a time)
   and with ROUTERLLM_QUANTIZE_ON_LOAD=0 (16-bit load, packed after): peak host RSS during each load next to the
   packed and 16-bit bytes of the offloaded layers, load time against the disk rate, last-position logits and 16
   greedy tokens of both (must be equal);
3. on the first load: decode step time at batch 1 and at the planned batch (difference of two generation lengths,
   so prefill cancels), the pinned host-to-GPU copy rate measured here and the floor it sets, tokens/s; and a
   bench-shaped run - `--problems` HumanEval prompts, continuous batching at the planned batch, every row to
   `--max-new-tokens` (random weights do not stop) - against the plan's estimates (goal: within 20%).

    python benchmarks/quantize_on_load.py                        # on one H200; JSON + log under $OUT
    python benchmarks/quantize_on_load.py --layers 4 --gpu-budget 4GB
    python benchmarks/quantize_on_load.py --smoke                # tiny, on CPU, no 4-bit: checks the script
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_load import build_checkpoint, log  # noqa: E402
from load_speed import disk_read_rate, drop_cache, shards  # noqa: E402

LAYER_405B = dict(hidden_size=16384, intermediate_size=53248, num_attention_heads=128, num_key_value_heads=8,
                  head_dim=128, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)
SMOKE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             vocab_size=512, max_position_embeddings=512)
LAYER_BYTES_405B = 2 * (16384 * 16384 * 2 + 2 * 16384 * 1024 + 3 * 16384 * 53248)


def auto_layers(folder: Path, most: int) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    return max(2, min(most, int((free - 12e9) // LAYER_BYTES_405B)))


def pinned_h2d_rate(gib: float = 2.0) -> float:
    import torch

    n = int(gib * 2**30)
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(3):
        dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    rate = 3 * n / (time.perf_counter() - start)
    del host, dev
    torch.cuda.empty_cache()
    return rate


def settings_for(ckpt: Path, args, offload: Path):
    from routerllm_cli.config import load_settings

    spec = {"name": "q405", "model_id": str(ckpt), "use_4bit": not args.smoke, "torch_dtype": "bfloat16",
            "max_memory": {0: args.gpu_budget, "cpu": args.cpu_budget} if not args.smoke else {"cpu": "2GB"},
            "offload_folder": str(offload)}
    bench = {"num_examples": min(args.problems, 164), "max_new_tokens": args.max_new_tokens,
             "max_prompt_tokens": args.max_prompt_tokens, "device": "cpu" if args.smoke else "auto"}
    return load_settings(None, {"models": {"large_llm": spec}, "bench": bench})


def timed_generate(model, ids, new: int) -> float:
    import torch

    mask = torch.ones_like(ids)
    if ids.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                       pad_token_id=0)
    if ids.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def step_seconds(model, device, batch: int, short: int, long: int) -> float:
    """Seconds per decode step at `batch`: (time of `long` steps - time of `short`) / (long - short)."""
    import torch

    torch.manual_seed(1)
    ids = torch.randint(3, min(1000, model.config.vocab_size), (batch, 64), device=device)
    timed_generate(model, ids, 2)  # warm
    return (timed_generate(model, ids, long) - timed_generate(model, ids, short)) / (long - short)


def probe_output(loaded, prompt_ids) -> tuple[list, list]:
    import torch

    with torch.inference_mode():
        logits = loaded.model(input_ids=prompt_ids).logits[0, -1].float().cpu()
        out = loaded.model.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                                    max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)
    return logits.tolist(), out[0, prompt_ids.shape[1]:].tolist()


def bench_run(loaded, settings) -> dict:
    """HumanEval prompts through continuous batching at the plan's batch, every row to max_new_tokens."""
    from routerllm_cli import continuous, generation, humaneval

    b = settings.bench
    problems = humaneval.select(humaneval.load_problems()[0], n=b.num_examples)
    prompts = [(p["task_id"], p["prompt"]) for p in problems]
    loaded.model.generation_config.eos_token_id = None
    loaded.tokenizer.eos_token = None  # random weights: nothing may end a row early
    batch = generation.batch_for(loaded.plan)
    start = time.perf_counter()
    # what bench runs for an offloaded model: continuous batching that keeps the KV cache
    outs = dict(continuous.generate_kept(loaded.model, loaded.tokenizer, prompts, batch_size=batch,
                                         max_new_tokens=b.max_new_tokens, device=loaded.input_device))
    seconds = time.perf_counter() - start
    tokens = sum(o.new_tokens for o in outs.values())
    return {"problems": len(outs), "batch": batch, "seconds": seconds, "new_tokens": tokens,
            "tokens_per_s": tokens / seconds, "prompt_tokens_max": max(o.prompt_tokens for o in outs.values())}


def load_once(settings, quantize_on_load: bool, prompt_ids_text: str, measure: bool, args) -> dict:
    import torch

    from routerllm_cli.loading import load_model
    from routerllm_cli.plan import plan_for_run, require_go

    os.environ["ROUTERLLM_QUANTIZE_ON_LOAD"] = "1" if quantize_on_load else "0"
    plan = require_go(plan_for_run(settings, "bench"), "bench")
    drop_cache(shards(Path(settings.large.model_id)))
    gc.collect()
    loaded = load_model(plan, settings.large)
    rec: dict = {"quantize_on_load": quantize_on_load, "load_seconds": loaded.load_seconds,
                 "rss_peak_during_load": loaded.memory_detail["cpu"]["rss_peak_during_load"],
                 "rss_before_load": loaded.memory_detail["cpu"]["rss_before_load"],
                 "rss_after_load": loaded.memory_detail["cpu"]["rss"], "offload_engine": loaded.offload_stats,
                 "notes": loaded.notes, "device_map_summary": loaded.device_map_summary,
                 "plan": {"batch_size": plan.batch_size, "devices": {d: a.layer_text for d, a in plan.devices.items()},
                          "estimates": plan.estimates, "host_format": plan.host_format,
                          "cpu_weight_bytes": plan.devices["cpu"].weight_bytes}}
    try:
        ids = loaded.tokenizer(prompt_ids_text, return_tensors="pt")["input_ids"].to(loaded.input_device)
        rec["logits"], rec["tokens"] = probe_output(loaded, ids)
        if measure:
            dev = loaded.input_device
            rec["step_batch1"] = step_seconds(loaded.model, dev, 1, args.short, args.long)
            rec["step_planned"] = step_seconds(loaded.model, dev, plan.batch_size, args.short, args.long)
            rec["bench"] = bench_run(loaded, settings)
    finally:
        loaded.close()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/routerllm_q405"))
    ap.add_argument("--layers", type=int, default=0, help="0: as many as the disk allows (at most 6)")
    ap.add_argument("--gpu-budget", default="4GB", help="GPU 0's weight budget: embeddings + about one layer")
    ap.add_argument("--cpu-budget", default="100GB")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--max-prompt-tokens", type=int, default=300)
    ap.add_argument("--short", type=int, default=4)
    ap.add_argument("--long", type=int, default=12)
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU, no 4-bit: checks the script")
    args = ap.parse_args()
    out_dir = Path(os.environ.get("OUT", "/tmp"))
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"command": " ".join(sys.argv), "args": vars(args) | {"dir": str(args.dir)}}
    try:
        import torch

        result["machine"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        shape = dict(SMOKE if args.smoke else LAYER_405B)
        shape["num_hidden_layers"] = args.layers or (6 if args.smoke else auto_layers(args.dir, 6))
        t0 = time.perf_counter()
        ckpt, built = build_checkpoint(args.dir / f"l{shape['num_hidden_layers']}", shape, shard="7GB")
        result["checkpoint"] = {"layers": shape["num_hidden_layers"], "build_seconds": built,
                                "bytes": sum(p.stat().st_size for p in shards(ckpt))}
        log(f"checkpoint {ckpt}: {result['checkpoint']} ({time.perf_counter() - t0:.0f} s)")
        result["disk"] = disk_read_rate(shards(ckpt)[:2])
        log(f"disk cold read: {result['disk']['gb_per_s']:.2f} GB/s ({result['disk']['method']})")
        if torch.cuda.is_available():
            result["pinned_h2d_bytes_per_s"] = pinned_h2d_rate()
            log(f"pinned host->GPU: {result['pinned_h2d_bytes_per_s'] / 1e9:.1f} GB/s")
        offload = args.dir / "offload"
        settings = settings_for(ckpt, args, offload)
        prompt = "def add ( a , b ) : return a + b"
        runs = []
        for stream in ((True, False) if not args.smoke else (True,)):
            try:
                rec = load_once(settings, stream, prompt, measure=stream, args=args)
            except Exception as exc:  # keep what the other path gives
                rec = {"quantize_on_load": stream, "error": f"{type(exc).__name__}: {exc}"}
            runs.append(rec)
            log(json.dumps({k: v for k, v in rec.items() if k not in ("logits", "notes", "device_map_summary")},
                           default=str)[:1500])
        result["runs"] = runs
        result["summary"] = summarize(result)
        log(json.dumps(result["summary"], indent=1, default=str))
    except Exception as exc:
        import traceback

        result["error"] = traceback.format_exc()
        log(result["error"])
    finally:
        (out_dir / "quantize_on_load.json").write_text(json.dumps(result, indent=1, default=str))
    return 0 if "error" not in result else 1


def summarize(result: dict) -> dict:
    """The numbers the proof is judged on."""
    runs = {r["quantize_on_load"]: r for r in result["runs"] if "error" not in r}
    s: dict = {}
    stream, after = runs.get(True), runs.get(False)
    if stream is None:
        return {"error": "the quantize-while-loading run failed", "runs": [r.get("error") for r in result["runs"]]}
    eng = stream.get("offload_engine") or {}
    packed = (eng.get("held_bytes") or {}).get("cpu", 0)
    layers = result["checkpoint"]["layers"]
    cpu_layers = stream["plan"]["devices"].get("cpu", "-")
    s["offloaded"] = {"cpu_layers": cpu_layers, "packed_bytes": packed,
                      "sixteen_bit_bytes_estimate": packed / 0.5625 * 2 if packed else None}
    for name, r in (("stream", stream), ("after", after)):
        if r is None:
            continue
        s[f"{name}_rss_peak_growth"] = r["rss_peak_during_load"] - r["rss_before_load"]
        s[f"{name}_load_seconds"] = r["load_seconds"]
        s[f"{name}_load_gb_per_s"] = result["checkpoint"]["bytes"] / r["load_seconds"] / 1e9
    s["load_vs_disk"] = s["stream_load_gb_per_s"] / result["disk"]["gb_per_s"]
    if after is not None:
        diff = max(abs(a - b) for a, b in zip(stream["logits"], after["logits"]))
        s["logits_max_abs_diff"] = diff
        s["tokens_equal"] = stream["tokens"] == after["tokens"]
    if "step_planned" in stream:
        est = stream["plan"]["estimates"]
        batch = stream["plan"]["batch_size"]
        s["batch"] = batch
        s["step_batch1_s"], s["step_planned_s"] = stream["step_batch1"], stream["step_planned"]
        s["tokens_per_s_batch1"] = 1 / stream["step_batch1"]
        s["tokens_per_s_planned"] = batch / stream["step_planned"]
        rate = result.get("pinned_h2d_bytes_per_s")
        if rate and eng.get("bytes_per_step"):
            s["floor_step_s"] = eng["bytes_per_step"] / rate
            s["step_planned_vs_floor"] = s["floor_step_s"] / stream["step_planned"]
        s["estimated_step_s"] = est["seconds_per_token"]
        s["step_estimate_error"] = est["seconds_per_token"] / stream["step_planned"] - 1
        bench = stream.get("bench") or {}
        if bench:
            s["bench_seconds"] = bench["seconds"]
            s["estimated_bench_seconds"] = est["bench_seconds"]
            s["bench_estimate_error"] = est["bench_seconds"] / bench["seconds"] - 1
            s["within_20_percent"] = abs(s["bench_estimate_error"]) <= 0.2 and abs(s["step_estimate_error"]) <= 0.2
    return s


if __name__ == "__main__":
    raise SystemExit(main())
