"""`routerllm preflight --engine vllm|sglang`: glue between the flags and `plan.cluster.plan_cluster`, and its
rendering (the per-stage memory table, where the numbers come from, the launch and bench commands)."""

from __future__ import annotations

from typing import Any

import typer

from routerllm_cli.cli.output import Output


def cluster_preflight(settings: Any, out: Output, *, engine: str | None, nodes: str | None, head: str,
                      concurrency: int | None, seq_len: int | None, num_examples: int | None) -> None:
    from routerllm_cli.errors import ConfigError
    from routerllm_cli.plan.cluster import Cluster, parse_nodes, plan_cluster

    if engine is None:
        raise ConfigError("--assume-nodes plans for an engine", fix="add --engine vllm (or --engine sglang)")
    engine = engine.lower()
    if nodes is not None:
        cluster = parse_nodes(nodes)
    else:
        from routerllm_cli.hardware import probe_hardware

        gpus = probe_hardware().gpus
        if not gpus:
            raise ConfigError("--engine needs GPUs, and this machine has none",
                              fix='describe the cluster: --assume-nodes 2x8x80GB')
        cluster = Cluster(1, len(gpus), min(g.total_bytes for g in gpus))
    b = settings.bench
    out.info(f"planning {settings.large.name} on {cluster.text} under {engine} ...")
    plan = plan_cluster(settings.large, cluster, engine=engine,
                        seq_len=seq_len or b.max_prompt_tokens + b.max_new_tokens, concurrency=concurrency or 32,
                        head_address=head, token=settings.hf_token,
                        num_examples=num_examples or (len(b.task_ids) if b.task_ids else b.num_examples))
    out.result(plan.to_dict(), lambda c: _render(c, plan))
    if plan.verdict != "go":
        raise typer.Exit(1)


def _render(c: Any, plan: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    gb = lambda n: f"{n / 1e9:,.1f}"  # noqa: E731
    c.print(f"[bold]{escape(plan.model)}[/] on {plan.cluster.text} under {plan.engine}: "
            f"{plan.weights_total_bytes / 1e9:,.1f} GB of weights")
    if plan.stages:
        t = Table(title=f"TP {plan.tp} x PP {plan.pp} on {plan.nodes_used} node(s), max model length "
                  f"{plan.max_model_len}, per GPU", title_justify="left")
        for col in ("stage", "layers", "weights GB", "KV / token", "reserve GB", "KV tokens"):
            t.add_column(col, justify="left" if col in ("stage", "layers") else "right")
        for st in plan.stages:
            t.add_row(str(st.index), f"{st.layers[0]}-{st.layers[1]}", gb(st.weight_bytes),
                      f"{st.kv_bytes_per_token / 1e3:,.1f} KB", gb(st.reserve_bytes), f"{st.kv_tokens:,}")
        c.print(t)
    for line in plan.sources:
        c.print(f"[dim]source: {escape(line)}[/]")
    for note in plan.notes:
        c.print(f"[dim]- {escape(note)}[/]")
    if plan.verdict != "go":
        c.print("[bold red]verdict: NO-GO[/]")
        for r in plan.reasons:
            c.print(f"  [red]reason:[/] {escape(r)}")
        for f in plan.fixes:
            c.print(f"  [green]fix:[/] {escape(f)}")
        return
    fraction = "gpu-memory-utilization" if plan.engine == "vllm" else "mem-fraction-static"
    c.print(f"KV cache: {plan.kv_tokens:,} tokens a GPU at --{fraction} {plan.memory_fraction:.2f}, "
            f"{plan.concurrency} sequences of {plan.max_model_len} tokens at once")
    c.print("[bold]launch:[/]")
    for cmd in plan.commands:
        c.print(f"  # {escape(cmd['where'])}")
        c.print(f"  {escape(cmd['run'])}", soft_wrap=True)
    c.print("[bold]then measure it:[/]")
    c.print(f"  {escape(plan.bench_command)}", soft_wrap=True)
    c.print("[bold green]verdict: GO[/]")
