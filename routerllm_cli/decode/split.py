"""The decode step of a model whose layers the plan split over 2-3 GPUs: one CUDA graph per GPU's run of layers.

A CUDA graph belongs to one device, so the step of a split model cannot be one graph. Each GPU's consecutive
decoder layers (a segment) are captured as a graph of their own, over static inputs on that GPU, once per batch
bucket. The model's own forward still runs around the segments, eagerly: the embedding, the rotary angles, the
final norm and the head (a dozen launches), and between two segments the hand-over accelerate's hooks would do,
a copy of batch x hidden values (plus the mask and angles) to the next GPU. Inside a segment every launch is
replayed; the per-layer work, which is what dominates a step, never reaches the host.

While the step runs, the first layer of each segment stands for the whole segment and the others pass the hidden
state through; afterwards every layer's forward (and accelerate's hooks on it and on its parts) is as it was. The
layers and their parts are called past their hooks: the segment has put their inputs on their GPU already (every
weight of a segment is on it, or the step is refused), a hook inside a graph could only move tensors between
devices, which one device's capture cannot hold, and dynamo refuses to trace a hook (fused layers).

On a CPU (and when a model sits on one device but the caller asks for segments, as the tests and
benchmarks/split_decode.py do) the same segments run, uncaptured or captured on that one device.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator


def segments_by_device(devices: list[Any]) -> list[list[int]]:
    """Runs of consecutive layers on one device: [cuda:0, cuda:0, cuda:1] -> [[0, 1], [2]]."""
    out: list[list[int]] = []
    for i, dev in enumerate(devices):
        if out and devices[out[-1][-1]] == dev:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _map(value: Any, fn: Callable[[Any], Any]) -> Any:
    """`fn` on every tensor of a layer argument (a tensor, or a tuple of them such as the rotary angles)."""
    import torch

    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(_map(v, fn) for v in value)
    return value


def _tensors(value: Any) -> list[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple):
        return [t for v in value for t in _tensors(v)]
    return []


class _SegmentGraph:
    """One segment's graph for one bucket: its static inputs, the graph, and the output it leaves."""

    def __init__(self, hidden: Any, kwargs: dict[str, Any]):
        self.hidden, self.kwargs = hidden.clone(), {k: _map(v, lambda t: t.clone()) for k, v in kwargs.items()}
        self.inputs = [self.hidden, *(t for v in self.kwargs.values() for t in _tensors(v))]
        self.graph: Any = None
        self.out: Any = None

    def feed(self, hidden: Any, kwargs: dict[str, Any]) -> None:
        given = [hidden, *(t for v in kwargs.values() for t in _tensors(v))]
        for static, new in zip(self.inputs, given):
            if static.data_ptr() != new.data_ptr():
                static.copy_(new)


class Segment:
    def __init__(self, index: int, layers: list[int], device: Any):
        self.index, self.layers, self.device = index, layers, device
        self.graphs: dict[tuple[int, int], _SegmentGraph] = {}
        self.pool: Any = None


class SplitStep:
    """The segments of a `StaticBatch` and the step's layer calls through them. `capture`: each segment's graph
    per (rows, length) bucket is captured at its first call (after `warmup` runs on a side stream, which is when a
    fused layer compiles). `on_unfuse(reason)` hears a fused warm-up or capture that failed: the segments then
    drop their graphs and run unfused."""

    def __init__(self, batch: Any, modules: list[Any], segments: list[list[int]], *, capture: bool, warmup: int = 2,
                 on_unfuse: Callable[[str], None] | None = None):
        from routerllm_cli.decode.static import UnsupportedStep

        if [i for seg in segments for i in seg] != list(range(len(modules))):
            raise UnsupportedStep("the segments do not cover the decoder layers once, in order")
        self.batch, self.modules, self.capture, self.warmup = batch, modules, capture, max(1, warmup)
        self.segments = [Segment(n, seg, batch.keys[seg[0]].device) for n, seg in enumerate(segments)]
        for seg in self.segments:
            for i in seg.layers:
                placed = {p.device for p in modules[i].parameters()} | {batch.keys[i].device}
                if placed != {seg.device}:
                    raise UnsupportedStep(f"decoder layer {i} is itself split over {', '.join(map(str, placed))}")
        self.on_unfuse = on_unfuse or (lambda reason: None)
        self.warm_seconds = 0.0  # warm-ups (a fused layer compiles there) and captures, per bucket made ready
        self.capture_seconds = 0.0

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The first layer of each segment runs the segment; the others pass the hidden state on."""
        import functools

        saved = [m.__dict__.get("forward") for m in self.modules]
        inner = [m for layer in self.modules for m in layer.modules()
                 if m is not layer and getattr(m, "_hf_hook", None) is not None and hasattr(m, "_old_forward")]
        inner_saved = [m.__dict__.get("forward") for m in inner]
        for m in inner:  # accelerate hooks each part of a layer too; they would only move tensors already there
            m.forward = m._old_forward
        for seg in self.segments:
            first, *rest = seg.layers
            self.modules[first].forward = functools.partial(self._run, seg)
            for i in rest:
                self.modules[i].forward = _pass_through
        fusion = self.batch.fusion
        try:
            with fusion.limits() if fusion is not None else contextlib.nullcontext():
                yield
        finally:
            for module, own in zip([*self.modules, *inner], [*saved, *inner_saved]):
                if own is None:
                    module.__dict__.pop("forward", None)
                else:
                    module.forward = own

    # ------------------------------------------------------------------------------------------- one segment
    def _run(self, seg: Segment, hidden_states: Any, **kwargs: Any) -> Any:
        batch = self.batch
        hidden = hidden_states.to(seg.device)
        kwargs = {k: _map(v, lambda t: t.to(seg.device)) for k, v in kwargs.items()}
        rows, write = batch.index_of[seg.layers[0]]
        if write is not batch.write:
            write.copy_(batch.write)  # this GPU's copy of each row's cache column
        if not self.capture:
            return self._fused_or_not(lambda: self._layers(seg, hidden, kwargs))
        key = (batch.rows, batch.length)
        graph = seg.graphs.get(key)
        if graph is None:
            static = _SegmentGraph(hidden, kwargs)
            graph = self._fused_or_not(lambda: self._record(seg, key, static))
        else:
            graph.feed(hidden, kwargs)
        graph.graph.replay()
        return graph.out

    def _layers(self, seg: Segment, hidden: Any, kwargs: dict[str, Any]) -> Any:
        fusion = self.batch.fusion
        for i in seg.layers:
            module = self.modules[i]
            if fusion is not None:
                hidden = fusion.call(i, hidden, **kwargs)
            else:
                hidden = type(module).forward(module, hidden, **kwargs)
        return hidden

    def _fused_or_not(self, run: Callable[[], Any]) -> Any:
        """`run()`; if it fails while the layers are fused (a compile or a fused capture), the segments drop their
        graphs, the step goes on unfused and `run()` is tried again."""
        from routerllm_cli.decode.static import UnsupportedStep, _first_line

        try:
            return run()
        except UnsupportedStep:
            raise
        except Exception as exc:  # noqa: BLE001 - only a fused failure is caught; an unfused one is the caller's
            if self.batch.fusion is None:
                raise
            for seg in self.segments:
                seg.graphs.clear()
            self.on_unfuse(f"compiling or capturing a fused segment failed: {type(exc).__name__}: {_first_line(exc)}")
            return run()

    def _record(self, seg: Segment, key: tuple[int, int], graph: _SegmentGraph) -> _SegmentGraph:
        """The documented recipe on the segment's GPU: warm up on a side stream, capture once into the segment's
        pool. The warm-ups write this step's keys/values at each row's column, as the replay then does again."""
        import torch

        with torch.cuda.device(seg.device):
            start = time.perf_counter()
            current = torch.cuda.current_stream()
            side = torch.cuda.Stream()
            side.wait_stream(current)
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self._layers(seg, graph.hidden, graph.kwargs)
            current.wait_stream(side)
            torch.cuda.synchronize()
            warmed = time.perf_counter()
            if seg.pool is None:
                seg.pool = torch.cuda.graph_pool_handle()
            cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(cuda_graph, pool=seg.pool, capture_error_mode="thread_local"):
                out = self._layers(seg, graph.hidden, graph.kwargs)
            torch.cuda.synchronize()
        self.warm_seconds += warmed - start
        self.capture_seconds += time.perf_counter() - warmed
        graph.graph, graph.out = cuda_graph, out
        seg.graphs[key] = graph
        return graph


def _pass_through(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
    return hidden_states
