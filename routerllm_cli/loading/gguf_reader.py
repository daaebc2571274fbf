"""One parse of a GGUF file per run, not four.

transformers reads a GGUF file with gguf-py's `GGUFReader` each time it needs something from it: the config, the
tokenizer and the weights of one load, and the plan's config before that. gguf-py builds a Python object for every
piece of the vocabulary, so Gemma-3's 262k pieces take ~15 s a parse on a 2-core machine (SmolLM2's 49k: ~3 s):
a bench or compare of Gemma spent a minute parsing the same file four times. Inside `read_once()` every
`GGUFReader(path)` of the same file (path, size and modification time) gets the reader made the first time; the
readers go when the outermost `read_once()` ends, since one holds ~0.7 GB of Python objects for Gemma. The
reader is only read from (fields and tensor views of a read-only memory map), so sharing it changes nothing
transformers computes. The same goes for gguf-py's `get_tensor_name_map(arch, n_blocks)`, which transformers
builds again for every module of the model it walks (397 times for SmolLM2: 8 s of a 20 s load); the table is a
pure function of its two arguments and is only looked up.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterator

_lock = threading.Lock()
_depth = 0
_readers: dict[tuple, Any] = {}
_name_maps: dict[tuple, Any] = {}
_original: Any = None
_original_name_map: Any = None


def _key(path: Any, mode: str) -> tuple:
    st = os.stat(path)
    return os.path.realpath(path), mode, st.st_size, st.st_mtime_ns


def _shared_reader(path: Any, mode: str = "r") -> Any:
    key = _key(path, mode)
    with _lock:
        reader = _readers.get(key)
    if reader is None:
        reader = _original(path, mode)
        with _lock:
            _readers[key] = reader
    return reader


def _shared_name_map(arch: Any, n_blocks: int) -> Any:
    key = (arch, n_blocks)
    found = _name_maps.get(key)
    if found is None:
        found = _name_maps[key] = _original_name_map(arch, n_blocks)
    return found


@contextlib.contextmanager
def read_once(active: bool = True) -> Iterator[None]:
    """While active (and gguf-py is installed), each GGUF file is parsed once. Nests; `active=False` does nothing
    (a model that is not a GGUF file: gguf-py is not even imported)."""
    global _depth, _original, _original_name_map
    if not active:
        yield
        return
    try:
        import gguf
    except ImportError:
        yield
        return
    with _lock:
        if _depth == 0:
            _original, _original_name_map = gguf.GGUFReader, gguf.get_tensor_name_map
            gguf.GGUFReader, gguf.get_tensor_name_map = _shared_reader, _shared_name_map
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gguf.GGUFReader, gguf.get_tensor_name_map = _original, _original_name_map
                _readers.clear()
                _name_maps.clear()


def parses_held() -> int:
    """How many parsed files `read_once()` holds now (0 outside it)."""
    return len(_readers)
