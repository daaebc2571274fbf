"""The bench pipeline: plan -> load -> generate -> execute -> measure, with progressive saving and exact resume.

`run_bench` is usable from Python and is what `compare` composes. It reports progress through a callback
(`on_event(kind, data)`) so the CLI can draw a screen without this module knowing about rich.
Interruption: a `StopSignal` set by SIGINT/SIGTERM makes the loop finish the batch in flight, save, mark the run
`interrupted` and raise `BenchInterrupted` (the CLI exits 130); a second signal stops at once. A run that fails
(a no-go, a load error, a crash) is marked `failed` with its reason. Every run folder holds a `run.log`.
"""

from routerllm_cli.bench.pipeline import run_bench
from routerllm_cli.bench.run import (PROGRESS_EVERY, SUMMARY_EVERY, BenchInterrupted, BenchRun, EventSink, StopSignal,
                                     parses_as_python, plan_for, result_fingerprint)
from routerllm_cli.bench.summary import summarize

_summary = summarize  # the name the metrics tests use

__all__ = ["PROGRESS_EVERY", "SUMMARY_EVERY", "BenchInterrupted", "BenchRun", "EventSink", "StopSignal",
           "parses_as_python", "plan_for", "result_fingerprint", "run_bench", "summarize"]
