"""Batched generation with per-sequence stop sequences, continuous batching, and how many sequences fit a batch.

A batch is left-padded so every prompt ends at the same position and new tokens line up. Each sequence stops on
its own (a stop sequence in its new text, EOS, or `stop_when`); a finished sequence is then fed padding until
the whole batch is done, and its text is cut at its stop. Batched greedy output equals one-by-one greedy output
(the tests hold that on real HumanEval prompts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence, TypeVar

T = TypeVar("T")

# Allocator fragmentation and stray tensors: only this much of free memory is counted as room.
FREE_USABLE = 0.9
# Stop strings are looked for in the decoded last few tokens only; a hit is confirmed on the full text.
_TAIL_SLACK_TOKENS = 8


@dataclass
class GenerationOutput:
    text: str  # new text only, cut at the stop sequence (the stop itself is not included)
    new_tokens: int  # tokens generated for this sequence, up to and including its stop or EOS
    seconds: float  # this answer's latency: from its batch's start (or its row's entry) to the step that ended it
    stopped_by: str  # "stop_sequence" | "stop_when" | "eos" | "max_new_tokens"
    stop_sequence: str | None = None
    prompt_tokens: int = 0  # without padding
    batch_size: int = 1
    # this answer's share of the generation time (each step's time split among the rows it advanced): the shares
    # of all answers add up to the time spent generating, which latencies of overlapping rows do not
    share_seconds: float = 0.0


def _earliest_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    hits = [(i, s) for s in stops if (i := text.find(s)) >= 0]
    return min(hits) if hits else None


class _StopCriteria:
    """Marks each sequence done when its new text holds a stop sequence or `stop_when` says so; the batch
    ends when all are done (transformers stops per sequence when given one bool a row)."""

    def __init__(self, tokenizer: Any, prompt_len: int, stops: Sequence[str],
                 stop_when: Callable[[str], int | None] | None, eos_ids: set[int]):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stops = [s for s in stops if s]
        self.stop_when = stop_when
        # A stop_when may name a string that must be in the tail before it is worth calling on the full text.
        self.trigger = getattr(stop_when, "tail_trigger", None)
        self.eos_ids = sorted(eos_ids)
        self.tail = max([len(s) for s in self.stops] + [len(self.trigger or "")]) + _TAIL_SLACK_TOKENS
        self.finished_at: dict[int, tuple[int, str]] = {}  # row -> (new tokens when it stopped, why)
        self.ended_at: dict[int, float] = {}  # row -> perf_counter() at the step that ended it (stop or EOS)
        self.on_step: Callable[[int], None] | None = None  # told the tokens each step produced
        self._live: int | None = None  # rows still generating after the previous step

    def _stepped(self, ended: list[bool]) -> None:
        """Note when rows end, and tell `on_step` how many tokens this step produced (one per row that was
        still generating before it)."""
        now = time.perf_counter()
        live = 0
        for row, end in enumerate(ended):
            if end or row in self.finished_at:
                self.ended_at.setdefault(row, now)
            else:
                live += 1
        produced = len(ended) if self._live is None else self._live
        self._live = live
        if self.on_step is not None:
            self.on_step(produced)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        # One copy to the host a step; decoding row by row from GPU memory would sync once a row.
        new = input_ids[:, self.prompt_len:].cpu()
        count = new.shape[1]
        # Rows that hit EOS are finished by transformers already; their padding needs no decoding.
        ended = (torch.isin(new, torch.tensor(self.eos_ids)).any(dim=1).tolist()
                 if self.eos_ids else [False] * new.shape[0])
        done = []
        for row in range(new.shape[0]):
            if row not in self.finished_at and not ended[row] and (reason := self._hit(new[row])) is not None:
                self.finished_at[row] = (count, reason)
            done.append(row in self.finished_at)
        self._stepped(ended)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _hit(self, ids: Any) -> str | None:
        decode = self.tokenizer.decode
        tail = decode(ids[-self.tail:], skip_special_tokens=True) if (self.stops or self.trigger) else ""
        if any(s in tail for s in self.stops) and _earliest_stop(decode(ids, skip_special_tokens=True), self.stops):
            return "stop_sequence"
        # stop_when needs the whole text (a code fence is closed only relative to its opening).
        if self.stop_when is not None and (self.trigger is None or self.trigger in tail):
            if self.stop_when(decode(ids, skip_special_tokens=True)) is not None:
                return "stop_when"
        return None


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids


def _sampling(temperature: float, top_p: float, seed: int | None) -> dict[str, Any]:
    """`generate` keyword arguments: greedy at temperature 0, else nucleus sampling (top_p, no top-k)."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    if temperature == 0.0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p), "top_k": None}


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding, and EOS as the pad token when the tokenizer has none (most causal LMs)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _add_special_tokens(tokenizer: Any, prompts: Sequence[str]) -> bool:
    # Chat templates already start with BOS; adding another one changes what the model sees.
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and all(p.startswith(bos) for p in prompts))


def generate_batch(model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int,
                   stop_sequences: Sequence[str] = (), temperature: float = 0.0, top_p: float = 0.95,
                   seed: int | None = None, device: Any = None,
                   stop_when: Callable[[str], int | None] | None = None,
                   on_step: Callable[[int], None] | None = None) -> list[GenerationOutput]:
    """Generate for all `prompts` as one left-padded batch. Greedy when temperature == 0, else nucleus sampling
    (top_p, no top-k). `stop_when(text)` may return the index where a sequence's text ends (e.g. after a closed
    code fence); it sees the whole new text, so it is called only when the last tokens hold its `tail_trigger`
    attribute, if it has one. `device` is where input ids go (the model's first device by default). `on_step(n)`
    is called after every decode step with the tokens it produced (for live progress; keep it cheap)."""
    import torch
    from transformers import StoppingCriteriaList

    if not prompts:
        return []
    prepare_tokenizer(tokenizer)
    device = device if device is not None else getattr(model, "device", "cpu")
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True,
                    add_special_tokens=_add_special_tokens(tokenizer, prompts))
    input_ids, attention_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    prompt_len = input_ids.shape[1]
    eos_ids = _eos_ids(model, tokenizer)
    criteria = _StopCriteria(tokenizer, prompt_len, stop_sequences, stop_when, eos_ids)
    criteria.on_step = on_step
    sampling = _sampling(temperature, top_p, seed)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             stopping_criteria=StoppingCriteriaList([criteria]), pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=sorted(eos_ids) or None, **sampling)
    new_rows = out[:, prompt_len:].cpu().tolist()  # the copy to host waits for the device
    end = time.perf_counter()
    prompt_tokens = attention_mask.sum(dim=1).tolist()
    outs = [_finish(row, tokens, criteria, eos_ids, tokenizer, stop_sequences, stop_when, end - start,
                    int(prompt_tokens[row]), len(prompts))
            for row, tokens in enumerate(new_rows)]
    for row, result in enumerate(outs):  # an answer's latency ends at the step that ended it, not the batch's
        result.seconds = criteria.ended_at.get(row, end) - start
    return outs


def _finish(row: int, tokens: list[int], criteria: _StopCriteria, eos_ids: set[int], tokenizer: Any,
            stop_sequences: Sequence[str], stop_when: Callable[[str], int | None] | None, seconds: float,
            prompt_tokens: int, batch_size: int) -> GenerationOutput:
    if row in criteria.finished_at:
        count, stopped_by = criteria.finished_at[row]
    else:
        first_eos = next((i for i, t in enumerate(tokens) if t in eos_ids), None)
        count, stopped_by = (first_eos + 1, "eos") if first_eos is not None else (len(tokens), "max_new_tokens")
    text = tokenizer.decode(tokens[:count], skip_special_tokens=True)
    stop = None
    hit = _earliest_stop(text, [s for s in stop_sequences if s])
    if hit is not None:
        text, stop, stopped_by = text[:hit[0]], hit[1], "stop_sequence"
    elif stop_when is not None and (end := stop_when(text)) is not None:
        text = text[:end]
    return GenerationOutput(text=text, new_tokens=count, seconds=seconds, stopped_by=stopped_by, stop_sequence=stop,
                            prompt_tokens=prompt_tokens, batch_size=batch_size, share_seconds=seconds / batch_size)


def order_by_length(items: Sequence[T], key: Callable[[T], int]) -> list[T]:
    """Longest first, so a batch holds prompts of similar length (less padding) and the most memory-hungry batch
    runs first, where running out of memory costs least. Stable, so equal lengths keep their order."""
    return sorted(items, key=key, reverse=True)


def prompt_token_counts(tokenizer: Any, prompts: Sequence[str]) -> list[int]:
    add = _add_special_tokens(tokenizer, prompts)
    return [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=add)["input_ids"]]


def generate_many(model: Any, tokenizer: Any, prompts: Mapping[Hashable, str], *, batch_size: int,
                  **kwargs: Any) -> Iterator[tuple[Hashable, GenerationOutput]]:
    """Generate for `{key: prompt}` in longest-first batches of `batch_size`, yielding (key, output) as each batch
    finishes. Keyword arguments go to `generate_batch`."""
    keys = list(prompts)
    lengths = dict(zip(keys, prompt_token_counts(tokenizer, [prompts[k] for k in keys])))
    ordered = order_by_length(keys, key=lambda k: lengths[k])
    for start in range(0, len(ordered), max(1, batch_size)):
        chunk = ordered[start:start + max(1, batch_size)]
        yield from zip(chunk, generate_batch(model, tokenizer, [prompts[k] for k in chunk], **kwargs))


def batch_for(plan: Any, free_bytes: int | Mapping[str, int] | None = None) -> int:
    """How many sequences a run decodes at once: the plan's batch, whose KV cache and prefill activations the
    planner reserved on every GPU (the planner owns that choice: plan.batch_size). `free_bytes` measured now (an
    int for every GPU, or {device: bytes}) can only lower it, where less room is left than the plan expected."""
    batch = max(1, int(plan.batch_size))
    if free_bytes is None:
        return batch
    for device, per_token in plan.kv_per_token_by_device.items():
        alloc = plan.devices.get(device)
        if not device.isdigit() or alloc is None or per_token <= 0:
            continue
        measured = free_bytes.get(device) if isinstance(free_bytes, Mapping) else free_bytes
        if measured is None:
            continue
        per_sequence = per_token * plan.seq_len + alloc.reserve_detail.get("activations", 0) / batch
        batch = min(batch, max(1, int(FREE_USABLE * max(0, measured) // per_sequence)))
    return batch


class _ContinuedStop(_StopCriteria):
    """`_StopCriteria` for a chunk that continues earlier answers: a row's text is its earlier tokens + this
    chunk's, so a stop sequence or a closing fence that spans chunks is still seen where it starts."""

    def __init__(self, *args: Any, prior: list[list[int]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.prior = prior

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        new = input_ids[:, self.prompt_len:].cpu()
        ended = (torch.isin(new, torch.tensor(self.eos_ids)).any(dim=1).tolist()
                 if self.eos_ids else [False] * new.shape[0])
        done = []
        for row in range(new.shape[0]):
            if row not in self.finished_at and not ended[row]:
                full = torch.cat([torch.tensor(self.prior[row], dtype=new.dtype), new[row]])
                if (reason := self._hit(full)) is not None:
                    self.finished_at[row] = (len(full), reason)
            done.append(ended[row] or row in self.finished_at)
        self._stepped(ended)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def ended_answer(gen: list[int], tokenizer: Any, stops: Sequence[str], stop_when: Callable[[str], int | None] | None,
                 *, eos: bool, max_new_tokens: int) -> GenerationOutput | None:
    """A row's answer if its tokens so far end it - a stop sequence (cut there), `stop_when`, EOS, or the length
    cap - else None. Its timing fields are left for `stamped`."""
    text = tokenizer.decode(gen, skip_special_tokens=True)
    hit = _earliest_stop(text, stops)
    if hit is not None:
        return GenerationOutput(text[:hit[0]], len(gen), 0.0, "stop_sequence", hit[1])
    end = stop_when(text) if stop_when is not None else None
    if end is not None:
        return GenerationOutput(text[:end], len(gen), 0.0, "stop_when")
    if eos:
        return GenerationOutput(text, len(gen), 0.0, "eos")
    if len(gen) >= max_new_tokens:
        return GenerationOutput(text, len(gen), 0.0, "max_new_tokens")
    return None


def stamped(result: GenerationOutput, row: Any, batch_size: int) -> GenerationOutput:
    """`result` with the row's latency, its share of the generation time, its prompt length and the batch size."""
    result.seconds = time.perf_counter() - row.started
    result.share_seconds = row.share
    result.prompt_tokens = len(row.prompt_ids)
    result.batch_size = batch_size
    return result


@dataclass
class _Row:
    key: Hashable
    prompt_ids: list[int]
    gen: list[int]
    started: float
    share: float = 0.0


@dataclass
class ChunkContext:
    """What a chunk decoder needs besides the rows: the model, how to stop, how to pick tokens."""

    model: Any
    tokenizer: Any
    device: Any
    pad: int
    eos_ids: set[int]
    stops: list[str]
    stop_when: Callable[[str], int | None] | None
    sampling: dict[str, Any]  # `generate` keyword arguments from `_sampling`
    max_new_tokens: int
    # told the tokens each decode step produced; a decoder that cannot tell per step leaves it to the chunk's end
    on_step: Callable[[int], None] | None = None


# A chunk decoder: (rows in flight, steps, context) -> (new tokens per row, {row: (tokens when it stopped, why)}).
# It may return fewer tokens than `steps` for a row that is not finished; the row then continues next chunk.
ChunkDecoder = Callable[[list[_Row], int, ChunkContext], tuple[list[list[int]], dict[int, tuple[int, str]]]]


def generate_chunk(rows: list[_Row], steps: int, ctx: ChunkContext) -> tuple[list[list[int]], dict[int, tuple[int, str]]]:
    """The plain chunk decoder: one `model.generate` over prompt + answer so far of every row, left-padded."""
    import torch
    from transformers import StoppingCriteriaList

    seqs = [r.prompt_ids + r.gen for r in rows]
    width = max(len(s) for s in seqs)
    input_ids = torch.tensor([[ctx.pad] * (width - len(s)) + s for s in seqs], device=ctx.device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=ctx.device)
    criteria = _ContinuedStop(ctx.tokenizer, width, ctx.stops, ctx.stop_when, ctx.eos_ids, prior=[r.gen for r in rows])
    criteria.on_step = ctx.on_step
    with torch.inference_mode():
        out = ctx.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=steps,
                                 stopping_criteria=StoppingCriteriaList([criteria]), pad_token_id=ctx.pad,
                                 eos_token_id=sorted(ctx.eos_ids) or None, **ctx.sampling)
    return out[:, width:].cpu().tolist(), criteria.finished_at  # the copy to host waits for the device


def generate_continuous(model: Any, tokenizer: Any, prompts: Sequence[tuple[Hashable, str]], *, batch_size: int,
                        max_new_tokens: int, stop_sequences: Sequence[str] = (),
                        stop_when: Callable[[str], int | None] | None = None, temperature: float = 0.0,
                        top_p: float = 0.95, seed: int | None = None, device: Any = None, chunk_tokens: int = 32,
                        should_stop: Callable[[], bool] | None = None,
                        decoder: ChunkDecoder | None = None,
                        on_step: Callable[[int], None] | None = None) -> Iterator[tuple[Hashable, GenerationOutput]]:
    """Continuous batching over `model.generate`: every `chunk_tokens` steps the rows whose answers ended leave and
    the next prompts take their places, so the batch stays full instead of decoding until its longest answer ends.
    Each chunk re-reads prompt + answer so far (one prefill a chunk, cheap on a GPU next to the decode steps it
    saves), so greedy answers equal one-by-one generation. Yields (key, output) as answers finish; `seconds` is
    the row's own wall time. When `should_stop()` turns true no new prompt is taken; rows in flight finish.
    `decoder` decodes each chunk (default `generate_chunk`; routerllm_cli.decode keeps rows' caches on the GPU).
    `on_step(n)` is told the tokens each decode step produced (after each chunk where a decoder cannot tell)."""
    prepare_tokenizer(tokenizer)
    device = device if device is not None else getattr(model, "device", "cpu")
    eos_ids = _eos_ids(model, tokenizer)
    stops = [s for s in stop_sequences if s]
    pad = tokenizer.pad_token_id
    sampling = _sampling(temperature, top_p, seed)
    reported = [0]

    def step(n: int) -> None:
        reported[0] += n
        if on_step is not None:
            on_step(n)

    ctx = ChunkContext(model, tokenizer, device, pad, eos_ids, stops, stop_when, sampling, max_new_tokens,
                       on_step=step if on_step is not None else None)
    queue = list(prompts)
    active: list[_Row] = []
    while queue or active:
        while len(active) < batch_size and queue and not (should_stop and should_stop()):
            key, text = queue.pop(0)
            ids = tokenizer(text, add_special_tokens=_add_special_tokens(tokenizer, [text]))["input_ids"]
            active.append(_Row(key, list(ids), [], time.perf_counter()))
        if not active:
            break
        remaining = [max_new_tokens - len(r.gen) for r in active]
        steps = min(chunk_tokens, max(remaining))
        chunk_start = time.perf_counter()
        reported[0], before = 0, sum(len(r.gen) for r in active)
        chunks, finished_at = (decoder or generate_chunk)(active, steps, ctx)
        for row in active:
            row.share += (time.perf_counter() - chunk_start) / len(active)
        still: list[_Row] = []
        for i, (row, toks, room) in enumerate(zip(active, chunks, remaining)):
            toks = toks[:room]
            eos_at = next((j for j, t in enumerate(toks) if t in eos_ids), None)
            row.gen += toks if eos_at is None else toks[: eos_at + 1]
            if i in finished_at:  # a stop hit mid-chunk: the rest of the chunk is padding
                row.gen = row.gen[:finished_at[i][0]]
            result = ended_answer(row.gen, tokenizer, stops, stop_when, eos=eos_at is not None,
                                  max_new_tokens=max_new_tokens)
            if result is None:
                still.append(row)
                continue
            yield row.key, stamped(result, row, len(active))
        if on_step is not None:  # what the decoder did not report step by step
            produced = sum(len(r.gen) for r in active) - before
            if produced > reported[0]:
                on_step(produced - reported[0])
        active = still
