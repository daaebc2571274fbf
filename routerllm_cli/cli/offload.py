"""`routerllm offload clean`: empty the offload folder, safely."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from routerllm_cli.cli.errors import handle_errors
from routerllm_cli.cli.options import ConfigOpt, JsonOpt
from routerllm_cli.cli.output import Output

offload_app = typer.Typer(help="Manage the offload folder.", no_args_is_help=True,
                          context_settings={"help_option_names": ["-h", "--help"]})

CLEAN_EPILOG = """Examples:

  routerllm offload clean --dry-run

  routerllm offload clean --config configs/production_config.yaml --yes
"""


@offload_app.command("clean", epilog=CLEAN_EPILOG)
@handle_errors
def clean(
    path: Annotated[Optional[Path], typer.Argument(help="Folder to empty (default: the configured offload_folder).",
                                                   show_default=False)] = None,
    config: ConfigOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be deleted and stop.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete everything inside the offload folder routerllm made (never the folder's parents, never through
    symlinks, never a folder it did not make or one a running load holds)."""
    from routerllm_cli.config import load_settings
    from routerllm_cli.errors import ConfigError
    from routerllm_cli.offload.folder import execute_clean, plan_clean
    from routerllm_cli.units import format_bytes

    out = Output(json_out)
    settings = load_settings(config)
    configured = settings.managed_offload_folder()
    plan = plan_clean(path or configured, configured)
    summary = plan.as_dict()
    if plan.stale_lock:
        out.warn(f"stale lock from pid {plan.stale_lock.pid} (not running); it will be removed")
    if not plan.files and not plan.dirs:
        out.result({**summary, "deleted": False, "dry_run": dry_run},
                   lambda c: c.print(f"{plan.folder}: nothing to clean"))
        return
    out.info(f"{plan.folder}: {len(plan.files)} files, {len(plan.dirs)} folders, {format_bytes(plan.total_bytes)}")
    if dry_run:
        out.result({**summary, "deleted": False, "dry_run": True}, lambda c: _list(c, plan, format_bytes))
        return
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError("refusing to ask for confirmation without a terminal", fix="pass --yes to delete, or --dry-run to look")
        typer.confirm(f"Delete {format_bytes(plan.total_bytes)} in {plan.folder}?", abort=True, err=True)
    freed = execute_clean(plan, configured)
    out.result({**summary, "deleted": True, "dry_run": False, "freed_bytes": freed},
               lambda c: c.print(f"freed {format_bytes(freed)} in {plan.folder}"))


def _list(console, plan, format_bytes) -> None:
    from rich.markup import escape

    shown = 200
    for p in plan.files[:shown]:
        size = "link" if p in plan.skipped_links else format_bytes(plan.sizes.get(p, 0))
        console.print(f"{size:>10}  {escape(str(p))}", soft_wrap=True)
    if len(plan.files) > shown:
        console.print(f"... and {len(plan.files) - shown} more files (--json lists them all)")
    console.print(f"dry run: nothing deleted ({len(plan.files)} files, {format_bytes(plan.total_bytes)} would go)")
