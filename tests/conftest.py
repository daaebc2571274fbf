"""Shared fixtures: an isolated environment for every test, and real small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One intra-op thread for torch, here and in the CLI subprocesses tests start: on a shared 2-core machine a second
# thread spin-waits on a busy core, and the embedded models then generated 5-10x slower (187 s instead of 20 s for
# compare's first model); the tokens are the same. Set before torch is imported; OMP_NUM_THREADS=2 overrides.
os.environ.setdefault("OMP_NUM_THREADS", "1")


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models on a shared 2-core box: a second intra-op thread spin-waits on a busy core and made these
    generations 5-20x slower when measured; one thread gives the same tokens. A module asks for it with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                  num_hidden_layers=4, vocab_size=512, max_position_embeddings=256, tie_word_embeddings=False,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)

# A few lines of Python for the tiny tokenizer to learn from: enough merges that code prompts become short.
_TOKENIZER_CORPUS = """\
def add(a, b):
    \"\"\"Return the sum of a and b.\"\"\"
    return a + b


def fibonacci(n: int) -> list[int]:
    result = [0, 1]
    for i in range(2, n):
        result.append(result[i - 1] + result[i - 2])
    return result[:n]


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        if not self.items:
            raise IndexError("pop from an empty stack")
        return self.items.pop()


def has_close_elements(numbers: list[float], threshold: float) -> bool:
    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2 and abs(elem - elem2) < threshold:
                return True
    return False


import math
print(math.sqrt(16), sorted({"x": 1, "y": 2}.items()), [c.upper() for c in "hello world"])
while True:
    break
"""

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def write_tiny_tokenizer(path: Path, vocab_size: int = 512, chat_template: str | None = None):
    """A real byte-level BPE tokenizer trained on a few lines of Python; ids 0/1/2 are <pad>/<s>/</s>.

    Filled up to `vocab_size` with plain tokens so every id the tiny model can emit decodes to text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_TOKENIZER_CORPUS] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    missing = vocab_size - len(fast)
    if missing > 0:
        fast.add_tokens([f"tok{i}" for i in range(missing)])
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    return fast


def write_tiny_llama(path: Path, seed: int = 0, *, tokenizer: bool = True, chat_template: str | None = None,
                     **overrides) -> Path:
    """A real Llama checkpoint (sharded safetensors) written with save_pretrained, with a real BPE tokenizer next
    to the weights unless `tokenizer=False`, so it loads by path and generates text end to end."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{**TINY_LLAMA, **overrides})
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(path, max_shard_size="200KB", safe_serialization=True)
    if tokenizer:
        write_tiny_tokenizer(path, vocab_size=config.vocab_size, chat_template=chat_template)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny random Llama saved as several safetensors shards, with a BPE tokenizer (read-only: copy
    before changing)."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny_llama") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_llama_chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny Llama with a chat template on its tokenizer (an 'instruct' model; read-only)."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny_llama_chat") / "tiny-llama-chat",
                            chat_template=TINY_CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def embedded_tokenizer():
    """`embedded_tokenizer(name)` -> (tokenizer, GGUF path) of an embedded GGUF model, converted once per session
    (Gemma-3's 262k-piece SentencePiece vocabulary takes tens of seconds). Shared: a test that changes it puts it
    back."""
    from routerllm_cli.catalog import CATALOG, embedded_gguf_path, resolve_spec
    from routerllm_cli.config import ModelSpec
    from routerllm_cli.loading import load_tokenizer

    built: dict[str, tuple] = {}

    def get(name: str):
        if name not in built:
            path = embedded_gguf_path(CATALOG[name])
            built[name] = load_tokenizer(resolve_spec(name, str(path.parent), path.name), ModelSpec(name=name)), path
        return built[name]

    return get


@pytest.fixture
def gguf_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths gguf-py's GGUFReader is asked to parse during the test (a counting wrapper of the real one)."""
    import gguf

    made: list[str] = []
    real = gguf.GGUFReader

    def counting(path, mode="r"):
        made.append(str(path))
        return real(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", counting)
    return made


@pytest.fixture(scope="session")
def smollm2_fp32():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct GGUF, dequantized to float32 (exact arithmetic on a
    CPU makes batched == one by one), loaded once for the session with one parse of its file. Shared: a test may
    not change it (copy its config before editing it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from routerllm_cli.catalog import resolve_model
    from routerllm_cli.loading.gguf_reader import read_once

    ref = resolve_model("smollm2_135m")
    with read_once(True):
        tok = AutoTokenizer.from_pretrained(ref.model_id, gguf_file=ref.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(ref.model_id, gguf_file=ref.gguf_file, dtype=torch.float32)
    tok.padding_side = "left"  # as generation.py sets it on first use: the same tokenizer whatever test runs first
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.eval(), tok
