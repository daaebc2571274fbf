"""Resuming a bench run from its folder alone: the run's own settings, read back from its run.json.

`routerllm bench --run-dir results/<run>` needs nothing else. The settings that decide what a run produces (the
model, its precision, the prompt style, sampling, the number of new tokens) and the run's problems come from
run.json: YAML and `ROUTERLLM_*` values for them describe new runs and are set aside with a note; a command-line
flag that contradicts them is refused with the fix. A larger problem set on the command line (`-n`, `--tasks`)
extends the run; a smaller one is refused by `run_bench`, never finished as a shrunken run. Everything else
(batch size, batching, device, memory budgets, execution, timeouts) may change between sessions and follows the
usual precedence, with the run's recorded values in place of the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from routerllm_cli.config import Settings, load_settings
from routerllm_cli.errors import ConfigError

_MODEL = ("models", "large_llm")
# Settings a run keeps for its whole life: the fingerprint's sources, and the problems it answers.
PINNED: tuple[tuple[str, ...], ...] = (
    (*_MODEL, "name"), (*_MODEL, "model_id"), (*_MODEL, "gguf_file"), (*_MODEL, "torch_dtype"),
    (*_MODEL, "use_4bit"), (*_MODEL, "use_8bit"), (*_MODEL, "bnb_4bit_quant_type"),
    (*_MODEL, "bnb_4bit_use_double_quant"), (*_MODEL, "endpoint"),
    ("bench", "prompt_style"), ("bench", "max_new_tokens"), ("bench", "temperature"), ("bench", "top_p"),
    ("bench", "samples"), ("bench", "seed"), ("bench", "num_examples"), ("bench", "task_ids"),
)
# fingerprint key -> the flag that sets it (None: only YAML or env can)
FLAGS = {"model": "--model", "model_id": "--model", "quantization": "--4bit/--8bit", "dtype": None,
         "prompt_style": "--prompt-style", "max_new_tokens": "--max-new-tokens", "temperature": "--temperature",
         "top_p": None, "samples": "--samples", "seed": None, "source": "--model"}
_MISSING = object()


def _get(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return _MISSING
        data = data[key]
    return data


def _set(data: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
    data[path[-1]] = value


def settings_for_resume(run_dir: Path | str, config: Path | str | None = None,
                        overrides: dict[str, Any] | None = None) -> tuple[Settings, list[str]]:
    """The settings to continue the run in `run_dir` with, and notes on values set aside for the run's own.
    `overrides` are the command-line flags actually given (nested dicts, as for `load_settings`)."""
    from routerllm_cli.bench import result_fingerprint
    from routerllm_cli.catalog import resolve_model_spec
    from routerllm_cli.runs import RunFolder, fingerprint_differences

    run_dir = Path(run_dir)
    info = RunFolder(run_dir).info()
    recorded = info.get("config") or {}
    flags = overrides or {}
    if not recorded:  # a run written before run.json kept its settings: the fingerprint check decides
        return load_settings(config, flags), []
    current = load_settings(config, flags, base=recorded)
    data = current.model_dump(mode="json")
    notes = []
    for path in PINNED:
        ran = _get(recorded, path)
        if ran is _MISSING or _get(flags, path) is not _MISSING:
            continue
        now = _get(data, path)
        if now != ran:
            notes.append(f"{path[-1]} {now!r} set aside: the run has {ran!r}")
            _set(data, path, ran)
    settings = load_settings(None, data) if notes else current
    spec = settings.large
    fingerprint = result_fingerprint(spec, settings, resolve_model_spec(spec).name)
    diffs = fingerprint_differences(info.get("fingerprint") or {}, fingerprint)
    if diffs:
        keys = [d.split(" ", 1)[0] for d in diffs]
        named = sorted({FLAGS.get(k) or k for k in keys})
        raise ConfigError(
            f"cannot resume {run_dir}: {'; '.join(d.replace(' now', ' on the command line') for d in diffs)} "
            "(a run keeps the settings it started with)",
            fix=f"drop {', '.join(named)} to continue it as it ran (`routerllm bench --run-dir {run_dir}`), "
            "or leave out --run-dir to start a new run")
    if notes:
        notes = [f"resuming with the run's own settings ({'; '.join(notes)})"]
    return settings, notes


def _span(ids: list[str]) -> str:
    return ids[0] if len(ids) == 1 else f"{ids[0]} ... {ids[-1]}" if ids else "none"


def run_task_ids(info: dict[str, Any], problems_all: list[dict]) -> list[str] | None:
    """The problems a run answers: recorded in run.json, or (runs from before it was recorded) selected again
    from its recorded settings; None when neither is there."""
    if isinstance(info.get("task_ids"), list):
        return [str(t) for t in info["task_ids"]]
    bench = (info.get("config") or {}).get("bench") or {}
    if not bench:
        return None
    from routerllm_cli import humaneval

    chosen = humaneval.select(problems_all, n=None if bench.get("task_ids") else bench.get("num_examples"),
                              task_ids=bench.get("task_ids"))
    return [p["task_id"] for p in chosen]


def check_problem_set(run_dir: Path | str, ran: list[str] | None, selected: list[str]) -> list[str]:
    """The run's problems after this session: the same, or more (the run is extended). Fewer or others are
    refused: finishing them would call a shrunken run finished."""
    if ran is None:
        return selected
    if not set(ran) <= set(selected):
        raise ConfigError(
            f"cannot resume {run_dir}: it answers {len(ran)} problems ({_span(ran)}), these settings select "
            f"{len(selected)} ({_span(selected)})",
            fix=f"leave out -n/--tasks to finish its own {len(ran)} (`routerllm bench --run-dir {run_dir}`), "
            "or leave out --run-dir to start a new run")
    return ran + [t for t in selected if t not in set(ran)]
