"""`routerllm compare`: the router of small models vs one large model, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from routerllm_cli.cli.errors import handle_errors
from routerllm_cli.cli.options import (ConfigOpt, DecodeFuseOpt, DecodeOpt, JsonOpt, ResultsDirOpt,
                                       decode_override)
from routerllm_cli.cli.output import Output

EPILOG = """Examples:

  routerllm compare --config configs/laptop_cpu.yaml -n 5

  routerllm compare --config configs/production_config.yaml --num-examples 164 --use-large-model --skip-execution --results-dir results/final_comparison
"""


def compare(
    config: ConfigOpt = None,
    num_examples: Annotated[Optional[int], typer.Option("--num-examples", "-n", min=1, max=164,
                                                        help="First N HumanEval problems.", show_default=False)] = None,
    router: Annotated[Optional[str], typer.Option("--router", help="heuristic | cascade | random | oracle",
                                                  show_default=False)] = None,
    use_large_model: Annotated[bool, typer.Option("--use-large-model",
                                                  help="Compare against models.large_llm (else each pool model alone).")] = False,
    skip_execution: Annotated[Optional[bool], typer.Option("--skip-execution/--execute",
                                                           help="Generate only (accuracy = generation success).",
                                                           show_default=False)] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", min=1, show_default=False)] = None,
    decode: DecodeOpt = None,
    decode_fuse: DecodeFuseOpt = None,
    results_dir: ResultsDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare RouterLLM (a pool of small models and a routing policy) with one large model."""
    handle_errors(_compare)(**locals())


def _compare(config, num_examples, router, use_large_model, skip_execution, max_new_tokens, decode, decode_fuse,
             results_dir, json_out) -> None:

    from routerllm_cli.bench import StopSignal
    from routerllm_cli.compare import run_compare
    from routerllm_cli.config import load_settings
    from routerllm_cli.errors import ConfigError

    if router is not None and router not in ("heuristic", "cascade", "random", "oracle"):
        raise ConfigError(f"--router {router!r} is not a policy", fix="use heuristic, cascade, random or oracle")
    bench_over: dict[str, Any] = {k: v for k, v in (("num_examples", num_examples), ("skip_execution", skip_execution),
                                                    ("max_new_tokens", max_new_tokens)) if v is not None}
    bench_over.update(decode_override(decode, decode_fuse))
    overrides: dict[str, Any] = {"bench": bench_over} if bench_over else {}
    if router is not None:
        overrides["models"] = {"router": {"policy": router}}
    settings = load_settings(config, overrides)
    out_dir = Path(results_dir) if results_dir else settings.bench.results_dir / "comparison"
    out = Output(json_out)
    stop = StopSignal().install()
    screen = _CompareScreen(out)
    try:
        result = run_compare(settings, out_dir, policy=router, use_large_model=use_large_model, stop=stop,
                             on_event=screen)
    finally:
        stop.restore()

    def render(console) -> None:
        from routerllm_cli.cli.bench import decode_text
        from routerllm_cli.report import rich_table

        console.print(rich_table(result["rows"], title="RouterLLM vs the field", width=console.width))
        for note in result["notes"]:
            console.print(f"[dim]{note}[/]")
        for name, m in result["models"].items():
            decode = f", decode {decode_text(m['decode'])}" if m.get("decode") else ""
            console.print(f"[dim]{name}: load {m['load_seconds']:.1f} s (separate from generation){decode}, "
                          f"run {m['run_dir']}[/]")
        console.print(f"written: {result['files']['json']}, {result['files']['markdown']}, {result['files']['chart']}")

    out.result({k: v for k, v in result.items() if k != "rows"}, render)


class _CompareScreen:
    """Per-model progress, reusing bench's screen for each model's run."""

    def __init__(self, out: Output):
        from routerllm_cli.cli.bench import BenchScreen

        self.out = out
        self.screen: Any = None
        self._factory = BenchScreen

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if self.out.json_mode:
            return
        if kind == "model":
            self.out.info(f"[bold]{data['model']}[/]: {data['tasks']} problems to answer")
            self.screen = self._factory(self.out)
            return
        if self.screen is not None:
            self.screen(kind, data)
