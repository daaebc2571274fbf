"""Log files, with the stdlib `logging` module: a bench run's `run.log` in its folder, and one file per
`load` / `preflight` in the logs folder (`logs_dir`, default ./logs).

A log holds what the screen said, the warnings (Python's, transformers', accelerate's) and the traceback of a
crash, each line with a timestamp, so a run that died at 3 a.m. can be read in the morning. Messages go to the
`routerllm` logger; `log_to(path)` writes that logger (and the libraries' warnings) to a file while it is open.
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger("routerllm")
log.addHandler(logging.NullHandler())  # a library: without a log file, say nothing rather than print to stderr
RUN_LOG = "run.log"
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Libraries whose warnings belong in the log too (transformers' logger does not propagate to the root).
_LIBRARIES = ("transformers", "accelerate", "huggingface_hub")


_open: list[Path] = []  # log files open now, innermost last


def active() -> Path | None:
    """The log file being written now, if any."""
    return _open[-1] if _open else None


def new_log_path(logs_dir: Path | str, command: str) -> Path:
    """logs_dir/<command>-<YYYYmmdd-HHMMSS>.log (with -2, -3 ... if that second is taken); creates the folder."""
    folder = Path(logs_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{command}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 1000):
        path = folder / (f"{stem}.log" if n == 1 else f"{stem}-{n}.log")
        if not path.exists():
            return path
    return folder / f"{stem}-{id(folder)}.log"


@contextmanager
def log_to(path: Path | str) -> Iterator[Path]:
    """Append the `routerllm` logger (INFO and up) and the libraries' warnings to `path` while open."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8", delay=False)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(logging.INFO)
    previous_level = log.level
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    log.addHandler(handler)
    libraries = [logging.getLogger(name) for name in _LIBRARIES]
    for lib in libraries:
        lib.addHandler(handler)
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        # still on the screen as before, and in the log
        log.warning("%s", warnings.formatwarning(message, category, filename, lineno, line).strip())
        shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    _open.append(path)
    try:
        yield path
    except BaseException as exc:
        from routerllm_cli.errors import RouterLLMError

        if isinstance(exc, RouterLLMError):  # known: its one line, as the screen shows it
            log.log(logging.WARNING if exc.exit_code == 130 else logging.ERROR, "%s", exc.one_line())
        elif isinstance(exc, (KeyboardInterrupt, SystemExit)):
            log.warning("stopped: %s", type(exc).__name__)
        else:
            log.exception("crashed: %s: %s", type(exc).__name__, exc)
        raise
    finally:
        _open.remove(path)
        warnings.showwarning = shown
        for lib in libraries:
            lib.removeHandler(handler)
        log.removeHandler(handler)
        log.setLevel(previous_level)
        handler.close()


def _duration(seconds: float | None) -> str:
    from routerllm_cli.units import format_duration

    return "-" if seconds is None else format_duration(max(0.0, float(seconds)))


def _memory(memory: dict[str, int] | None) -> str:
    return "  ".join(f"{k} {v / 1e9:.1f}GB" for k, v in (memory or {}).items())


class EventLog:
    """Passes a bench's events on to `sink` and writes the ones a reader of the log needs (progress inside a
    batch at most once every `progress_every` seconds). A sink whose `logs_its_lines` is true prints (and so
    logs) the start, plan, load and generation lines itself."""

    def __init__(self, sink: Callable[[str, dict[str, Any]], None] | None = None, progress_every: float = 60.0):
        self.sink = sink
        self.progress_every = progress_every
        self._last_progress: float | None = None

    # what a screen prints itself (and so logs, through the output helper) is not written twice
    _SHOWN = ("start", "plan", "loaded", "generating")

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        line = None if kind in self._SHOWN and getattr(self.sink, "logs_its_lines", False) else self.describe(kind, data)
        if line:
            log.info("%s", line)
        if self.sink is not None:
            self.sink(kind, data)

    def describe(self, kind: str, d: dict[str, Any]) -> str | None:
        if kind == "start":
            return (f"bench {d.get('model')}: run folder {d.get('run_dir')}, {d.get('done')}/{d.get('total')} "
                    f"already done, problems from {d.get('source')}")
        if kind == "plan":
            return f"preflight: go, estimated bench time {_duration(d.get('eta_seconds'))}"
        if kind == "loaded":
            return f"loaded in {d.get('load_seconds', 0):.1f} s (attention: {d.get('attn')})"
        if kind == "generating":
            how = "continuous batching" if d.get("continuous") else "static batches"
            return f"generating {d.get('todo')} answers: batch size {d.get('batch_size')}, {how}, style {d.get('style')}"
        if kind == "progress":
            now = time.monotonic()
            if self._last_progress is not None and now - self._last_progress < self.progress_every:
                return None
            self._last_progress = now
            tps = d.get("tokens_per_s")
            return (f"in flight: {d.get('done')}/{d.get('todo')} answers this session, {d.get('tokens')} tokens, "
                    f"{tps or 0:.1f} tok/s, ETA {_duration(d.get('eta_seconds'))}  {_memory(d.get('memory'))}")
        if kind == "batch":
            pace = d.get("pace") or {}
            return (f"{d.get('done')} done (+{d.get('batch')} in {d.get('seconds', 0):.1f} s), passed {d.get('passed')}, "
                    f"ETA {_duration(pace.get('eta_seconds'))}  {_memory(d.get('memory'))}")
        if kind == "done":
            s = d.get("summary") or {}
            passed = f", pass@1 {s['pass@1']:.3f}" if "pass@1" in s else ""
            return f"{s.get('status')}: {s.get('done')}/{s.get('total')} answers{passed}, summary in {s.get('run_dir')}"
        return None
