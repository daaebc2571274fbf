"""One-by-one generation (the setup guide's way) vs routerllm's batched generation (continuous batching, and static
batches for reference): same model, same problems, same run. Prints the speed ratios and the pass@1 values.

    python benchmarks/bench_batching.py                         # embedded model, all 164 problems, GPU if present
    python benchmarks/bench_batching.py -n 6 --batch-size 3     # a quick CPU check
    python benchmarks/bench_batching.py --gguf /path/SmolLM2-135M-Instruct.Q4_1.gguf --out $OUT

Both modes use the same loader, prompts, post-processing and sandbox; only the batching differs. The one-by-one
baseline calls `generate` per problem with the same stop rule (that is what the guide's script did), so the ratio
measures batching alone. pass@1 comes from executing every completion in routerllm's sandbox.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--num-examples", type=int, default=164)
    ap.add_argument("--batch-size", type=int, default=0, help="0 = auto from the plan")
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--gguf", default=None, help="a GGUF file to use instead of the catalog model's")
    ap.add_argument("--dtype", default=None, help="bfloat16 | float16 | float32 (default: bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--one-by-one-limit", type=int, default=0,
                    help="run the one-by-one baseline on only the first K problems (0 = all) and scale its time")
    ap.add_argument("--state", default=None,
                    help="a folder that keeps finished work, so a run cut short continues when started again")
    ap.add_argument("--deadline-s", type=float, default=0,
                    help="stop the one-by-one baseline after this many seconds (exit 3; --state continues it)")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args()

    import torch

    from routerllm_cli import generation, humaneval
    from routerllm_cli.bench import plan_for
    from routerllm_cli.config import load_settings
    from routerllm_cli.loading import load_model
    from routerllm_cli.sandbox import Sandbox

    cuda = torch.cuda.is_available()
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    spec_over = {"name": args.model, "torch_dtype": dtype}
    if args.gguf:
        spec_over.update(model_id=str(Path(args.gguf).parent), gguf_file=Path(args.gguf).name)
    settings = load_settings(None, {"models": {"large_llm": spec_over},
                                    "bench": {"max_new_tokens": args.max_new_tokens, "device": "auto" if cuda else "cpu"}})
    problems = humaneval.select(humaneval.load_problems()[0], n=args.num_examples)
    plan = plan_for(settings.large, settings, batch_size=args.batch_size or None, num_examples=len(problems))
    loaded = load_model(plan, settings.large)
    tok = loaded.tokenizer
    style = humaneval.choose_style(tok, "auto")
    stopping = humaneval.stopping_for(style)
    prompts = {p["task_id"]: humaneval.build_prompt(p, tok, style) for p in problems}
    by_id = {p["task_id"]: p for p in problems}
    batch = generation.batch_for(loaded.plan)
    kw = dict(max_new_tokens=args.max_new_tokens, device=loaded.input_device, **stopping)

    # warm-up so neither mode pays the first-call costs
    generation.generate_batch(loaded.model, tok, [prompts[problems[0]["task_id"]]], **{**kw, "max_new_tokens": 8})

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    state = Path(args.state) if args.state else None
    if state:
        state.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.deadline_s if args.deadline_s else None
    saved = json.loads((state / "batched.json").read_text()) if state and (state / "batched.json").exists() else None
    if saved:  # an earlier call of this run already timed the batched modes on this machine
        print(f"batched modes from {state}: static {saved['t_static']:.1f} s, continuous {saved['t_batched']:.1f} s",
              flush=True)
        static = {k: generation.GenerationOutput(**o) for k, o in saved["static"].items()}
        batched = {k: generation.GenerationOutput(**o) for k, o in saved["continuous"].items()}
        t_static, t_batched, batch = saved["t_static"], saved["t_batched"], saved["batch"]
    else:
        sync()
        t0 = time.perf_counter()
        static = {k: out for k, out in generation.generate_many(loaded.model, tok, prompts, batch_size=batch, **kw)}
        sync()
        t_static = time.perf_counter() - t0
        print(f"static batches of {batch}: {t_static:.1f} s", flush=True)
        lengths = dict(zip(prompts, generation.prompt_token_counts(tok, list(prompts.values()))))
        ordered = generation.order_by_length(list(prompts), key=lambda k: lengths[k])
        t0 = time.perf_counter()
        batched = dict(generation.generate_continuous(loaded.model, tok, [(k, prompts[k]) for k in ordered],
                                                      batch_size=batch, **kw))
        sync()
        t_batched = time.perf_counter() - t0
        print(f"continuous batching, batch {batch}: {t_batched:.1f} s", flush=True)
        if state:
            (state / "batched.json").write_text(json.dumps({
                "t_static": t_static, "t_batched": t_batched, "batch": batch,
                "static": {k: asdict(o) for k, o in static.items()},
                "continuous": {k: asdict(o) for k, o in batched.items()}}))

    # One-by-one, each problem timed on its own (with a device sync) and, with --state, saved as it finishes,
    # so a run longer than one sitting continues where it stopped and its time is the sum over problems.
    base_ids = [p["task_id"] for p in problems][: args.one_by_one_limit or None]
    single, single_seconds = {}, {}
    log = state / "one_by_one.jsonl" if state else None
    if log and log.exists():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            single[rec["task_id"]] = generation.GenerationOutput(**rec["output"])
            single_seconds[rec["task_id"]] = rec["seconds"]
        print(f"one-by-one: {len(single)} problems from {log}", flush=True)
    for tid in base_ids:
        if tid in single:
            continue
        if deadline and time.monotonic() > deadline:
            print(f"deadline: {len(single)}/{len(base_ids)} one-by-one problems done; run again to continue",
                  flush=True)
            loaded.close()
            return 3
        sync()
        t0 = time.perf_counter()
        single[tid] = generation.generate_batch(loaded.model, tok, [prompts[tid]], **kw)[0]
        sync()
        single_seconds[tid] = time.perf_counter() - t0
        if log:
            with log.open("a") as fh:
                fh.write(json.dumps({"task_id": tid, "seconds": single_seconds[tid],
                                     "output": asdict(single[tid])}) + "\n")
    t_single_measured = sum(single_seconds[t] for t in base_ids)
    print(f"one-by-one, {len(base_ids)} problems: {t_single_measured:.1f} s", flush=True)
    t_single = t_single_measured * len(problems) / len(base_ids)

    sandbox = Sandbox()

    verdicts: dict[str, dict] = {}

    def pass_at_1(outputs: dict, mode: str | None = None) -> tuple[int, int]:
        jobs = [(tid, by_id[tid], humaneval.postprocess(o.text, by_id[tid], style)) for tid, o in outputs.items()]
        results = dict(sandbox.check_many(jobs))
        if mode:
            verdicts[mode] = {tid: res.passed for tid, res in results.items()}
        return sum(res.passed for res in results.values()), len(jobs)

    pb, nb = pass_at_1(batched, "continuous")
    ps, ns = pass_at_1(single, "one_by_one")
    pst, _ = pass_at_1(static, "static")
    pb_same = pass_at_1({t: batched[t] for t in base_ids})[0] if len(base_ids) < len(problems) else pb
    same_text = sum(batched[t].text == single[t].text for t in base_ids)
    tokens_b = sum(o.new_tokens for o in batched.values())
    tokens_s = sum(o.new_tokens for o in single.values())
    device = torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine()
    result = {
        "machine": device, "model": args.model, "dtype": dtype, "style": style, "problems": len(problems),
        "batch_size": batch, "max_new_tokens": args.max_new_tokens,
        "batched_seconds": t_batched, "static_batches_seconds": t_static, "one_by_one_seconds": t_single,
        "static_speedup": t_single / t_static if t_static else None,
        "one_by_one_measured_on": len(base_ids), "one_by_one_seconds_measured": t_single_measured,
        "speedup": t_single / t_batched if t_batched else None,
        "batched_tokens_per_s": tokens_b / t_batched, "one_by_one_tokens_per_s": tokens_s / t_single_measured,
        "pass@1_batched": pb / nb, "pass@1_one_by_one": ps / ns, "passed_batched": pb, "passed_one_by_one": ps,
        "passed_static_batches": pst,
        "passed_batched_on_baseline_subset": pb_same, "identical_texts": same_text,
        "verdicts_differ": sorted(t for t in base_ids if verdicts["continuous"][t] != verdicts["one_by_one"][t]),
        "new_tokens": {"continuous": tokens_b, "one_by_one": tokens_s},
        "outputs": {t: {"continuous": batched[t].text, "one_by_one": single.get(t) and single[t].text}
                    for t in prompts},
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "outputs"}, indent=2))
    print(f"\n{device}: static batches {t_static:.1f} s ({result['static_speedup']:.1f}x, pass@1 {pst}/{nb})")
    print(f"{device}: {len(problems)} problems, batch {batch}: continuous batching {t_batched:.1f} s vs one-by-one "
          f"{t_single:.1f} s{' (scaled from ' + str(len(base_ids)) + ')' if len(base_ids) < len(problems) else ''}"
          f" -> {result['speedup']:.1f}x; pass@1 batched {pb}/{nb}, one-by-one {ps}/{ns}; "
          f"identical texts {same_text}/{len(base_ids)}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "bench_batching.json").write_text(json.dumps(result, indent=2))
    loaded.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
