"""The tokenizer, held to what a GGUF file says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from routerllm_cli.errors import ConfigError
from routerllm_cli import hub

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


def _gguf_tokenizer_meta(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out: dict[str, Any] = {}
    for key, name in (("tokenizer.ggml.model", "model"), ("tokenizer.ggml.add_bos_token", "add_bos_token"),
                      ("tokenizer.ggml.bos_token_id", "bos_token_id")):
        field_ = reader.fields.get(key)
        if field_ is not None:
            value = field_.contents()
            out[name] = int(value) if name == "bos_token_id" else value
    return out


def _prepend_bos(tok: Any, bos: int) -> None:
    from tokenizers import processors

    piece = tok.convert_ids_to_tokens(bos)
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{piece} $A", pair=f"{piece} $A {piece} $B", special_tokens=[(piece, bos)])
