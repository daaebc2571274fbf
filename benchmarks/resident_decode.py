"""GPU-resident decode against the weights-read floor: plain `generate` vs routerllm's static-cache step captured as
CUDA graphs (routerllm_cli/decode), unfused and with its decoder layers fused by torch.compile, in one process, and
`routerllm bench` on HumanEval with --decode eager vs compiled.

    python benchmarks/resident_decode.py                      # H200: random Llama-3-8B shape, fp32 + bf16
    python benchmarks/resident_decode.py --mode bench --gguf /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
    python benchmarks/resident_decode.py --device cpu --tiny  # a CPU check of this script (no graphs there)
    python benchmarks/resident_decode.py --device cpu --mode bench --bench-n 2 --bench-max-new-tokens 8

kernel mode: the model is built on the GPU (random weights, seeded). The floor is the time to read the weights
once at the device-to-device copy rate measured in the same run (bytes read + written / time). Three paths each:
eager `generate`, the captured static step, and the fused one (`decode_fuse: on`: each bucket compiled once, then
captured). float32 first: greedy tokens of both static paths must equal `generate`'s; then bf16: ms/step at each
batch, the fraction of the floor, compile and capture seconds, tokens compared (reported). Goals: >= 0.6 of the
floor at batch 1, >= 0.5 at batch 32, judged on the faster static path. `--budget-s`: fused variants that would
start after it are skipped (and said so), so the JSON is complete before a caller's time limit.
bench mode: three `routerllm bench` runs of the same model in subprocesses (eager, compiled, compiled again
without execution for the second capture time): wall time, generation time including capture, pass@1, whether
the answers are identical; the compiled run's samples.jsonl is copied under --out. `--bench-fused` adds a run with
`--decode-fuse on` (what auto does not pick for this small model), compile included.
Each variant runs in its own try block: one failure is reported and the rest still run. JSON + log under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                num_hidden_layers=32, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)
TINY = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
            num_hidden_layers=2, vocab_size=512, max_position_embeddings=512)
GOALS = {1: 0.6, 32: 0.5}


class Log:
    def __init__(self, out: Path, name: str):
        out.mkdir(parents=True, exist_ok=True)
        self.path, self.json_path = out / f"{name}.log", out / f"{name}.json"
        self.results: dict = {"errors": {}}

    def say(self, msg: str) -> None:
        print(msg, flush=True)
        with self.path.open("a") as fh:
            fh.write(msg + "\n")

    def attempt(self, name: str, fn, *args, **kwargs):
        """Run one variant; a failure is logged and recorded, and None returned, so the next one still runs."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every variant reports on its own
            self.results["errors"][name] = f"{type(exc).__name__}: {exc}"[:600]
            self.say(f"!! {name} failed: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}")
            return None

    def save(self) -> None:
        self.json_path.write_text(json.dumps(self.results, indent=2, default=str))


# ------------------------------------------------------------------------------------------------ kernel
def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def copy_floor(device: str, gigabytes: float) -> dict:
    """Device-to-device copy rate (read + written bytes / time), the yardstick for reading the weights."""
    import torch

    n = int(gigabytes * 1e9)
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    _sync(device)
    reps = 10 if device == "cuda" else 2
    t = time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    _sync(device)
    seconds = (time.perf_counter() - t) / reps
    del a, b
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"bytes": n, "seconds_per_copy": seconds, "bytes_per_s": 2 * n / seconds}


def build_model(shape: dict, dtype, device: str):
    """Random weights, built and filled on the device (a CPU fill of 8B parameters takes minutes)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(**shape, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=None)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def prompts_for(batch: int, length: int, vocab: int, *, ragged: bool, seed: int) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    lengths = [length - (rng.randrange(length // 2) if ragged and i else 0) for i in range(batch)]
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


def eager_tokens(model, prompts: list[list[int]], steps: int, device: str) -> tuple[list[list[int]], float]:
    """Plain `generate` (dynamic cache): tokens and ms per decode step (the difference between `steps` tokens and
    2 tokens, so the prefill and the first token cancel out)."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    kw = dict(do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=0)

    def run(n: int):
        _sync(device)
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, **kw)
        _sync(device)
        return out, time.perf_counter() - t

    run(2)
    _, short = run(2)
    out, full = run(steps)
    return out[:, width:].tolist(), 1e3 * (full - short) / max(1, steps - 2)


def static_tokens(model, prompts: list[list[int]], steps: int, device: str, fuse: bool = False
                  ) -> tuple[list[list[int]], dict]:
    """The static path through the same ResidentDecoder bench uses: a first chunk (prefill + compile when fused +
    capture), then the same prompts again as new rows (prefill again, the graph reused); ms/step from the second."""
    from routerllm_cli import generation
    from routerllm_cli.decode import ResidentDecoder

    width = max(len(p) for p in prompts)
    decoder = ResidentDecoder(model, slots=len(prompts), max_tokens=width + steps + 8, capture=device == "cuda",
                              chunk_tokens=steps, check_every=steps, fuse=fuse)
    ctx = generation.ChunkContext(model, None, device, 0, set(), [], None, generation._sampling(0.0, 1.0, None),
                                  steps + 1)
    rows = [generation._Row(i, p, [], 0.0) for i, p in enumerate(prompts)]
    t = time.perf_counter()
    tokens, _ = decoder(rows, steps, ctx)
    first_call = time.perf_counter() - t
    first_ms = 1e3 * decoder.last_chunk["decode_seconds"] / max(1, decoder.last_chunk["steps"])
    again = [generation._Row(i, p, [], 0.0) for i, p in enumerate(prompts)]
    tokens2, _ = decoder(again, steps, ctx)
    report = decoder.report()
    if report["fallback"]:
        raise RuntimeError(f"the static path fell back to eager: {report['fallback']}")
    chunk = decoder.last_chunk
    out = {"ms_per_step": 1e3 * chunk["decode_seconds"] / max(1, chunk["steps"]),
           "first_call_ms_per_step": first_ms, "first_call_s": first_call,
           "capture_seconds": report["capture_seconds"], "graphs": report["graphs"],
           "same_tokens_both_calls": tokens == tokens2, "cache_bytes": report["cache_bytes"]}
    if fuse:
        out.update(fused=report["fused"], fuse_fallback=report["fuse_fallback"],
                   compile_seconds=report["compile_seconds"], compile_cache=report["compile_cache"])
    return tokens2, out


def compare_tokens(a: list[list[int]], b: list[list[int]], n: int) -> dict:
    prefix = []
    for x, y in zip(a, b):
        k = next((i for i, (p, q) in enumerate(zip(x[:n], y[:n])) if p != q), min(n, len(x), len(y)))
        prefix.append(k)
    return {"rows": len(prefix), "rows_equal": sum(k == n for k in prefix), "tokens": n,
            "first_difference": min(prefix), "mean_equal_prefix": sum(prefix) / max(1, len(prefix))}


def kernel(args, log: Log) -> None:
    import torch

    device = args.device
    shape = TINY if args.tiny else LLAMA_8B
    if device == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)  # as routerllm's GPU loads do (loading/choices.py)
    r = log.results
    r.update(mode="kernel", machine=torch.cuda.get_device_name(0) if device == "cuda" else platform.machine(),
             versions=_versions(), shape=shape, prompt_tokens=args.prompt_tokens, steps=args.steps,
             batches=args.batches, budget_s=args.budget_s, variants={}, verdicts={}, skipped=[])
    started = time.perf_counter()
    floor = log.attempt("floor", copy_floor, device, args.floor_gb if not args.tiny else 0.05)
    r["copy"] = floor
    if floor:
        log.say(f"device copy {floor['bytes_per_s'] / 1e12:.2f} TB/s (read + write, {floor['bytes'] / 1e9:.1f} GB)")
    bw = floor["bytes_per_s"] if floor else None
    t = time.perf_counter()
    model = log.attempt("build_fp32", build_model, shape, torch.float32, device)
    if model is None:
        return
    log.say(f"built fp32 model on {device} in {time.perf_counter() - t:.1f} s")

    def weights() -> int:
        return sum(p.numel() * p.element_size() for p in model.parameters())

    def variant(dtype: str, batch: int, prompts: list[list[int]], steps: int, fused: bool = True) -> dict:
        row: dict = {"dtype": dtype, "batch": batch, "weight_bytes": weights()}
        eager = log.attempt(f"{dtype}_b{batch}_eager", eager_tokens, model, prompts, steps, device)
        static = log.attempt(f"{dtype}_b{batch}_static", static_tokens, model, prompts, steps, device)
        fuse = None
        if fused and time.perf_counter() - started > args.budget_s:
            r["skipped"].append(f"{dtype}_b{batch}_fused: past --budget-s {args.budget_s:.0f}")
            log.say(f"skipping {dtype}_b{batch}_fused: past the budget of {args.budget_s:.0f} s")
        elif fused:
            fuse = log.attempt(f"{dtype}_b{batch}_fused", static_tokens, model, prompts, steps, device, True)
        if eager:
            row["eager_ms_per_step"] = eager[1]
        if static:
            row.update(static[1])
        if fuse:
            row.update({f"fused_{k}": v for k, v in fuse[1].items() if k != "fused"})
            row["fused_ran"] = fuse[1]["fused"]
        if eager and static:
            row["tokens"] = compare_tokens(eager[0], static[0], steps)
        if eager and fuse:
            row["fused_tokens"] = compare_tokens(eager[0], fuse[0], steps)
        if bw:
            row["floor_ms"] = 1e3 * row["weight_bytes"] / bw
            for k in ("eager_ms_per_step", "ms_per_step", "fused_ms_per_step"):
                if k in row:
                    row[k.replace("ms_per_step", "fraction_of_floor")] = row["floor_ms"] / row[k]
        log.say(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
        r["variants"][f"{dtype}_b{batch}"] = row
        log.save()
        return row

    vocab = shape["vocab_size"]
    eq_prompts = prompts_for(args.equal_batch, args.prompt_tokens, vocab, ragged=True, seed=1)
    eq = variant("float32", args.equal_batch, eq_prompts, args.equal_tokens)
    # batch 1 in float32 is for the record only: its fused compile is left out to keep the run short
    variant("float32", 1, prompts_for(1, args.prompt_tokens, vocab, ragged=False, seed=2), args.steps, fused=False)
    for key, name in (("tokens", "float32_tokens_equal"), ("fused_tokens", "float32_fused_tokens_equal")):
        tokens = eq.get(key)  # None: not measured (failed or skipped; see errors / skipped)
        r["verdicts"][name] = None if tokens is None else tokens["rows_equal"] == tokens["rows"]
    log.attempt("to_bf16", model.to, torch.bfloat16)
    if device == "cuda":
        torch.cuda.empty_cache()
    for batch in args.batches:
        row = variant("bfloat16", batch, prompts_for(batch, args.prompt_tokens, vocab, ragged=False, seed=3 + batch),
                      args.steps)
        goal = GOALS.get(batch)
        paths = {p: row[k] for p, k in (("captured", "fraction_of_floor"), ("fused", "fused_fraction_of_floor"))
                 if k in row and (p == "captured" or row.get("fused_ran"))}
        if goal is not None and paths:
            best = max(paths, key=paths.get)
            r["verdicts"][f"bf16_batch{batch}_fraction"] = {
                **{p: round(v, 3) for p, v in paths.items()}, "best": best, "fraction": round(paths[best], 3),
                "goal": goal, "met": paths[best] >= goal}
    log.say("verdicts: " + json.dumps(r["verdicts"]))


# ------------------------------------------------------------------------------------------------ bench
def bench(args, log: Log) -> None:
    out = Path(args.out)
    work = Path(args.work) / "resident_bench"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model: dict = {"name": "smollm2_135m"}  # the catalog's float32 for the embedded model
    if args.gguf:
        model.update(model_id=str(Path(args.gguf).parent), gguf_file=Path(args.gguf).name)
    config = work / "config.yaml"
    config.write_text(json.dumps({"models": {"large_llm": model},
                                  "bench": {"num_examples": args.bench_n, "max_new_tokens": args.bench_max_new_tokens,
                                            "batch_size": "auto"}}))  # JSON is YAML
    r = log.results
    r.update(mode="bench", versions=_versions(), config=json.loads(config.read_text()), runs={}, verdicts={})
    extra = ["--device", "cpu", "--batching", "continuous"] if args.device == "cpu" else []
    plan = [("eager", "eager", []), ("compiled", "compiled", []), ("compiled_again", "compiled", ["--skip-execution"])]
    if args.bench_fused:  # what auto leaves out for this model: the fused step, compile included
        plan.append(("compiled_fused", "compiled", ["--decode-fuse", "on", "--skip-execution"]))
    for label, decode, flags in plan:
        run_dir = work / label
        cmd = [sys.executable, "-m", "routerllm_cli", "bench", "--config", str(config), "--decode", decode,
               "--run-dir", str(run_dir), "--json", *extra, *flags]
        log.say("$ " + " ".join(cmd))
        r["runs"][label] = log.attempt(label, _bench_run, cmd, run_dir, args.bench_timeout, log)
        log.save()
    runs = {k: v for k, v in r["runs"].items() if v}
    if "eager" in runs and "compiled" in runs:
        e, c = runs["eager"], runs["compiled"]
        same = [t for t in e["raw"] if c["raw"].get(t) == e["raw"][t]]
        r["identical_answers"] = {"same": len(same), "of": len(e["raw"]),
                                  "differ": sorted(set(e["raw"]) - set(same))[:20]}
        r["verdicts"] = {
            "generation_ratio": round(c["generation_seconds"] / e["generation_seconds"], 3),
            "half_of_eager": c["generation_seconds"] <= 0.5 * e["generation_seconds"],
            "pass@1_equal": c.get("passed") == e.get("passed"),
            "answers_identical": len(same) == len(e["raw"]),
        }
        shutil.copy(work / "compiled" / "samples.jsonl", out / "samples_compiled.jsonl")
    if "compiled" in runs and "compiled_fused" in runs:
        c, f = runs["compiled"], runs["compiled_fused"]
        r["fused"] = {"generation_ratio_to_unfused": round(f["generation_seconds"] / c["generation_seconds"], 3),
                      "answers_identical": f["raw"] == c["raw"], "decode": f.get("decode")}
    for v in runs.values():
        v.pop("raw", None)
    log.say("verdicts: " + json.dumps(r.get("verdicts")) + "  identical: " + json.dumps(r.get("identical_answers")))


def _bench_run(cmd: list[str], run_dir: Path, timeout: float, log: Log) -> dict:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    log.say(proc.stderr[-3000:])
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr[-400:]}")
    s = json.loads((run_dir / "summary.json").read_text())
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines() if line.strip()]
    row = {"wall_s": round(wall, 2), "load_seconds": s["load_seconds"], "generation_seconds": s["generation_seconds"],
           "done": s["done"], "pass@1": s.get("pass@1"), "passed": s.get("passed"), "decode": s.get("decode"),
           "tokens_per_s": s["throughput"]["tokens_per_s"],
           "raw": {x["task_id"]: x["raw"] for x in samples}}
    log.say(json.dumps({k: v for k, v in row.items() if k != "raw"}))
    return row


def _versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["kernel", "bench", "all"], default="kernel")
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None)
    ap.add_argument("--tiny", action="store_true", help="a small Llama instead of the 8B shape")
    ap.add_argument("--batches", default="1,32,128")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64, help="decode steps timed per variant")
    ap.add_argument("--equal-batch", type=int, default=8, help="rows of the float32 equality check (ragged prompts)")
    ap.add_argument("--equal-tokens", type=int, default=32)
    ap.add_argument("--floor-gb", type=float, default=4.0)
    ap.add_argument("--budget-s", type=float, default=170.0,
                    help="kernel mode: no fused variant starts after this many seconds")
    ap.add_argument("--gguf", default=None, help="bench mode: the SmolLM2 GGUF (default: the installed package's)")
    ap.add_argument("--bench-n", type=int, default=164)
    ap.add_argument("--bench-max-new-tokens", type=int, default=384)
    ap.add_argument("--bench-timeout", type=float, default=200)
    ap.add_argument("--bench-fused", action="store_true",
                    help="bench mode: a fourth run with --decode-fuse on (compile included in its generation time)")
    ap.add_argument("--work", default="/tmp", help="bench mode: where the run folders go")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    args = ap.parse_args()
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.batches = [int(b) for b in str(args.batches).split(",")]
    if args.tiny:
        args.prompt_tokens, args.steps = min(args.prompt_tokens, 24), min(args.steps, 10)
        args.equal_batch, args.equal_tokens, args.batches = min(args.equal_batch, 3), min(args.equal_tokens, 8), \
            [b for b in args.batches if b <= 4] or [1]
    out = Path(args.out)
    if args.mode in ("kernel", "all"):
        log = Log(out, "resident_decode")
        log.attempt("kernel", kernel, args, log)
        log.save()
    if args.mode in ("bench", "all"):
        log = Log(out, "resident_bench")
        log.attempt("bench", bench, args, log)
        log.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
