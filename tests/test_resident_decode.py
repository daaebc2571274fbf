"""The GPU-resident decode path on a CPU: the same static-cache step, uncaptured. Its answers must equal today's
paths (one-by-one `generate_batch` and `generate_continuous`) in float32, with refill and stops; the path choice
must keep offloaded models on eager and say why (split models: test_split_decode.py). The CUDA graph itself is proven by
benchmarks/resident_decode.py on a GPU."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from routerllm_cli import generation, humaneval
from routerllm_cli.cli.app import app
from routerllm_cli.decode import ResidentDecoder, choose_decode, unsupported_reason

from answers import assert_same_answers as _same

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _load(path, **kw):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw).eval()
    return model, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    model, tok = _load(tiny_llama_dir)
    problems = humaneval.select(humaneval.load_problems("package")[0], n=7)
    return model, tok, [(p["task_id"], p["prompt"][-300:]) for p in problems]


def _static(model, tok, prompts, *, slots, chunk=4, max_tokens=400, capture=False, buckets=(1, 8, 32), **kw):
    decoder = ResidentDecoder(model, slots=slots, max_tokens=max_tokens, capture=capture, chunk_tokens=chunk,
                              check_every=2, batch_buckets=buckets)
    out = dict(generation.generate_continuous(model, tok, prompts, batch_size=slots, chunk_tokens=chunk,
                                              decoder=decoder, **kw))
    return out, decoder




@pytest.mark.parametrize("stops", [(), ("\n", "e")])
def test_static_step_answers_equal_one_by_one_and_continuous(tiny, stops):
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=17, stop_sequences=stops)
    single = {k: generation.generate_batch(model, tok, [p], **kw)[0] for k, p in prompts}
    plain = dict(generation.generate_continuous(model, tok, prompts, batch_size=3, chunk_tokens=4, **kw))
    static, decoder = _static(model, tok, prompts, slots=3, **kw)
    _same(static, single)
    _same(static, plain)
    report = decoder.report()
    # every chunk ran on the static step; each prompt was read once (not once a chunk), 7 prompts through 3 slots
    assert report["static_chunks"] > 0 and report["eager_chunks"] == 0 and report["fallback"] is None
    assert report["prefilled_rows"] == len(prompts) and report["steps"] > 0
    if stops:
        assert any(o.stopped_by == "stop_sequence" for o in static.values())


def test_rows_move_down_when_the_batch_shrinks_and_answers_stay_the_same(tiny):
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=13, stop_sequences=("e",))
    single = {k: generation.generate_batch(model, tok, [p], **kw)[0] for k, p in prompts}
    static, decoder = _static(model, tok, prompts, slots=4, buckets=(1, 2), **kw)
    _same(static, single)
    assert decoder.batch_buckets == [1, 2, 4]
    assert decoder.stats["moved_rows"] > 0  # rows in slots 2-3 moved down once two rows fit bucket 2


def test_eager_attention_uses_an_additive_mask_and_answers_equal(tiny_llama_dir, tiny):
    model, tok = _load(tiny_llama_dir, attn_implementation="eager")
    prompts = tiny[2][:4]
    kw = dict(max_new_tokens=11)
    single = {k: generation.generate_batch(model, tok, [p], **kw)[0] for k, p in prompts}
    static, decoder = _static(model, tok, prompts, slots=2, **kw)
    _same(static, single)
    import torch

    assert decoder.batch is not None and decoder.batch.hidden == torch.finfo(model.dtype).min  # eager's own mask


def test_a_capture_that_cannot_run_falls_back_to_eager_and_loses_nothing(tiny):
    """Capturing needs CUDA; here it fails as a capture bitsandbytes refuses would, on the first chunk."""
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=9)
    single = {k: generation.generate_batch(model, tok, [p], **kw)[0] for k, p in prompts}
    events = []
    decoder = ResidentDecoder(model, slots=3, max_tokens=400, capture=True, chunk_tokens=4,
                              on_event=lambda kind, data: events.append((kind, data)))
    static = dict(generation.generate_continuous(model, tok, prompts, batch_size=3, chunk_tokens=4, decoder=decoder,
                                                 **kw))
    _same(static, single)
    report = decoder.report()
    assert report["fallback"].startswith("capturing the decode step failed") and not report["captured"]
    assert report["static_chunks"] == 0 and report["eager_chunks"] > 0
    assert [k for k, _ in events] == ["decode_fallback"]


def test_the_warm_up_before_a_capture_leaves_the_answers_unchanged(tiny):
    """Before capturing, the step runs twice for real and the state is put back; its keys/values stay in the
    cache. Warming up between every chunk (with dummy rows in the bucket) must not change a single token."""
    import torch

    model, tok, prompts = tiny
    kw = dict(max_new_tokens=13, stop_sequences=("e",))
    single = {k: generation.generate_batch(model, tok, [p], **kw)[0] for k, p in prompts}
    decoder = ResidentDecoder(model, slots=4, max_tokens=400, capture=False, chunk_tokens=4, batch_buckets=(1, 8))
    warmed = []

    def chunk(rows, steps, ctx):
        out = decoder(rows, steps, ctx)
        if decoder.graphs is not None:
            with torch.inference_mode():  # as the decoder does before a capture
                decoder.batch.counter.zero_()
                decoder.graphs.warm_up()
            warmed.append(decoder.batch.rows)
        return out

    static = dict(generation.generate_continuous(model, tok, prompts, batch_size=4, chunk_tokens=4, decoder=chunk,
                                                 **kw))
    _same(static, single)
    assert len(warmed) >= 3 and decoder.graphs.warmup == 2


def test_a_prompt_longer_than_the_plan_allows_falls_back_with_the_reason(tiny):
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=9)
    single = {k: generation.generate_batch(model, tok, [p], **kw)[0] for k, p in prompts[:3]}
    static, decoder = _static(model, tok, prompts[:3], slots=3, max_tokens=16, **kw)
    _same(static, single)
    assert "exceeds the static cache" in decoder.fallback


def test_sampling_through_the_static_step_is_reproducible_with_a_seed(tiny):
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=3)
    first, _ = _static(model, tok, prompts, slots=3, **kw)
    second, decoder = _static(model, tok, prompts, slots=3, **kw)
    _same(first, second)
    assert not decoder.batch.greedy and all(0 < o.new_tokens <= 12 for o in first.values())
    greedy, _ = _static(model, tok, prompts, slots=3, max_new_tokens=12)
    assert any(first[k].text != greedy[k].text for k in greedy)  # it really sampled


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "phi3", "gemma"])
def test_other_validated_architectures_answer_as_generate_does(tiny, kind):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    _, tok, prompts = tiny
    shape = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                 num_hidden_layers=2, vocab_size=512, pad_token_id=0, bos_token_id=1, eos_token_id=2, head_dim=16)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **shape), attn_implementation="sdpa",
                                             dtype=torch.float32).eval()
    with torch.no_grad():  # larger weights than the init's, so the answers differ from prompt to prompt
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(5)
    assert unsupported_reason(model) is None
    kw = dict(max_new_tokens=10)
    single = {k: generation.generate_batch(model, tok, [p], **kw)[0] for k, p in prompts[:5]}
    static, decoder = _static(model, tok, prompts[:5], slots=2, **kw)
    _same(static, single)
    assert decoder.fallback is None and decoder.stats["static_chunks"] > 0


# --------------------------------------------------------------------------------------- the embedded model
@pytest.mark.slow
def test_smollm2_static_step_equals_generate_on_humaneval_with_refill_and_stops(smollm2_fp32):
    model, tok = smollm2_fp32
    assert unsupported_reason(model) is None
    chosen = humaneval.select(humaneval.load_problems("package")[0], task_ids=["23", "27", "24", "45"])
    prompts = [(p["task_id"], humaneval.build_prompt(p, tok, "instruct")) for p in chosen]
    kw = dict(max_new_tokens=36, **humaneval.stopping_for("instruct"))
    single = {k: generation.generate_batch(model, tok, [p], **kw)[0] for k, p in prompts}
    static, decoder = _static(model, tok, prompts, slots=2, chunk=12, max_tokens=1024 + 36, **kw)
    _same(static, single)
    assert {o.stopped_by for o in static.values()} == {"stop_when", "max_new_tokens"}
    assert decoder.report()["prefilled_rows"] == 4 and decoder.fallback is None


# --------------------------------------------------------------------------------------- choosing the path
def _plan(name, gpus, cpu, **spec):
    from routerllm_cli.config import ModelSpec
    from routerllm_cli.hardware import HardwareReport, assume_hardware
    from routerllm_cli.plan import plan_model

    base = HardwareReport([], None, None, "none", 512 * 10**9, 500 * 10**9, assumed=False, disk_free={})
    return plan_model(ModelSpec(name=name, **spec), assume_hardware(gpus, cpu, base), seq_len=1408)


def test_auto_compiles_a_model_on_one_gpu_and_keeps_offloaded_models_eager():
    one = choose_decode("auto", _plan("codellama_7b", "1x80GB", "64GB"), continuous=True, cuda_available=True)
    assert (one.path, one.capture) == ("compiled", True) and "GPU 0" in one.reason
    offloaded = choose_decode("compiled", _plan("codellama_7b", "1x8GB", "64GB"), continuous=True, cuda_available=True)
    assert offloaded.path == "eager" and "offload engine" in offloaded.reason and "compiled was asked" in offloaded.reason
    assert choose_decode("eager", _plan("codellama_7b", "1x80GB", "64GB"), continuous=True).path == "eager"
    static = choose_decode("auto", _plan("codellama_7b", "1x80GB", "64GB"), continuous=False, cuda_available=True)
    assert static.path == "eager" and "static batching" in static.reason
    four = choose_decode("auto", _plan("codellama_7b", "1x80GB", "64GB", use_4bit=True), continuous=True,
                         cuda_available=True)
    assert four.path == "compiled" and "4bit" in four.reason


def test_on_a_cpu_auto_is_eager_and_compiled_runs_the_step_uncaptured():
    cpu = _plan("smollm2_135m", None, "64GB")
    assert choose_decode("auto", cpu, continuous=True).path == "eager"
    forced = choose_decode("compiled", cpu, continuous=True)
    assert (forced.path, forced.capture) == ("compiled", False) and "uncaptured" in forced.reason


def test_models_the_static_step_cannot_reproduce_are_named():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, Qwen2Config

    small = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                 num_hidden_layers=2, vocab_size=64)
    with torch.device("meta"):
        llama = AutoModelForCausalLM.from_config(LlamaConfig(**small))
        sliding = AutoModelForCausalLM.from_config(Qwen2Config(**small, use_sliding_window=True, sliding_window=8,
                                                               max_window_layers=0))
    assert unsupported_reason(llama) is None
    assert "sliding" in unsupported_reason(sliding)
    with torch.device("meta"):
        bloom = AutoModelForCausalLM.from_config(AutoConfig.for_model("bloom", hidden_size=32, n_head=4, n_layer=2,
                                                                      vocab_size=64))
    assert "model type 'bloom'" in unsupported_reason(bloom)  # ALiBi comes from the mask: not validated
    llama.generation_config.repetition_penalty = 1.3
    assert "repetition_penalty" in unsupported_reason(llama)


# --------------------------------------------------------------------------------------- through bench
def test_bench_decode_compiled_gives_the_eager_answers_and_records_the_path(tiny_llama_dir, tmp_path):
    def bench(decode: str) -> tuple[dict, list[dict], str]:
        run_dir = tmp_path / decode
        args = ["bench", "--model", str(tiny_llama_dir), "-n", "5", "--batch-size", "2", "--max-new-tokens", "10",
                "--device", "cpu", "--batching", "continuous", "--decode", decode, "--skip-execution",
                "--run-dir", str(run_dir)]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
        return json.loads((run_dir / "summary.json").read_text()), samples, res.stderr

    summary_c, samples_c, screen = bench("compiled")
    summary_e, samples_e, _ = bench("eager")
    by_task = lambda samples: {s["task_id"]: (s["raw"], s["new_tokens"]) for s in samples}  # noqa: E731
    assert by_task(samples_c) == by_task(samples_e) and len(samples_c) == 5
    assert summary_c["decode"]["path"] == "compiled" and summary_c["decode"]["static_chunks"] > 0
    assert summary_e["decode"]["path"] == "eager" and "asked for" in summary_e["decode"]["reason"]
    assert "decode: compiled (no GPU for CUDA graphs: the static-cache step runs uncaptured)" in screen


def test_a_decode_typo_is_one_line_naming_the_choices():
    res = runner.invoke(app, ["bench", "--decode", "fast", "-n", "1"])
    assert res.exit_code == 2
    assert "--decode 'fast' is not a decode path" in res.stderr and "auto, compiled or eager" in res.stderr
