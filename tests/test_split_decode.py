"""The static step of a model whose layers run as segments (one per GPU when the plan splits them), on a CPU: the
segments are asked for explicitly here, since a CPU is one device. Answers must equal `generate`'s in float32,
behind accelerate's hooks too, unfused and fused; the hooks must be as they were afterwards. The CUDA graphs per
segment are proven by benchmarks/split_decode.py on a GPU."""

from __future__ import annotations

import pytest

from routerllm_cli import generation, humaneval
from routerllm_cli.decode import ResidentDecoder, choose_decode
from routerllm_cli.decode.split import segments_by_device

from answers import assert_same_answers as _same


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from transformers import AutoTokenizer

    problems = humaneval.select(humaneval.load_problems("package")[0], n=5)
    return (_model(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir),
            [(p["task_id"], p["prompt"][-200:]) for p in problems])


def _split(model, tok, prompts, segments, *, fuse=False, backend="inductor", events=None, **kw):
    decoder = ResidentDecoder(model, slots=3, max_tokens=300, capture=False, chunk_tokens=4, check_every=2,
                              batch_buckets=(1,), segments=segments, fuse=fuse, fuse_backend=backend,
                              on_event=(lambda k, d: events.append((k, d))) if events is not None else None)
    out = dict(generation.generate_continuous(model, tok, prompts, batch_size=3, chunk_tokens=4, decoder=decoder,
                                              **kw))
    return out, decoder




def _single(model, tok, prompts, **kw):
    return {k: generation.generate_batch(model, tok, [p], **kw)[0] for k, p in prompts}


def test_segments_are_the_runs_of_layers_on_one_device():
    assert segments_by_device(["cuda:0", "cuda:0", "cuda:1", "cuda:1", "cuda:2"]) == [[0, 1], [2, 3], [4]]
    assert segments_by_device(["cuda:0"] * 3) == [[0, 1, 2]]
    assert segments_by_device(["cuda:0", "cuda:1", "cuda:0"]) == [[0], [1], [2]]  # a layout that comes back


@pytest.mark.parametrize("segments", [[[0, 1], [2, 3]], [[0], [1, 2], [3]]])
def test_layers_stepped_as_segments_answer_as_generate_does(tiny, segments):
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=15, stop_sequences=("\n", "e"))
    single = _single(model, tok, prompts, **kw)
    static, decoder = _split(model, tok, prompts, segments, **kw)
    _same(static, single)
    report = decoder.report()
    assert report["fallback"] is None and report["static_chunks"] > 0 and report["eager_chunks"] == 0
    assert [s["layers"] for s in report["segments"]] == [[seg[0], seg[-1]] for seg in segments]
    assert all("forward" not in layer.__dict__ for layer in model.model.layers)  # every layer as it was


@pytest.mark.parametrize("fuse", [False, True])
def test_segments_behind_accelerates_hooks_answer_as_generate_and_the_hooks_stay(tiny, tiny_llama_dir, fuse):
    """A model dispatched by accelerate with a device map of layers (as a split over GPUs is: a hook on every
    layer and on each part of it): the segments call them past their hooks, fused too (dynamo cannot trace a
    hook), and leave every hook on afterwards."""
    from accelerate import dispatch_model

    _, tok, prompts = tiny
    model = _model(tiny_llama_dir)
    names = ["model.embed_tokens", *(f"model.layers.{i}" for i in range(4)), "model.norm", "model.rotary_emb",
             "lm_head"]
    model = dispatch_model(model, device_map={n: "cpu" for n in names}, force_hooks=True)
    hooked = {n: m.__dict__.get("forward") for n, m in model.named_modules() if getattr(m, "_hf_hook", None)}
    assert {f"model.layers.{i}" for i in range(4)} | {"model.layers.0.self_attn.q_proj"} <= set(hooked)
    kw = dict(max_new_tokens=12)
    single = _single(model, tok, prompts[:4], **kw)
    static, decoder = _split(model, tok, prompts[:4], [[0, 1], [2], [3]], fuse=fuse, backend="aot_eager", **kw)
    _same(static, single)
    report = decoder.report()
    assert report["fallback"] is None and report["fuse_fallback"] is None and report["fused"] == fuse
    assert {n: model.get_submodule(n).__dict__.get("forward") for n in hooked} == hooked


def test_segments_run_fused_layers_and_a_failed_compile_leaves_them_unfused(tiny):
    """aot_eager traces each layer through dynamo as inductor would (without its C++ compile); a backend that
    lowers nothing fails the compile: the segments then go on unfused, with the same answers."""
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=9)
    single = _single(model, tok, prompts[:3], **kw)
    fused, decoder = _split(model, tok, prompts[:3], [[0, 1], [2, 3]], fuse=True, backend="aot_eager", **kw)
    _same(fused, single)
    report = decoder.report()
    assert report["fused"] and report["fuse_fallback"] is None and report["fused_buckets"] > 0

    def failing(gm, example_inputs):
        raise NotImplementedError("this backend lowers nothing")

    import torch

    torch._dynamo.reset()
    events: list = []
    unfused, decoder = _split(model, tok, prompts[:3], [[0, 1], [2, 3]], fuse=True, backend=failing, events=events,
                              **kw)
    _same(unfused, single)
    report = decoder.report()
    assert not report["fused"] and "this backend lowers nothing" in report["fuse_fallback"]
    assert report["fallback"] is None and report["static_chunks"] > 0
    assert [k for k, _ in events][:3] == ["compiling", "fuse_fallback", "capture"]


def test_segments_that_do_not_cover_the_layers_once_fall_back_to_eager_with_the_reason(tiny):
    """Segments are checked before a step runs (as is each layer being whole on one device): the run goes on
    eagerly, with nothing lost."""
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=6)
    single = _single(model, tok, prompts[:2], **kw)
    static, decoder = _split(model, tok, prompts[:2], [[0, 1], [1, 2, 3]], **kw)
    _same(static, single)
    report = decoder.report()
    assert "do not cover the decoder layers once" in report["fallback"] and report["eager_chunks"] > 0


def test_auto_captures_a_model_split_over_two_gpus_one_graph_per_gpu():
    from routerllm_cli.config import ModelSpec
    from routerllm_cli.hardware import HardwareReport, assume_hardware
    from routerllm_cli.plan import plan_model

    base = HardwareReport([], None, None, "none", 512 * 10**9, 500 * 10**9, assumed=False, disk_free={})
    plan = plan_model(ModelSpec(name="codellama_7b", max_memory={0: "9GB", 1: "80GB"}),
                      assume_hardware("2x80GB", "64GB", base), seq_len=1408)
    assert sorted({v for v in plan.device_map.values()}) == [0, 1]
    two = choose_decode("auto", plan, continuous=True, cuda_available=True)
    assert (two.path, two.capture) == ("compiled", True)
    assert "split over GPUs 0, 1" in two.reason and "each GPU's layers one CUDA graph" in two.reason
