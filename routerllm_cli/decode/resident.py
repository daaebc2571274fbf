"""`ResidentDecoder`: continuous batching with every row's keys and values kept in a static cache on its GPU.

It is a chunk decoder for `generation.generate_continuous`, which keeps the scheduling (refill, stops, results).
A row is prefilled once, by `generate` itself, when it enters (so its first token is exactly what `generate` picks),
its cache is copied into a free slot, and from then on it advances one token a step with the others through the
captured step of its bucket. A row whose answer ended leaves its slot; when fewer rows remain, they move down so a
smaller bucket holds them. Stops are checked on the host from the tokens of each block of steps while the GPU
decodes the next block, with the same `_StopCriteria` test `generate` runs after every token, prefix by prefix,
so a row stops at the same token as on the eager path.

If the static path cannot run (a capture fails, the cache does not fit, a prompt is longer than the plan allows),
it says why once and every later chunk goes through `generation.generate_chunk` (the eager path), which re-reads
each row's prompt and answer so far: nothing is lost.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from routerllm_cli.decode.static import StaticBatch, StepGraphs, UnsupportedStep

BATCH_BUCKETS = (1, 8, 32, 128, 256)
FREE_USABLE = 0.9  # of free GPU memory the static cache may take
_ALIGN = 64  # cache length rounded up to this many positions (aligned masks for the attention kernels)


class _Fallback(Exception):
    pass


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


class ResidentDecoder:
    """A `generation.ChunkDecoder` over a static cache of `slots` rows x `max_tokens` positions (+ one chunk).

    `capture`: CUDA graphs per (batch bucket, length bucket), else the same step uncaptured (CPU); layers the plan
    split over GPUs are captured as one graph per GPU (split.py). `fuse`: each bucket's step compiled with its
    decoder layers fused (fuse.py) before it is captured. `on_event(kind, data)`
    hears "compiling", "capture" (one per bucket), "fuse_fallback" and "decode_fallback"."""

    def __init__(self, model: Any, *, slots: int, max_tokens: int, capture: bool, chunk_tokens: int = 32,
                 check_every: int = 8, batch_buckets: tuple[int, ...] | None = None, warmup: int = 2,
                 fuse: bool = False, fuse_backend: Any = "inductor", segments: list[list[int]] | None = None,
                 on_event: Callable[[str, dict], None] | None = None):
        self.model, self.slots, self.capture = model, max(1, int(slots)), capture
        self.segments = segments  # runs of decoder layers stepped as one graph each; None: one per device
        self.fuse, self.fuse_backend = fuse, fuse_backend
        self.fuse_fallback: str | None = None
        self.chunk_tokens, self.check_every, self.warmup = chunk_tokens, max(1, check_every), warmup
        self.tokens = _round_up(int(max_tokens) + chunk_tokens, _ALIGN)
        # Buckets bound the number of graphs; uncaptured, nothing is gained by padding rows or positions.
        exact = not capture and not fuse and batch_buckets is None
        buckets = range(1, self.slots + 1) if exact else (batch_buckets or BATCH_BUCKETS)
        self.batch_buckets = sorted({b for b in buckets if b < self.slots} | {self.slots})
        lengths, n = set(), (16 if exact else 128)
        while n < self.tokens:
            lengths.add(n)
            n = n + 16 if exact else n * 2
        self.length_buckets = sorted(lengths | {self.tokens})
        self.emit = on_event or (lambda kind, data: None)
        self.batch: StaticBatch | None = None
        self.graphs: StepGraphs | None = None
        self.slot_of: dict[int, int] = {}  # id(row) -> slot
        self.rows_held: dict[int, Any] = {}  # id(row) -> row (kept alive so its id is not reused)
        self.write_at: dict[int, int] = {}  # id(row) -> the column its next token's key/value goes to
        self.fallback: str | None = None
        self.stats = {"static_chunks": 0, "eager_chunks": 0, "steps": 0, "decode_seconds": 0.0,
                      "prefill_seconds": 0.0, "prefilled_rows": 0, "moved_rows": 0,
                      "stop_check_seconds": 0.0}  # host time testing stops (overlaps the GPU's next block)
        self.last_chunk: dict[str, Any] = {}
        self.captures: list[dict] = []  # one per bucket made ready (captured and/or compiled), kept after a fallback

    @classmethod
    def for_plan(cls, plan: Any, model: Any, *, capture: bool, slots: int | None = None, **kwargs: Any) -> "ResidentDecoder":
        """Sized by the plan: `plan.seq_len` positions (max prompt + max new tokens) for `slots` rows (the batch the
        run decodes, `plan.batch_size` unless given)."""
        return cls(model, slots=slots or plan.batch_size, max_tokens=plan.seq_len, capture=capture, **kwargs)

    # ------------------------------------------------------------------------------------------- the chunk
    def __call__(self, rows: list, steps: int, ctx: Any) -> tuple[list[list[int]], dict[int, tuple[int, str]]]:
        from routerllm_cli.generation import generate_chunk

        if self.fallback is None:
            try:
                return self._static_chunk(rows, steps, ctx)
            except _Fallback as exc:
                self._fall_back(str(exc))
        self.stats["eager_chunks"] += 1
        return generate_chunk(rows, steps, ctx)

    def _fall_back(self, reason: str) -> None:
        self.fallback = reason
        self.slot_of.clear()
        self.rows_held.clear()
        self.write_at.clear()
        self.batch = self.graphs = None  # the eager path needs the memory more than these buffers
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.emit("decode_fallback", {"reason": reason})

    def _static_chunk(self, rows: list, steps: int, ctx: Any) -> tuple[list[list[int]], dict[int, tuple[int, str]]]:
        import torch

        if len(rows) > self.slots:
            raise _Fallback(f"{len(rows)} rows in flight but the static cache holds {self.slots}")
        steps = min(steps, self.chunk_tokens)
        with torch.inference_mode():
            current = {id(r) for r in rows}
            for rid in [rid for rid in self.slot_of if rid not in current]:
                self._release(rid)
            bucket = next(b for b in self.batch_buckets if b >= len(rows))
            if self.batch is not None:
                self._compact(bucket)
            first = self._admit([r for r in rows if id(r) not in self.slot_of], bucket, ctx)
            batch = self.batch
            assert batch is not None and self.graphs is not None
            used = set(self.slot_of.values())
            batch.set_dummy([s for s in range(bucket) if s not in used])
            need = max(self.write_at[id(r)] for r in rows) + steps
            length = next(n for n in self.length_buckets if n >= need)
            batch.counter.zero_()
            try:
                run = self.graphs.runner(bucket, length)
            except Exception as exc:  # noqa: BLE001 - a capture that fails leaves the eager path
                raise _Fallback(f"capturing the decode step failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
            tokens, finished_at, ran = self._decode(run, rows, steps, first, ctx, bucket=(bucket, length))
        for r in rows:
            self.write_at[id(r)] += ran
        self.stats["static_chunks"] += 1
        return tokens, finished_at

    def _decode(self, run: Callable[[], None], rows: list, steps: int, first: dict[int, int], ctx: Any,
                bucket: tuple[int, int]) -> tuple[list[list[int]], dict[int, tuple[int, str]], int]:
        """Run up to `steps` steps in blocks; after launching a block, check the previous one's tokens."""
        import torch

        batch = self.batch
        assert batch is not None
        cuda = batch.device.type == "cuda"
        tokens = [[first[id(r)]] if id(r) in first else [] for r in rows]
        check = _StopCheck(ctx, rows, tokens)
        check.feed()
        slots = torch.tensor([self.slot_of[id(r)] for r in rows], dtype=torch.long, device=batch.device)
        start, ran, pending = time.perf_counter(), 0, None
        while ran < steps and not check.all_done:
            block = min(self.check_every, steps - ran)
            for _ in range(block):
                try:
                    run()
                except UnsupportedStep as exc:  # raised while tracing the model's forward, before any kernel
                    raise _Fallback(f"the static step cannot run this model: {exc}") from exc
                if not batch.greedy:
                    batch.select_sampled()
            picked = batch.hist[:, ran:ran + block].index_select(0, slots)
            if cuda:
                host = torch.empty(picked.shape, dtype=picked.dtype, pin_memory=True)
                host.copy_(picked, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
            else:
                host, done = picked.clone(), None
            ran += block
            if pending is not None:
                check.take(*pending)
            pending = (host, done)
        if pending is not None:
            check.take(*pending)
        seconds = time.perf_counter() - start
        self.stats["steps"] += ran
        self.stats["stop_check_seconds"] += check.seconds
        self.stats["decode_seconds"] += seconds
        self.last_chunk = {"rows": len(rows), "bucket": list(bucket), "steps": ran, "decode_seconds": seconds,
                           "prefilled": len(first)}
        return tokens, check.finished_at, ran

    # ------------------------------------------------------------------------------------------- slots
    def _release(self, rid: int) -> None:
        self.slot_of.pop(rid, None)
        self.rows_held.pop(rid, None)
        self.write_at.pop(rid, None)

    def _compact(self, bucket: int) -> None:
        """Rows in slots at or above `bucket` move to free slots below it."""
        used = set(self.slot_of.values())
        free = iter(s for s in range(bucket) if s not in used)
        moves = [(rid, slot, next(free)) for rid, slot in sorted(self.slot_of.items(), key=lambda kv: kv[1])
                 if slot >= bucket]
        if moves and self.batch is not None:
            self.batch.move([m[1] for m in moves], [m[2] for m in moves])
            for rid, _, dst in moves:
                self.slot_of[rid] = dst
            self.stats["moved_rows"] += len(moves)

    def _admit(self, new: list, bucket: int, ctx: Any) -> dict[int, int]:
        """Prefill the rows entering (together, left-padded, through `generate`) and copy their caches in."""
        if not new:
            return {}
        import torch

        seqs = [r.prompt_ids + r.gen for r in new]
        width = max(len(s) for s in seqs)
        if width + ctx.max_new_tokens > self.tokens - self.chunk_tokens:
            raise _Fallback(f"a prompt of {width} tokens + {ctx.max_new_tokens} new ones exceeds the static cache "
                            f"of {self.tokens - self.chunk_tokens} positions (the plan's seq_len)")
        start = time.perf_counter()
        input_ids = torch.tensor([[ctx.pad] * (width - len(s)) + s for s in seqs], device=ctx.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=ctx.device)
        try:
            out = ctx.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=1, pad_token_id=ctx.pad,
                                     eos_token_id=sorted(ctx.eos_ids) or None, return_dict_in_generate=True,
                                     **ctx.sampling)
        except torch.OutOfMemoryError as exc:  # prefill next to the static cache; eager has the room without it
            raise _Fallback(f"prefilling {len(new)} rows next to the static cache ran out of memory") from exc
        cache = getattr(out, "cache", None)
        cache = cache if cache is not None else getattr(out, "past_key_values", None)
        layers = [(layer.keys, layer.values) for layer in getattr(cache, "layers", None) or []]
        if not layers or any(k.shape[2] != width for k, _ in layers):
            raise _Fallback("generate's prefill cache is not one key/value tensor of the prompt's width per layer")
        first = out.sequences[:, width]
        if self.batch is None:
            self._allocate(layers, ctx)
        assert self.batch is not None
        used = set(self.slot_of.values())
        slots = [s for s in range(bucket) if s not in used][:len(new)]
        self.batch.load(slots, layers, mask, first)
        for row, slot in zip(new, slots):
            self.slot_of[id(row)], self.rows_held[id(row)], self.write_at[id(row)] = slot, row, width
        picked = first.tolist()  # waits for the prefill
        self.stats["prefill_seconds"] += time.perf_counter() - start
        self.stats["prefilled_rows"] += len(new)
        return {id(r): int(t) for r, t in zip(new, picked)}

    def _allocate(self, layers: list[tuple[Any, Any]], ctx: Any) -> None:
        import torch

        per_device: dict[Any, int] = {}
        for k, v in layers:
            per_device[k.device] = per_device.get(k.device, 0) + self.slots * self.tokens * (
                k.shape[1] * k.shape[3] * k.element_size() + v.shape[1] * v.shape[3] * v.element_size())
        need = sum(per_device.values())
        for device, nbytes in per_device.items():
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                if nbytes > FREE_USABLE * free:
                    raise _Fallback(f"the static cache ({nbytes / 1e9:.1f} GB for {self.slots} rows x {self.tokens} "
                                    f"positions) does not fit the {free / 1e9:.1f} GB free on {device}")
        try:
            batch = StaticBatch(self.model, layers, slots=self.slots, tokens=self.tokens, history=self.chunk_tokens,
                                pad=ctx.pad, segments=self.segments)
            batch.warpers = _warpers(ctx.sampling)
            graphs = StepGraphs(batch, capture=self.capture, warmup=self.warmup, fuse=self.fuse,
                                fuse_backend=self.fuse_backend, emit=self._graph_event)
        except UnsupportedStep as exc:
            raise _Fallback(f"the static step cannot run this model: {exc}") from exc
        except torch.OutOfMemoryError as exc:
            raise _Fallback(f"the static cache ({need / 1e9:.1f} GB) did not fit: {str(exc)[:120]}") from exc
        self.batch, self.graphs = batch, graphs

    def _graph_event(self, kind: str, info: dict) -> None:
        if kind == "capture":
            self.captures.append(info)
        elif kind == "fuse_fallback":
            self.fuse_fallback = info["reason"]
        self.emit(kind, info)

    # ------------------------------------------------------------------------------------------- report
    def report(self) -> dict[str, Any]:
        from routerllm_cli.decode.fuse import compile_cache_dir

        fused = [g for g in self.captures if g.get("fused")]
        caches = {g["cache"] for g in fused}
        return {
            "captured": self.capture and self.fallback is None,
            "fallback": self.fallback,
            "capture_seconds": round(sum(g["seconds"] for g in self.captures), 4),
            "graphs": sum(1 for g in self.captures if g.get("captured")),
            "fused": bool(fused) and self.fuse_fallback is None and self.fallback is None,
            "fused_buckets": len(fused),
            "fuse_fallback": self.fuse_fallback,
            "compile_seconds": round(sum(g["compile_seconds"] for g in self.captures), 4),
            "compile_cache": (caches.pop() if len(caches) == 1 else "mixed") if caches else None,
            "compile_cache_dir": str(compile_cache_dir()) if self.fuse else None,
            "segments": ([{"layers": [seg.layers[0], seg.layers[-1]], "device": str(seg.device)}
                          for seg in self.batch.split.segments]
                         if self.batch is not None and self.batch.split is not None else None),
            "slots": self.slots, "max_tokens": self.tokens,
            "cache_bytes": self.batch.nbytes if self.batch is not None else None,
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.stats.items()},
            "ms_per_step": round(1e3 * self.stats["decode_seconds"] / self.stats["steps"], 3)
            if self.stats["steps"] else None,
        }


def _warpers(sampling: dict[str, Any]) -> list[Any]:
    """The logits warpers `generate` applies when sampling with these arguments (temperature, then top-p)."""
    if not sampling.get("do_sample"):
        return []
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    out: list[Any] = []
    if sampling.get("temperature") not in (None, 1.0):
        out.append(TemperatureLogitsWarper(float(sampling["temperature"])))
    if sampling.get("top_p") not in (None, 1.0):
        out.append(TopPLogitsWarper(float(sampling["top_p"])))
    if not out:  # plain sampling: a no-op warper keeps the sampling branch of the step
        out.append(lambda ids, scores: scores)
    return out


class _StopCheck:
    """The stop test of `generation._ContinuedStop`, run on each prefix of a chunk's tokens as they arrive: a row is
    done at an EOS, at a stop sequence or `stop_when` (recorded with its token count, as `generate` records it), or
    when its answer has no room left."""

    def __init__(self, ctx: Any, rows: list, tokens: list[list[int]]):
        from routerllm_cli.generation import _StopCriteria

        self.rows, self.tokens, self.eos = rows, tokens, ctx.eos_ids
        self.max_new = ctx.max_new_tokens
        self.crit = (_StopCriteria(ctx.tokenizer, 0, ctx.stops, ctx.stop_when, ctx.eos_ids)
                     if (ctx.stops or ctx.stop_when) else None)
        self.checked = [0] * len(rows)
        self.done = [False] * len(rows)
        self.finished_at: dict[int, tuple[int, str]] = {}
        self.seconds = 0.0

    @property
    def all_done(self) -> bool:
        return all(self.done)

    def take(self, host: Any, event: Any) -> None:
        if event is not None:
            event.synchronize()
        for toks, new in zip(self.tokens, host.tolist()):
            toks.extend(new)
        self.feed()

    def feed(self) -> None:
        start = time.perf_counter()
        self._feed()
        self.seconds += time.perf_counter() - start

    def _feed(self) -> None:
        for i, row in enumerate(self.rows):
            toks = self.tokens[i]
            while not self.done[i] and self.checked[i] < len(toks):
                self.checked[i] += 1
                t = self.checked[i]
                if toks[t - 1] in self.eos:
                    self.done[i] = True
                elif self.crit is not None and (reason := self.crit._hit(row.gen + toks[:t])) is not None:
                    self.finished_at[i] = (len(row.gen) + t, reason)
                    self.done[i] = True
                elif len(row.gen) + t >= self.max_new:
                    self.done[i] = True


def decoder_for(plan: Any, model: Any, requested: str, *, continuous: bool, sampling: bool, slots: int,
                fuse: str = "auto", on_event: Callable[[str, dict], None] | None = None
                ) -> tuple[ResidentDecoder | None, dict[str, Any]]:
    """The decode path of a run (`requested` is bench.decode, `fuse` bench.decode_fuse; the plan and the model
    decide the rest): the choice as a dict (it is also sent as a "decode" event) and, for the compiled path, its
    decoder sized by the plan."""
    from routerllm_cli.decode.choice import choose_decode

    choice = choose_decode(requested, plan, continuous=continuous, model=model, sampling=sampling, fuse=fuse)
    info = choice.to_dict()
    if on_event is not None:
        on_event("decode", info)
    if choice.path != "compiled":
        return None, info
    return ResidentDecoder.for_plan(plan, model, capture=choice.capture, slots=slots, fuse=choice.fuse,
                                    on_event=on_event), info


def decode_report(info: dict[str, Any] | None, decoder: ResidentDecoder | None) -> dict[str, Any] | None:
    """What a run summary records: the path and why, and for the compiled path what capturing cost and whether
    it fell back to eager (then `path` is eager and `fallback` says why)."""
    if info is None or decoder is None:
        return info
    report = decoder.report()
    out = {**info, **report}
    if report["fallback"]:
        out["path"] = "eager"
    return out
