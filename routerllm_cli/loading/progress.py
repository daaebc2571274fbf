"""Load progress: bytes and shards read, as transformers reads them."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from routerllm_cli.loading.checkpoint import Checkpoint, ShardPrefetcher


# ------------------------------------------------------------------------------------------- progress
class _Bar:
    """A tqdm stand-in that reports to a callback instead of drawing (transformers' `set_tqdm_hook`)."""

    def __init__(self, iterable: Any = None, *args: Any, desc: str | None = None, total: int | None = None,
                 on_update: Callable[["_Bar", Any], None] | None = None, **_: Any):
        self.iterable = iterable
        self.desc = desc or ""
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total = total
        self.n = 0
        self.on_update = on_update

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            self.n += 1
            if self.on_update:
                self.on_update(self, item)

    def __len__(self) -> int:
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.on_update:
            self.on_update(self, None)

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., None]:  # set_description, set_postfix, refresh, ...
        return lambda *a, **k: None


class WeightsProgress:
    """Turns transformers' per-tensor "Loading weights" iteration into shards/bytes/elapsed events."""

    def __init__(self, checkpoint: Checkpoint, emit: Callable[..., None] | None,
                 prefetcher: ShardPrefetcher | None = None):
        self.ckpt = checkpoint
        self.emit = emit
        self.prefetcher = prefetcher
        self.bytes_done = 0
        self.left_in_file: dict[int, int] = {}
        for _, (i, _b) in checkpoint.tensor_bytes.items():
            self.left_in_file[i] = self.left_in_file.get(i, 0) + 1
        self.shards_done = 0
        self.last = 0.0
        # tensor bytes when the headers are known (what gets placed), else the files' sizes
        self.total = sum(b for _, b in checkpoint.tensor_bytes.values()) or checkpoint.total_bytes

    def hook(self, factory: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        desc = kwargs.get("desc") or ""
        weights = desc.startswith("Loading weights")
        if self.emit is None:  # nobody listens: keep transformers' own bar, only track what it consumes
            if not weights or not args:
                return factory(*args, **kwargs)
            items, rest = args[0], args[1:]
            tracker = _Bar(items, on_update=self._weights, total=kwargs.get("total"))
            return factory(iter(tracker), *rest, **{**kwargs, "total": tracker.total})
        if weights:
            return _Bar(*args, **{**kwargs, "on_update": self._weights})
        return _Bar(*args, **{**kwargs, "on_update": self._other})

    def _other(self, bar: _Bar, _item: Any) -> None:
        if self.emit is None:
            return
        now = time.perf_counter()
        if now - self.last > 0.1 or bar.n == bar.total:
            self.last = now
            self.emit("prepare", message=bar.desc.strip(" .:"), done=bar.n, total=bar.total)

    def _weights(self, bar: _Bar, item: Any) -> None:
        name = item[0] if isinstance(item, tuple) and item else None
        known = self.ckpt.tensor_bytes.get(name) if name else None
        if known is not None:
            file_index, nbytes = known
            self.bytes_done += nbytes
            self.left_in_file[file_index] -= 1
            if self.left_in_file[file_index] == 0:
                self.shards_done += 1
        elif self.total and bar.total:
            self.bytes_done = int(self.total * bar.n / bar.total)
        if self.prefetcher is not None:
            self.prefetcher.advance(self.bytes_done)
        now = time.perf_counter()
        if self.emit is not None and (now - self.last > 0.05 or bar.n == bar.total):
            self.last = now
            total = self.total
            self.emit("weights", tensors_done=bar.n, tensors_total=bar.total,
                      bytes_done=min(self.bytes_done, total) if total else self.bytes_done, bytes_total=total,
                      shards_done=self.shards_done if self.ckpt.tensor_bytes else None,
                      shards_total=len(self.ckpt.files) or None)


@contextmanager
def transformers_progress(hook: Callable[..., Any] | None) -> Iterator[None]:
    """Route transformers' tqdm bars through `hook` while loading (no-op where set_tqdm_hook does not exist:
    the load then works as before, only without byte counts and read-ahead pacing)."""
    from transformers.utils import logging as hf_logging

    setter = getattr(hf_logging, "set_tqdm_hook", None)
    if hook is None or setter is None:
        yield
        return
    # GGUF de-quantization (the slow part of a GGUF load) draws a plain tqdm bar that the hook does not see;
    # its module-level name is swapped for the duration of the load.
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    plain = getattr(gguf_utils, "tqdm", None)
    previous = setter(hook)
    if plain is not None:
        gguf_utils.tqdm = lambda *args, **kwargs: hook(plain, args, kwargs)
    try:
        yield
    finally:
        setter(previous)
        if plain is not None:
            gguf_utils.tqdm = plain
