"""How far a bench session is and how long the rest will take, from the speed measured so far.

The preflight estimate is a guess made before anything ran; once decode steps have been timed the ETA comes from
them, and it moves inside a batch, not only when a batch ends. Static batches decode until their longest answer
ends, so their time goes by steps: the steps a finished batch took on average (`max_new_tokens` before any
finished: the upper bound) times the measured seconds per step. Continuous batching keeps its rows full, so its
time goes by tokens: the tokens still to come (answers left times the tokens an answer took so far, or
`max_new_tokens`) over the measured tokens per second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Pace:
    todo: int  # answers this session generates
    batch_size: int
    max_new_tokens: int
    continuous: bool = False
    done: int = 0  # answers finished this session
    tokens: int = 0  # tokens generated this session, in flight included
    answer_tokens: int = 0  # tokens of the finished answers
    steps: int = 0  # decode steps this session
    batch_steps: int = 0  # steps of the static batch in flight
    batches: list[int] = field(default_factory=list)  # steps each finished static batch took
    seconds: float = 0.0  # generation wall time so far

    def step(self, tokens: int, seconds: float) -> None:
        """One decode step that produced `tokens` tokens; `seconds` since generation started."""
        self.tokens += tokens
        self.steps += 1
        self.batch_steps += 1
        self.seconds = seconds

    def answered(self, answers: int, tokens: int, seconds: float) -> None:
        """`answers` answers of `tokens` tokens in all finished (for static batching: one whole batch)."""
        self.done += answers
        self.answer_tokens += tokens
        self.seconds = seconds
        if not self.continuous:
            self.batches.append(self.batch_steps)
            self.batch_steps = 0

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens / self.seconds if self.tokens and self.seconds > 0 else None

    def eta_seconds(self) -> float | None:
        """Seconds until this session's answers are all in, or None before anything was measured."""
        left = self.todo - self.done
        if left <= 0:
            return 0.0
        if not self.steps:  # answers that come whole (an endpoint): by answers per second
            return left * self.seconds / self.done if self.done and self.seconds > 0 else None
        if self.seconds <= 0:
            return None
        if self.continuous:
            per_answer = self.answer_tokens / self.done if self.done else self.max_new_tokens
            in_flight = self.tokens - self.answer_tokens
            return max(left * per_answer - in_flight, 0.0) / (self.tokens / self.seconds)
        per_step = self.seconds / self.steps
        per_batch = sum(self.batches) / len(self.batches) if self.batches else self.max_new_tokens
        later = math.ceil(max(left - self.batch_size, 0) / self.batch_size)
        now = max(per_batch - self.batch_steps, 1.0) if self.batch_steps else per_batch
        return (now + later * per_batch) * per_step

    def to_dict(self) -> dict[str, Any]:
        return {"done": self.done, "todo": self.todo, "tokens": self.tokens, "seconds": round(self.seconds, 3),
                "tokens_per_s": self.tokens_per_second, "eta_seconds": self.eta_seconds()}
