"""The routing policies: heuristic (difficulty thresholds), cascade (docstring checks), random and oracle."""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from routerllm_cli.errors import ConfigError
from routerllm_cli.router.difficulty import difficulty
from routerllm_cli.router.docstring import docstring_examples, extract_docstring_tests
from routerllm_cli.router.types import HasName, PromptTask, RoutingDecision, check_pool


class HeuristicRouter:
    """Difficulty below thresholds[0] goes to pool[0], below thresholds[1] to pool[1], ... else the last model."""

    name = "heuristic"

    def __init__(self, thresholds: Sequence[float]):
        thresholds = [float(t) for t in thresholds]
        if any(not 0.0 <= t <= 1.0 for t in thresholds) or thresholds != sorted(thresholds):
            raise ConfigError(f"router thresholds {thresholds} are not increasing numbers between 0 and 1",
                              fix="set models.router.thresholds like [0.3, 0.6]")
        self.thresholds = thresholds

    def index(self, task: PromptTask) -> int:
        return bisect.bisect_right(self.thresholds, difficulty(task))

    def decide(self, task: PromptTask, pool: Sequence[HasName]) -> RoutingDecision:
        names = check_pool(pool)
        if len(self.thresholds) != len(names) - 1:
            raise ConfigError(f"{len(self.thresholds)} thresholds for a pool of {len(names)} models",
                              fix=f"give {len(names) - 1} thresholds (one fewer than pool models)")
        score = difficulty(task)
        k = bisect.bisect_right(self.thresholds, score)
        return RoutingDecision(task.task_id, names[k], 0, f"difficulty {score:.2f}, thresholds {self.thresholds}")


class RandomRouter:
    """The floor: a uniformly random pool model, reproducible per (seed, task_id) whatever the order."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def decide(self, task: PromptTask, pool: Sequence[HasName]) -> RoutingDecision:
        names = check_pool(pool)
        k = random.Random(f"{self.seed}:{task.task_id}").randrange(len(names))
        return RoutingDecision(task.task_id, names[k], 0, f"random (seed {self.seed})")


class OracleRouter:
    """An upper bound, not a router: per problem the cheapest model that passes the HIDDEN tests.

    `verdicts[task_id][model_name]` is whether that model's answer passed. Needs executed tests, so it
    refuses to exist when execution is off. When no model passes, the cheapest is chosen (nothing is lost).
    """

    name = "oracle"
    label = "oracle (upper bound: reads hidden-test verdicts)"

    def __init__(self, verdicts: Mapping[str, Mapping[str, bool]], *, execution: bool = True):
        if not execution:
            raise ConfigError("the oracle router needs hidden-test verdicts, and execution is off",
                              fix="turn execution on (drop --skip-execution) or pick another router policy")
        self.verdicts = verdicts

    def decide(self, task: PromptTask, pool: Sequence[HasName]) -> RoutingDecision:
        names = check_pool(pool)
        per_model = self.verdicts.get(task.task_id)
        missing = [n for n in names if per_model is None or n not in per_model]
        if missing:
            raise ConfigError(f"no hidden-test verdict for {task.task_id} from {', '.join(missing)}",
                              fix="run every pool model on every problem before using the oracle")
        for k, model in enumerate(names):
            if per_model[model]:
                return RoutingDecision(task.task_id, model, 0, f"{self.label}: cheapest model that passes")
        return RoutingDecision(task.task_id, names[0], 0, f"{self.label}: no model passes, cheapest chosen")


@dataclass(frozen=True)
class CascadeVerdict:
    accepted: bool
    reason: str
    examples: int


@dataclass
class CascadeOutcome:
    decision: RoutingDecision
    completion: str
    completions: dict[str, str] = field(default_factory=dict)  # every model that tried, in order


class CascadeRouter:
    """Cheapest model first; escalate when its answer fails the prompt's own docstring examples.

    Drive it step by step (`check`/`accept` per answer) or let `run` do the loop: model k generates only for
    the problems still unresolved, and the last model's answers are final without a check.
    A completion is checked as HumanEval runs it: `prompt + completion` as the program, the docstring examples
    as the tests calling its entry point.
    """

    name = "cascade"

    def check(self, prompt: str, entry_point: str, completion: str, sandbox: Any) -> CascadeVerdict:
        tests = extract_docstring_tests(prompt, entry_point)
        if not tests:
            return CascadeVerdict(True, "no docstring examples in the prompt; first answer accepted unchecked", 0)
        n = len(docstring_examples(prompt, entry_point))
        # The examples run in the sandbox's checker process, apart from the completion's code, so the
        # completion cannot report its own success.
        result = sandbox.run_tests(prompt, completion, tests, entry_point)
        if result.passed:
            return CascadeVerdict(True, f"passed its {n} docstring examples", n)
        return CascadeVerdict(False, f"failed its docstring examples ({result.result})"[:300], n)

    def accept(self, prompt: str, entry_point: str, completion: str, sandbox: Any) -> bool:
        return self.check(prompt, entry_point, completion, sandbox).accepted

    def run(self, tasks: Sequence[PromptTask], pool: Sequence[HasName],
            generate: Callable[[HasName, list[PromptTask]], Sequence[str]], sandbox: Any) -> list[CascadeOutcome]:
        """Route every task; `generate(model, tasks)` returns one completion per task, in order."""
        names = check_pool(pool)
        tried: dict[str, dict[str, str]] = {t.task_id: {} for t in tasks}
        failures: dict[str, list[str]] = {t.task_id: [] for t in tasks}
        done: dict[str, CascadeOutcome] = {}
        pending = list(tasks)
        for k, model in enumerate(pool):
            if not pending:
                break
            completions = list(generate(model, pending))
            if len(completions) != len(pending):
                raise ValueError(f"generate returned {len(completions)} completions for {len(pending)} tasks")
            last = k == len(names) - 1
            verdicts = [None] * len(pending) if last else self._check_all(pending, completions, sandbox)
            still: list[PromptTask] = []
            for task, completion, verdict in zip(pending, completions, verdicts):
                tried[task.task_id][model.name] = completion
                if verdict is not None and not verdict.accepted:
                    failures[task.task_id].append(model.name)
                    still.append(task)
                    continue
                if last and k > 0:
                    reason = f"{', '.join(failures[task.task_id])} failed the docstring examples; last model, final"
                elif last:
                    reason = "only model in the pool; its answer is final"
                else:
                    reason = verdict.reason
                    if failures[task.task_id]:
                        reason = f"{', '.join(failures[task.task_id])} failed first; {model.name} {reason}"
                done[task.task_id] = CascadeOutcome(RoutingDecision(task.task_id, model.name, k, reason),
                                                    completion, dict(tried[task.task_id]))
            pending = still
        return [done[t.task_id] for t in tasks]

    def _check_all(self, tasks: Sequence[PromptTask], completions: Sequence[str],
                   sandbox: Any) -> list[CascadeVerdict]:
        # Each check is a separate sandboxed process, so the sandbox's worker count of them run at once.
        from concurrent.futures import ThreadPoolExecutor

        workers = max(1, int(getattr(sandbox, "workers", 1) or 1))
        with ThreadPoolExecutor(workers, thread_name_prefix="cascade-check") as pool:
            return list(pool.map(lambda tc: self.check(tc[0].prompt, tc[0].entry_point, tc[1], sandbox),
                                 zip(tasks, completions)))


def route_all(router: Any, tasks: Sequence[PromptTask], pool: Sequence[HasName]) -> list[RoutingDecision]:
    """One-shot policies (heuristic, random, oracle) over many tasks."""
    return [router.decide(t, pool) for t in tasks]
