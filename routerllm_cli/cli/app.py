"""Wiring only: builds the Typer app from one module per command."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from routerllm_cli import __version__
from routerllm_cli.cli import bench, compare, load, offload, preflight

app = typer.Typer(
    name="routerllm",
    help="Run very large open models on 2-3 GPUs: plan before loading, load as planned, benchmark on HumanEval, "
    "and compare a router of small models against one large model.",
    no_args_is_help=False,  # `routerllm` alone: the help and one line saying why (see _root)
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"routerllm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[Optional[bool], typer.Option("--version", "-V", callback=_version, is_eager=True,
                                                    help="Show the version and exit.")] = None,
) -> None:
    """routerllm - large models on few GPUs."""
    if ctx.invoked_subcommand is None:
        from routerllm_cli.cli.errors import _print_error

        text = ctx.get_help()  # typer's rich help prints itself and returns ""
        if text:
            typer.echo(text)
        _print_error("no command given - fix: pick one of the commands above, e.g. "
                     "`routerllm bench --config configs/laptop_cpu.yaml -n 3` or `routerllm preflight`")
        raise typer.Exit(2)


app.command("preflight", no_args_is_help=False, epilog=preflight.EPILOG)(preflight.preflight)
app.command("load", epilog=load.EPILOG)(load.load)
app.command("bench", epilog=bench.EPILOG)(bench.bench)
app.command("compare", epilog=compare.EPILOG)(compare.compare)
app.add_typer(offload.offload_app, name="offload")


def main() -> None:
    app(prog_name="routerllm")
