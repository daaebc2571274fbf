"""Where a decode step's time goes, for the embedded model on HumanEval prompts: plain `generate` at batch 1 and
at larger batches, with and without routerllm's stop criteria, the static KV cache, and a torch profile.

    python benchmarks/step_profile.py --gguf /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf --out $OUT

Every line is printed as soon as it is measured, so a run cut short still tells what it reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--batches", default="1,16,64,164")
    ap.add_argument("--static", action="store_true", help="also time the static cache (compiles on CUDA)")
    ap.add_argument("--profile-batch", type=int, default=64)
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args()

    import torch
    from transformers import StoppingCriteriaList

    from routerllm_cli import generation, humaneval
    from routerllm_cli.bench import plan_for
    from routerllm_cli.config import load_settings
    from routerllm_cli.loading import load_model

    cuda = torch.cuda.is_available()
    spec = {"name": args.model, "torch_dtype": "bfloat16" if cuda else "float32"}
    if args.gguf:
        spec.update(model_id=str(Path(args.gguf).parent), gguf_file=Path(args.gguf).name)
    settings = load_settings(None, {"models": {"large_llm": spec}, "bench": {"device": "auto" if cuda else "cpu"}})
    problems = humaneval.load_problems()[0]
    t0 = time.perf_counter()
    loaded = load_model(plan_for(settings.large, settings, batch_size=1, num_examples=164), settings.large)
    print(f"load {time.perf_counter() - t0:.1f} s, attn {getattr(loaded.model.config, '_attn_implementation', '?')}, "
          f"dtype {loaded.model.dtype}, device {loaded.input_device}", flush=True)
    model, tok = loaded.model, loaded.tokenizer
    generation.prepare_tokenizer(tok)
    style = humaneval.choose_style(tok, "auto")
    stopping = humaneval.stopping_for(style)
    prompts = [humaneval.build_prompt(p, tok, style) for p in problems]
    lengths = generation.prompt_token_counts(tok, prompts)
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    print(f"prompt tokens: max {max(lengths)}, median {sorted(lengths)[82]}, min {min(lengths)}", flush=True)
    results: dict = {"machine": torch.cuda.get_device_name(0) if cuda else "cpu", "rows": []}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(batch: int, *, criteria: bool, steps: int, **extra) -> float:
        chosen = [prompts[i] for i in order[:batch]]
        enc = tok(chosen, return_tensors="pt", padding=True,
                  add_special_tokens=generation._add_special_tokens(tok, chosen)).to(loaded.input_device)
        kw = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, temperature=None, top_p=None,
                  top_k=None, pad_token_id=tok.pad_token_id)
        if criteria:
            crit = generation._StopCriteria(tok, enc["input_ids"].shape[1], stopping.get("stop_sequences", ()),
                                            stopping.get("stop_when"), {tok.eos_token_id})
            kw["stopping_criteria"] = StoppingCriteriaList([crit])
        with torch.inference_mode():
            model.generate(**enc, **{**kw, "max_new_tokens": 2, "min_new_tokens": 2}, **extra)  # prefill + 1 step
            sync()
            t = time.perf_counter()
            model.generate(**enc, **{**kw, "max_new_tokens": 2, "min_new_tokens": 2}, **extra)
            sync()
            prefill = time.perf_counter() - t
            t = time.perf_counter()
            model.generate(**enc, **kw, **extra)
            sync()
            total = time.perf_counter() - t
        per_step = (total - prefill) / max(1, steps - 2)
        row = {"batch": batch, "criteria": criteria, "extra": sorted(extra), "prefill_s": round(prefill, 4),
               "ms_per_step": round(per_step * 1e3, 2), "tokens_per_s": round(batch / per_step, 1),
               "prompt_width": int(enc["input_ids"].shape[1])}
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        return per_step

    batches = [int(b) for b in args.batches.split(",")]
    for b in batches:
        timed(b, criteria=False, steps=args.steps)
        timed(b, criteria=True, steps=args.steps)

    if cuda:
        from torch.profiler import ProfilerActivity, profile

        chosen = [prompts[i] for i in order[:args.profile_batch]]
        enc = tok(chosen, return_tensors="pt", padding=True,
                  add_special_tokens=generation._add_special_tokens(tok, chosen)).to(loaded.input_device)
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model.generate(**enc, max_new_tokens=12, min_new_tokens=12, do_sample=False, temperature=None,
                           top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
            sync()
        for key in ("self_cpu_time_total", "self_cuda_time_total"):
            table = prof.key_averages().table(sort_by=key, row_limit=18)
            print(table, flush=True)
            results[key] = table

    if args.static and cuda:
        for b in (batches[-1], batches[-1]):  # the second run reuses the compiled graphs
            t = time.perf_counter()
            try:
                timed(b, criteria=False, steps=args.steps, cache_implementation="static")
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"static cache failed: {type(exc).__name__}: {exc}"[:400], flush=True)
                break
            print(f"static cache batch {b}: {time.perf_counter() - t:.1f} s in all (compile included)", flush=True)

    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "step_profile.json").write_text(json.dumps(results, indent=2))
    loaded.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
