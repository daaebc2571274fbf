"""What a bench run is: its signals, its result, the settings that fingerprint it, and its plan."""

from __future__ import annotations

import ast
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from routerllm_cli.config import ModelSpec, Settings
from routerllm_cli.errors import RouterLLMError
from routerllm_cli.logs import log

EventSink = Callable[[str, dict[str, Any]], None]
SUMMARY_EVERY = 10
PROGRESS_EVERY = 1.0  # seconds between "progress" events inside a batch


class BenchInterrupted(RouterLLMError):
    exit_code = 130


class StopSignal:
    """First SIGINT/SIGTERM asks for a clean stop after the batch in flight; a second one stops at once."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.count > 0

    def request(self) -> None:
        self.count += 1

    def _handler(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count >= 2:
            self.restore()
            raise KeyboardInterrupt
        sys.stderr.write("\nstopping after the batch in flight (press Ctrl-C again to stop now)\n")
        log.warning("signal %s: stopping after the batch in flight", signum)

    def install(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def result_fingerprint(spec: ModelSpec, settings: Settings, model_name: str) -> dict[str, Any]:
    """The settings that change what a run produces; a resume must match them exactly."""
    b = settings.bench
    return {
        "model": model_name,
        "model_id": spec.model_id or spec.name,
        "quantization": spec.quantization,
        "dtype": spec.torch_dtype,
        "prompt_style": b.prompt_style,
        "max_new_tokens": b.max_new_tokens,
        "temperature": b.temperature,
        "top_p": b.top_p if b.temperature > 0 else None,
        "samples": b.samples,
        "seed": b.seed,
        **({"source": "endpoint"} if spec.endpoint is not None else {}),  # a remote run never resumes a local one
    }


@dataclass
class BenchRun:
    """What a caller gets back: the summary and where it lives."""

    run_dir: Path
    summary: dict[str, Any]
    load_seconds: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)


def parses_as_python(prompt: str, completion: str) -> bool:
    if not completion.strip():
        return False
    try:
        ast.parse(prompt + completion)
    except (SyntaxError, ValueError):
        return False
    return True


def plan_for(spec: ModelSpec, settings: Settings, *, num_examples: int, batch_size: int | None = None):
    """The run's plan (`plan.plan_for_run`), before anything loads; a no-go stops here."""
    from routerllm_cli.plan import plan_for_run, require_go

    return require_go(plan_for_run(settings, "bench", spec=spec, batch_size=batch_size, num_examples=num_examples),
                      "bench")


