"""Shared fixtures: an isolated environment for every test, and real small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own HF_HOME, results and offload folders, and no ROUTERLLM_* from the caller."""
    root = tmp_path_factory.mktemp("env")
    for key in list(os.environ):
        if key.startswith("ROUTERLLM_") or key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(root / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ROUTERLLM_CACHE", str(Path.home() / ".cache" / "routerllm"))  # assembled GGUFs are reusable
    monkeypatch.setenv("ROUTERLLM_BENCH__RESULTS_DIR", str(root / "results"))
    monkeypatch.setenv("ROUTERLLM_OFFLOAD_FOLDER", str(root / "offload"))
    monkeypatch.chdir(root)
    return root


TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                  num_hidden_layers=4, vocab_size=512, max_position_embeddings=256, tie_word_embeddings=False)


def write_tiny_llama(path: Path, seed: int = 0, **overrides) -> Path:
    """A real Llama checkpoint (sharded safetensors + tokenizer-free config) written with save_pretrained."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{**TINY_LLAMA, **overrides})
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(path, max_shard_size="200KB", safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny random Llama saved as several safetensors shards (read-only: copy before changing)."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny_llama") / "tiny-llama")
