"""Exceptions the core raises. Each carries a one-line message that names the fix and an exit code.

The CLI maps them to one line on stderr; Python callers can catch them like any exception.
Exit codes: 2 for bad usage or configuration, 1 for a no-go or a failed run.
"""

from __future__ import annotations


class RouterLLMError(Exception):
    """A known failure with a message a user can act on."""

    exit_code = 1

    def __init__(self, message: str, *, fix: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix
        if exit_code is not None:
            self.exit_code = exit_code

    def one_line(self) -> str:
        text = self.message.rstrip(". ")
        if self.fix:
            text += f" - fix: {self.fix}"
        return text


class ConfigError(RouterLLMError):
    """Bad usage or configuration (exit 2)."""

    exit_code = 2


class NoGoError(RouterLLMError):
    """The plan or the hardware says this cannot run (exit 1)."""

    exit_code = 1


class RunFailed(RouterLLMError):
    """A load, generation or bench run failed (exit 1)."""

    exit_code = 1
