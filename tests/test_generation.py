"""Batched generation: left padding, per-sequence stops, key mapping, and the automatic batch size."""

from __future__ import annotations

import pytest

from routerllm_cli import generation, humaneval
from routerllm_cli.generation import generate_batch

PROMPTS = [
    "def add(a, b):\n",
    "class Stack:\n    def",
    "import math\nprint(",
    "x = [1, 2",
    "while True:\n    break\n\ndef fib(n):\n    result = [0, 1]\n",
]
NEW = 24


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def singles(tiny):
    """Each prompt generated alone: the reference a batch must reproduce."""
    model, tok = tiny
    return [generate_batch(model, tok, [p], max_new_tokens=NEW)[0] for p in PROMPTS]


def _marker_unique_to(row: int, texts: list[str], length: int = 3) -> tuple[int, str]:
    """A substring first found at some position >= 2 of texts[row] and in no other text."""
    text = texts[row]
    for start in range(2, len(text) - length):
        marker = text[start:start + length]
        if text.find(marker) == start and not any(marker in t for i, t in enumerate(texts) if i != row):
            return start, marker
    raise AssertionError(f"no unique marker in {text!r}")


def test_batched_greedy_equals_one_by_one(tiny, singles):
    model, tok = tiny
    batch = generate_batch(model, tok, PROMPTS, max_new_tokens=NEW)
    assert [o.text for o in batch] == [o.text for o in singles]
    assert [o.new_tokens for o in batch] == [o.new_tokens for o in singles]
    assert [o.prompt_tokens for o in batch] == [o.prompt_tokens for o in singles]  # padding not counted
    assert len({o.prompt_tokens for o in batch}) > 1  # the prompts really needed padding
    assert all(o.batch_size == len(PROMPTS) for o in batch) and tok.padding_side == "left"


def test_each_sequence_stops_at_its_own_stop_sequence(tiny, singles):
    model, tok = tiny
    texts = [o.text for o in singles]
    cut, marker = _marker_unique_to(0, texts)
    batch = generate_batch(model, tok, PROMPTS, max_new_tokens=NEW, stop_sequences=[marker])
    first = batch[0]
    assert first.text == texts[0][:cut] and marker not in first.text
    assert first.stopped_by == "stop_sequence" and first.stop_sequence == marker
    assert first.new_tokens < singles[0].new_tokens
    for out, ref in zip(batch[1:], singles[1:]):  # the others ran on to their own end, unchanged
        assert (out.text, out.new_tokens, out.stopped_by) == (ref.text, ref.new_tokens, ref.stopped_by)


def test_stop_when_ends_a_sequence_where_it_says(tiny, singles):
    model, tok = tiny
    texts = [o.text for o in singles]
    start, marker = _marker_unique_to(1, texts)

    def after_marker(text: str) -> int | None:
        i = text.find(marker)
        return i + len(marker) if i >= 0 else None

    batch = generate_batch(model, tok, PROMPTS, max_new_tokens=NEW, stop_when=after_marker)
    assert batch[1].text == texts[1][:start + len(marker)] and batch[1].stopped_by == "stop_when"
    assert batch[1].new_tokens < singles[1].new_tokens
    assert batch[0].text == texts[0]


def test_generate_many_maps_outputs_back_to_their_keys(tiny, singles):
    model, tok = tiny
    prompts = {f"HumanEval/{i}": p for i, p in enumerate(PROMPTS)}
    results = list(generation.generate_many(model, tok, prompts, batch_size=2, max_new_tokens=NEW))
    lengths = {k: len(tok(p)["input_ids"]) for k, p in prompts.items()}
    order = [k for k, _ in results]
    assert sorted(order) == sorted(prompts) and [lengths[k] for k in order] == sorted(lengths.values(), reverse=True)
    by_key = dict(results)
    for i, ref in enumerate(singles):
        assert by_key[f"HumanEval/{i}"].text == ref.text
    assert {o.batch_size for o in by_key.values()} == {1, 2}


def test_sampling_follows_the_seed(tiny):
    model, tok = tiny
    run = lambda seed: [o.text for o in generate_batch(model, tok, PROMPTS[:3], max_new_tokens=NEW, temperature=0.8,
                                                         top_p=0.95, seed=seed)]
    assert run(1) == run(1)
    assert run(1) != run(2)


def test_order_by_length_is_longest_first_and_stable():
    items = [("a", 3), ("b", 7), ("c", 3), ("d", 9)]
    assert generation.order_by_length(items, key=lambda it: it[1]) == [("d", 9), ("b", 7), ("a", 3), ("c", 3)]


# ------------------------------------------------------------------------------------------------ batch size


@pytest.fixture(scope="module")
def small_gpu_plans():
    """Real plans for CodeLlama-70B on 2 x 40 GB + CPU, where offloaded layers run on a GPU and keep their KV
    cache there (the planner's meta-device model, no weights)."""
    from routerllm_cli.config import ModelSpec
    from routerllm_cli.hardware import assume_hardware
    from routerllm_cli.plan import plan_model

    spec = ModelSpec(name="codellama_70b")
    auto = plan_model(spec, assume_hardware("2x40GB", "256GB"), batch_size=None, seq_len=1408)
    one = plan_model(spec, assume_hardware("2x40GB", "256GB"), batch_size=1, seq_len=1408)
    return auto, one


def test_the_run_batch_is_the_plans_and_its_kv_room_is_reserved_on_each_gpu(small_gpu_plans):
    auto, one = small_gpu_plans
    assert generation.batch_for(auto) == auto.batch_size > 1 and generation.batch_for(one) == 1
    for plan in (auto, one):
        assert "cpu" in plan.devices and plan.devices["cpu"].weight_bytes > 0
        gpus = [d for d in plan.devices if d.isdigit()]
        for d in gpus:  # offloaded layers' cache is counted on the GPU that runs them, nowhere else
            assert plan.devices[d].kv_bytes == plan.kv_bytes_for(d)
        assert sum(plan.kv_per_token_by_device[d] for d in gpus) == plan.kv_bytes_per_token
        assert plan.devices["cpu"].kv_bytes == 0


def test_measured_free_memory_can_only_lower_the_plans_batch(small_gpu_plans):
    auto, _ = small_gpu_plans
    d = max(auto.kv_per_token_by_device, key=auto.kv_per_token_by_device.get)
    per_seq = auto.kv_per_token_by_device[d] * auto.seq_len
    assert generation.batch_for(auto, free_bytes=10**15) == auto.batch_size
    assert 1 <= generation.batch_for(auto, free_bytes={d: per_seq * 3}) <= 3
    assert generation.batch_for(auto, free_bytes=0) == 1


# --------------------------------------------------------------------------------------- the embedded model


@pytest.fixture(scope="module")
def smollm2(smollm2_fp32):
    """The embedded SmolLM2-135M-Instruct GGUF in fp32 (the session's one load, conftest.py)."""
    return smollm2_fp32


@pytest.mark.slow
def test_smollm2_batched_greedy_equals_one_by_one_on_humaneval(smollm2):
    model, tok = smollm2
    problems, _ = humaneval.load_problems("package")
    # Short prompts of three lengths (93, 101, 102 tokens); strlen answers within the limit, the others don't.
    chosen = humaneval.select(problems, task_ids=["23", "27", "24"])
    prompts = [humaneval.build_prompt(p, tok, "instruct") for p in chosen]
    stops = humaneval.stopping_for("instruct")
    singles = [generate_batch(model, tok, [p], max_new_tokens=24, **stops)[0] for p in prompts]
    batch = generate_batch(model, tok, prompts, max_new_tokens=24, **stops)
    assert [o.text for o in batch] == [o.text for o in singles]
    assert [(o.new_tokens, o.stopped_by) for o in batch] == [(o.new_tokens, o.stopped_by) for o in singles]
    assert len({o.prompt_tokens for o in batch}) == 3
    # One sequence finished early (its code block closed) while the others ran to the limit.
    assert {o.stopped_by for o in batch} == {"stop_when", "max_new_tokens"}
    strlen = humaneval.postprocess(batch[0].text, chosen[0], "instruct")
    assert "def strlen" in strlen and "return len(string)" in strlen
