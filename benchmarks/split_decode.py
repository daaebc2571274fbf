"""A model whose layers are split over GPUs (accelerate's hooks on every layer, as a plan with 2-3 GPUs loads it):
plain `generate` vs routerllm's static step captured as one CUDA graph per GPU's run of layers
(routerllm_cli/decode/split.py), unfused and fused, in one process, against the weights-read floor.

    python benchmarks/split_decode.py                         # every GPU there (2+: the layers split over them)
    python benchmarks/split_decode.py --segments 2            # one GPU: the same two segments, both on it
    python benchmarks/split_decode.py --device cpu --tiny     # a CPU check of this script (no graphs there)

The random Llama-3-8B shape is built on GPU 0 (seeded), its layers given to the GPUs in equal runs and dispatched
by accelerate with a hook on every layer (`force_hooks`, so one GPU gets the hooks a split has). On one GPU,
`--segments N` cuts the layers into N runs as if they were on N GPUs: each is captured apart and the hidden state
handed over between them, so the hand-over costs what it costs on N GPUs less the copy between them (batch x
hidden values a step). Paths: eager `generate` through the hooks; the static step as one graph (one GPU only);
split into segments, unfused and fused. float32 first (greedy tokens must equal `generate`'s), then bf16 at each
batch: ms/step and the fraction of the floor (the weights read once at the device copy rate measured here; on
several GPUs the layers run one GPU after the other, so the floor is the sum of their reads). JSON + log under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resident_decode import (LLAMA_8B, TINY, Log, _sync, _versions, build_model, compare_tokens,  # noqa: E402
                             copy_floor, eager_tokens, prompts_for)


def dispatch(model, gpus: int, device: str):
    """Each GPU an equal run of the layers, a hook on every layer (accelerate's dispatch, forced on one GPU)."""
    from accelerate import dispatch_model

    n = model.config.num_hidden_layers
    if device == "cpu":
        where = lambda i: "cpu"  # noqa: E731
    else:
        where = lambda i: min(gpus - 1, i * gpus // n)  # noqa: E731
    last = where(n - 1)
    device_map = {"model.embed_tokens": where(0), "model.rotary_emb": where(0),
                  **{f"model.layers.{i}": where(i) for i in range(n)}, "model.norm": last, "lm_head": last}
    return dispatch_model(model, device_map=device_map, force_hooks=True), device_map


def static_tokens(model, prompts: list[list[int]], steps: int, device: str, segments, fuse: bool = False
                  ) -> tuple[list[list[int]], dict]:
    """The ResidentDecoder bench uses: a first chunk (prefill, compile when fused, capture per segment), then the
    same prompts again as new rows (the graphs reused); ms/step from the second."""
    from routerllm_cli import generation
    from routerllm_cli.decode import ResidentDecoder

    width = max(len(p) for p in prompts)
    decoder = ResidentDecoder(model, slots=len(prompts), max_tokens=width + steps + 8, capture=device == "cuda",
                              chunk_tokens=steps, check_every=steps, fuse=fuse, segments=segments)
    ctx = generation.ChunkContext(model, None, device, 0, set(), [], None, generation._sampling(0.0, 1.0, None),
                                  steps + 1)
    t = time.perf_counter()
    tokens, _ = decoder([generation._Row(i, p, [], 0.0) for i, p in enumerate(prompts)], steps, ctx)
    first_call = time.perf_counter() - t
    tokens2, _ = decoder([generation._Row(i, p, [], 0.0) for i, p in enumerate(prompts)], steps, ctx)
    report = decoder.report()
    if report["fallback"]:
        raise RuntimeError(f"the static path fell back to eager: {report['fallback']}")
    chunk = decoder.last_chunk
    return tokens2, {"ms_per_step": 1e3 * chunk["decode_seconds"] / max(1, chunk["steps"]),
                     "first_call_s": first_call, "capture_seconds": report["capture_seconds"],
                     "compile_seconds": report["compile_seconds"], "fused": report["fused"],
                     "fuse_fallback": report["fuse_fallback"], "graphs": report["graphs"],
                     "segments": report["segments"], "same_tokens_both_calls": tokens == tokens2}


def run(args, log: Log) -> None:
    import torch

    device = args.device
    shape = TINY if args.tiny else LLAMA_8B
    gpus = (args.gpus or torch.cuda.device_count()) if device == "cuda" else 1
    n_layers = shape["num_hidden_layers"]
    if gpus > 1:
        segments = None  # one per GPU, from where the layers are
    else:
        k = max(1, args.segments)
        segments = [list(range(i * n_layers // k, (i + 1) * n_layers // k)) for i in range(k)]
    r = log.results
    r.update(machine=(f"{gpus}x {torch.cuda.get_device_name(0)}" if device == "cuda" else platform.machine()),
             versions=_versions(), shape=shape, gpus=gpus, forced_segments=segments, batches=args.batches,
             steps=args.steps, variants={}, verdicts={}, skipped=[])
    started = time.perf_counter()
    if device == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)  # as routerllm's GPU loads do (loading/choices.py)
    floor = log.attempt("floor", copy_floor, device, args.floor_gb if not args.tiny else 0.05)
    r["copy"] = floor
    bw = floor["bytes_per_s"] if floor else None
    t = time.perf_counter()
    model = build_model(shape, torch.float32, "cuda:0" if device == "cuda" else "cpu")
    model, device_map = dispatch(model, gpus, device)
    r["device_map_gpus"] = sorted({v for v in device_map.values()}, key=str)
    log.say(f"built fp32 model in {time.perf_counter() - t:.1f} s; layers on {r['device_map_gpus']}; "
            f"segments {'per GPU' if segments is None else segments}")
    first = device  # "cuda": tensors on GPU 0, where the embedding is

    def variant(dtype: str, batch: int, prompts, steps: int, fused: bool = True, single: bool = True) -> dict:
        row: dict = {"dtype": dtype, "batch": batch,
                     "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
        eager = log.attempt(f"{dtype}_b{batch}_eager", eager_tokens, model, prompts, steps, first)
        paths = {"split": (segments, False)}
        if single and gpus == 1:
            paths["one_graph"] = ([list(range(n_layers))], False)
        if fused and time.perf_counter() - started < args.budget_s:
            paths["split_fused"] = (segments, True)
        elif fused:
            r["skipped"].append(f"{dtype}_b{batch}_split_fused: past --budget-s {args.budget_s:.0f}")
        if eager:
            row["eager_ms_per_step"] = eager[1]
        for name, (segs, fuse) in paths.items():
            got = log.attempt(f"{dtype}_b{batch}_{name}", static_tokens, model, prompts, steps, device, segs, fuse)
            if got:
                row[name] = got[1]
                if eager:
                    row[name]["tokens"] = compare_tokens(eager[0], got[0], steps)
                    row[name]["speedup_vs_eager"] = eager[1] / got[1]["ms_per_step"]
        if bw:
            row["floor_ms"] = 1e3 * row["weight_bytes"] / bw
            row["eager_fraction_of_floor"] = row["floor_ms"] / row["eager_ms_per_step"] if eager else None
            for name in paths:
                if name in row:
                    row[name]["fraction_of_floor"] = row["floor_ms"] / row[name]["ms_per_step"]
        log.say(json.dumps(row, default=lambda v: round(v, 4) if isinstance(v, float) else str(v)))
        r["variants"][f"{dtype}_b{batch}"] = row
        log.save()
        return row

    vocab = shape["vocab_size"]
    eq = variant("float32", args.equal_batch, prompts_for(args.equal_batch, args.prompt_tokens, vocab, ragged=True,
                                                          seed=1), args.equal_tokens, fused=not args.tiny)
    for name in ("split", "split_fused", "one_graph"):
        if name in eq and "tokens" in eq[name]:
            t = eq[name]["tokens"]
            r["verdicts"][f"float32_{name}_tokens_equal"] = t["rows_equal"] == t["rows"]
    model.to(torch.bfloat16)
    if device == "cuda":
        torch.cuda.empty_cache()
    for batch in args.batches:
        row = variant("bfloat16", batch, prompts_for(batch, args.prompt_tokens, vocab, ragged=False, seed=3 + batch),
                      args.steps)
        best = max((row[n]["fraction_of_floor"] for n in ("split", "split_fused") if n in row), default=None)
        r["verdicts"][f"bf16_batch{batch}"] = {
            "split_fraction": best and round(best, 3),
            "eager_fraction": row.get("eager_fraction_of_floor") and round(row["eager_fraction_of_floor"], 3),
            "split_tokens_equal_eager": {n: row[n]["tokens"]["rows_equal"] for n in ("split", "split_fused", "one_graph")
                                         if n in row and "tokens" in row[n]}}
    _sync(device)
    log.say("verdicts: " + json.dumps(r["verdicts"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None)
    ap.add_argument("--tiny", action="store_true", help="a small Llama instead of the 8B shape")
    ap.add_argument("--gpus", type=int, default=None, help="GPUs to split over (default: all there)")
    ap.add_argument("--segments", type=int, default=2, help="on one GPU: runs of layers captured apart")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--equal-batch", type=int, default=8)
    ap.add_argument("--equal-tokens", type=int, default=32)
    ap.add_argument("--floor-gb", type=float, default=4.0)
    ap.add_argument("--budget-s", type=float, default=300.0, help="fused variants that would start later are skipped")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    args = ap.parse_args()
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.batches = [int(b) for b in str(args.batches).split(",")]
    log = Log(Path(args.out), "split_decode")
    try:
        run(args, log)
    finally:
        log.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
