"""An endpoint as a generation source for `run_bench`, and what its answers cost.

`EndpointSource.answers` yields each answer the moment it arrives, as `([(item, GenerationOutput)], seconds)`
like the local sources, so the bench loop saves it, hands it to the sandbox and reports progress the same way.
An event loop on a helper thread keeps `concurrency` requests in flight; a stop request lets the requests in
flight finish and sends no new one (what Ctrl-C does to a local batch). When a request fails for good, no new
one is sent, the ones in flight still land, and then the error is raised: nothing answered is lost.

Prompts and cuts are the local ones: base prompts are the raw HumanEval prompt sent to `/v1/completions` with
the standard stop sequences, and the answer is cut at the first of them (vLLM leaves the stop string out,
`transformers serve` keeps it; cut here, both give the text a local run saves). Instruct prompts are the same
user message sent to `/v1/chat/completions`, where the server applies the model's chat template, and the answer
is cut after its first closed code fence, where a local run stops generating.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any, Iterator

from routerllm_cli.endpoints.client import EndpointClient, EndpointUnavailable
from routerllm_cli.errors import ConfigError

ENERGY_NOTE = "not measured: the model ran on a remote endpoint, whose power routerllm cannot read"


class EndpointSource:
    """One configured endpoint (a ModelSpec with `endpoint` set)."""

    def __init__(self, spec: Any, run_dir: Any = None):
        self.spec = spec
        self.endpoint = spec.endpoint
        self.run_dir = run_dir  # named in the fix when the server goes away mid-run

    def check(self) -> dict[str, Any]:
        """Reach the server and find the model in `/v1/models` (one-line errors otherwise)."""

        async def go() -> list[str]:
            async with EndpointClient(self.endpoint) as client:
                return await client.check()

        served = asyncio.run(go())
        return {"url": self.endpoint.url, "model": self.endpoint.served_model, "served": served,
                "concurrency": self.endpoint.concurrency}

    @staticmethod
    def style(requested: str) -> str:
        """`auto` is `instruct`: the chat route applies the served model's own template. A base model (no chat
        template) needs `prompt_style: base`."""
        if requested not in ("auto", "base", "instruct"):
            raise ConfigError(f"unknown prompt style {requested!r}", fix="use auto, base or instruct")
        return "base" if requested == "base" else "instruct"

    @staticmethod
    def prompt(problem: dict, style: str) -> str:
        from routerllm_cli.humaneval import instruct_message

        return problem["prompt"] if style == "base" else instruct_message(problem)

    def answers(self, items: list[tuple], style: str, bench: Any, stop: Any) -> Iterator[tuple[list, float]]:
        """Yield ([(item, GenerationOutput)], seconds since the previous answer) as answers arrive. `items` are
        (problem, sample_idx, prompt text)."""
        results: queue.Queue = queue.Queue()
        state: dict[str, Any] = {"loop": None, "main": None, "cancel": False}
        thread = threading.Thread(target=self._drive, args=(items, style, bench, stop, results, state),
                                  name="routerllm-endpoint", daemon=True)
        thread.start()
        error: BaseException | None = None
        last = time.perf_counter()
        try:
            while True:
                try:
                    kind, payload = results.get(timeout=0.5)  # a timeout keeps Ctrl-C deliverable
                except queue.Empty:
                    continue
                if kind == "end":
                    break
                if kind == "error":
                    error = error or payload
                    continue
                now = time.perf_counter()
                payload[1].share_seconds = now - last  # the answers' shares add up to the wall time
                yield [payload], now - last
                last = now
        finally:
            state["cancel"] = True
            loop, main = state["loop"], state["main"]
            if thread.is_alive() and loop is not None and main is not None:
                loop.call_soon_threadsafe(main.cancel)  # an abandoned run leaves no request behind
            thread.join(timeout=5)
        if error is not None:
            if isinstance(error, EndpointUnavailable) and error.fix is None and self.run_dir is not None:
                error.fix = (f"the answers so far are saved; once the server is back, resume with "
                             f"`routerllm bench --run-dir {self.run_dir}`")
            raise error

    # -- the helper thread --------------------------------------------------------------------------------

    def _drive(self, items, style, bench, stop, results: queue.Queue, state: dict) -> None:
        async def main() -> None:
            state["loop"], state["main"] = asyncio.get_running_loop(), asyncio.current_task()
            pending = iter(enumerate(items))
            failed: list[BaseException] = []
            in_flight = [0]

            async def worker(client: EndpointClient) -> None:
                while not (stop.requested or failed or state["cancel"]):
                    try:
                        index, item = next(pending)
                    except StopIteration:
                        return
                    in_flight[0] += 1
                    try:
                        out = await self._one(client, item, index, style, bench, in_flight[0])
                    except Exception as exc:  # noqa: BLE001 - handed to the bench loop, which raises it
                        failed.append(exc)
                        results.put(("error", exc))
                        return
                    finally:
                        in_flight[0] -= 1
                    results.put(("ok", (item, out)))

            async with EndpointClient(self.endpoint) as client:
                workers = min(self.endpoint.concurrency, max(len(items), 1))
                await asyncio.gather(*(worker(client) for _ in range(workers)))

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - e.g. the API key variable vanished
            results.put(("error", exc))
        finally:
            results.put(("end", None))

    async def _one(self, client: EndpointClient, item: tuple, index: int, style: str, b: Any, in_flight: int):
        from routerllm_cli import humaneval
        from routerllm_cli.generation import GenerationOutput

        problem, k, prompt = item
        sampling: dict[str, Any] = {"temperature": 0.0}
        if b.temperature > 0:
            # a seed per (problem, sample): reproducible on servers that honour it, distinct across samples
            sampling = {"temperature": float(b.temperature), "top_p": float(b.top_p),
                        "seed": b.seed + 100_003 * k + index}
        if style == "base":
            reply = await client.complete(prompt, max_tokens=b.max_new_tokens, stop=list(humaneval.STOP_SEQUENCES),
                                          sampling=sampling)
            hit = _earliest(reply.text, humaneval.STOP_SEQUENCES)
            text = reply.text if hit is None else reply.text[:hit[0]]
            stopped_by = ("stop_sequence" if hit is not None or isinstance(reply.stop_reason, str)
                          else _finish(reply.finish_reason))
            stop_sequence = hit[1] if hit else reply.stop_reason if isinstance(reply.stop_reason, str) else None
        else:
            reply = await client.chat(prompt, max_tokens=b.max_new_tokens, sampling=sampling)
            end = humaneval.closed_fence_end(reply.text)
            text = reply.text if end is None else reply.text[:end]
            stopped_by = "stop_when" if end is not None else _finish(reply.finish_reason)
            stop_sequence = None
        return GenerationOutput(text=text, new_tokens=reply.completion_tokens, seconds=reply.seconds,
                                stopped_by=stopped_by, stop_sequence=stop_sequence,
                                prompt_tokens=reply.prompt_tokens, batch_size=in_flight, share_seconds=0.0)


def _earliest(text: str, stops: tuple[str, ...]) -> tuple[int, str] | None:
    hits = [(i, s) for s in stops if (i := text.find(s)) >= 0]
    return min(hits) if hits else None


def _finish(reason: str | None) -> str:
    return "max_new_tokens" if reason == "length" else "eos"


def endpoint_accounting(spec: Any, settings: Any, samples: list[dict], wall_seconds: float) -> dict[str, Any]:
    """Summary fields for an endpoint run: energy is not measured (and says so, no estimate); cost from the
    per-token prices, else price per GPU-hour x endpoint.gpus x the run's wall time."""
    from routerllm_cli import metrics

    out: dict[str, Any] = {"endpoint": {"url": spec.endpoint.url, "served_model": spec.endpoint.served_model,
                                        "gpus": spec.endpoint.gpus},
                           "energy_measured": False, "energy_note": ENERGY_NOTE}
    if spec.usd_per_mtok_in is not None or spec.usd_per_mtok_out is not None:
        tokens_in = sum(int(s.get("prompt_tokens") or 0) for s in samples)
        tokens_out = sum(int(s.get("new_tokens") or 0) for s in samples)
        out["cost_usd"] = metrics.run_cost_usd(wall_seconds, samples, spec, settings.energy, 0)
        out["cost_basis"] = (f"{tokens_in} prompt and {tokens_out} completion tokens at "
                             f"${spec.usd_per_mtok_in or 0:g}/${spec.usd_per_mtok_out or 0:g} per million")
    elif spec.endpoint.gpus:
        price = metrics.price_per_gpu_hour(spec, settings.energy)
        out["cost_usd"] = metrics.run_cost_usd(wall_seconds, samples, spec, settings.energy, 0)
        out["cost_basis"] = f"{spec.endpoint.gpus} GPUs x ${price:g}/GPU-hour x {wall_seconds:.0f} s of generation"
    else:
        out["cost_usd"] = None
        out["cost_basis"] = "no price: set usd_per_mtok_in/out, or endpoint.gpus (with price_per_gpu_hour)"
    return out
