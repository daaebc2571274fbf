"""The static-shape decode step: buffers that never move, one step over them, and the CUDA graphs that replay it.

Everything a decode step reads or writes lives in buffers allocated once: each slot's next token, its position,
the column its key/value goes to, an attention mask of static length, and every layer's keys and values. The step
updates them in place (the new token, +1 position, +1 column, that column of the mask made visible), so one step
captured as a CUDA graph per (batch bucket, length bucket) replays with no host work and no host tensor at all.
With fusion (`fuse.py`) each decoder layer of that step runs as one inductor-compiled function.
Slots of a bucket that hold no answer are dummies: they attend to one finite column and write to the last one. Every
row of a step is computed apart from the others, so a dummy cannot change a real row. On a CPU the same step runs
uncaptured.

The model's own forward runs the step: this object is passed as its cache (it has the `update` every attention
layer calls) with a ready 4-D mask, which transformers 5.17 and 5.24 both use as it is.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from typing import Any, Callable, Iterator

DECODE_ATTENTION = "routerllm_decode"


class UnsupportedStep(RuntimeError):
    """The model asked the static cache for something only transformers' own caches have."""


def _decode_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                      scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """SDPA for one query token with grouped key/value heads: the query heads of a group become query rows of their
    key/value head, so keys and values are read once instead of being repeated per query head. transformers 5.24
    does the same itself; 5.17 repeats them, which at a large batch costs more than reading the weights."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, q_len, dim = query.shape
    if q_len != 1 or groups <= 1 or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    packed = query.reshape(batch, heads // groups, groups, dim)
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers.modeling_utils import AttentionInterface

    if DECODE_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(DECODE_ATTENTION, _decode_attention)


def _sdpa_configs(model: Any) -> list[Any]:
    """Every distinct config whose attention modules dispatch to SDPA (a multimodal model has several)."""
    seen: dict[int, Any] = {}
    for module in [model, *model.modules()]:
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
            seen[id(config)] = config
    return list(seen.values())


class StaticBatch:
    """`slots` rows of `tokens` positions on one device, and the decode step over the first `rows` of them,
    attending to their first `length` positions (the bucket; set it before running or capturing the step)."""

    def __init__(self, model: Any, layers: list[tuple[Any, Any]], *, slots: int, tokens: int, history: int, pad: int,
                 segments: list[list[int]] | None = None):
        import torch

        from routerllm_cli.decode.split import segments_by_device

        key0 = layers[0][0]
        self.model, self.slots, self.tokens, self.device = model, slots, tokens, key0.device
        if any(k.device != v.device for k, v in layers):
            raise UnsupportedStep("a layer's keys and values are on two devices")
        attn = getattr(model.config, "_attn_implementation", None)
        mask_dtype = key0.dtype
        if attn == "sdpa":  # additive: SDPA turns transformers' boolean mask into 0/-inf itself, in every layer
            self.visible, self.hidden = 0.0, float("-inf")
        elif attn == "eager":  # additive, as transformers makes it for eager attention
            self.visible, self.hidden = 0.0, torch.finfo(mask_dtype).min
        else:
            raise UnsupportedStep(f"attention {attn!r} takes another mask than the static step builds")
        kw = dict(device=self.device)
        # each layer's cache on the device of its layer (the plan may split the layers over GPUs)
        self.keys = [torch.zeros((slots, k.shape[1], tokens, k.shape[3]), dtype=k.dtype, device=k.device)
                     for k, _ in layers]
        self.values = [torch.zeros((slots, v.shape[1], tokens, v.shape[3]), dtype=v.dtype, device=v.device)
                       for _, v in layers]
        self.ids = torch.full((slots, 1), pad, dtype=torch.long, **kw)
        self.pos = torch.zeros((slots, 1), dtype=torch.long, **kw)
        self.write = torch.full((slots,), tokens - 1, dtype=torch.long, **kw)
        self.counter = torch.zeros((1,), dtype=torch.long, **kw)
        self.mask = torch.full((slots, 1, 1, tokens), self.hidden, dtype=mask_dtype, **kw)
        self.mask2d = self.mask.view(slots, tokens)
        self.hist = torch.zeros((slots, history), dtype=torch.long, **kw)
        self.row_index = torch.arange(slots, dtype=torch.long, **kw)
        # (rows, columns) each layer's write reads, on its own device: another GPU's copy of `write` is refreshed
        # by the split step before that GPU's layers run
        replicas = {self.device: (self.row_index, self.write)}
        for k in self.keys:
            if k.device not in replicas:
                replicas[k.device] = (torch.arange(slots, dtype=torch.long, device=k.device),
                                      torch.full((slots,), tokens - 1, dtype=torch.long, device=k.device))
        self.index_of = [replicas[k.device] for k in self.keys]
        # runs of layers on one device; more than one and the layers run as segments (split.SplitStep)
        self.segments = segments or segments_by_device([k.device for k in self.keys])
        self.split: Any = None
        self.pad = pad
        self.logits: Any = None  # [slots, vocab] when sampling: the step leaves the pick to `select_sampled`
        self.warpers: list[Any] = []
        self.rows, self.length = slots, tokens
        self.fusion: Any = None  # a fuse.LayerFusion while the step runs fused
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._swap = _sdpa_configs(model) if attn == "sdpa" else []
        if self._swap:
            _register_attention()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.keys, *self.values])

    @property
    def greedy(self) -> bool:
        return not self.warpers

    # ---------------------------------------------------------------------------- what the model calls
    def update(self, key_states: Any, value_states: Any, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """Write this step's key/value of every row at its column; return the bucket's keys and values."""
        return self.write_step(self.keys[layer_idx], self.values[layer_idx], key_states, value_states,
                               self.index_of[layer_idx])

    def write_step(self, keys: Any, values: Any, key_states: Any, value_states: Any,
                   index: tuple[Any, Any]) -> tuple[Any, Any]:
        """Put row r's key/value at column write[r] of one layer's cache (`index`: the rows and columns on that
        layer's device). `index_put_` rather than `scatter_`: inductor writes an index_put into the cache in
        place, a scatter it computes into a copy of the whole cache and copies back (twice the cache's bytes)."""
        if key_states.shape[2] != 1:
            raise UnsupportedStep("the static cache takes one token a step (prefill goes through generate)")
        b = self.rows
        at = (index[0][:b], index[1][:b])
        keys.transpose(1, 2).index_put_(at, key_states[:, :, 0])
        values.transpose(1, 2).index_put_(at, value_states[:, :, 0])
        return keys[:b, :, :self.length], values[:b, :, :self.length]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        raise UnsupportedStep("the model reads the cache length on the host during a step")

    # ---------------------------------------------------------------------------- the step
    @contextlib.contextmanager
    def _attention(self) -> Iterator[None]:
        for config in self._swap:
            config._attn_implementation = DECODE_ATTENTION
        try:
            yield
        finally:
            for config in self._swap:
                config._attn_implementation = "sdpa"

    def step(self) -> None:
        """One token for rows [0, rows): device work only, so it can be captured."""
        b, length = self.rows, self.length
        self.mask2d[:b].scatter_(1, self.write[:b, None], self.visible)
        layers = (self.split.active() if self.split is not None
                  else self.fusion.active() if self.fusion is not None else contextlib.nullcontext())
        with self._attention(), layers:
            out = self.model(input_ids=self.ids[:b], position_ids=self.pos[:b],
                             attention_mask=self.mask[:b, :, :, :length], use_cache=True, **{self._cache_kw: self})
        logits = out.logits[:, -1, :].to(self.device)
        if self.greedy:
            picked = logits.argmax(dim=-1)
            self.ids[:b, 0].copy_(picked)
            self.hist[:b].index_copy_(1, self.counter, picked[:, None])
            self.counter.add_(1)
        else:
            if self.logits is None or self.logits.shape[1] != logits.shape[1]:
                import torch

                self.logits = torch.empty((self.slots, logits.shape[1]), dtype=logits.dtype, device=self.device)
            self.logits[:b].copy_(logits)
        self.pos[:b].add_(1)
        self.write[:b].add_(1).clamp_(max=self.tokens - 1)

    def select_sampled(self) -> None:
        """Sampling's pick after a step, outside the graph: the same warpers `generate` applies."""
        import torch

        b = self.rows
        scores = self.logits[:b].float()
        for warp in self.warpers:
            scores = warp(None, scores)
        picked = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)[:, 0]
        self.ids[:b, 0].copy_(picked)
        self.hist[:b].index_copy_(1, self.counter, picked[:, None])
        self.counter.add_(1)

    # ---------------------------------------------------------------------------- slots
    def load(self, slots: list[int], layers: list[tuple[Any, Any]], prompt_mask: Any, first: Any) -> None:
        """Rows prefilled together (left-padded to one width) take `slots`: their keys/values, mask, first token,
        the position after their real tokens and the column after the width."""
        import torch

        idx = torch.tensor(slots, dtype=torch.long, device=self.device)
        on = self._on_devices(idx)
        width = prompt_mask.shape[1]
        for (k, v), keys, values in zip(layers, self.keys, self.values):
            keys[:, :, :width].index_copy_(0, on[keys.device], k)
            values[:, :, :width].index_copy_(0, on[keys.device], v)
        rows = torch.full((len(slots), self.tokens), self.hidden, dtype=self.mask.dtype, device=self.device)
        rows[:, :width].masked_fill_(prompt_mask.to(self.device).bool(), self.visible)
        self.mask2d.index_copy_(0, idx, rows)
        self.ids.index_copy_(0, idx, first.to(self.device).view(-1, 1))
        self.pos.index_copy_(0, idx, prompt_mask.to(self.device).long().sum(dim=1, keepdim=True))
        self.write.index_fill_(0, idx, width)

    def set_dummy(self, slots: list[int]) -> None:
        if not slots:
            return
        import torch

        idx = torch.tensor(slots, dtype=torch.long, device=self.device)
        self.ids.index_fill_(0, idx, self.pad)
        self.pos.index_fill_(0, idx, 0)
        self.write.index_fill_(0, idx, self.tokens - 1)
        self.mask2d.index_fill_(0, idx, self.hidden)
        self.mask2d[:, 0].index_fill_(0, idx, self.visible)

    def move(self, src: list[int], dst: list[int]) -> None:
        """Rows in slots `src` move to `dst` (free slots), caches included."""
        if not src:
            return
        import torch

        s = self._on_devices(torch.tensor(src, dtype=torch.long, device=self.device))
        d = self._on_devices(torch.tensor(dst, dtype=torch.long, device=self.device))
        for buf in [*self.keys, *self.values, self.ids, self.pos, self.write, self.mask2d]:
            buf.index_copy_(0, d[buf.device], buf.index_select(0, s[buf.device]))

    def _on_devices(self, index: Any) -> dict[Any, Any]:
        """`index` on every device the cache uses."""
        return {dev: index.to(dev) for dev in {self.device, *(k.device for k in self.keys)}}

    def state(self) -> list[Any]:
        """The small buffers a step advances (a warm-up run must leave them as they were)."""
        return [self.ids, self.pos, self.write, self.counter, self.mask]


class StepGraphs:
    """One runner per (rows, length) bucket: the step captured as a CUDA graph (a shared memory pool), or the
    step itself when not capturing. With `fuse`, each bucket's step is compiled (layers fused) before it is
    captured; a compile or fused capture that fails leaves the unfused step, with the reason in `fuse_fallback`.

    `emit(kind, data)` hears "compiling" (before a bucket compiles), "capture" (one per bucket: capture and
    compile seconds, how the compile cache answered) and "fuse_fallback"."""

    def __init__(self, batch: StaticBatch, *, capture: bool, warmup: int = 2, fuse: bool = False,
                 emit: Callable[[str, dict], None] | None = None, fuse_backend: Any = "inductor"):
        self.batch, self.capture, self.warmup = batch, capture, warmup
        self.graphs: dict[tuple[int, int], Any] = {}
        self.captured: list[dict] = []  # one per bucket made ready: captured, or compiled uncaptured
        self.seconds = 0.0  # capture and compile seconds so far
        self.pool: Any = None
        self.emit = emit or (lambda kind, data: None)
        self.fuse_fallback: str | None = None
        self.fused_keys: set[tuple[int, int]] = set()
        self.split_ready: set[tuple[int, int]] = set()
        if len(batch.segments) > 1:
            from routerllm_cli.decode.fuse import UnsupportedFusion, decoder_layers
            from routerllm_cli.decode.split import SplitStep

            try:
                modules = decoder_layers(batch.model, allow_hooks=True)
            except UnsupportedFusion as exc:
                raise UnsupportedStep(str(exc)) from exc
            batch.split = SplitStep(batch, modules, batch.segments, capture=capture, warmup=warmup,
                                    on_unfuse=self._unfuse)
        if fuse:
            from routerllm_cli.decode.fuse import LayerFusion, UnsupportedFusion

            try:
                batch.fusion = LayerFusion(batch, backend=fuse_backend)
            except UnsupportedFusion as exc:
                self._unfuse(str(exc))
            except Exception as exc:  # noqa: BLE001 - no torch.compile, an unwritable cache folder: run unfused
                self._unfuse(f"fusion is unavailable: {type(exc).__name__}: {_first_line(exc)}")

    def runner(self, rows: int, length: int) -> Callable[[], None]:
        self.batch.rows, self.batch.length = rows, length
        key = (rows, length)
        if self.batch.split is not None:
            return self.batch.step if key in self.split_ready else functools.partial(self._first_split_step, key)
        if not self.capture:
            if self.batch.fusion is not None and key not in self.fused_keys:
                compile_s, cache = self._compile(key)
                self._note(key, captured=False, compile_s=compile_s, cache=cache, capture_s=0.0)
            return self.batch.step
        if key not in self.graphs:
            self.graphs[key] = self._capture(key)
        return self.graphs[key].replay

    def warm_up(self) -> None:
        """Run the step `warmup` times (on a side stream on CUDA) and put the state back as it was. The keys and
        values those steps wrote sit at each row's next columns, which the real steps overwrite before reading."""
        import torch

        batch = self.batch
        saved = [t.clone() for t in batch.state()]
        try:
            if batch.device.type == "cuda":
                side = torch.cuda.Stream(device=batch.device)
                side.wait_stream(torch.cuda.current_stream(batch.device))
                with torch.cuda.stream(side):
                    for _ in range(self.warmup):
                        batch.step()
                torch.cuda.current_stream(batch.device).wait_stream(side)
            else:
                for _ in range(self.warmup):
                    batch.step()
        finally:
            for t, s in zip(batch.state(), saved):
                t.copy_(s)

    def _first_split_step(self, key: tuple[int, int]) -> None:
        """A split model's first step of a bucket: each segment warms up (and compiles, fused) and is captured on
        its own GPU as the step reaches it."""
        from routerllm_cli.decode.fuse import cache_state

        split, fusion = self.batch.split, self.batch.fusion
        warm, captured = split.warm_seconds, split.capture_seconds
        start = time.perf_counter()
        if fusion is not None:
            self.emit("compiling", {"batch": key[0], "tokens": key[1], "cache_dir": str(fusion.cache_dir)})
        with fusion.compiling() if fusion is not None else contextlib.nullcontext({}) as counts:
            self.batch.step()
        fused = self.batch.fusion is not None
        if fused:
            self.fused_keys.add(key)
        self.split_ready.add(key)
        if self.capture:
            compile_s = split.warm_seconds - warm if fused else 0.0
            capture_s = split.capture_seconds - captured + (0.0 if fused else split.warm_seconds - warm)
        else:
            compile_s, capture_s = (time.perf_counter() - start if fused else 0.0), 0.0
        self._note(key, captured=self.capture, compile_s=compile_s, cache=cache_state(counts) if fused else None,
                   capture_s=capture_s)

    def _unfuse(self, reason: str) -> None:
        self.batch.fusion = None
        self.fuse_fallback = reason
        self.emit("fuse_fallback", {"reason": reason})

    def _compile(self, key: tuple[int, int]) -> tuple[float, str | None]:
        """The fused warm-up, where inductor compiles this bucket: (seconds, cache state). A failure unfuses."""
        from routerllm_cli.decode.fuse import cache_state

        fusion = self.batch.fusion
        self.emit("compiling", {"batch": key[0], "tokens": key[1], "cache_dir": str(fusion.cache_dir)})
        start = time.perf_counter()
        try:
            with fusion.compiling() as counts:
                self.warm_up()
        except UnsupportedStep:
            raise
        except Exception as exc:  # noqa: BLE001 - any compile failure leaves the unfused step, not the run
            self._unfuse(f"compiling the fused step failed: {type(exc).__name__}: {_first_line(exc)}")
            return 0.0, None
        self.fused_keys.add(key)
        return time.perf_counter() - start, cache_state(counts)

    def _capture(self, key: tuple[int, int]) -> Any:
        """The documented recipe: warm up on a side stream (lazy inits and compiling happen outside the graph),
        put the state back, capture once into the shared pool."""
        import torch

        batch = self.batch
        compile_s, cache = self._compile(key) if batch.fusion is not None else (0.0, None)
        start = time.perf_counter()
        if batch.fusion is None:
            self.warm_up()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        try:
            graph = self._record_graph()
        except Exception as exc:  # noqa: BLE001 - the unfused step is captured instead
            if batch.fusion is None:
                raise
            self.fused_keys.discard(key)
            self._unfuse(f"capturing the fused step failed: {type(exc).__name__}: {_first_line(exc)}")
            self.warm_up()
            graph = self._record_graph()
        self._note(key, captured=True, compile_s=compile_s, cache=cache, capture_s=time.perf_counter() - start)
        return graph

    def _record_graph(self) -> Any:
        import torch

        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            self.batch.step()
        torch.cuda.synchronize(self.batch.device)
        return graph

    def _note(self, key: tuple[int, int], **info: Any) -> None:
        self.seconds += info["compile_s"] + info["capture_s"]
        entry = {"batch": key[0], "tokens": key[1], "captured": info["captured"], "fused": key in self.fused_keys,
                 "seconds": round(info["capture_s"], 4), "compile_seconds": round(info["compile_s"], 4),
                 "cache": info["cache"], "graphs": len(self.captured) + 1, "total_seconds": round(self.seconds, 4)}
        self.captured.append(entry)
        self.emit("capture", entry)


def _first_line(exc: BaseException) -> str:
    """The message's first line, and the next one when the first only introduces it ("backend=... raised:")."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    return text[:240]
