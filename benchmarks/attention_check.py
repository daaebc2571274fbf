"""Greedy answers of a model on HumanEval prompts under each attention kernel, against the same model on the CPU
in float32: finds a kernel (or a dtype) that changes what a model says.

    python benchmarks/attention_check.py --gguf /tmp/gguf/gemma-3-270m-q4_k_m.gguf --model gemma3_270m -n 3

For each variant (dtype x SDPA backend, plus eager attention), one prompt alone and the prompts as one left-padded
batch; prints the first characters of each answer and whether it equals the CPU reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("-n", "--num-examples", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args()

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from routerllm_cli import generation, humaneval
    from routerllm_cli.catalog import resolve_spec

    ref = resolve_spec(args.model, str(Path(args.gguf).parent) if args.gguf else None,
                       Path(args.gguf).name if args.gguf else None)
    kw = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    tok = AutoTokenizer.from_pretrained(ref.source, **kw)
    style = humaneval.choose_style(tok, "auto")
    stopping = humaneval.stopping_for(style)
    problems = humaneval.load_problems()[0][: args.num_examples]
    prompts = [humaneval.build_prompt(p, tok, style) for p in problems]
    gen = dict(max_new_tokens=args.max_new_tokens, **stopping)

    def answers(model, device, batched: bool) -> list[str]:
        if batched:
            return [o.text for o in generation.generate_batch(model, tok, prompts, device=device, **gen)]
        return [generation.generate_batch(model, tok, [p], device=device, **gen)[0].text for p in prompts]

    cpu = AutoModelForCausalLM.from_pretrained(ref.source, dtype=torch.float32, **kw)
    reference = answers(cpu, "cpu", batched=False)
    del cpu
    rows = []
    for i, text in enumerate(reference):
        print(f"reference {problems[i]['task_id']}: {text[:70]!r}", flush=True)
    if not torch.cuda.is_available():
        print("no GPU: only the reference ran")
        return 0
    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    for dtype in ("bfloat16", "float32"):
        model = AutoModelForCausalLM.from_pretrained(ref.source, dtype=getattr(torch, dtype), **kw).to("cuda:0")
        for attn in ["sdpa:" + b for b in backends] + ["eager"]:
            model.set_attn_implementation("eager" if attn == "eager" else "sdpa")
            for batched in (False, True):
                try:
                    if attn == "eager":
                        got = answers(model, "cuda:0", batched)
                    else:
                        with sdpa_kernel([backends[attn.split(":")[1]]]):
                            got = answers(model, "cuda:0", batched)
                    same = [g == r for g, r in zip(got, reference)]
                    row = {"dtype": dtype, "attention": attn, "batched": batched, "equal_to_cpu_fp32": same,
                           "first": got[0][:60]}
                except Exception as exc:  # noqa: BLE001 - a kernel that refuses these shapes is a finding too
                    row = {"dtype": dtype, "attention": attn, "batched": batched,
                           "error": f"{type(exc).__name__}: {str(exc)[:160]}"}
                rows.append(row)
                print(json.dumps(row), flush=True)
        del model
        torch.cuda.empty_cache()
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, f"attention_check_{args.model}.json").write_text(json.dumps(
            {"machine": torch.cuda.get_device_name(0), "reference": reference, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
