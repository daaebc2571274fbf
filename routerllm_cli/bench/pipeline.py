"""The bench pipeline: plan -> load -> generate -> execute -> measure, with progressive saving and exact resume."""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from routerllm_cli.config import ModelSpec, Settings
from routerllm_cli.errors import RouterLLMError
from routerllm_cli.bench.generate import generate_groups, on_gpu
from routerllm_cli.bench.run import (PROGRESS_EVERY, SUMMARY_EVERY, BenchInterrupted, BenchRun, EventSink, StopSignal,
                                     plan_for, result_fingerprint)
from routerllm_cli.bench.summary import decode_summary, memory_now, summarize


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
            emit("progress", {**pace.to_dict(), "memory": memory_now(loaded)})

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
            from routerllm_cli.loading.gguf_reader import read_once

            with read_once(bool(ref.gguf_file) and loaded is None):  # the plan and the load parse a GGUF once
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
            continuous = b.batching == "continuous" or (b.batching == "auto" and on_gpu(loaded.input_device))
            from routerllm_cli.decode import decoder_for

            decoder, decode_info = decoder_for(loaded.plan, loaded.model, b.decode, continuous=continuous,
                                               sampling=b.temperature > 0, slots=min(batch_size, len(items)),
                                               fuse=b.decode_fuse, on_event=emit)
            groups = generate_groups(generation, loaded, items, batch_size, stopping, b, stop, continuous, decoder,
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
                               "memory": memory_now(loaded) if loaded is not None else {},
                               "passed": folder.passed_count(), "pace": pace.to_dict()})
                if n_done // SUMMARY_EVERY != (n_done - len(group)) // SUMMARY_EVERY:
                    folder.write_summary(summarize(folder, problems, settings, spec, ref.name, load_seconds + prior_load,
                                                  gen_seconds + prior_gen, first_batch_at, earlier, "running", loaded,
                                                  decode_summary(decode_info, decoder)))
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
        summary = summarize(folder, problems, settings, spec, ref.name, load_seconds, gen_seconds, first_batch_at,
                           reading, status, loaded, decode_summary(decode_info, decoder))
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


