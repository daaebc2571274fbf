"""One output helper: data to stdout (rich for people, JSON with --json), messages and errors to stderr."""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.text import Text

# What the screen says also goes to the log file open at the time (a run's run.log, logs/<command>-*.log).
screen_log = logging.getLogger("routerllm.screen")
screen_log.addHandler(logging.NullHandler())


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


def wrap_words(text: Text, width: int) -> Text:
    """Break `text` between words only, so no word is split and a long token (a path, a command to copy) stays
    whole: it starts a row of its own and, if longer than a row, is left for the terminal to wrap."""
    breaks: list[int] = []
    row_start, first = 0, True
    for word in re.finditer(r"\S+", text.plain):
        start, end = word.span()
        newline = text.plain.rfind("\n", row_start, start)
        if newline >= 0:
            row_start, first = newline + 1, True
        if not first and end - row_start > width:
            breaks.append(start)
            row_start = start
        first = False
    if not breaks:
        return text
    rows = [row.copy() for row in text.divide(breaks)]
    for row in rows:
        row.rstrip()
    return Text("\n").join(rows)


def print_line(console: Console, message: str | Text) -> None:
    """One message on stderr: on a terminal broken between words at its width (never inside a word); into a
    pipe or a file one physical line, so it can be grepped."""
    text = Text.from_markup(message) if isinstance(message, str) else message
    if console.is_terminal:
        text = wrap_words(text, console.width)
    console.print(text, soft_wrap=True)


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
        self._log_result(payload, render)

    def _log_result(self, payload: Any, render: Callable[[Console], None] | None) -> None:
        from routerllm_cli import logs

        if logs.active() is None:
            return
        if render is None:
            screen_log.info("result:\n%s", to_json(payload))
            return
        from io import StringIO

        buf = StringIO()
        render(Console(file=buf, width=120, color_system=None, soft_wrap=False))
        screen_log.info("result:\n%s", buf.getvalue().rstrip())

    def info(self, message: str) -> None:
        screen_log.info(Text.from_markup(message).plain)
        if not self.json_mode:
            print_line(self.err, message)

    def warn(self, message: str) -> None:
        screen_log.warning(Text.from_markup(message).plain)
        print_line(self.err, f"[yellow]warning:[/] {message}")
