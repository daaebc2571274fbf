"""Kernel fusion of the static decode step (routerllm_cli/decode/fuse.py) on a CPU: inductor compiles each decoder
layer (C++ through gcc here, Triton on a GPU), the fused step's greedy answers equal `generate`'s in float32, a
second compile is answered by the cache under ROUTERLLM_CACHE, a compile that fails leaves the unfused step with
the reason, and `bench.decode_fuse` / `--decode-fuse` choose it. What fusion buys on a GPU is measured by
benchmarks/resident_decode.py."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from routerllm_cli import generation, humaneval
from routerllm_cli.cli.app import app
from routerllm_cli.decode import ResidentDecoder, choose_decode
from routerllm_cli.decode.fuse import compile_cache_dir

from answers import assert_same_answers as _same

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    problems = humaneval.select(humaneval.load_problems("package")[0], n=5)
    return model, AutoTokenizer.from_pretrained(tiny_llama_dir), [(p["task_id"], p["prompt"][-90:]) for p in problems]


def _decode(model, tok, prompts, *, fuse, events=None, **kw):
    """Three slots, buckets 1 and 3, one length bucket of 128 positions: two compiles when fused."""
    decoder = ResidentDecoder(model, slots=3, max_tokens=80, capture=False, chunk_tokens=4, check_every=2,
                              batch_buckets=(1,), fuse=fuse,
                              on_event=(lambda k, d: events.append((k, d))) if events is not None else None,
                              fuse_backend=kw.pop("backend", "inductor"))
    out = dict(generation.generate_continuous(model, tok, prompts, batch_size=3, chunk_tokens=4, decoder=decoder,
                                              **kw))
    return out, decoder




def _failing_backend(gm, example_inputs):
    """A torch.compile backend that fails the way inductor does on an op it cannot lower."""
    raise NotImplementedError("this backend lowers nothing")


# --------------------------------------------------------------------------------------- the auto rule
def _plan(name, gpus, cpu="64GB", **spec):
    from routerllm_cli.config import ModelSpec
    from routerllm_cli.hardware import HardwareReport, assume_hardware
    from routerllm_cli.plan import plan_model

    base = HardwareReport([], None, None, "none", 512 * 10**9, 500 * 10**9, assumed=False, disk_free={})
    return plan_model(ModelSpec(name=name, **spec), assume_hardware(gpus, cpu, base), seq_len=1408)


def test_auto_fuses_captured_models_of_several_gb_and_leaves_the_small_ones_unfused():
    big = choose_decode("auto", _plan("codellama_7b", "1x80GB"), continuous=True, cuda_available=True)
    assert (big.path, big.capture, big.fuse) == ("compiled", True, True) and "13 GB of weights" in big.fuse_reason
    small = choose_decode("auto", _plan("smollm2_135m", "1x80GB"), continuous=True, cuda_available=True)
    assert (small.path, small.fuse) == ("compiled", False) and "under 4 GB" in small.fuse_reason
    forced = choose_decode("auto", _plan("smollm2_135m", "1x80GB"), continuous=True, cuda_available=True, fuse="on")
    assert forced.fuse and forced.fuse_reason.startswith("on was asked for")
    off = choose_decode("auto", _plan("codellama_7b", "1x80GB"), continuous=True, cuda_available=True, fuse="off")
    assert not off.fuse and off.fuse_reason == "off was asked for"
    four = choose_decode("auto", _plan("codellama_7b", "1x80GB", use_4bit=True), continuous=True, cuda_available=True)
    assert four.path == "compiled" and not four.fuse and "4bit" in four.fuse_reason
    cpu = choose_decode("compiled", _plan("smollm2_135m", None), continuous=True)
    assert (cpu.capture, cpu.fuse) == (False, False) and "uncaptured" in cpu.fuse_reason
    assert choose_decode("compiled", _plan("smollm2_135m", None), continuous=True, fuse="on").fuse
    offloaded = choose_decode("auto", _plan("codellama_7b", "1x8GB"), continuous=True, cuda_available=True, fuse="on")
    assert offloaded.path == "eager" and not offloaded.fuse and "does not run" in offloaded.fuse_reason


# --------------------------------------------------------------------------------------- settings and errors
@pytest.mark.parametrize("command", ["bench", "compare"])
def test_a_decode_fuse_typo_is_one_line_naming_the_choices(command):
    res = runner.invoke(app, [command, "--decode-fuse", "yes", "-n", "1"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--decode-fuse 'yes' is not a fusion setting" in lines[0] and "auto, on or off" in lines[0]


def test_decode_fuse_in_yaml_and_env_is_checked_and_precedence_holds(tmp_path, monkeypatch):
    from routerllm_cli.config import load_settings

    cfg = tmp_path / "c.yaml"
    cfg.write_text("bench: {decode_fuse: maybe}\n")
    res = runner.invoke(app, ["offload", "clean", "--config", str(cfg), "--dry-run"])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "decode_fuse" in lines[0], res.stderr
    cfg.write_text("bench: {decode_fuse: 'on'}\n")
    assert load_settings(cfg, {}).bench.decode_fuse == "on"
    monkeypatch.setenv("ROUTERLLM_BENCH__DECODE_FUSE", "off")
    assert load_settings(cfg, {}).bench.decode_fuse == "off"
    assert load_settings(cfg, {"bench": {"decode_fuse": "auto"}}).bench.decode_fuse == "auto"
    assert load_settings(None, {}).bench.decode_fuse == "off"
    monkeypatch.delenv("ROUTERLLM_BENCH__DECODE_FUSE")
    assert load_settings(None, {}).bench.decode_fuse == "auto"


def test_the_compile_cache_lives_under_routerllm_cache_unless_the_user_names_one(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("ROUTERLLM_CACHE", str(tmp_path / "rl"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert compile_cache_dir() == tmp_path / "rl" / "torch_compile"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what torch writes there by itself
    assert compile_cache_dir() == tmp_path / "rl" / "torch_compile"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache_dir() == tmp_path / "mine"


# --------------------------------------------------------------------------------------- falling back
def test_a_compile_that_fails_leaves_the_unfused_step_with_the_reason_and_the_same_answers(tiny):
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=9)
    single = {k: generation.generate_batch(model, tok, [p], **kw)[0] for k, p in prompts}
    events: list = []
    static, decoder = _decode(model, tok, prompts, fuse=True, events=events, backend=_failing_backend, **kw)
    _same(static, single)
    report = decoder.report()
    assert report["fallback"] is None and report["static_chunks"] > 0  # the run stayed on the static step
    assert not report["fused"] and report["fused_buckets"] == 0
    assert report["fuse_fallback"].startswith("compiling the fused step failed: BackendCompilerFailed")
    assert "this backend lowers nothing" in report["fuse_fallback"]
    assert [k for k, _ in events][:3] == ["compiling", "fuse_fallback", "capture"]
    assert all("forward" not in layer.__dict__ for layer in model.model.layers)  # the layers are as they were


def test_layers_behind_hooks_are_not_fused_and_the_step_runs_unfused(tiny, tiny_llama_dir):
    import torch
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
    from transformers import AutoModelForCausalLM

    _, tok, prompts = tiny
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    kw = dict(max_new_tokens=7)
    single = {k: generation.generate_batch(model, tok, [p], **kw)[0] for k, p in prompts[:3]}
    add_hook_to_module(model.model.layers[1], ModelHook())
    static, decoder = _decode(model, tok, prompts[:3], fuse=True, **kw)
    _same(static, single)
    assert "hooks on their forward" in decoder.report()["fuse_fallback"]
    remove_hook_from_module(model.model.layers[1])  # leaves the layer's own forward bound on the instance
    from routerllm_cli.decode.fuse import decoder_layers

    assert len(decoder_layers(model)) == 4  # which is no hook


def test_a_compile_cache_folder_that_cannot_be_made_leaves_the_unfused_step(tiny, tmp_path, monkeypatch):
    model, tok, prompts = tiny
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("ROUTERLLM_CACHE", str(tmp_path / "a_file"))  # its torch_compile folder cannot be made
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    kw = dict(max_new_tokens=5)
    single = {k: generation.generate_batch(model, tok, [p], **kw)[0] for k, p in prompts[:2]}
    static, decoder = _decode(model, tok, prompts[:2], fuse=True, **kw)
    _same(static, single)
    report = decoder.report()
    assert report["fuse_fallback"].startswith("fusion is unavailable: ") and report["fallback"] is None


# --------------------------------------------------------------------------------------- the fused step
@pytest.mark.slow
def test_fused_step_answers_equal_generate_and_a_second_compile_is_answered_by_the_cache(tiny, tmp_path, monkeypatch):
    """Cold: inductor compiles each bucket once for all four layers (C++ through gcc, ~30 s); after dynamo forgets
    them, the same buckets load from the cache under ROUTERLLM_CACHE."""
    import torch

    monkeypatch.setenv("ROUTERLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=17, stop_sequences=("\n", "e"))
    single = {k: generation.generate_batch(model, tok, [p], **kw)[0] for k, p in prompts}
    torch._dynamo.reset()
    events: list = []
    fused, decoder = _decode(model, tok, prompts, fuse=True, events=events, **kw)
    _same(fused, single)
    report = decoder.report()
    assert report["fused"] and report["fuse_fallback"] is None and report["fallback"] is None, json.dumps(report)
    assert report["fused_buckets"] == 2 and report["compile_cache"] == "cold" and report["compile_seconds"] > 0
    assert report["compile_cache_dir"] == str(tmp_path / "cache" / "torch_compile")
    assert any((tmp_path / "cache" / "torch_compile").rglob("*")), "nothing was written to the compile cache"
    assert [d["tokens"] for k, d in events if k == "capture"] == [128, 128]
    torch._dynamo.reset()
    again, decoder = _decode(model, tok, prompts, fuse=True, **kw)
    _same(again, single)
    assert decoder.report()["compile_cache"] == "warm"


@pytest.mark.slow
def test_bench_decode_fuse_on_gives_the_eager_answers_and_reports_compile_apart_from_capture(tiny_llama_dir, tmp_path):
    def bench(*flags: str) -> tuple[dict, dict, str]:
        run_dir = tmp_path / "-".join(flags)
        args = ["bench", "--model", str(tiny_llama_dir), "-n", "4", "--batch-size", "2", "--max-new-tokens", "8",
                "--device", "cpu", "--batching", "continuous", "--skip-execution", "--run-dir", str(run_dir), *flags]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
        return json.loads((run_dir / "summary.json").read_text()), {s["task_id"]: s["raw"] for s in samples}, res.stderr

    summary, fused, screen = bench("--decode", "compiled", "--decode-fuse", "on")
    _, eager, _ = bench("--decode", "eager")
    assert fused == eager and len(fused) == 4
    decode = summary["decode"]
    assert decode["path"] == "compiled" and decode["fuse"] and decode["fused"] and decode["fused_buckets"] >= 1
    assert decode["compile_seconds"] > 0 and decode["capture_seconds"] == 0.0  # uncaptured on a CPU
    assert decode["compile_cache"] in ("cold", "warm", "mixed", "reused")
    assert "decode fusion: on (on was asked for" in screen and "compiling the fused decode step for batch" in screen
