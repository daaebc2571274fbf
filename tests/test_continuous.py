"""Continuous batching: rows that finish leave and new prompts take their places; answers equal one-by-one."""

from __future__ import annotations

import pytest

from routerllm_cli import generation, humaneval


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    problems = humaneval.select(humaneval.load_problems("package")[0], n=7)
    return model, tok, [(p["task_id"], p["prompt"][-300:]) for p in problems]


@pytest.mark.parametrize("stops", [(), ("\n", "e")])
def test_continuous_answers_equal_one_by_one(tiny, stops):
    import torch

    torch.set_num_threads(1)
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=17, stop_sequences=stops)
    single = {k: generation.generate_batch(model, tok, [p], **kw)[0] for k, p in prompts}
    streamed = dict(generation.generate_continuous(model, tok, prompts, batch_size=3, chunk_tokens=4, **kw))
    assert set(streamed) == set(single)
    for key in single:
        assert streamed[key].text == single[key].text, key
        assert streamed[key].stopped_by == single[key].stopped_by, key
        # tokens up to the stop, not the padding after it to the end of the chunk
        assert streamed[key].new_tokens == single[key].new_tokens, key
    if stops:  # some rows stopped early and freed their places for later prompts
        assert any(o.stopped_by == "stop_sequence" for o in streamed.values())


def test_should_stop_takes_no_new_prompts_and_finishes_rows_in_flight(tiny):
    model, tok, prompts = tiny
    seen = []
    for key, out in generation.generate_continuous(model, tok, prompts, batch_size=2, chunk_tokens=3,
                                                   max_new_tokens=9, should_stop=lambda: bool(seen)):
        seen.append((key, out))
    assert 1 <= len(seen) <= 2  # the two rows in flight, none started after the stop
    assert all(out.new_tokens == 9 or out.stopped_by != "max_new_tokens" for _, out in seen)


def test_shares_add_up_to_the_generation_time_and_latency_covers_each_share(tiny):
    import time

    model, tok, prompts = tiny
    start = time.perf_counter()
    outs = dict(generation.generate_continuous(model, tok, prompts, batch_size=3, chunk_tokens=4, max_new_tokens=9))
    total = time.perf_counter() - start
    shares = [o.share_seconds for o in outs.values()]
    assert all(s > 0 for s in shares)
    assert 0.5 * total < sum(shares) <= total  # the rest is tokenizing and bookkeeping between chunks
    for o in outs.values():
        assert o.share_seconds <= o.seconds <= total  # an answer waits at least its own share
    # rows that overlapped: their latencies add up to more than the time spent
    assert sum(o.seconds for o in outs.values()) > sum(shares)
