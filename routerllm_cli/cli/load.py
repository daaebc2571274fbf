"""`routerllm load`: load a model as planned, show where everything went, and try one generation."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from routerllm_cli.cli.errors import handle_errors
from routerllm_cli.cli.options import (ConfigOpt, JsonOpt, MaxMemoryOpt, ModelOpt, Use4bitOpt, Use8bitOpt,
                                       model_overrides)
from routerllm_cli.cli.output import Output

EPILOG = """Examples:

  routerllm load                                   # the embedded SmolLM2-135M, on whatever is here

  routerllm load -m codellama_70b --4bit --max-memory 0=70GB --max-memory 1=70GB --max-memory cpu=200GB

  routerllm load -c configs/production_config.yaml --prompt "def quicksort(xs):" --json
"""

PromptOpt = Annotated[Optional[str], typer.Option("--prompt", "-p", help="Prompt for the test generation "
                                                  "(default: a short code prompt).", show_default=False)]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate in the test.")]
OffloadEngineOpt = Annotated[
    Optional[str],
    typer.Option("--offload-engine", help="Who runs cpu/disk-offloaded modules: routerllm (fast, default) or "
                 "accelerate (the stock reference).", show_default=False),
]


@handle_errors
def load(
    model: ModelOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    use_4bit: Use4bitOpt = None,
    use_8bit: Use8bitOpt = None,
    max_memory: MaxMemoryOpt = None,
    prompt: PromptOpt = None,
    max_new_tokens: MaxNewTokensOpt = 32,
    offload_engine: OffloadEngineOpt = None,
) -> None:
    """Load the model exactly as `routerllm preflight` plans it, then time a test generation."""
    from routerllm_cli.config import load_settings
    from routerllm_cli.errors import ConfigError
    from routerllm_cli.loading import DEFAULT_PROMPT, load_and_test
    from routerllm_cli.logs import log_to, new_log_path

    if offload_engine is not None and offload_engine not in ("routerllm", "accelerate"):
        raise ConfigError(f"--offload-engine {offload_engine!r} is not an engine", fix="use routerllm or accelerate")
    out = Output(json_out)
    settings = load_settings(config, model_overrides(model, use_4bit, use_8bit, max_memory,
                                                     offload_engine=offload_engine))
    spec = settings.large
    if spec.offload_folder is None:  # disk spill goes to the folder `offload clean` manages
        spec = spec.model_copy(update={"offload_folder": settings.managed_offload_folder()})
    log_path = new_log_path(settings.logs_dir, "load")
    out.info(f"log: {log_path}")
    with log_to(log_path):
        with LoadProgress(out) as bar:
            data = load_and_test(settings, spec, prompt=prompt or DEFAULT_PROMPT, max_new_tokens=max_new_tokens,
                                 progress=bar.update, on_plan=bar.on_plan)
        out.result(data, lambda console: _render(console, data))


class LoadProgress:
    """A progress line on stderr while a model loads: what it is doing, a bar that moves with what can be
    counted (bytes of weights placed, GGUF tensors de-quantized), and while nothing can be counted (a GGUF
    tokenizer being converted, a file being parsed) a pulsing bar with the elapsed time, never a frozen 0 bytes."""

    def __init__(self, out: Output, *, transient: bool = True):
        self.enabled = not out.json_mode
        self.console = out.err
        self.transient = transient
        self.progress: Any = None
        self.task: Any = None
        self.checkpoint_bytes: int | None = None
        self.stage = ""

    def __enter__(self) -> "LoadProgress":
        if self.enabled:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=20),
                                     TextColumn("{task.fields[amount]}"), TimeElapsedColumn(),
                                     console=self.console, transient=self.transient)
            self.progress.start()
            self.task = self.progress.add_task("planning", total=None, amount="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_plan(self, plan: Any) -> None:
        self._set(f"planned {plan.model.name}: {plan.verdict}")

    def _set(self, description: str, done: float | None = None, total: float | None = None, amount: str = "") -> None:
        if description != self.stage:  # each stage once in the log, with its time
            from routerllm_cli.logs import log

            self.stage = description
            log.info("load: %s", description)
        if self.progress is None:
            return
        if total:
            self.progress.update(self.task, description=description, completed=done or 0, total=total, amount=amount)
        else:  # nothing to count: an indeterminate (pulsing) bar next to the elapsed time
            self.progress.update(self.task, description=description, total=None, amount=amount)

    def update(self, event: dict) -> None:
        from routerllm_cli.units import format_bytes

        stage = event.get("stage")
        if stage == "checkpoint":
            self.checkpoint_bytes = event.get("bytes_total")
            size = f"{format_bytes(self.checkpoint_bytes)} of weights" if self.checkpoint_bytes else ""
            self._set("loading the tokenizer", amount=size)
        elif stage == "tokenizer":
            self._set("reading the weights")
        elif stage == "prepare":
            what = event.get("message") or "preparing"
            total = event.get("total")
            self._set(what, event.get("done"), total, f"{event.get('done')}/{total}" if total else "")
        elif stage == "weights":
            shards = (f" (shard {event['shards_done']}/{event['shards_total']})"
                      if event.get("shards_done") is not None and event.get("shards_total") else "")
            done, total = event.get("bytes_done") or 0, event.get("bytes_total")
            amount = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if total else ""
            self._set(f"placing weights{shards}", done, total, amount)
        elif stage == "offload":
            self._set("placing offloaded modules")
        elif stage == "done":
            self._set("generating")


def _render(console: Any, data: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    from routerllm_cli.units import format_bytes

    console.print(f"[bold]Loaded {escape(data['model'])}[/] in {data['load_seconds']:.1f} s - {data['dtype']}, "
                  f"quantization {data['quantization']}, attention {data['attn_implementation']} "
                  f"({escape(data['attn_reason'])})")
    table = Table(show_edge=False, pad_edge=False)
    for col in ("device", "layers", "weights", "memory used"):
        table.add_column(col, justify="left" if col in ("device", "layers") else "right")
    used = data["memory_used"]
    for dev, info in data["device_map_summary"].items():
        name = f"GPU {dev}" if dev.isdigit() else dev
        mem = used.get(dev)
        mem_s = "-" if mem is None else format_bytes(mem) + (" (process RSS)" if dev == "cpu" else
                                                              " (offload folder)" if dev == "disk" else "")
        table.add_row(name, info.get("layers") or "-", format_bytes(info.get("bytes", 0)), mem_s)
    console.print(table)
    for dev, where in data.get("offload_locations", {}).items():
        console.print(f"offloaded to {dev}: {format_bytes(where['bytes'])} - {escape(where['where'])}")
    for note in data.get("notes", []):
        console.print(f"[dim]note:[/] {escape(note)}")
    gen = data["generation"]
    ttft = gen.get("time_to_first_token")
    console.print(f"[bold]Test generation[/]: {gen['tokens']} tokens in {gen['seconds']:.2f} s - "
                  f"{gen['tokens_per_second'] or 0:.1f} tokens/s, time to first token "
                  f"{'-' if ttft is None else f'{ttft:.2f} s'}")
    console.print(escape(gen["prompt"]) + "[cyan]" + escape(gen["text"]) + "[/]", highlight=False)


