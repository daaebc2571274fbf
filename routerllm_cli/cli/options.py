"""Shared Annotated option types, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="YAML config (default: $ROUTERLLM_CONFIG, else built-in defaults).",
                 show_default=False),
]


def complete_model(incomplete: str) -> list[str]:
    """`--model <TAB>`: catalog names, then model folders (holding config.json or a .gguf) and .gguf files under
    the path typed so far; plain folders too, so a path can be completed one level at a time. No heavy imports."""
    from routerllm_cli.catalog.models import CATALOG

    out = [name for name in sorted(CATALOG) if name.startswith(incomplete.lower().replace("-", "_"))]
    head, _, prefix = incomplete.rpartition("/")
    base = Path(head or ("/" if incomplete.startswith("/") else ".")).expanduser()
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return out
    shown = f"{head}/" if head or incomplete.startswith("/") else ""
    models, folders = [], []
    for entry in entries:
        if not entry.name.startswith(prefix) or (entry.name.startswith(".") and not prefix.startswith(".")):
            continue
        if entry.is_dir():
            is_model = (entry / "config.json").is_file() or any(entry.glob("*.gguf"))
            (models if is_model else folders).append(f"{shown}{entry.name}" + ("" if is_model else "/"))
        elif entry.suffix == ".gguf":
            models.append(f"{shown}{entry.name}")
    return out + models + folders


ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Catalog name (see `routerllm preflight --list-models`), hub id, local dir, .gguf "
                 "file, or an OpenAI-compatible endpoint: openai:http://HOST:8000/v1#SERVED_MODEL.",
                 show_default=False, autocompletion=complete_model),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
ResultsDirOpt = Annotated[
    Optional[Path], typer.Option("--results-dir", help="Where run folders are written (default: bench.results_dir).",
                                 show_default=False)
]
DecodeOpt = Annotated[
    Optional[str],
    typer.Option("--decode", help="auto (compiled when every layer is on one GPU) | compiled (static KV cache, "
                 "decode step captured as CUDA graphs) | eager (generate).", show_default=False),
]
DecodeFuseOpt = Annotated[
    Optional[str],
    typer.Option("--decode-fuse", help="auto (on for captured models of 4 GB or more) | on (compile the static "
                 "step with its decoder layers fused by torch.compile) | off.", show_default=False),
]
Use4bitOpt = Annotated[Optional[bool], typer.Option("--4bit/--no-4bit", help="Override use_4bit.", show_default=False)]
Use8bitOpt = Annotated[Optional[bool], typer.Option("--8bit/--no-8bit", help="Override use_8bit.", show_default=False)]
MaxMemoryOpt = Annotated[
    Optional[list[str]],
    typer.Option("--max-memory", help='Per-device budget, repeatable: --max-memory 0=70GB --max-memory cpu=200GB.',
                 show_default=False),
]


def model_overrides(model: str | None = None, use_4bit: bool | None = None, use_8bit: bool | None = None,
                    max_memory: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """Only the flags the user set, as nested overrides for `models.large_llm` (flags beat env and YAML)."""
    from routerllm_cli.errors import ConfigError

    spec: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
    if model is not None:
        from routerllm_cli.endpoints import is_endpoint_model

        spec["name"] = model
        spec["model_id"] = None
        spec["gguf_file"] = None
        if not is_endpoint_model(model):  # a local model replaces a configured endpoint; openai:... updates it
            spec["endpoint"] = None
    if use_4bit is not None:
        spec["use_4bit"] = use_4bit
        if use_4bit:
            spec.setdefault("use_8bit", False)
    if use_8bit is not None:
        spec["use_8bit"] = use_8bit
        if use_8bit:
            spec.setdefault("use_4bit", False)
    if max_memory:
        budgets = {}
        for item in max_memory:
            if "=" not in item:
                raise ConfigError(f"--max-memory {item!r} has no device", fix="write it as DEVICE=SIZE, e.g. 0=70GB or cpu=200GB")
            dev, size = item.split("=", 1)
            budgets[dev.strip()] = size.strip()
        spec["max_memory"] = budgets
    return {"models": {"large_llm": spec}} if spec else {}


def decode_override(decode: str | None, fuse: str | None = None) -> dict[str, Any]:
    """`--decode` and `--decode-fuse` as bench overrides, checked here so a typo is one line naming the choices."""
    from routerllm_cli.errors import ConfigError

    out: dict[str, Any] = {}
    if decode is not None:
        if decode not in ("auto", "eager", "compiled"):
            raise ConfigError(f"--decode {decode!r} is not a decode path", fix="use auto, compiled or eager")
        out["decode"] = decode
    if fuse is not None:
        if fuse not in ("auto", "on", "off"):
            raise ConfigError(f"--decode-fuse {fuse!r} is not a fusion setting", fix="use auto, on or off")
        out["decode_fuse"] = fuse
    return out
