"""Exceptions -> one line on stderr and an exit code. ROUTERLLM_DEBUG=1 shows the traceback instead."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, TypeVar

import typer

from routerllm_cli.errors import RouterLLMError

F = TypeVar("F", bound=Callable[..., Any])


def debug_enabled() -> bool:
    return os.environ.get("ROUTERLLM_DEBUG", "").lower() not in ("", "0", "false", "no")


def _print_error(line: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    from routerllm_cli.cli.output import print_line

    print_line(Console(file=sys.stderr, soft_wrap=True, highlight=False), f"[red]error:[/] {escape(line)}")


def _known_exception(exc: BaseException) -> tuple[str, int] | None:
    """Third-party failures with a known fix, from the one table (loading/failures.py), as (line, exit code)."""
    from routerllm_cli.loading.failures import translate_load_error

    known = translate_load_error(exc)
    return (known.one_line(), known.exit_code) if known is not None else None


def handle_errors(func: F) -> F:
    """Wrap a command: known failures become one line naming the fix, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except RouterLLMError as exc:
            if debug_enabled():
                raise
            _print_error(exc.one_line())
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _print_error("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence for a CLI
            if debug_enabled():
                raise
            known = _known_exception(exc)
            if known:
                _print_error(known[0])
                raise typer.Exit(known[1]) from None
            _print_error(f"unexpected {type(exc).__name__}: {str(exc)[:300]} (set ROUTERLLM_DEBUG=1 for the traceback)")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
