"""Continuous batching that keeps the batch's KV cache: for models whose every forward pass is expensive.

`generation.generate_continuous` re-reads prompt + answer so far for the whole batch at every refill, which is
cheap on a GPU-resident model. With offloaded layers it is not: each forward pass streams every offloaded weight
over the bus, and a re-read of 41 sequences of 1,300 tokens of a 405B model is ~100 s of compute, as long as the 32
decode steps between refills. Here the batch's cache stays: rows whose answers ended leave it (their rows are
dropped from every layer's keys and values), new prompts are prefilled on their own - one pass over the weights
for all of them - and their caches joined to the batch's, left-padded to a common length. Each decode step feeds
one token per row with its own position, so greedy answers equal one-by-one generation.

Refills wait until `refill_fraction` of the batch is free (or the queue fits what is free), so one pass over the
weights serves several new rows. Works with caches made of plain `DynamicLayer`s (Llama, Mistral, Qwen, Falcon);
`supports(model)` says whether a model's does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Sequence

from routerllm_cli.generation import (GenerationOutput, _add_special_tokens, _eos_ids, _StopCriteria, ended_answer,
                                      prepare_tokenizer, stamped)


def supports(model: Any) -> bool:
    """True when the model's dynamic cache is plain full-attention layers this module can cut and join."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - an older or unusual cache API: use the re-reading scheduler
        return False
    layers = getattr(cache, "layers", None)
    return layers is None or all(type(layer) is DynamicLayer for layer in layers)


@dataclass
class _Row:
    key: Hashable
    prompt_ids: list[int]
    started: float
    gen: list[int] = field(default_factory=list)
    share: float = 0.0


class _Batch:
    """The live batch on the device: its cache, attention mask, next positions and last tokens."""

    def __init__(self) -> None:
        self.cache: Any = None
        self.mask: Any = None  # [rows, length] 1 for real tokens, 0 for left padding
        self.positions: Any = None  # [rows] position of the token fed next
        self.last: Any = None  # [rows] token fed next

    @property
    def size(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    def keep(self, rows: list[int]) -> None:
        import torch

        if not rows:
            self.cache = self.mask = self.positions = self.last = None
            return
        index = torch.tensor(rows, device=self.mask.device)
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index], layer.values[index]
        self.mask, self.positions, self.last = self.mask[index], self.positions[index], self.last[index]
        # columns no remaining row uses (all padding) cost attention work every step: cut them
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0]) if used.numel() else 0
        if first:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def join(self, other: "_Batch") -> None:
        import torch

        if self.size == 0:
            self.cache, self.mask, self.positions, self.last = other.cache, other.mask, other.positions, other.last
            return
        length = max(self.mask.shape[1], other.mask.shape[1])

        def left_pad(t: Any, dim: int) -> Any:
            missing = length - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)

        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([left_pad(mine.keys, 2), left_pad(theirs.keys, 2)], dim=0)
            mine.values = torch.cat([left_pad(mine.values, 2), left_pad(theirs.values, 2)], dim=0)
        self.mask = torch.cat([left_pad(self.mask, 1), left_pad(other.mask, 1)], dim=0)
        self.positions = torch.cat([self.positions, other.positions])
        self.last = torch.cat([self.last, other.last])


def _pick(logits: Any, temperature: float, top_p: float, generator: Any) -> Any:
    """Greedy at temperature 0, else nucleus sampling (top_p, no top-k)."""
    import torch

    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    ordered, index = probs.sort(dim=-1, descending=True)
    drop = ordered.cumsum(dim=-1) - ordered > top_p
    ordered = ordered.masked_fill(drop, 0.0)
    choice = torch.multinomial(ordered / ordered.sum(dim=-1, keepdim=True), 1, generator=generator)
    return index.gather(-1, choice).squeeze(-1)


def generate_kept(model: Any, tokenizer: Any, prompts: Sequence[tuple[Hashable, str]], *, batch_size: int,
                  max_new_tokens: int, stop_sequences: Sequence[str] = (),
                  stop_when: Callable[[str], int | None] | None = None, temperature: float = 0.0, top_p: float = 0.95,
                  seed: int | None = None, device: Any = None, refill_fraction: float = 0.25,
                  should_stop: Callable[[], bool] | None = None,
                  on_step: Callable[[int], None] | None = None) -> Iterator[tuple[Hashable, GenerationOutput]]:
    """Continuous batching with the KV cache kept (see the module docstring). Yields (key, output) as answers end;
    `seconds` is the answer's own time in flight, `share_seconds` its share of the time spent generating. When
    `should_stop()` turns true no new prompt is taken; rows in flight finish. `on_step(n)` is told the tokens
    each forward pass produced (live progress)."""
    import torch
    from transformers import DynamicCache

    prepare_tokenizer(tokenizer)
    device = device if device is not None else getattr(model, "device", "cpu")
    eos_ids = _eos_ids(model, tokenizer)
    stops = [s for s in stop_sequences if s]
    checker = _StopCriteria(tokenizer, 0, stops, stop_when, eos_ids)
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else seed)
    queue = list(prompts)
    rows: list[_Row] = []
    batch = _Batch()
    threshold = max(1, math.ceil(refill_fraction * batch_size))

    def forward(ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                        use_cache=True)
        return out.logits[:, -1, :]

    while queue or rows:
        free = batch_size - len(rows)
        stopping = should_stop is not None and should_stop()
        if stopping and not rows:
            return
        if queue and not stopping and free > 0 and (not rows or free >= threshold or len(queue) <= free):
            start = time.perf_counter()
            new = [_Row(key, list(tokenizer(text, add_special_tokens=_add_special_tokens(tokenizer, [text]))
                                  ["input_ids"]), start) for key, text in queue[:free]]
            del queue[:free]
            width = max(len(r.prompt_ids) for r in new)
            pad = tokenizer.pad_token_id
            ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in new], device=device)
            mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in new],
                                device=device)
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            joining = _Batch()
            joining.cache = DynamicCache(config=model.config)
            logits = forward(ids, mask, positions, joining.cache)
            joining.mask, joining.positions = mask, mask.sum(dim=1)
            joining.last = _pick(logits, temperature, top_p, generator)
            batch.join(joining)
            rows += new
            firsts = joining.last.tolist()
            spent = time.perf_counter() - start
            for row, token in zip(new, firsts):
                row.gen.append(int(token))
                row.share += spent / len(new)
            if on_step is not None:
                on_step(len(new))
        else:
            start = time.perf_counter()
            batch.mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
            logits = forward(batch.last[:, None], batch.mask, batch.positions[:, None], batch.cache)
            batch.positions = batch.positions + 1
            batch.last = _pick(logits, temperature, top_p, generator)
            tokens = batch.last.tolist()  # one copy to the host a step
            spent = time.perf_counter() - start
            for row, token in zip(rows, tokens):
                row.gen.append(int(token))
                row.share += spent / len(rows)
            if on_step is not None:
                on_step(len(rows))
        keep: list[int] = []
        for i, row in enumerate(rows):
            result = _ended(row, checker, tokenizer, stops, stop_when, eos_ids, max_new_tokens)
            if result is None:
                keep.append(i)
                continue
            yield row.key, stamped(result, row, len(rows))
        if len(keep) < len(rows):
            rows = [rows[i] for i in keep]
            batch.keep(keep)


def _ended(row: _Row, checker: _StopCriteria, tokenizer: Any, stops: list[str],
           stop_when: Callable[[str], int | None] | None, eos_ids: set[int],
           max_new_tokens: int) -> GenerationOutput | None:
    """The row's answer if it ended with its last token (the stop check decodes only the tail)."""
    import torch

    eos = row.gen[-1] in eos_ids
    if not (eos or len(row.gen) >= max_new_tokens or checker._hit(torch.tensor(row.gen))):
        return None
    return ended_answer(row.gen, tokenizer, stops, stop_when, eos=eos, max_new_tokens=max_new_tokens)
