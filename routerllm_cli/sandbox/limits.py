"""What a sandboxed run may use, and what it gives back."""

from __future__ import annotations

import math
from dataclasses import dataclass

from routerllm_cli.errors import ConfigError

LAYERS = ("auto", "bwrap", "builtin")
MAX_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 3.0
    memory_bytes: int = 2 * 1024**3  # address space of each sandboxed process
    max_processes: int = 64  # best effort: binds only where the seccomp filter is missing and uid != 0
    max_file_bytes: int = 16 * 1024**2  # one file
    max_write_bytes: int = 16 * 1024**2  # everything the program keeps in its writable /tmp at once
    max_open_files: int = 64
    max_output_bytes: int = 64 * 1024  # the tail of stdout and stderr kept in the result
    max_value_bytes: int = 16 * 1024**2  # one serialised return value handed to the checks
    layer: str = "auto"  # "bwrap" (bubblewrap), "builtin" (routerllm's own namespaces + seccomp) or "auto"

    def validate(self) -> "SandboxLimits":
        if not (isinstance(self.timeout_s, (int, float)) and math.isfinite(self.timeout_s)
                and 0 < self.timeout_s <= MAX_TIMEOUT_S):
            raise ConfigError(f"sandbox timeout must be a finite number of seconds in (0, {MAX_TIMEOUT_S:.0f}], "
                              f"got {self.timeout_s}", fix="set bench.timeout_s to e.g. 3.0", exit_code=2)
        sizes = {"memory_bytes": self.memory_bytes, "max_file_bytes": self.max_file_bytes,
                 "max_write_bytes": self.max_write_bytes, "max_value_bytes": self.max_value_bytes,
                 "max_open_files": self.max_open_files, "max_processes": self.max_processes}
        for name, value in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"sandbox limit {name} must be a positive whole number, got {value!r}",
                                  fix=f"pass {name} above 0", exit_code=2)
        if not isinstance(self.max_output_bytes, int) or self.max_output_bytes < 0:
            raise ConfigError(f"sandbox limit max_output_bytes must be 0 or more, got {self.max_output_bytes!r}",
                              fix="pass max_output_bytes >= 0", exit_code=2)
        if self.layer not in LAYERS:
            raise ConfigError(f"unknown sandbox layer {self.layer!r}", fix=f"use one of {', '.join(LAYERS)}")
        return self


@dataclass
class ExecutionResult:
    passed: bool
    result: str  # "passed" | "failed: <reason>" | "timed out"
    seconds: float
    stdout_tail: str = ""  # stdout and stderr together, at most max_output_bytes
