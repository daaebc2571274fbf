"""`routerllm preflight`: will this model fit, where will each layer go, and how long will it take - before any
download or load. Glue only: the checks and the plan come from `routerllm_cli.plan.run_preflight`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from routerllm_cli.cli.errors import handle_errors
from routerllm_cli.cli.options import (ConfigOpt, JsonOpt, MaxMemoryOpt, ModelOpt, Use4bitOpt, Use8bitOpt,
                                       model_overrides)
from routerllm_cli.cli.output import Output
from routerllm_cli.units import format_duration

EPILOG = """Examples:

  routerllm preflight                                          # the configured model on this machine

  routerllm preflight --model llama3_405b --assume-gpus 2x80GB --assume-cpu 256GB --4bit

  routerllm preflight -c configs/production_config.yaml --batch-size 8 --json

  routerllm preflight --model codellama_70b --load               # then really load it and generate once

  routerllm preflight --list-models

  routerllm preflight --model llama3_405b --engine vllm --assume-nodes 2x8x80GB   # a cluster: TP/PP and commands

  routerllm preflight --model openai:http://10.0.0.1:8000/v1#meta-llama/Llama-3.1-405B-Instruct  # is it served?

Exit codes: 0 go, 1 no-go, 2 bad configuration.
"""

_STATUS = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]", "info": "[blue]info[/]",
           "skip": "[dim]skip[/]"}


def _gb(n: int | float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:,.1f}" if abs(n) >= 1e9 or n == 0 else f"{n / 1e9:.3f}"


@handle_errors
def preflight(
    model: ModelOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    use_4bit: Use4bitOpt = None,
    use_8bit: Use8bitOpt = None,
    max_memory: MaxMemoryOpt = None,
    assume_gpus: Annotated[Optional[str], typer.Option(
        "--assume-gpus", help='Plan for GPUs you do not have: "2x80GB", "4x141GB", "80GB,40GB" or "0".',
        show_default=False)] = None,
    assume_cpu: Annotated[Optional[str], typer.Option(
        "--assume-cpu", help='Plan for this much host RAM, e.g. "256GB".', show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", min=1, help="Batch to reserve KV cache for (default: bench.batch_size, 1 if auto).",
        show_default=False)] = None,
    seq_len: Annotated[Optional[int], typer.Option(
        "--seq-len", min=1, help="Tokens per sequence to reserve KV cache for (default: bench.max_prompt_tokens + "
        "bench.max_new_tokens).", show_default=False)] = None,
    num_examples: Annotated[Optional[int], typer.Option(
        "-n", "--num-examples", min=1, max=164, help="HumanEval examples for the bench-time estimate.",
        show_default=False)] = None,
    offload_folder: Annotated[Optional[Path], typer.Option(
        "--offload-folder", help="Override offload_folder (enables disk offload).", show_default=False)] = None,
    link_gbps: Annotated[Optional[float], typer.Option(
        "--assume-link-gbps", min=0.01, help="Host-to-GPU rate of offloaded weights over all host links together, "
        "GB/s (default: 54.8 per link, +74% per relaying GPU).", show_default=False)] = None,
    disk_gbps: Annotated[Optional[float], typer.Option(
        "--disk-gbps", min=0.01, help="Disk read rate for the load/offload estimates, GB/s (default 2, NVMe).",
        show_default=False)] = None,
    list_models: Annotated[bool, typer.Option("--list-models", help="Print the model catalog and exit.")] = False,
    load: Annotated[bool, typer.Option("--load", help="After a go, load the model as planned, generate once and "
                                       "report memory used against the plan.")] = False,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Prompt for the --load test generation.",
                                                  show_default=False)] = None,
    engine: Annotated[Optional[str], typer.Option(
        "--engine", help="Plan a cluster served by vllm or sglang: parallel sizes, memory per GPU, launch commands.",
        show_default=False)] = None,
    assume_nodes: Annotated[Optional[str], typer.Option(
        "--assume-nodes", help='The cluster for --engine: NODESxGPUSxSIZE, e.g. "2x8x80GB" (default: this machine '
        'as one node).', show_default=False)] = None,
    head_address: Annotated[str, typer.Option(
        "--head-address", help="The head node's address in the printed commands.")] = "HEAD_IP",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show the checks that passed and the "
                                          "planner's notes (by default: problems, the plan and the verdict).")] = False,
) -> None:
    """Check the machine and plan the model: per-device layers and memory, go / no-go with fixes, time estimates.

    Nothing is downloaded or loaded (unless --load). max_memory entries replace the budget of their device;
    devices they do not name get what the hardware has, minus the reserves shown. The verdict and its fixes come
    last; -v adds every check and the planner's notes. A log goes to logs_dir (default ./logs).
    """
    out = Output(json_out)
    if list_models:
        _list_models(out)
        return

    from routerllm_cli.config import load_settings
    from routerllm_cli.estimates import Bandwidths
    from routerllm_cli.hardware import assume_hardware, probe_hardware
    from routerllm_cli.plan import run_preflight

    from routerllm_cli.logs import log_to, new_log_path

    settings = load_settings(config, model_overrides(model, use_4bit, use_8bit, max_memory,
                                                     offload_folder=offload_folder))
    spec = settings.large
    if engine is not None or assume_nodes is not None:
        from routerllm_cli.cli.preflight_cluster import cluster_preflight

        return cluster_preflight(settings, out, engine=engine, nodes=assume_nodes, head=head_address,
                                 concurrency=batch_size, seq_len=seq_len, num_examples=num_examples)
    if spec.endpoint is not None:
        from routerllm_cli.endpoints.source import EndpointSource

        checked = EndpointSource(spec).check()
        out.result(checked, lambda c: c.print(f"[bold green]endpoint ok[/]: {checked['url']} serves "
                                              f"{checked['model']} (of {len(checked['served'])} listed)"))
        return
    log_path = new_log_path(settings.logs_dir, "preflight")
    out.info(f"log: {log_path}")
    with log_to(log_path):
        hardware = probe_hardware(spec.offload_folder or settings.offload_folder)
        if assume_gpus is not None or assume_cpu is not None:
            hardware = assume_hardware(assume_gpus, assume_cpu, base=hardware)
        rates: dict[str, float] = {}
        if disk_gbps:
            rates["disk_bytes_per_s"] = disk_gbps * 1e9
        if link_gbps:
            rates["h2d_links_bytes_per_s"] = link_gbps * 1e9
        bandwidths = Bandwidths(**rates) if rates else None
        out.info(f"planning {spec.name} ...")
        report = run_preflight(settings, hardware, batch_size=batch_size, seq_len=seq_len,
                               num_examples=num_examples, bandwidths=bandwidths)
        payload = report.to_dict()
        if load:
            if report.verdict == "go":
                payload["load"] = _load_and_generate(report.plan, spec, settings.hf_token, prompt, out)
            else:
                payload["load"] = None
                out.warn("--load skipped: the plan is no-go")
        about_config = set(spec.offload_notes())  # notes on the user's own settings are always shown
        out.result(payload, lambda c: _render(c, report, payload.get("load"), verbose=verbose, always=about_config))
    if report.verdict != "go":
        raise typer.Exit(1)


def _load_and_generate(plan: Any, spec: Any, token: str | None, prompt: str | None, out: Output) -> dict:
    """The setup guide's validation script: load exactly as planned, generate once, memory used vs planned."""
    from routerllm_cli.loading import DEFAULT_PROMPT, load_model, test_generation

    def progress(event: dict) -> None:
        stage = event.get("stage", "")
        message = event.get("message") or ""
        done, total = event.get("bytes_done"), event.get("bytes_total")
        extra = f" {_gb(done)}/{_gb(total)} GB" if done is not None and total else ""
        status.update(f"loading {plan.model.name}: {stage}{extra} {message} ({event.get('elapsed', 0):.0f} s)")

    with out.err.status(f"loading {plan.model.name} ...") as status:
        loaded = load_model(plan, spec, progress=progress if not out.json_mode else None, token=token)
        try:
            status.update("test generation ...")
            generation = test_generation(loaded, prompt or DEFAULT_PROMPT)
            summary = loaded.summary()
        finally:
            loaded.close()
    planned = {d: a.weight_bytes + a.reserve_bytes for d, a in plan.devices.items()}
    return {**summary, "generation": generation, "planned_bytes": planned}


def _list_models(out: Output) -> None:
    from routerllm_cli.catalog import CATALOG
    from routerllm_cli.config import NF4_BYTES_PER_PARAM

    rows = [{"name": e.name, "model_id": e.model_id, "role": e.role, "params": e.params,
             "bf16_bytes": int(e.params * 2), "int8_bytes": int(e.params), "nf4_bytes": int(e.params * NF4_BYTES_PER_PARAM),
             "gated": e.gated, "description": e.description} for e in CATALOG.values()]

    def render(c: Any) -> None:
        from rich.table import Table

        t = Table(title="routerllm catalog: weights at one precision (preflight sizes each module as it will be "
                  "stored, and adds KV cache and reserves)", title_justify="left")
        t.add_column("name", no_wrap=True)
        t.add_column("hub id", overflow="fold")
        for col in ("params", "bf16 GB", "~nf4 GB"):
            t.add_column(col, justify="right", no_wrap=True)
        t.add_column("gated")
        for r in rows:
            t.add_row(r["name"], r["model_id"], f"{r['params'] / 1e9:.2f}B", _gb(r["bf16_bytes"]),
                      _gb(r["nf4_bytes"]), "yes" if r["gated"] else "")
        c.print(t)

    out.result({"models": rows}, render)


def _render(c: Any, report: Any, load: dict | None, *, verbose: bool = False, always: set[str] = frozenset()) -> None:
    """Problems first, then the plan, then the verdict with its fixes as the last block, so it is what an 80x24
    terminal shows when preflight ends. Checks that passed and the planner's notes only with `verbose`."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    plan = report.plan
    hw = report.hardware
    what = f"{plan.model.name} ({plan.model.source}" + (f", {plan.model.gguf_file}" if plan.model.gguf_file else "") + ")"
    c.print(f"[bold]{escape(what)}[/]: {plan.model_type}, {plan.params / 1e9:.2f}B params, {plan.num_layers} layers, "
            f"{plan.dtype}" + (f", {plan.quantization}" if plan.quantization != "none" else "")
            + (" - [cyan]assumed hardware[/]" if hw.assumed else ""))

    shown = [ch for ch in report.checks if verbose or ch.status in ("warn", "fail")]
    hidden = [ch.status for ch in report.checks if ch not in shown]
    if hidden:
        counts = ", ".join(f"{hidden.count(st)} {st}" for st in ("ok", "info", "skip") if st in hidden)
        c.print(f"[dim]checks: {counts} (-v shows them)[/]")
    if shown:
        checks = Table(show_header=False, box=None, pad_edge=False)
        checks.add_column(width=4)
        checks.add_column(style="bold")
        checks.add_column()
        for ch in shown:
            detail = escape(ch.detail) + (f" [dim]- fix: {escape(ch.fix)}[/]" if ch.fix and ch.status in ("warn", "fail") else "")
            checks.add_row(_STATUS.get(ch.status, ch.status), ch.name, detail)
        c.print(checks)

    t = Table(title=f"plan: batch {plan.batch_size} x {plan.seq_len} tokens, sizes in GB", title_justify="left",
              box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("device", "layers", "weights", "KV cache", "reserve", "budget", "free after"):
        t.add_column(col, justify="left" if col in ("device", "layers") else "right", no_wrap=True)
    names = {str(g.index): f"GPU {g.index}" for g in hw.gpus}
    for d, a in plan.devices.items():
        free = a.free_after_bytes
        t.add_row(names.get(d, d), a.layer_text, _gb(a.weight_bytes), _gb(a.kv_bytes),
                  _gb(a.reserve_bytes - a.kv_bytes), _gb(a.budget_bytes) if d != "disk" else "-",
                  f"[red]{_gb(free)}[/]" if free < 0 else _gb(free))
    total_kv = sum(a.kv_bytes for a in plan.devices.values())
    total_res = sum(a.reserve_bytes for a in plan.devices.values())
    if len(plan.devices) > 1:
        t.add_row("total", f"{plan.num_layers}", _gb(plan.weight_bytes), _gb(total_kv), _gb(total_res - total_kv),
                  "", "")
    c.print(t)

    _render_batches(c, plan)
    _render_links(c, plan)
    e = plan.estimates
    if verbose:
        c.print(f"estimates: load ~{format_duration(e['load_seconds'])}, {e['seconds_per_token']:.3g} s per decode "
                f"step ({e['tokens_per_second']:.3g} tokens/s at batch {plan.batch_size}; bandwidth floor "
                f"{e['seconds_per_token_floor']:.3g} s), bench ~{format_duration(e['bench_seconds'])} "
                f"(total with load ~{format_duration(e['total_seconds'])})")
        for note in plan.notes:
            c.print(f"[dim]- {escape(note)}[/]")
    else:
        rest = [n for n in plan.notes if n not in always]
        c.print(f"estimates: load ~{format_duration(e['load_seconds'])}, {e['tokens_per_second']:.3g} tokens/s at "
                f"batch {plan.batch_size}, bench ~{format_duration(e['bench_seconds'])}"
                + (f" [dim]({len(rest)} notes: -v)[/]" if rest else ""))
        for note in plan.notes:
            if note in always:
                c.print(f"[yellow]note:[/] {escape(note)}")

    if load:
        _render_load(c, load, names)
    if report.verdict == "go":
        c.print("[bold green]verdict: GO[/]")
    else:
        c.print("[bold red]verdict: NO-GO[/]")
        verdict = Table(show_header=False, box=None, pad_edge=False)
        verdict.add_column(width=9, justify="right")
        verdict.add_column()
        for r in report.reasons:
            verdict.add_row("[red]reason:[/]", escape(r))
        for f in report.fixes:
            verdict.add_row("[green]fix:[/]", escape(f))
        c.print(verdict)


def _render_load(c: Any, load: dict, names: dict[str, str]) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"loaded in {load.get('load_seconds', 0):.1f} s ({load.get('attn_implementation')}, "
              f"{load.get('quantization')}): memory used vs planned", title_justify="left")
    for col in ("device", "layers", "used GB", "planned GB (weights + reserve)"):
        t.add_column(col, justify="left" if col in ("device", "layers") else "right")
    planned = load.get("planned_bytes", {})
    summary = load.get("device_map_summary", {})
    for d in sorted(set(planned) | set(load.get("memory_used", {})), key=str):
        t.add_row(names.get(d, d), str(summary.get(d, {}).get("layers", "-")), _gb(load.get("memory_used", {}).get(d)),
                  _gb(planned.get(d)))
    c.print(t)
    g = load.get("generation") or {}
    c.print(f"generation: {g.get('tokens')} tokens in {g.get('seconds')} s ({g.get('tokens_per_second')} tokens/s, "
            f"first token after {g.get('time_to_first_token')} s)")
    c.print(f"[dim]{escape(str(g.get('text', ''))[:400])}[/]")


def _render_batches(c: Any, plan: Any) -> None:
    """The chosen batch beside batch 1 (and the next best), when the planner chose the batch."""
    from rich.table import Table

    from routerllm_cli.units import format_duration

    alts = plan.alternatives
    if plan.batch_mode != "auto" or len(alts) < 2:
        return
    rows = [alts[0]] + [a for a in alts[1:] if a["batch"] == 1]
    rest = sorted((a for a in alts[1:] if a["batch"] != 1 and a["verdict"] == "go"), key=lambda a: a["total_seconds"])
    rows += rest[:1]
    t = Table(title="batch and placement, chosen for the bench's wall time", title_justify="left")
    for col in ("batch", "GPU layers", "CPU layers", "disk layers", "step", "tokens/s", "bench + load"):
        t.add_column(col, justify="right", no_wrap=col == "batch")
    for a in rows:
        mark = " (chosen)" if a.get("chosen") else ""
        t.add_row(f"{a['batch']}{mark}", str(a["gpu_layers"]), str(a["cpu_layers"]), str(a["disk_layers"]),
                  format_duration(a["seconds_per_token"]), f"{a['tokens_per_second']:.3g}",
                  format_duration(a["total_seconds"]) + ("" if a["verdict"] == "go" else " (no-go)"))
    c.print(t)


def _render_links(c: Any, plan: Any) -> None:
    """The step and bench time over the other host-link setting, for the same placement."""
    from routerllm_cli.units import format_duration

    e = plan.estimates
    other = e.get("other_links")
    if not other:
        return
    here = e.get("links", 1)
    label = lambda n: "1 host link (the executing GPU's)" if n == 1 else f"{n} host links"  # noqa: E731
    c.print(f"offload over {label(here)}: step {format_duration(e['seconds_per_token'])}, bench + load "
            f"{format_duration(e['total_seconds'])}; over {label(other['links'])}: step "
            f"{format_duration(other['seconds_per_token'])}, bench + load {format_duration(other['total_seconds'])}"
            + (" (set offload_links: auto; measured on one GPU only so far)" if here == 1 else ""))
