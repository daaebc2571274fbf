"""The bench pipeline: plan -> load -> generate -> execute -> measure, with progressive saving and exact resume.

`run_bench` is usable from Python and is what `compare` composes. It reports progress through a callback
(`on_event(kind, data)`) so the CLI can draw a screen without this module knowing about rich.
Interruption: a `StopSignal` set by SIGINT/SIGTERM makes the loop finish the batch in flight, save, mark the run
`interrupted` and raise `BenchInterrupted` (the CLI exits 130); a second signal stops at once. A run that fails
(a no-go, a load error, a crash) is marked `failed` with its reason. Every run folder holds a `run.log`.
"""

from __future__ import annotations

import ast
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from routerllm_cli.config import ModelSpec, Settings
from routerllm_cli.errors import RouterLLMError
from routerllm_cli.logs import log

EventSink = Callable[[str, dict[str, Any]], None]
SUMMARY_EVERY = 10
PROGRESS_EVERY = 1.0  # seconds between "progress" events inside a batch


class BenchInterrupted(RouterLLMError):
    exit_code = 130


class StopSignal:
    """First SIGINT/SIGTERM asks for a clean stop after the batch in flight; a second one stops at once."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.count > 0

    def request(self) -> None:
        self.count += 1

    def _handler(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count >= 2:
            self.restore()
            raise KeyboardInterrupt
        sys.stderr.write("\nstopping after the batch in flight (press Ctrl-C again to stop now)\n")
        log.warning("signal %s: stopping after the batch in flight", signum)

    def install(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def result_fingerprint(spec: ModelSpec, settings: Settings, model_name: str) -> dict[str, Any]:
    """The settings that change what a run produces; a resume must match them exactly."""
    b = settings.bench
    return {
        "model": model_name,
        "model_id": spec.model_id or spec.name,
        "quantization": spec.quantization,
        "dtype": spec.torch_dtype,
        "prompt_style": b.prompt_style,
        "max_new_tokens": b.max_new_tokens,
        "temperature": b.temperature,
        "top_p": b.top_p if b.temperature > 0 else None,
        "samples": b.samples,
        "seed": b.seed,
        **({"source": "endpoint"} if spec.endpoint is not None else {}),  # a remote run never resumes a local one
    }


@dataclass
class BenchRun:
    """What a caller gets back: the summary and where it lives."""

    run_dir: Path
    summary: dict[str, Any]
    load_seconds: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)


def parses_as_python(prompt: str, completion: str) -> bool:
    if not completion.strip():
        return False
    try:
        ast.parse(prompt + completion)
    except (SyntaxError, ValueError):
        return False
    return True


def plan_for(spec: ModelSpec, settings: Settings, *, num_examples: int, batch_size: int | None = None):
    """The run's plan (`plan.plan_for_run`), before anything loads; a no-go stops here."""
    from routerllm_cli.plan import plan_for_run, require_go

    return require_go(plan_for_run(settings, "bench", spec=spec, batch_size=batch_size, num_examples=num_examples),
                      "bench")


def _memory_now(loaded: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                out[f"cuda:{i}"] = int(torch.cuda.max_memory_allocated(i))
    except Exception:  # noqa: BLE001 - memory is informative only
        pass
    try:
        import psutil

        out["cpu_rss"] = int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001
        pass
    return out


def _peak_memory(prior: dict[str, Any], loaded: Any) -> dict[str, int]:
    """The run's peak per device over all its sessions: a session that loaded nothing (everything was answered
    already) keeps what the generating sessions measured."""
    peak = {k: int(v) for k, v in (prior.get("peak_memory") or {}).items()}
    if loaded is not None:
        for k, v in _memory_now(loaded).items():
            peak[k] = max(peak.get(k, 0), v)
    return peak


def _on_gpu(device: Any) -> bool:
    return "cuda" in str(device)


def _generate_groups(generation: Any, loaded: Any, items: list, batch_size: int, stopping: dict, b: Any,
                     stop: StopSignal, continuous: bool, decoder: Any = None,
                     on_step: Callable[[int], None] | None = None):
    """Yield (finished [(item, output)], seconds since the previous group). Static batches decode until their
    longest answer ends; continuous batching refills finished rows (on a GPU the re-read prompt costs less
    than the decode steps it saves; on a CPU it does not). Either way a stop request takes no new prompt and
    lets the rows in flight finish."""
    kw = dict(max_new_tokens=b.max_new_tokens, temperature=b.temperature, top_p=b.top_p,
              device=loaded.input_device, on_step=on_step, **stopping)
    if continuous:
        last = time.perf_counter()
        # With offloaded layers every forward pass streams the weights: keep the batch's cache across refills
        # instead of re-reading every row's prompt and answer at each one
        schedule = generation.generate_continuous
        if loaded.offload is not None:
            from routerllm_cli import continuous as kept

            if kept.supports(loaded.model):
                schedule = kept.generate_kept
        if decoder is not None:  # a resident model's static-cache step (routerllm_cli.decode)
            kw["decoder"] = decoder
        stream = schedule(
            loaded.model, loaded.tokenizer, [(i, it[2]) for i, it in enumerate(items)], batch_size=batch_size,
            seed=b.seed if b.temperature > 0 else None, should_stop=lambda: stop.requested, **kw)
        for i, out in stream:
            now = time.perf_counter()
            yield [(items[i], out)], now - last
            last = now
        return
    for start in range(0, len(items), batch_size):
        if stop.requested:
            return
        batch = items[start:start + batch_size]
        t0 = time.perf_counter()
        outs = generation.generate_batch(loaded.model, loaded.tokenizer, [it[2] for it in batch],
                                         seed=b.seed + start if b.temperature > 0 else None, **kw)
        yield list(zip(batch, outs)), time.perf_counter() - t0


def run_bench(
    settings: Settings,
    *,
    spec: ModelSpec | None = None,
    run_dir: Path | None = None,
    resume: bool = False,
    task_ids: list[str] | None = None,
    stop: StopSignal | None = None,
    on_event: EventSink | None = None,
    command_line: list[str] | None = None,
    loaded: Any = None,
) -> BenchRun:
    """Run (or resume) HumanEval for one model. Returns the run folder and its summary."""
    from routerllm_cli.logs import EventLog

    with ExitStack() as logs:  # run.log, open from the moment the run folder exists (a crash is logged there)
        return _run_bench(settings, spec=spec, run_dir=run_dir, resume=resume, task_ids=task_ids, stop=stop,
                          on_event=EventLog(on_event), command_line=command_line, loaded=loaded, logs=logs)


def _run_bench(settings: Settings, *, spec: ModelSpec | None, run_dir: Path | None, resume: bool,
               task_ids: list[str] | None, stop: StopSignal | None, on_event: EventSink, command_line: list[str] | None,
               loaded: Any, logs: ExitStack) -> BenchRun:
    from routerllm_cli import humaneval, runs
    from routerllm_cli.catalog import resolve_model_spec
    from routerllm_cli.energy import EnergyMeter, EnergyReading, sum_readings
    from routerllm_cli.logs import RUN_LOG, log_to
    from routerllm_cli.pace import Pace
    from routerllm_cli.resume import check_problem_set, run_task_ids

    emit = on_event
    stop = stop or StopSignal()
    spec = spec or settings.large
    b = settings.bench
    ref = resolve_model_spec(spec)

    problems_all, source = humaneval.load_problems()
    problems = humaneval.select(problems_all, n=None if (task_ids or b.task_ids) else b.num_examples,
                                task_ids=task_ids or b.task_ids)
    by_id = {p["task_id"]: p for p in problems}
    fingerprint = result_fingerprint(spec, settings, ref.name)

    checked = None
    selected = [p["task_id"] for p in problems]
    if resume or (run_dir is not None and runs.is_run_folder(run_dir)):
        target = Path(run_dir) if run_dir else runs.latest_run(b.results_dir, ref.name)
        # A caller naming task_ids (compare) asks for what it needs; settings name the run's whole problem set.
        ran = run_task_ids(runs.RunFolder(target).info(), problems_all) if target is not None else None
        ids = check_problem_set(target, ran, selected) if task_ids is None else list(dict.fromkeys((ran or []) + selected))
        folder = runs.RunFolder.open_for_resume(target, fingerprint)
        if ids != ran:
            folder.set_status("running", task_ids=ids)
    else:
        if spec.endpoint is not None:  # a wrong URL or model name leaves no run folder behind
            from routerllm_cli.endpoints.source import EndpointSource

            checked = EndpointSource(spec).check()
        target = Path(run_dir) if run_dir else runs.new_run_dir(b.results_dir, ref.name)
        folder = runs.RunFolder.create(target, fingerprint=fingerprint, config=settings.model_dump(mode="json"),
                                       command_line=command_line or sys.argv)
        folder.set_status("running", task_ids=selected)
    log_path = logs.enter_context(log_to(folder.path / RUN_LOG))
    # What earlier sessions of this run spent: a resumed run reports the whole run's energy, time and cost.
    prior = folder.read_summary() or {}
    prior_gen, prior_load = float(prior.get("generation_seconds") or 0.0), float(prior.get("load_seconds") or 0.0)
    earlier = EnergyReading.from_dict(prior["energy"]) if prior.get("energy") else None
    done = folder.finished_keys()  # {(task_id, sample_idx)}
    todo = [(p, k) for p in problems for k in range(b.samples) if (p["task_id"], k) not in done]
    emit("start", {"run_dir": str(folder.path), "total": len(problems) * b.samples, "done": len(done & {
        (p["task_id"], k) for p in problems for k in range(b.samples)}), "source": source, "model": ref.name,
        "log": str(log_path)})

    sandbox = None
    executor: ThreadPoolExecutor | None = None
    pending: list[tuple[str, int, Future]] = []
    if not b.skip_execution:
        from routerllm_cli.sandbox import Sandbox, SandboxLimits

        sandbox = Sandbox(SandboxLimits(timeout_s=b.timeout_s, layer=b.sandbox), workers=b.workers)
        executor = ThreadPoolExecutor(max_workers=sandbox.workers)
        for task_id, k, completion in folder.pending_execution():  # generated earlier, never executed
            if task_id in by_id:
                pending.append((task_id, k, executor.submit(sandbox.check, by_id[task_id], completion)))

    def drain(block: bool) -> None:
        still = []
        for task_id, k, fut in pending:
            if block or fut.done():
                res = fut.result()
                folder.record_execution(task_id, k, {"passed": res.passed, "result": res.result,
                                                     "seconds": round(res.seconds, 4)})
                emit("executed", {"task_id": task_id, "passed": res.passed, "result": res.result})
            else:
                still.append((task_id, k, fut))
        pending[:] = still

    load_seconds = 0.0
    decoder: Any = None
    decode_info: dict[str, Any] | None = prior.get("decode")
    meter = EnergyMeter(cpu_watts=settings.energy.cpu_watts)
    metering = False
    gen_seconds = 0.0
    first_batch_at: float | None = None
    t_start = time.perf_counter()
    interrupted = failed = False
    error: str | None = None
    owns_model = loaded is None
    gen_start, shown = time.perf_counter(), [0.0]

    def on_step(tokens: int) -> None:  # inside a batch: measured speed and ETA, at most every PROGRESS_EVERY s
        now = time.perf_counter()
        pace.step(tokens, now - gen_start)
        if now - shown[0] >= PROGRESS_EVERY:
            shown[0] = now
            emit("progress", {**pace.to_dict(), "memory": _memory_now(loaded)})

    try:
        if todo and spec.endpoint is not None:  # served elsewhere: no plan, no load, no local energy to meter
            from routerllm_cli.endpoints.source import EndpointSource

            source = EndpointSource(spec, run_dir=folder.path)
            emit("endpoint", checked or source.check())
            style = source.style(b.prompt_style)
            batch_size = spec.endpoint.concurrency
            items = [(p, k, source.prompt(p, style)) for p, k in todo]
            groups = source.answers(items, style, b, stop)
            continuous = True
        elif todo:
            plan = loaded.plan if loaded is not None else plan_for(spec, settings, num_examples=len(todo))
            emit("plan", {"plan": plan.to_dict(), "eta_seconds": plan.estimates.get("bench_seconds")})
            if loaded is None:
                from routerllm_cli.loading import load_model

                emit("loading", {"model": ref.name})
                loaded = load_model(plan, spec, progress=lambda d: emit("load_progress", d))
                emit("loaded", {"load_seconds": loaded.load_seconds, "attn": loaded.attn_implementation})
            load_seconds = loaded.load_seconds if owns_model else 0.0
            from routerllm_cli import generation

            style = humaneval.choose_style(loaded.tokenizer, b.prompt_style)
            batch_size = generation.batch_for(loaded.plan)
            items = [(p, k, humaneval.build_prompt(p, loaded.tokenizer, style)) for p, k in todo]
            lengths = generation.prompt_token_counts(loaded.tokenizer, [it[2] for it in items])
            ranked = generation.order_by_length(list(zip(items, lengths)), key=lambda pair: pair[1])
            items = [it for it, _ in ranked]
            stopping = humaneval.stopping_for(style)
            continuous = b.batching == "continuous" or (b.batching == "auto" and _on_gpu(loaded.input_device))
            from routerllm_cli.decode import decoder_for

            decoder, decode_info = decoder_for(loaded.plan, loaded.model, b.decode, continuous=continuous,
                                               sampling=b.temperature > 0, slots=min(batch_size, len(items)),
                                               on_event=emit)
            groups = _generate_groups(generation, loaded, items, batch_size, stopping, b, stop, continuous, decoder,
                                      on_step)
        if todo:
            emit("generating", {"batch_size": batch_size, "style": style, "todo": len(items), "continuous": continuous})
            if spec.endpoint is None:
                meter.start()
                metering = True
            pace = Pace(len(items), batch_size, b.max_new_tokens, continuous)
            gen_start = time.perf_counter()
            finished = 0
            for group, dt in groups:
                gen_seconds += dt
                first_batch_at = first_batch_at or (time.perf_counter() - t_start)
                for (problem, k, _), out in group:
                    completion = humaneval.postprocess(out.text, problem, style)
                    record = {"task_id": problem["task_id"], "sample_idx": k, "prompt_style": style,
                              "raw": out.text, "completion": completion, "new_tokens": out.new_tokens,
                              "prompt_tokens": out.prompt_tokens,
                              # seconds: share of the generation time (adds up to it); latency_s: how long
                              # this answer took from entering a batch to its end
                              "seconds": round(out.share_seconds if continuous else dt / len(group), 4),
                              "latency_s": round(out.seconds, 4), "batch_seconds": round(dt, 4),
                              "batch_size": out.batch_size, "stopped_by": out.stopped_by}
                    folder.append_sample(record)
                    if executor is not None and sandbox is not None:
                        pending.append((problem["task_id"], k, executor.submit(sandbox.check, problem, completion)))
                finished += len(group)
                pace.answered(len(group), sum(o.new_tokens for _, o in group), time.perf_counter() - gen_start)
                drain(block=False)
                n_done = len(folder.finished_keys())
                emit("batch", {"done": n_done, "batch": len(group), "seconds": dt,
                               "tokens": sum(o.new_tokens for _, o in group),
                               "memory": _memory_now(loaded) if loaded is not None else {},
                               "passed": folder.passed_count(), "pace": pace.to_dict()})
                if n_done // SUMMARY_EVERY != (n_done - len(group)) // SUMMARY_EVERY:
                    folder.write_summary(_summary(folder, problems, settings, spec, ref.name, load_seconds + prior_load,
                                                  gen_seconds + prior_gen, first_batch_at, earlier, "running", loaded,
                                                  _decode_report(decode_info, decoder)))
            interrupted = stop.requested and finished < len(items)
        drain(block=True)
    except KeyboardInterrupt:
        interrupted = True
        for _, _, fut in pending:
            fut.cancel()
        pending.clear()
    except Exception as exc:
        failed = True  # the answers so far are saved; the run says it failed, and why, instead of finished
        error = exc.one_line() if isinstance(exc, RouterLLMError) else f"{type(exc).__name__}: {exc}"
        raise
    finally:
        reading = meter.stop() if metering else None
        if earlier is not None:
            reading = earlier if reading is None else sum_readings([earlier, reading])
        gen_seconds += prior_gen
        session_load = load_seconds
        load_seconds += prior_load
        first_batch_at = first_batch_at or prior.get("time_to_first_batch_s")
        if executor is not None:
            executor.shutdown(wait=not interrupted, cancel_futures=interrupted)
        status = "failed" if failed else "interrupted" if interrupted or stop.requested and pending else "finished"
        summary = _summary(folder, problems, settings, spec, ref.name, load_seconds, gen_seconds, first_batch_at,
                           reading, status, loaded, _decode_report(decode_info, decoder))
        if error is not None:
            summary["error"] = error
        folder.write_summary(summary)
        folder.set_status(status, error=error)
        if owns_model and loaded is not None:
            loaded.close()
    emit("done", {"summary": summary})
    if interrupted:
        raise BenchInterrupted(f"interrupted: {summary['done']}/{summary['total']} examples saved in {folder.path}",
                               fix=f"resume with `routerllm bench --run-dir {folder.path}`")
    return BenchRun(folder.path, summary, session_load, folder.samples())


def _decode_report(info: dict[str, Any] | None, decoder: Any) -> dict[str, Any] | None:
    from routerllm_cli.decode import decode_report

    return decode_report(info, decoder)


def _summary(folder: Any, problems: list[dict], settings: Settings, spec: ModelSpec, model_name: str,
             load_seconds: float, gen_seconds: float, first_batch_at: float | None, reading: Any, status: str,
             loaded: Any, decode: dict[str, Any] | None = None) -> dict[str, Any]:
    from routerllm_cli import metrics
    from routerllm_cli.energy import co2_grams

    b = settings.bench
    ids = {p["task_id"] for p in problems}
    prompts = {p["task_id"]: p["prompt"] for p in problems}
    samples = [s for s in folder.samples() if s["task_id"] in ids]
    execs = folder.executions()  # {(task_id, k): {...}}
    latencies = [metrics.answer_latency(s) for s in samples]
    tokens = sum(s.get("new_tokens") or 0 for s in samples if isinstance(s.get("new_tokens"), int))
    gen_ok = sum(parses_as_python(prompts[s["task_id"]], str(s.get("completion") or "")) for s in samples)
    summary: dict[str, Any] = {
        "model": model_name, "status": status, "run_dir": str(folder.path),
        "total": len(problems) * b.samples, "done": len(samples),
        "generation_success_rate": gen_ok / len(samples) if samples else 0.0,
        "latency_s": metrics.latency_summary(latencies),
        "throughput": {"problems_per_min": 60 * len(samples) / gen_seconds if gen_seconds else 0.0,
                       "tokens_per_s": tokens / gen_seconds if gen_seconds else 0.0},
        "time_to_first_batch_s": first_batch_at, "load_seconds": load_seconds, "generation_seconds": gen_seconds,
        "peak_memory": _peak_memory(folder.read_summary() or {}, loaded), "skip_execution": b.skip_execution,
    }
    if decode is not None:
        summary["decode"] = decode
    if not b.skip_execution:
        per_task: dict[str, list[bool]] = {}
        for s in samples:
            ex = execs.get((s["task_id"], s.get("sample_idx", 0)))
            if ex is not None:
                per_task.setdefault(s["task_id"], []).append(bool(ex.get("passed")))
        executed = sum(len(v) for v in per_task.values())
        summary["executed"] = executed
        summary["passed"] = sum(sum(v) for v in per_task.values())
        summary["pass_at_k"] = metrics.pass_at_k_table(per_task, b.samples)
        summary["pass@1"] = summary["pass_at_k"].get("pass@1", 0.0)
    if reading is not None:
        summary["energy"] = reading.to_dict()
        summary["co2_g"] = co2_grams(reading.kwh, settings.energy.carbon_intensity_g_per_kwh)
        summary["cost_usd"] = metrics.run_cost_usd(gen_seconds + load_seconds, samples, spec, settings.energy,
                                                   metrics.measured_gpus(summary["energy"]))
    if spec.endpoint is not None:
        from routerllm_cli.endpoints.source import endpoint_accounting

        summary.update(endpoint_accounting(spec, settings, samples, gen_seconds))
    return summary
