"""Routing policies: which model of a pool (ordered cheapest first) answers each HumanEval problem.

A router sees only what a deployed router would see: the prompt text and the entry point's name. Hidden
tests never reach it; `PromptTask.from_problem` reads only "task_id", "prompt" and "entry_point" from a
problem, and every policy takes `PromptTask`s. The one exception is `OracleRouter`, an upper bound that is
handed per-model hidden-test verdicts on purpose and says so in every decision.

Policies:
- `HeuristicRouter`: a prompt-only `difficulty` score cut by thresholds into a pool index.
- `CascadeRouter`: cheapest model first; its answer is kept when it passes the examples written in the
  prompt's own docstring (`extract_docstring_tests`), else the next model tries; the last model's answer is
  final. `CascadeRouter.run` drives it model by model, so each model generates only for unresolved problems.
- `RandomRouter`: the floor. `OracleRouter`: the ceiling.

Every decision is a `RoutingDecision` data object; `routing_breakdown` counts them per model.

Rooms: `types` (pool members, the prompt-only task, decisions), `docstring` (the prompt's own examples and the
program that checks a completion against them; its helpers are the real Python of `check_program`),
`difficulty` (prompt-only features and score), `policies` (the four routers). Import from here.
"""

from __future__ import annotations

from routerllm_cli.router.difficulty import (DIFFICULTY_WEIGHTS, difficulty, difficulty_features,
                                             quantile_thresholds)
from routerllm_cli.router.docstring import DocExample, docstring_examples, entry_docstring, extract_docstring_tests
from routerllm_cli.router.policies import (CascadeOutcome, CascadeRouter, CascadeVerdict, HeuristicRouter, OracleRouter,
                                           RandomRouter, route_all)
from routerllm_cli.router.types import HasName, PoolModel, PromptTask, RoutingDecision, check_pool, routing_breakdown

__all__ = [
    "DIFFICULTY_WEIGHTS", "CascadeOutcome", "CascadeRouter", "CascadeVerdict", "DocExample", "HasName",
    "HeuristicRouter", "OracleRouter", "PoolModel", "PromptTask", "RandomRouter", "RoutingDecision", "check_pool",
    "difficulty", "difficulty_features", "docstring_examples", "entry_docstring", "extract_docstring_tests",
    "quantile_thresholds", "route_all", "routing_breakdown",
]
