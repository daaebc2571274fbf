"""`compare`: a router over a pool of small models against one large model, measured the same way.

A composition of `bench`, not a second harness. Each model gets ONE run folder under
`<results_dir>/models/<name>/` and is loaded once: every system that needs that model's answer to a problem
reads it from there (greedy generation makes a model's answer to a problem independent of who asked), and an
interrupted compare resumes because each run folder resumes.

Per system, per problem, the cost of an answer is what the models it used spent on it: generation seconds
(amortized over the batch) plus, for the cascade, the sandboxed docstring checks. Energy per answer is each model
run's measured energy divided by the answers it generated; cost is GPU-hours x price (or per-token prices for
API-priced models). Load time is reported separately from generation time. A pool may mix local models and
endpoints (models served elsewhere): an endpoint's energy is not measured, so a system that used one says so
and its energy figure covers the local models only (none at all when every answer came from endpoints).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from routerllm_cli import metrics, runs
from routerllm_cli.bench import BenchInterrupted, BenchRun, StopSignal, run_bench
from routerllm_cli.config import ModelSpec, Settings
from routerllm_cli.errors import ConfigError

EventSink = Callable[[str, dict[str, Any]], None]


@dataclass
class ModelRun:
    """One model's answers, with what each cost."""

    spec: ModelSpec
    run: BenchRun
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # task_id -> sample record (+ passed)
    joules_per_answer: float = 0.0
    gpus: int = 0

    @property
    def name(self) -> str:
        return self.spec.name


def _index(run: BenchRun) -> dict[str, dict[str, Any]]:
    folder = runs.RunFolder(run.run_dir)
    execs = folder.executions()
    out: dict[str, dict[str, Any]] = {}
    for s in folder.samples():
        if s["sample_idx"] != 0:
            continue
        ex = execs.get((s["task_id"], 0))
        out[s["task_id"]] = {**s, "passed": None if ex is None else bool(ex["passed"])}
    return out


class ComparePipeline:
    """Runs the models a comparison needs, each once, and assembles per-system metrics."""

    def __init__(self, settings: Settings, out_dir: Path, *, policy: str, use_large_model: bool,
                 stop: StopSignal | None = None, on_event: EventSink | None = None):
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.policy = policy
        self.use_large_model = use_large_model
        self.stop = stop or StopSignal()
        self.emit = on_event or (lambda kind, data: None)
        self.runs: dict[str, ModelRun] = {}
        # Problems each model will be asked for anyway (the direct large model, each pool model alone): the first
        # time a model runs it answers all of them, so it is loaded once, not again for the rest.
        self.wanted: dict[str, list[str]] = {}
        self.loads: dict[str, int] = {}
        self.pool = list(settings.models.router.pool)
        if policy == "oracle" and settings.bench.skip_execution:
            raise ConfigError("the oracle router needs hidden-test verdicts, and execution is off",
                              fix="drop --skip-execution or pick --router cascade|heuristic|random")
        if settings.bench.samples != 1:
            raise ConfigError("compare measures pass@1", fix="set bench.samples to 1 (drop --samples)")
        # every model must be findable before the first one spends an hour generating
        from routerllm_cli.catalog import resolve_model_spec

        for spec in self.pool + ([settings.large] if use_large_model else []):
            resolve_model_spec(spec)

    # -- running models -------------------------------------------------------------------------------
    def ensure(self, spec: ModelSpec, task_ids: list[str]) -> ModelRun:
        """Make sure `spec` has answered `task_ids` (generating only what is missing) and return its answers."""
        run_dir = runs.compare_model_dir(self.out_dir, spec.name)
        have = self.runs.get(spec.name)
        asked = set(task_ids)
        ids = list(task_ids) + [t for t in self.wanted.get(spec.name, ()) if t not in asked]
        missing = [t for t in ids if have is None or t not in have.answers]
        if have is not None and not missing:
            return have
        self.emit("model", {"model": spec.name, "tasks": len(missing)})
        try:
            run = run_bench(self.settings, spec=spec, run_dir=run_dir, task_ids=ids, stop=self.stop,
                            on_event=self.emit)
        except BenchInterrupted as exc:  # the answers so far are saved; the same compare picks them up
            raise BenchInterrupted(f"compare interrupted while {spec.name} was answering ({exc.message})",
                                   fix="run the same `routerllm compare` command again (same --results-dir) to "
                                   "continue; every answer so far is kept") from None
        if run.load_seconds > 0:
            self.loads[spec.name] = self.loads.get(spec.name, 0) + 1
        mr = ModelRun(spec, run, _index(run))
        energy = run.summary.get("energy") or {}
        # the run's energy covers every answer in its folder, over all sessions (summaries accumulate on resume)
        generated = max(len(run.samples), 1)
        mr.joules_per_answer = metrics.joules_per_answer(energy, generated)
        mr.gpus = metrics.measured_gpus(energy)
        if spec.endpoint is not None:  # no local GPU measured it: the GPUs that serve it, as configured
            mr.gpus = spec.endpoint.gpus or 0
        if have is not None:  # keep earlier load time when this call only topped up
            mr.run.load_seconds += have.run.load_seconds
        self.runs[spec.name] = mr
        return mr

    # -- systems --------------------------------------------------------------------------------------
    def route(self, problems: list[dict]) -> tuple[dict[str, dict[str, Any]], dict[str, int], dict[str, Any]]:
        """Run the router. Returns (answers by task, routing breakdown, extras such as escalations)."""
        from routerllm_cli import router as routing

        tasks = [routing.PromptTask.from_problem(p) for p in problems]
        ids = [t.task_id for t in tasks]
        extras: dict[str, Any] = {"policy": self.policy}
        answers: dict[str, dict[str, Any]] = {}
        if self.policy == "cascade":
            from routerllm_cli.sandbox import Sandbox, SandboxLimits

            sandbox = Sandbox(SandboxLimits(timeout_s=self.settings.bench.timeout_s, layer=self.settings.bench.sandbox),
                              workers=self.settings.bench.workers)
            gen_time = [0.0]

            def generate(model: ModelSpec, pending: list[Any]) -> list[str]:
                started = time.perf_counter()
                mr = self.ensure(model, [task.task_id for task in pending])
                gen_time[0] += time.perf_counter() - started
                return [mr.answers[t.task_id]["completion"] for t in pending]

            t0 = time.perf_counter()
            outcomes = routing.CascadeRouter().run(tasks, self.pool, generate, sandbox)
            check_total = max(time.perf_counter() - t0 - gen_time[0], 0.0)
            decisions = [o.decision for o in outcomes]
            n_checks = sum(len(o.completions) - (1 if len(o.completions) == len(self.pool) else 0) for o in outcomes)
            per_check = check_total / n_checks if n_checks else 0.0
            for o in outcomes:
                tried = list(o.completions)
                checks = len(tried) - (1 if len(tried) == len(self.pool) else 0)
                per = [self.runs[m].answers[o.decision.task_id] for m in tried]
                answers[o.decision.task_id] = {"model": o.decision.model_name, "tried": tried,
                                               "completion": o.completion, "records": per,
                                               "reason": o.decision.reason, "check_seconds": checks * per_check}
            extras["escalated"] = sum(1 for d in decisions if d.escalations > 0)
            extras["docstring_check_seconds"] = check_total
        else:
            if self.policy == "oracle":
                for spec in self.pool:
                    self.ensure(spec, ids)
                verdicts = {t: {m.name: bool(self.runs[m.name].answers[t]["passed"]) for m in self.pool} for t in ids}
                chooser: Any = routing.OracleRouter(verdicts, execution=not self.settings.bench.skip_execution)
                extras["label"] = chooser.label
            elif self.policy == "heuristic":
                chooser = routing.HeuristicRouter(self.settings.models.router.thresholds)
            else:
                chooser = routing.RandomRouter(self.settings.models.router.seed)
            decisions = routing.route_all(chooser, tasks, self.pool)
            by_model: dict[str, list[str]] = {}
            for d in decisions:
                by_model.setdefault(d.model_name, []).append(d.task_id)
            specs = {m.name: m for m in self.pool}
            for name, tids in by_model.items():
                self.ensure(specs[name], tids)
            for d in decisions:
                rec = self.runs[d.model_name].answers[d.task_id]
                answers[d.task_id] = {"model": d.model_name, "tried": [d.model_name], "completion": rec["completion"],
                                      "records": [rec], "reason": d.reason}
        breakdown = routing.routing_breakdown(decisions, self.pool)
        return answers, breakdown, extras

    def single(self, spec: ModelSpec, problems: list[dict]) -> dict[str, dict[str, Any]]:
        mr = self.ensure(spec, [p["task_id"] for p in problems])
        return {t: {"model": spec.name, "tried": [spec.name], "completion": r["completion"], "records": [r],
                    "reason": "single model"} for t, r in mr.answers.items() if t in {p["task_id"] for p in problems}}

    # -- metrics --------------------------------------------------------------------------------------
    def metrics(self, name: str, kind: str, answers: dict[str, dict[str, Any]], problems: list[dict],
                routing: dict[str, int] | None = None, extras: dict[str, Any] | None = None) -> dict[str, Any]:
        from routerllm_cli.bench import parses_as_python
        from routerllm_cli.energy import co2_grams

        e = self.settings.energy
        execute = not self.settings.bench.skip_execution
        latencies, spent, joules, cost = [], [], 0.0, 0.0
        correct = 0
        prompts = {p["task_id"]: p["prompt"] for p in problems}
        models_used: set[str] = set()
        for p in problems:
            a = answers[p["task_id"]]
            final = a["records"][-1] if a["records"] else {}
            seconds = latency = float(a.get("check_seconds", 0.0))
            for model_name, rec in zip(a["tried"], a["records"]):
                mr = self.runs[model_name]
                models_used.add(model_name)
                seconds += float(rec.get("seconds", 0.0))  # its share of the generation time
                latency += metrics.answer_latency(rec)  # how long it waited
                joules += mr.joules_per_answer
                cost += metrics.answer_cost_usd(rec, mr.spec, e, mr.gpus)  # CPU-only: no GPU-hours
            latencies.append(latency)
            spent.append(seconds)
            if execute:
                correct += bool(final.get("passed"))
            else:
                correct += parses_as_python(prompts[p["task_id"]], a["completion"])
        kwh = metrics.kwh(joules)
        latency_s = metrics.latency_summary(latencies)
        remote = sorted(m for m in models_used if self.runs[m].spec.endpoint is not None)
        if remote:  # not measured there: say so, and give no number where nothing was measured
            extras = {**(extras or {}), "energy_not_measured": remote}
        return {
            "name": name, "kind": kind,
            "accuracy": correct / len(problems) if problems else 0.0,
            "accuracy_kind": "pass@1" if execute else "generation success",
            "latency_mean_s": latency_s["mean"],
            "latency_p95_s": latency_s["p95"],
            "wall_s": sum(spent),
            # what loading its models took when they generated (in this or an earlier compare), apart from
            # generation: cost and energy above cover generation only
            "load_s": sum(float(self.runs[m].run.summary.get("load_seconds") or 0.0) for m in models_used),
            "kwh": None if remote and remote == sorted(models_used) else kwh,
            "co2_g": None if remote and remote == sorted(models_used) else co2_grams(kwh, e.carbon_intensity_g_per_kwh),
            "cost_usd": cost,
            "routing": routing or {},
            **({"extras": extras} if extras else {}),
            **({"notes": [f"energy and CO2 not measured for {', '.join(remote)} (remote endpoint)"
                          + ("" if remote == sorted(models_used) else "; the figure covers the local models only")]}
               if remote else {}),
        }


def run_compare(settings: Settings, out_dir: Path, *, policy: str | None = None, use_large_model: bool = False,
                stop: StopSignal | None = None, on_event: EventSink | None = None) -> dict[str, Any]:
    """Run every system and write comparison.json / comparison.md / cost_quality.png into `out_dir`."""
    from routerllm_cli import humaneval
    from routerllm_cli.report import write_comparison

    policy = policy or settings.models.router.policy
    b = settings.bench
    problems_all, _source = humaneval.load_problems()
    problems = humaneval.select(problems_all, n=None if b.task_ids else b.num_examples, task_ids=b.task_ids)
    pipe = ComparePipeline(settings, out_dir, policy=policy, use_large_model=use_large_model, stop=stop,
                           on_event=on_event)
    systems: list[dict[str, Any]] = []
    all_ids = [p["task_id"] for p in problems]
    for spec in [settings.large] if use_large_model else pipe.pool:
        pipe.wanted[spec.name] = all_ids
    answers, breakdown, extras = pipe.route(problems)
    systems.append(pipe.metrics(f"RouterLLM ({policy})", "router", answers, problems, breakdown, extras))
    if use_large_model:
        large = settings.large
        systems.append(pipe.metrics(f"{large.name} (direct)", "large", pipe.single(large, problems), problems,
                                    {large.name: len(problems)}))
    else:
        for spec in pipe.pool:
            systems.append(pipe.metrics(f"{spec.name} (alone)", "pool model", pipe.single(spec, problems), problems,
                                        {spec.name: len(problems)}))
    if use_large_model:  # pool models alone as extra chart points, from answers already generated, when complete
        for spec in pipe.pool:
            if spec.name == settings.large.name:  # the same answers as the direct row
                continue
            mr = pipe.runs.get(spec.name)
            if mr and all(p["task_id"] in mr.answers for p in problems):
                systems.append(pipe.metrics(f"{spec.name} (alone)", "pool model", pipe.single(spec, problems),
                                            problems, {spec.name: len(problems)}))
    if policy == "oracle":
        systems[0]["notes"] = [extras.get("label", "upper bound") + "; not a router you can deploy",
                               *systems[0].get("notes", [])]
    report = write_comparison(systems, out_dir)
    return {"systems": systems, "rows": report.rows, "notes": report.notes, "out_dir": str(out_dir),
            "files": {"json": str(report.json_path), "markdown": str(report.md_path), "chart": str(report.png_path)},
            "models": {n: {"run_dir": str(mr.run.run_dir), "load_seconds": mr.run.load_seconds,
                           "loads": pipe.loads.get(n, 0),
                           "generation_seconds": mr.run.summary.get("generation_seconds"),
                           "decode": mr.run.summary.get("decode")}
                       for n, mr in pipe.runs.items()}}
