"""The tokenizer, held to what a GGUF file says."""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from routerllm_cli import hub
from routerllm_cli.errors import ConfigError

if TYPE_CHECKING:
    from routerllm_cli.config import ModelSpec


def load_tokenizer(ref: Any, spec: "ModelSpec", *, token: str | None = None, notes: list[str] | None = None) -> Any:
    """The model's tokenizer, left-padded for batched generation, with a pad token (EOS when it has none). What
    had to be corrected to match a GGUF file goes to `notes`."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = dict(cache_dir=str(hub.cache_dir()), local_files_only=hub.offline(),
                                  trust_remote_code=spec.trust_remote_code)
    if token:
        kwargs["token"] = token
    if ref.gguf_file:
        kwargs["gguf_file"] = ref.gguf_file
    try:
        tok = AutoTokenizer.from_pretrained(ref.source, **kwargs)
    except (OSError, ValueError) as exc:
        if Path(ref.source).is_dir() and not ref.gguf_file:
            raise ConfigError(f"{ref.source} has no usable tokenizer ({str(exc).splitlines()[0][:160]})",
                              fix="save the tokenizer next to the weights (tokenizer.save_pretrained(dir))") from None
        raise
    if ref.gguf_file and Path(ref.source, ref.gguf_file).is_file():
        changed = check_gguf_tokenizer(tok, Path(ref.source, ref.gguf_file))
        if notes is not None:
            notes.extend(changed)
    tok.padding_side = "left"  # decoder-only batches must end where generation starts
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


# transformers before 5.18 splits a GGUF's SentencePiece vocabulary ("llama" tokenizer model: Gemma, Llama-2,
# Mistral) into the wrong pieces, and before 5.23 it drops the BOS token the GGUF asks for. Gemma-3-270M then
# answered every HumanEval prompt with blank lines (0/164 under transformers 5.17).
GGUF_SPM_MIN_TRANSFORMERS = (5, 18)


def check_gguf_tokenizer(tok: Any, gguf_path: Path) -> list[str]:
    """Hold a tokenizer converted from a GGUF file to what the file says: refuse a transformers known to convert
    its tokenizer model wrongly, and add the BOS token when the file asks for it and the conversion dropped it.
    Returns what was changed."""
    import transformers

    meta = _gguf_tokenizer_meta(gguf_path)
    version = tuple(int(p) for p in re.findall(r"\d+", transformers.__version__)[:2])
    if meta.get("model") == "llama" and version < GGUF_SPM_MIN_TRANSFORMERS:
        raise ConfigError(
            f"transformers {transformers.__version__} converts the SentencePiece tokenizer in {gguf_path.name} into "
            "the wrong pieces (the model then answers nonsense)",
            fix="pip install -U 'transformers>=5.23'")
    changed = []
    bos = meta.get("bos_token_id")
    if meta.get("add_bos_token") and isinstance(bos, int) and tok("a")["input_ids"][:1] != [bos]:
        _prepend_bos(tok, bos)
        changed.append(f"tokenizer: BOS {bos} added, as {gguf_path.name} asks")
    return changed


_GGUF_META_KEYS = {"tokenizer.ggml.model": "model", "tokenizer.ggml.add_bos_token": "add_bos_token",
                   "tokenizer.ggml.bos_token_id": "bos_token_id"}
# GGUF value types (gguf-py's GGUFValueType) of fixed size, as struct formats; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _gguf_tokenizer_meta(path: Path) -> dict[str, Any]:
    """The tokenizer keys of a GGUF file's header, read up to the last of them. gguf's GGUFReader parses every
    field and tensor first (27 s for Gemma-3's 262k-piece vocabulary on a laptop core); this stops early and
    skips the vocabulary arrays by their lengths. Files this does not read (GGUF v1, big-endian) go to GGUFReader."""
    try:
        with open(path, "rb") as fh:
            return _read_gguf_keys(fh, _GGUF_META_KEYS)
    except _NotPlainGGUF:
        pass
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out: dict[str, Any] = {}
    for key, name in _GGUF_META_KEYS.items():
        field_ = reader.fields.get(key)
        if field_ is not None:
            value = field_.contents()
            out[name] = int(value) if name == "bos_token_id" else value
    return out


class _NotPlainGGUF(Exception):
    pass


def _read_gguf_keys(fh: Any, wanted: dict[str, str]) -> dict[str, Any]:
    def unpack(fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = fh.read(size)
        if len(data) != size:
            raise _NotPlainGGUF("truncated header")
        return struct.unpack(fmt, data)[0]

    def string() -> str:
        return fh.read(unpack("<Q")).decode("utf-8", errors="replace")

    def value(vtype: int, keep: bool) -> Any:
        if vtype in _GGUF_SCALARS:
            v = unpack(_GGUF_SCALARS[vtype])
            return v if keep else None
        if vtype == _GGUF_STRING:
            if keep:
                return string()
            fh.seek(unpack("<Q"), 1)
            return None
        if vtype == _GGUF_ARRAY:
            item, count = unpack("<I"), unpack("<Q")
            if item in _GGUF_SCALARS and not keep:
                fh.seek(struct.calcsize(_GGUF_SCALARS[item]) * count, 1)
                return None
            items = [value(item, keep) for _ in range(count)]
            return items if keep else None
        raise _NotPlainGGUF(f"value type {vtype}")

    if fh.read(4) != b"GGUF" or unpack("<I") not in (2, 3):
        raise _NotPlainGGUF("not a little-endian GGUF v2/v3 file")
    _tensors, n_kv = unpack("<Q"), unpack("<Q")
    out: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        name = wanted.get(key)
        v = value(unpack("<I"), keep=name is not None)
        if name is not None:
            out[name] = v
            if len(out) == len(wanted):
                break
    return out


def _prepend_bos(tok: Any, bos: int) -> None:
    from tokenizers import processors

    piece = tok.convert_ids_to_tokens(bos)
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{piece} $A", pair=f"{piece} $A {piece} $B", special_tokens=[(piece, bos)])
