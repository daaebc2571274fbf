"""What a router works with: pool members, the prompt-only view of a problem, and its decisions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from routerllm_cli.errors import ConfigError


class HasName(Protocol):
    name: str


@dataclass(frozen=True)
class PoolModel:
    """A pool member. Any object with `.name` (e.g. a config `ModelSpec`) works as well."""

    name: str
    cost: float | None = None  # relative cost (price, or parameters); only used to check the order


@dataclass(frozen=True)
class PromptTask:
    """What a router may see of a problem: no hidden tests, no canonical solution."""

    task_id: str
    prompt: str
    entry_point: str

    @classmethod
    def from_problem(cls, problem: Mapping[str, Any]) -> PromptTask:
        # Only these three keys are read, so a router cannot peek at problem["test"].
        return cls(task_id=str(problem["task_id"]), prompt=problem["prompt"], entry_point=problem["entry_point"])


@dataclass(frozen=True)
class RoutingDecision:
    task_id: str
    model_name: str
    escalations: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "model_name": self.model_name, "escalations": self.escalations,
                "reason": self.reason}


def check_pool(pool: Sequence[HasName]) -> list[str]:
    """Names of the pool, after checking it is usable: non-empty, unique names, cheapest first when costs are known."""
    if not pool:
        raise ConfigError("the router's pool is empty", fix="list at least one model under models.router.pool")
    names = [m.name for m in pool]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"the router's pool names {', '.join(duplicates)} twice",
                          fix="give each pool model a unique name")
    costs = [getattr(m, "cost", None) for m in pool]
    if all(c is not None for c in costs) and costs != sorted(costs):
        raise ConfigError("the router's pool is not ordered cheapest first",
                          fix="reorder models.router.pool from cheapest to most expensive")
    return names


def routing_breakdown(decisions: Sequence[RoutingDecision], pool: Sequence[HasName] | None = None) -> dict[str, int]:
    """Problems per model, in pool order (models that got none included) when the pool is given."""
    counts: dict[str, int] = {m.name: 0 for m in pool} if pool is not None else {}
    for d in decisions:
        counts[d.model_name] = counts.get(d.model_name, 0) + 1
    return counts
