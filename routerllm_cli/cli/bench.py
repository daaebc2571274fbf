"""`routerllm bench`: HumanEval with progressive saving, exact resume, a live screen and safe interruption."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from routerllm_cli.cli.errors import handle_errors
from routerllm_cli.cli.options import (ConfigOpt, DecodeFuseOpt, DecodeOpt, JsonOpt, MaxMemoryOpt, ModelOpt,
                                       ResultsDirOpt, Use4bitOpt, Use8bitOpt, decode_override, model_overrides)
from routerllm_cli.cli.output import Output
from routerllm_cli.units import format_duration

EPILOG = """Examples:

  routerllm bench --config configs/laptop_cpu.yaml -n 3

  routerllm bench --model llama3_405b -n 50 --skip-execution --config configs/production_config.yaml

  routerllm bench --run-dir results/llama3_405b-20261126-101500   (resume an interrupted run)

  routerllm bench --model openai:http://10.0.0.1:8000/v1#meta-llama/Llama-3.1-405B-Instruct --concurrency 32
"""


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(max(0.0, seconds) + 0.5)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _memory(memory: dict[str, int]) -> str:
    names = {"cpu_rss": "cpu"}
    return " ".join(f"{names.get(k, k.replace('cuda:', 'gpu'))} {v / 1e9:.1f}GB" for k, v in memory.items())


class BenchScreen:
    """The live screen: done/total, elapsed, an ETA from the measured speed (the preflight estimate until a step
    was timed), tokens/s, memory per device and passed so far, updated during a batch as well as after it.
    `clock` is the time source of the elapsed column (a test passes a fake one)."""

    def __init__(self, out: Output, *, notes: list[str] | None = None, clock: Callable[[], float] | None = None):
        self.out = out
        self.notes = list(notes or [])
        self.clock = clock
        self.progress: Any = None
        self.loading: Any = None
        self.task: Any = None
        self.eta_hint: float | None = None
        self.total = 0
        self._done0 = 0
        self.passed = 0
        self.executed = 0
        self.endpoint = False
        self.tps: float | None = None
        self.memory: dict[str, int] = {}

    @property
    def logs_its_lines(self) -> bool:  # what it prints goes to the log through Output (see logs.EventLog)
        return not self.out.json_mode

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if self.out.json_mode:
            return
        handler = getattr(self, f"on_{kind}", None)
        if handler:
            handler(data)

    def on_start(self, d: dict) -> None:
        self.total = d["total"]
        self._done0 = d["done"]
        self.out.info(f"run folder: {d['run_dir']}  ({d['done']}/{d['total']} already done; problems from "
                      f"{d['source']})")
        if d.get("log"):
            self.out.info(f"log: {d['log']}")
        for note in self.notes:
            self.out.info(note)

    def on_plan(self, d: dict) -> None:
        self.eta_hint = d.get("eta_seconds")
        plan = d["plan"]
        devs = ", ".join(f"{k}: {v.get('layers') or '-'}" for k, v in plan.get("devices", {}).items())
        self.out.info(f"preflight: go  ({devs})")

    def on_endpoint(self, d: dict) -> None:
        self.endpoint = True
        self.out.info(f"endpoint: {d['url']} serves {d['model']} ({d['concurrency']} requests in flight)")

    def on_loading(self, d: dict) -> None:
        from routerllm_cli.cli.load import LoadProgress

        self.out.info(f"loading {d['model']} ...")
        self.loading = LoadProgress(self.out).__enter__()

    def on_load_progress(self, d: dict) -> None:
        if self.loading is not None:
            self.loading.update(d)

    def on_loaded(self, d: dict) -> None:
        self._stop_loading()
        self.out.info(f"loaded in {d['load_seconds']:.1f} s (attention: {d['attn']})")

    def _stop_loading(self) -> None:
        if self.loading is not None:
            self.loading.__exit__(None, None, None)
            self.loading = None

    def on_decode(self, d: dict) -> None:
        self.out.info(f"decode: {d['path']} ({d['reason']})")
        if d["path"] == "compiled" and d.get("fuse_reason"):
            self.out.info(f"decode fusion: {'on' if d.get('fuse') else 'off'} ({d['fuse_reason']})")

    def on_compiling(self, d: dict) -> None:
        self.out.info(f"compiling the fused decode step for batch {d['batch']} x {d['tokens']} tokens "
                      f"(torch.compile, cache {d['cache_dir']}) ...")

    def on_capture(self, d: dict) -> None:
        compiled = (f"compiled in {d['compile_seconds']:.1f} s (cache {d['cache']}), " if d.get("fused") else "")
        if not d.get("captured"):
            self.out.info(f"decode step for batch {d['batch']} x {d['tokens']} tokens: {compiled.rstrip(', ')}")
            return
        self.out.info(f"captured the decode step for batch {d['batch']} x {d['tokens']} tokens: {compiled}"
                      f"captured in {d['seconds']:.2f} s ({d['graphs']} graph{'s' if d['graphs'] > 1 else ''}, "
                      f"{d['total_seconds']:.2f} s in all)")

    def on_fuse_fallback(self, d: dict) -> None:
        self.out.info(f"decode fusion: off, the unfused step runs instead: {d['reason']}")

    def on_decode_fallback(self, d: dict) -> None:
        self.out.info(f"decode: falling back to eager: {d['reason']}")

    def on_generating(self, d: dict) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.text import Text

        if self.endpoint:
            self.out.info(f"generating: concurrency {d['batch_size']}, prompt style {d['style']}")
        else:
            how = "continuous batching" if d.get("continuous") else "static batches"
            self.out.info(f"generating: batch size {d['batch_size']} ({how}), prompt style {d['style']}")
        extra = {"get_time": self.clock} if self.clock is not None else {}

        class TwoLines(Progress):  # the bar, then the measured speed and memory on a line of their own
            def get_renderables(inner):  # noqa: N805 - rich's documented hook
                yield inner.make_tasks_table(inner.tasks)
                stats = inner.tasks[0].fields.get("stats") if inner.tasks else ""
                if stats:
                    yield Text(f"  {stats}", overflow="fold")

        self.progress = TwoLines(TextColumn("[bold]HumanEval"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                                 console=self.out.err, transient=False, **extra)
        eta = (f"ETA ~{format_duration(self.eta_hint)} (preflight estimate)" if self.eta_hint else "ETA -:--:--")
        self.task = self.progress.add_task("bench", total=self.total, completed=self._done0, eta=eta, stats="")
        self.progress.start()

    def _show(self, pace: dict, **fields: Any) -> None:
        if pace.get("tokens_per_s"):
            self.tps = pace["tokens_per_s"]
        parts = [f"{self.tps:.1f} tok/s" if self.tps else "", _memory(self.memory), f"passed {self.passed}"]
        eta = pace.get("eta_seconds")
        eta_text = f"ETA {_clock(eta)}" if eta is not None else None
        if self.progress is not None:
            self.progress.update(self.task, stats="  ".join(p for p in parts if p),
                                 **({"eta": eta_text} if eta_text else {}), **fields)

    def on_progress(self, d: dict) -> None:
        self.memory = d.get("memory") or self.memory
        self._show(d)

    def on_batch(self, d: dict) -> None:
        self.memory = d.get("memory") or self.memory
        self.passed = d.get("passed", self.passed)
        self._show(d.get("pace") or {}, completed=d["done"])

    def render(self, width: int = 80) -> str:
        """The progress line as it is drawn now, at `width` columns."""
        from io import StringIO

        from rich.console import Console

        if self.progress is None:
            return ""
        buf = StringIO()
        console = Console(file=buf, width=width, color_system=None)
        for part in self.progress.get_renderables():
            console.print(part)
        return buf.getvalue()

    def stop(self) -> None:
        self._stop_loading()
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_done(self, d: dict) -> None:
        self.stop()


def decode_text(d: dict[str, Any]) -> str:
    """One line: which decode path ran, what capturing and compiling cost, or why not."""
    if d.get("fallback"):
        return f"eager after a fallback: {d['fallback']}"
    if d.get("path") != "compiled":
        return f"eager ({d.get('reason', '')})"
    if d.get("captured"):
        text = f"compiled: {d.get('graphs', 0)} CUDA graphs captured in {d.get('capture_seconds', 0.0):.2f} s"
    else:
        text = f"compiled ({d['reason']})"
    if d.get("fused"):
        text += (f"; layers fused: compiled in {d.get('compile_seconds', 0.0):.1f} s "
                 f"(cache {d.get('compile_cache')})")
    elif d.get("fuse_fallback"):
        text += f"; unfused: {d['fuse_fallback']}"
    return text


def render_summary(summary: dict[str, Any]):
    def render(console) -> None:
        from rich.table import Table

        t = Table(title=f"HumanEval - {summary['model']} ({summary['status']})", show_header=True)
        t.add_column("metric")
        t.add_column("value", justify="right")
        if "pass@1" in summary:
            for k, v in summary["pass_at_k"].items():
                t.add_row(k, f"{v:.3f}  ({summary['passed']}/{summary['executed']} executed passed)")
        t.add_row("generation success", f"{summary['generation_success_rate']:.3f}")
        t.add_row("examples", f"{summary['done']}/{summary['total']}")
        lat = summary["latency_s"]
        t.add_row("latency / answer", f"mean {lat['mean']:.2f} s  p50 {lat['p50']:.2f}  p95 {lat['p95']:.2f}")
        th = summary["throughput"]
        t.add_row("throughput", f"{th['problems_per_min']:.1f} problems/min  {th['tokens_per_s']:.1f} tok/s")
        if summary.get("time_to_first_batch_s") is not None:
            t.add_row("time to first batch", f"{summary['time_to_first_batch_s']:.1f} s")
        t.add_row("load time", f"{summary['load_seconds']:.1f} s")
        if summary.get("decode"):
            t.add_row("decode", decode_text(summary["decode"]))
        for dev, b in summary.get("peak_memory", {}).items():
            t.add_row(f"peak memory {dev}", f"{b / 1e9:.2f} GB")
        if "energy" in summary:
            e = summary["energy"]
            t.add_row("energy", f"{e['kwh'] * 1000:.3f} Wh (GPU {e['gpu_source']}, CPU {e['cpu_source']})")
            t.add_row("CO2 / cost", f"{summary['co2_g']:.2f} g  /  ${summary['cost_usd']:.4f}")
        if "energy_note" in summary:  # an endpoint: no energy figure, and the cost's basis spelled out
            t.add_row("energy / CO2", summary["energy_note"])
            cost = summary.get("cost_usd")
            t.add_row("cost", ("-" if cost is None else f"${cost:.4f}") + f"  ({summary.get('cost_basis')})")
        t.add_row("run folder", summary["run_dir"])
        console.print(t)

    return render


def bench(
    model: ModelOpt = None,
    config: ConfigOpt = None,
    num_examples: Annotated[Optional[int], typer.Option("--num-examples", "-n", min=1, max=164,
                                                        help="First N HumanEval problems.", show_default=False)] = None,
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="Comma-separated task ids, e.g. HumanEval/0,HumanEval/7.",
                                                 show_default=False)] = None,
    skip_execution: Annotated[Optional[bool], typer.Option("--skip-execution/--execute",
                                                           help="Generate only; do not run the code.",
                                                           show_default=False)] = None,
    batch_size: Annotated[Optional[str], typer.Option("--batch-size", help="'auto' (from the plan's KV reserve) or a number.",
                                                      show_default=False)] = None,
    prompt_style: Annotated[Optional[str], typer.Option("--prompt-style", help="auto | base | instruct",
                                                        show_default=False)] = None,
    batching: Annotated[Optional[str], typer.Option("--batching", help="auto (continuous on a GPU, static on a "
                                                    "CPU) | static | continuous", show_default=False)] = None,
    decode: DecodeOpt = None,
    decode_fuse: DecodeFuseOpt = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", min=0.0, show_default=False)] = None,
    samples: Annotated[Optional[int], typer.Option("--samples", min=1, help="Samples per problem (pass@k).",
                                                   show_default=False)] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", min=1, show_default=False)] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Seconds per problem when executing.",
                                                     show_default=False)] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda", show_default=False)] = None,
    results_dir: ResultsDirOpt = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Run folder to create, or to resume: the "
                                                    "folder alone is enough (its run.json keeps the settings).",
                                                    show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the latest run of this model.")] = False,
    use_4bit: Use4bitOpt = None,
    use_8bit: Use8bitOpt = None,
    max_memory: MaxMemoryOpt = None,
    concurrency: Annotated[Optional[int], typer.Option("--concurrency", min=1, max=1024,
                                                       help="Requests in flight to an endpoint model "
                                                       "(endpoint.concurrency).", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run HumanEval on one model: batched, saved as it goes, resumable, optionally executed in a sandbox."""
    handle_errors(_bench)(**locals())


def _bench(model, config, num_examples, tasks, skip_execution, batch_size, prompt_style, batching, decode, decode_fuse,
           temperature, samples, max_new_tokens, timeout, device, results_dir, run_dir, resume, use_4bit, use_8bit,
           max_memory, concurrency, json_out) -> None:
    from routerllm_cli.bench import StopSignal, run_bench
    from routerllm_cli.config import load_settings
    from routerllm_cli.errors import ConfigError

    bench_over: dict[str, Any] = {}
    for key, value in (("num_examples", num_examples), ("skip_execution", skip_execution),
                       ("prompt_style", prompt_style), ("batching", batching), ("temperature", temperature),
                       ("samples", samples),
                       ("max_new_tokens", max_new_tokens), ("timeout_s", timeout), ("device", device),
                       ("results_dir", results_dir)):
        if value is not None:
            bench_over[key] = value
    bench_over.update(decode_override(decode, decode_fuse))
    if tasks:
        bench_over["task_ids"] = [t.strip() for t in tasks.split(",") if t.strip()]
    if batch_size is not None:
        if batch_size != "auto" and not batch_size.isdigit():
            raise ConfigError(f"--batch-size {batch_size!r} is not a number", fix="pass 'auto' or a positive integer")
        bench_over["batch_size"] = batch_size if batch_size == "auto" else int(batch_size)
    overrides = model_overrides(model, use_4bit, use_8bit, max_memory)
    if bench_over:
        overrides["bench"] = bench_over
    out = Output(json_out)
    run_dir, notes = Path(run_dir) if run_dir is not None else None, []
    if resume and run_dir is None:
        run_dir = _latest_run(load_settings(config, overrides))
    from routerllm_cli.runs import is_run_folder

    if run_dir is not None and is_run_folder(run_dir):
        from routerllm_cli.resume import settings_for_resume

        settings, notes = settings_for_resume(run_dir, config, overrides)
        resume = True
    else:
        settings = load_settings(config, overrides)
    if concurrency is not None:
        if settings.large.endpoint is None:
            raise ConfigError("--concurrency applies to endpoint models",
                              fix="pass --model openai:http://HOST:8000/v1#MODEL, or use --batch-size for a local one")
        settings.large.endpoint.concurrency = concurrency
    stop = StopSignal().install()
    screen = BenchScreen(out, notes=notes)
    try:
        result = run_bench(settings, run_dir=run_dir, resume=resume, stop=stop, on_event=screen,
                           command_line=["routerllm", *sys.argv[1:]])
    finally:
        screen.stop()
        stop.restore()
    out.result(result.summary, render_summary(result.summary))


def _latest_run(settings: Any) -> Path:
    from routerllm_cli.catalog import resolve_model_spec
    from routerllm_cli.errors import ConfigError
    from routerllm_cli.runs import latest_run

    name = resolve_model_spec(settings.large).name
    found = latest_run(settings.bench.results_dir, name)
    if found is None:
        raise ConfigError(f"there is no earlier run of {name} in {settings.bench.results_dir} to resume",
                          fix="start a new run (leave out --resume), or pass --run-dir with the run's folder")
    return found
