"""`routerllm load` (filled in by its own module; not implemented yet)."""

from __future__ import annotations

import typer

from routerllm_cli.cli.options import ConfigOpt, JsonOpt, ModelOpt

EPILOG = "Example:\n\n  routerllm load --help\n"


def load(model: ModelOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Not implemented yet."""
    typer.echo("error: routerllm load is not implemented yet", err=True)
    raise typer.Exit(1)
