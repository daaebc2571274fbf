"""One output helper: data to stdout (rich for people, JSON with --json), messages and errors to stderr."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console


def _default(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, set):
        return sorted(obj)
    return str(obj)


def to_json(payload: Any) -> str:
    return json.dumps(payload, indent=2, default=_default, sort_keys=False)


class Output:
    """Human or machine output for one command invocation."""

    def __init__(self, json_mode: bool = False):
        self.json_mode = json_mode
        self.out = Console(file=sys.stdout, soft_wrap=False)
        self.err = Console(file=sys.stderr, soft_wrap=True, highlight=False)

    def result(self, payload: Any, render: Callable[[Console], None] | None = None) -> None:
        """The command's data: JSON on stdout in --json mode, else the human rendering."""
        if self.json_mode:
            sys.stdout.write(to_json(payload) + "\n")
            sys.stdout.flush()
        elif render is not None:
            render(self.out)
        else:
            self.out.print(to_json(payload))

    def info(self, message: str) -> None:
        if not self.json_mode:
            self.err.print(message)

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]warning:[/] {message}")
