"""The plan of one run: what preflight, load and bench all ask the planner, and the one no-go path.

Every runtime fact a run needs - devices and where each layer runs, dtype, batch, sequence length, the KV room -
comes from the DevicePlan this module returns; nothing downstream computes them again.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from routerllm_cli.config import ModelSpec, Settings
from routerllm_cli.errors import NoGoError

Purpose = Literal["bench", "load", "preflight"]

LOAD_TEST_TOKENS = 32  # `load` plans for its one test generation


def run_shape(settings: Settings, purpose: Purpose, *, batch_size: int | None = None, seq_len: int | None = None,
              num_examples: int | None = None, max_new_tokens: int | None = None) -> dict[str, Any]:
    """batch_size (None: the planner chooses), seq_len, num_examples and max_new_tokens of a run."""
    b = settings.bench
    if purpose == "load":
        new = max_new_tokens or LOAD_TEST_TOKENS
        return {"batch_size": batch_size or 1, "seq_len": seq_len or b.max_prompt_tokens + new,
                "num_examples": 1, "max_new_tokens": new}
    new = max_new_tokens or b.max_new_tokens
    pinned = batch_size or (b.batch_size if isinstance(b.batch_size, int) else None)
    n = num_examples or (len(b.task_ids) if b.task_ids else b.num_examples) * b.samples
    return {"batch_size": pinned, "seq_len": seq_len or b.max_prompt_tokens + new, "num_examples": n,
            "max_new_tokens": new}


def plan_for_run(settings: Settings, purpose: Purpose, *, spec: ModelSpec | None = None, hardware: Any = None,
                 batch_size: int | None = None, seq_len: int | None = None, num_examples: int | None = None,
                 max_new_tokens: int | None = None, bandwidths: Any = None, model: Any = None):
    """Plan `spec` (the large model by default) for a run on `hardware` (probed when None; bench.device cpu hides
    the GPUs). The batch is the run's if it pins one (flag or bench.batch_size), else the planner's choice."""
    from routerllm_cli.hardware import probe_hardware
    from routerllm_cli.plan.planner import plan_model

    spec = spec or settings.large
    if hardware is None:
        hardware = probe_hardware(spec.offload_folder or settings.offload_folder)
        if purpose == "bench" and settings.bench.device == "cpu":
            hardware.gpus = []
    shape = run_shape(settings, purpose, batch_size=batch_size, seq_len=seq_len, num_examples=num_examples,
                      max_new_tokens=max_new_tokens)
    return plan_model(spec, hardware, bandwidths=bandwidths, token=settings.hf_token, model=model, **shape)


_PREFLIGHT_ONLY = re.compile(r"(?<!routerllm preflight )(--assume-(?:gpus|cpu) [^\s)]+(?: --assume-cpu [^\s)]+)?)")


def fix_for(fix: str, command: str) -> str:
    """A fix as the command that failed can act on it: what-if flags exist on `preflight` only."""
    if command == "preflight":
        return fix
    return _PREFLIGHT_ONLY.sub(r"`routerllm preflight \1`", fix)


def require_go(plan: Any, command: Purpose) -> Any:
    """The one no-go path: a no-go plan stops the run before anything loads, with every fix it has."""
    if plan.verdict == "go":
        return plan
    fixes = "; ".join(fix_for(f, command) for f in plan.fixes) or "run `routerllm preflight` for the plan"
    raise NoGoError("preflight says no-go: " + "; ".join(plan.reasons or ["no reason given"]), fix=fixes)
