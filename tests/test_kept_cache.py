"""Continuous batching that keeps the KV cache (offloaded models): rows leave, new prompts are prefilled alone and
joined; greedy answers equal one-by-one generation, through the offload engine too."""

from __future__ import annotations

import pytest

from routerllm_cli import continuous, generation, humaneval


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    problems = humaneval.select(humaneval.load_problems("package")[0], n=9)
    # prompts of different lengths: joined caches are left-padded to each other
    return model, tok, [(p["task_id"], p["prompt"][-(120 + 37 * i):]) for i, p in enumerate(problems)]


def _one_by_one(model, tok, prompts, **kw):
    return {k: generation.generate_batch(model, tok, [p], **kw)[0] for k, p in prompts}


@pytest.mark.parametrize("stops, refill", [((), 0.25), (("\n", "e"), 0.25), (("\n", "e"), 1.0)])
def test_kept_cache_answers_equal_one_by_one(tiny, stops, refill):
    import torch

    torch.set_num_threads(1)
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=15, stop_sequences=stops)
    single = _one_by_one(model, tok, prompts, **kw)
    kept = dict(continuous.generate_kept(model, tok, prompts, batch_size=4, refill_fraction=refill, **kw))
    assert set(kept) == set(single)
    for key in single:
        assert kept[key].text == single[key].text, key
        assert kept[key].stopped_by == single[key].stopped_by, key
        assert kept[key].new_tokens == single[key].new_tokens, key
    if stops:
        assert any(o.stopped_by == "stop_sequence" for o in kept.values())
        assert {o.batch_size for o in kept.values()} != {4}  # rows left the batch mid-way


def test_should_stop_takes_no_new_prompts(tiny):
    model, tok, prompts = tiny
    seen = []
    for key, out in continuous.generate_kept(model, tok, prompts, batch_size=2, max_new_tokens=6,
                                             should_stop=lambda: bool(seen)):
        seen.append(key)
    assert 1 <= len(seen) <= 2


def test_llama_caches_are_supported(tiny):
    assert continuous.supports(tiny[0])


def test_through_the_offload_engine_with_disk_layers(tiny_llama_dir, tmp_path, tiny):
    """The bench's path for an offloaded model: layers streamed by the offload engine, batch kept."""
    import torch
    from transformers import AutoModelForCausalLM

    from routerllm_cli.offload.engine import attach_offload_engine

    model, tok, prompts = tiny
    dm = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
          "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "disk", "model.layers.3": "cpu"}
    offloaded = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, device_map=dm,
                                                     offload_folder=tmp_path).eval()
    engine = attach_offload_engine(offloaded, dm, pin_budget_bytes=0)
    try:
        kw = dict(max_new_tokens=10, stop_sequences=("\n",))
        single = _one_by_one(model, tok, prompts[:5], **kw)
        kept = dict(continuous.generate_kept(offloaded, tok, prompts[:5], batch_size=3, device="cpu", **kw))
        assert {k: o.text for k, o in kept.items()} == {k: o.text for k, o in single.items()}
        assert engine.stats().streamed_layers == 2
    finally:
        engine.detach()


def test_bench_on_an_offloaded_model_runs_the_plans_batch_and_keeps_one_by_one_answers(tiny_llama_dir, tmp_path):
    """run_bench end to end: the plan spills layers to disk, the offload engine streams them, continuous batching
    keeps the cache at the plan's batch; every answer equals one-by-one greedy generation of the same prompt."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from routerllm_cli.bench import run_bench
    from routerllm_cli.config import load_settings

    settings = load_settings(None, {
        "models": {"large_llm": {"name": str(tiny_llama_dir), "torch_dtype": "float32",
                                 "max_memory": {"cpu": "200KB"}, "offload_folder": str(tmp_path / "offload")}},
        "bench": {"num_examples": 5, "max_new_tokens": 8, "device": "cpu", "batching": "continuous",
                  "skip_execution": True, "results_dir": str(tmp_path / "results")}})
    events = {}
    result = run_bench(settings, run_dir=tmp_path / "run", on_event=lambda k, d: events.setdefault(k, d))
    plan = events["plan"]["plan"]
    assert "disk" in plan["devices"] and plan["devices"]["disk"]["weight_bytes"] > 0
    assert plan["batch_mode"] == "auto" and events["generating"]["batch_size"] == plan["batch_size"] == 5
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 5 and result.summary["status"] == "finished"
    problems = {p["task_id"]: p for p in humaneval.load_problems("package")[0]}
    style = humaneval.choose_style(tok, "auto")
    stopping = humaneval.stopping_for(style)
    for s in samples:
        prompt = humaneval.build_prompt(problems[s["task_id"]], tok, style)
        alone = generation.generate_batch(model, tok, [prompt], max_new_tokens=8, **stopping)[0]
        assert s["raw"] == alone.text, s["task_id"]
