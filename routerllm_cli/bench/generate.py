"""How a run's answers are produced: static batches, continuous batching (the kept-cache scheduler for offloaded
models, a captured static step for resident ones), yielded in groups as they finish."""

from __future__ import annotations

import time
from typing import Any, Callable

from routerllm_cli.bench.run import StopSignal


def on_gpu(device: Any) -> bool:
    return "cuda" in str(device)


def generate_groups(generation: Any, loaded: Any, items: list, batch_size: int, stopping: dict, b: Any,
                     stop: StopSignal, continuous: bool, decoder: Any = None,
                     on_step: Callable[[int], None] | None = None):
    """Yield (finished [(item, output)], seconds since the previous group). Static batches decode until their
    longest answer ends; continuous batching refills finished rows (on a GPU the re-read prompt costs less
    than the decode steps it saves; on a CPU it does not). Either way a stop request takes no new prompt and
    lets the rows in flight finish."""
    kw = dict(max_new_tokens=b.max_new_tokens, temperature=b.temperature, top_p=b.top_p,
              device=loaded.input_device, on_step=on_step, **stopping)
    if continuous:
        last = time.perf_counter()
        # With offloaded layers every forward pass streams the weights: keep the batch's cache across refills
        # instead of re-reading every row's prompt and answer at each one
        schedule = generation.generate_continuous
        if loaded.offload is not None:
            from routerllm_cli import continuous as kept

            if kept.supports(loaded.model):
                schedule = kept.generate_kept
        if decoder is not None:  # a resident model's static-cache step (routerllm_cli.decode)
            kw["decoder"] = decoder
        stream = schedule(
            loaded.model, loaded.tokenizer, [(i, it[2]) for i, it in enumerate(items)], batch_size=batch_size,
            seed=b.seed if b.temperature > 0 else None, should_stop=lambda: stop.requested, **kw)
        for i, out in stream:
            now = time.perf_counter()
            yield [(items[i], out)], now - last
            last = now
        return
    for start in range(0, len(items), batch_size):
        if stop.requested:
            return
        batch = items[start:start + batch_size]
        t0 = time.perf_counter()
        outs = generation.generate_batch(loaded.model, loaded.tokenizer, [it[2] for it in batch],
                                         seed=b.seed + start if b.temperature > 0 else None, **kw)
        yield list(zip(batch, outs)), time.perf_counter() - t0


