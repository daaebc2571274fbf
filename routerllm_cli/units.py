"""The one parser for memory sizes ("70GB", "70GiB", "512MB", plain byte counts), and the one formatter of
sizes and of durations.

Semantics match accelerate's `convert_file_size_to_int`: "GB"/"MB"/"KB" are powers of 10, "GiB"/"MiB"/"KiB"
are powers of 2, and a lower-case "b" after an upper-case prefix ("8Gb") means bits, so a `max_memory` written for
accelerate means the same here. An all-lower-case "70gb" is refused: accelerate would read it as gigabits (an
eighth of what was almost surely meant). Plain numeric strings and T/TiB are accepted on top. Kept free of torch so config
validation and `--help` stay instant.
"""

from __future__ import annotations

import math
import re

from routerllm_cli.errors import ConfigError

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: int | float | str, *, what: str = "memory size") -> int:
    """Return a size in bytes. Raises ConfigError with the fix for anything it cannot read."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: {value!r} is not a size", fix='write it like "70GB", "70GiB" or a byte count')
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{what}: {value} is not a size (YAML reads .inf and numbers like 1e400 as infinity)",
                          fix='write a finite size like "200GB"')
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"{what}: {value} is negative", fix="use a size of 0 or more")
        return int(value)
    match = _SIZE_RE.match(str(value))
    if not match or match.group(2).upper() not in _UNITS:
        raise ConfigError(
            f"{what}: cannot read {value!r} as a size",
            fix='write it like "70GB" (10^9 bytes), "70GiB" (2^30 bytes), "512MB" or a plain byte count',
        )
    number, unit = match.groups()
    scaled = float(number) * _UNITS[unit.upper()]
    if not math.isfinite(scaled):
        raise ConfigError(f"{what}: {value!r} is too large to be a size", fix='write a size like "200GB"')
    size = int(scaled)
    if len(unit) == 2 and unit.islower() and unit.endswith("b"):
        prefix = {"k": "kilo", "m": "mega", "g": "giga", "t": "tera"}.get(unit[0], "")
        raise ConfigError(
            f"{what}: {value!r} would be {number} {prefix}bits ({format_bytes(size // 8)}), as accelerate reads a "
            "lower-case b",
            fix=f'write "{number}{unit.upper()}" for bytes (or "{number}{unit[0].upper()}b" if you mean bits)',
        )
    if len(unit) == 2 and unit.upper() != "IB" and unit.endswith("b"):
        return size // 8  # "Gb"/"Mb"/"kb" are bits, as accelerate reads them
    return size


def format_bytes(n: int | float, *, binary: bool = False) -> str:
    """Human size with one decimal: 70.0 GB (or GiB when binary)."""
    base, units = (1024, ["B", "KiB", "MiB", "GiB", "TiB"]) if binary else (1000, ["B", "KB", "MB", "GB", "TB"])
    size = float(n)
    for unit in units:
        if abs(size) < base or unit == units[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= base
    return f"{size:.1f} {units[-1]}"


def format_duration(seconds: int | float | None) -> str:
    """The one way a duration is shown, measured or estimated: "850 ms", "4.25 s", "2m 05s", "2h 05m", "1d 18h";
    "-" for none."""
    if seconds is None or math.isnan(float(seconds)):
        return "-"
    s = max(float(seconds), 0.0)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.2f} s"
    minutes, sec = divmod(int(round(s)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours:02d}h"
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {sec:02d}s"
