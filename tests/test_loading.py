"""The loader on CPU with the tiny real Llama: placement as planned, same greedy tokens, the offload-folder lock,
progress, and the one-line failures a user sees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from routerllm_cli.catalog import resolve_model
from routerllm_cli.config import ModelSpec
from routerllm_cli.errors import ConfigError, NoGoError, RunFailed
from routerllm_cli.loading import load_model, test_generation, translate_load_error

PROMPT = "def add(a, b):\n    return"

SPLIT_MAP = {
    "model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
    "model.layers.2": "disk", "model.layers.3": "disk", "model.norm": "disk", "lm_head": "disk",
}


def make_plan(model_dir: Path, device_map: dict, *, quantization: str = "none", dtype: str = "float32",
              max_memory: dict | None = None):
    """A DevicePlan written by hand, as the planner would hand it over for this placement."""
    from routerllm_cli.plan import DeviceAllocation, DevicePlan

    devices = {}
    for dev in dict.fromkeys(str(v) for v in device_map.values()):
        layers = sorted(int(k.rsplit(".", 1)[1]) for k, v in device_map.items()
                        if str(v) == dev and k.startswith("model.layers."))
        devices[dev] = DeviceAllocation(device=dev, modules=[k for k, v in device_map.items() if str(v) == dev],
                                        layers=(layers[0], layers[-1]) if layers else None, weight_bytes=0,
                                        reserve_bytes=0, budget_bytes=0, free_after_bytes=0)
    return DevicePlan(
        model=resolve_model(str(model_dir)), model_type="llama", dtype=dtype, quantization=quantization,
        device_map=dict(device_map), max_memory=dict(max_memory or {}), no_split_module_classes=["LlamaDecoderLayer"],
        devices=devices, weight_bytes=0, num_layers=4, kv_bytes_per_token=0, batch_size=1, seq_len=256,
        verdict="go", reasons=[], fixes=[], estimates={}, notes=[],
    )


def reference_tokens(model_dir: Path, max_new_tokens: int) -> list[int]:
    """Greedy tokens from plain transformers with the whole model in memory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tok(PROMPT, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    return out[0, ids["input_ids"].shape[1]:].tolist()


@pytest.fixture(scope="module")
def reference(tiny_llama_dir: Path) -> list[int]:
    return reference_tokens(tiny_llama_dir, 12)


def offload_folder() -> Path:
    return Path(os.environ["ROUTERLLM_OFFLOAD_FOLDER"])


@pytest.mark.parametrize("engine", ["routerllm", "accelerate"])
def test_cpu_and_disk_plan_generates_the_in_memory_tokens(tiny_llama_dir, reference, engine):
    plan = make_plan(tiny_llama_dir, SPLIT_MAP)
    spec = ModelSpec(name="tiny", offload_folder=offload_folder(), torch_dtype="float32", offload_engine=engine)
    with load_model(plan, spec) as loaded:
        summary = loaded.device_map_summary
        assert summary["cpu"]["layers"] == "0-1" and summary["disk"]["layers"] == "2-3"
        assert summary["cpu"]["bytes"] > 0 and summary["disk"]["bytes"] > 0
        assert str(loaded.input_device) == "cpu"
        assert loaded.attn_implementation == "sdpa" and loaded.attn_reason
        assert "disk" in loaded.offload_locations and loaded.memory_used["cpu"] > 0
        assert (loaded.offload is not None) == (engine == "routerllm")
        gen = test_generation(loaded, PROMPT, max_new_tokens=12)
    assert gen["token_ids"] == reference
    assert gen["tokens"] == len(reference) and gen["tokens_per_second"] > 0
    assert gen["time_to_first_token"] is not None and gen["time_to_first_token"] <= gen["seconds"]
    assert isinstance(gen["text"], str) and gen["text"]


def test_offload_clean_refuses_while_loaded_and_works_after_close(tiny_llama_dir):
    from typer.testing import CliRunner

    from routerllm_cli.cli.app import app

    folder = offload_folder()
    spec = ModelSpec(name="tiny", offload_folder=folder, torch_dtype="float32")
    loaded = load_model(make_plan(tiny_llama_dir, SPLIT_MAP), spec)
    (folder / "old.dat").write_bytes(b"x" * 100)
    runner = CliRunner()
    busy = runner.invoke(app, ["offload", "clean", "--yes"])
    assert busy.exit_code == 1
    assert "in use by pid" in busy.stderr and (folder / "old.dat").exists()
    loaded.close()
    assert not (folder / ".routerllm.lock").exists()
    done = runner.invoke(app, ["offload", "clean", "--yes"])
    assert done.exit_code == 0, done.stderr
    assert not (folder / "old.dat").exists()


def test_progress_reports_every_shard_and_byte(tiny_llama_dir):
    events: list[dict] = []
    plan = make_plan(tiny_llama_dir, {"": "cpu"})
    with load_model(plan, ModelSpec(name="tiny", torch_dtype="float32"), progress=events.append) as loaded:
        assert loaded.offload is None and loaded.device_map_summary["cpu"]["layers"] == ""
    stages = [e["stage"] for e in events]
    assert stages[0] == "checkpoint" and stages[-1] == "done" and "weights" in stages
    last = [e for e in events if e["stage"] == "weights"][-1]
    shards = len(list(tiny_llama_dir.glob("*.safetensors")))
    assert shards > 1
    assert last["shards_done"] == last["shards_total"] == shards
    assert last["bytes_done"] == last["bytes_total"] > 0
    assert events[-1]["load_seconds"] > 0


def test_quantization_without_a_gpu_is_one_line_naming_the_fix(tiny_llama_dir):
    plan = make_plan(tiny_llama_dir, {"": "cpu"}, quantization="4bit", dtype="bfloat16")
    spec = ModelSpec(name="tiny", use_4bit=True, offload_folder=offload_folder())
    with pytest.raises(NoGoError) as err:
        load_model(plan, spec)
    line = err.value.one_line()
    assert "CUDA GPU" in line and "--4bit" in line and "\n" not in line
    assert not (offload_folder() / ".routerllm.lock").exists()


def test_hub_model_missing_offline_names_the_download(tiny_llama_dir):
    plan = make_plan(tiny_llama_dir, {"": "cpu"})
    plan.model = resolve_model("someorg/not-downloaded-model")
    with pytest.raises(ConfigError) as err:
        load_model(plan, ModelSpec(name="x", torch_dtype="float32"))
    assert "hf download someorg/not-downloaded-model" in err.value.one_line()
    assert os.environ["HF_HOME"] in err.value.message  # the cache that was searched, from the environment


def test_disk_plan_without_offload_folder_is_a_config_error(tiny_llama_dir):
    plan = make_plan(tiny_llama_dir, SPLIT_MAP)
    with pytest.raises(ConfigError) as err:
        load_model(plan, ModelSpec(name="tiny", torch_dtype="float32"))
    assert "set offload_folder" in err.value.one_line()


def test_load_failures_become_one_line_fixes(tiny_llama_dir):
    import torch

    plan = make_plan(tiny_llama_dir, {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1,
                                      "model.layers.2": 1, "model.layers.3": 1, "model.norm": 1, "lm_head": 1},
                     max_memory={0: 70 * 10**9, 1: 60 * 10**9}, dtype="bfloat16")
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.75 GiB. GPU 1 has a total capacity of "
                                 "79.19 GiB of which 1.02 GiB is free.")
    err = translate_load_error(oom, plan, None)
    assert isinstance(err, RunFailed)
    assert "GPU 1" in err.message and "60.0 GB" in err.message and "--max-memory 1=51GB" in err.fix
    assert "--4bit" in err.fix

    gated = OSError("You are trying to access a gated repo.\nMake sure to have access to it at "
                    "https://huggingface.co/meta-llama/Llama-3.1-405B-Instruct.\n401 Client Error.")
    plan.model = resolve_model("llama3_405b")
    err = translate_load_error(gated, plan, None)
    assert isinstance(err, ConfigError) and "hf auth login" in err.fix and "HF_TOKEN" in err.fix

    full = OSError(28, "No space left on device", "/data/offload/model.layers.70.mlp.down_proj.weight.dat")
    err = translate_load_error(full, plan, Path("/data/offload"))
    assert isinstance(err, RunFailed) and "/data/offload" in err.message and "disk" in err.fix

    assert translate_load_error(ValueError("something else"), plan, None) is None


def test_read_ahead_reads_every_shard_and_keeps_tokens(tiny_llama_dir, monkeypatch):
    """A converting load (fp32 checkpoint, bf16 plan) with read-ahead gives the tokens of one without it."""
    from routerllm_cli.loading import checkpoint

    monkeypatch.setattr(checkpoint, "PREFETCH_MIN_BYTES", 0)  # the tiny checkpoint is far below the real threshold
    monkeypatch.setenv("ROUTERLLM_PREFETCH", "1")  # on by default only when the plan has GPUs
    plan = make_plan(tiny_llama_dir, {"": "cpu"}, dtype="bfloat16")
    spec = ModelSpec(name="tiny", torch_dtype="bfloat16")
    with load_model(plan, spec) as loaded:
        with_read_ahead = test_generation(loaded, PROMPT, max_new_tokens=4)["token_ids"]
        notes = [n for n in loaded.notes if n.startswith("read-ahead")]
    shard_bytes = sum(p.stat().st_size for p in tiny_llama_dir.glob("*.safetensors"))
    assert notes and f"{shard_bytes / 1e3:.1f} KB" in notes[0]
    monkeypatch.setenv("ROUTERLLM_PREFETCH", "0")
    with load_model(plan, spec) as loaded:
        assert not any(n.startswith("read-ahead") for n in loaded.notes)
        assert test_generation(loaded, PROMPT, max_new_tokens=4)["token_ids"] == with_read_ahead


def test_hub_id_loads_from_the_cache_under_hf_home_offline(tiny_llama_dir, reference):
    """A hub id resolves through the HF cache that $HF_HOME names, with HF_HUB_OFFLINE=1 (set for every test)."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(os.environ["HF_HOME"]) / "hub" / "models--someorg--tiny-llama"
    shutil.copytree(tiny_llama_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    plan = make_plan(tiny_llama_dir, {"": "cpu"})
    plan.model = resolve_model("someorg/tiny-llama")
    assert plan.model.kind == "hub"
    with load_model(plan, ModelSpec(name="tiny", torch_dtype="float32")) as loaded:
        assert loaded.checkpoint_bytes == sum(p.stat().st_size for p in tiny_llama_dir.glob("*.safetensors"))
        assert test_generation(loaded, PROMPT, max_new_tokens=12)["token_ids"] == reference


@pytest.fixture
def cudnn_sdp_flag():
    """The cuDNN SDPA switch is process-wide: put it back as found."""
    import torch

    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    yield torch.backends.cuda
    torch.backends.cuda.enable_cudnn_sdp(before)


def test_cudnn_attention_is_taken_out_for_gpu_models_only(cudnn_sdp_flag):
    from routerllm_cli.loading import choose_sdpa_backends

    cpu_map, gpu_map = {"model": "cpu"}, {"model.layers.0": 0, "model.layers.1": "cpu"}
    assert choose_sdpa_backends("sdpa", cpu_map, False) is None and cudnn_sdp_flag.cudnn_sdp_enabled()
    assert choose_sdpa_backends("flash_attention_2", gpu_map, False) is None and cudnn_sdp_flag.cudnn_sdp_enabled()
    assert choose_sdpa_backends("sdpa", gpu_map, True) is None and cudnn_sdp_flag.cudnn_sdp_enabled()
    note = choose_sdpa_backends("sdpa", gpu_map, False)
    assert "cuDNN backend off" in note and "cudnn_attention: true" in note
    assert not cudnn_sdp_flag.cudnn_sdp_enabled()


def test_cpu_load_leaves_the_attention_backends_alone(tiny_llama_dir, cudnn_sdp_flag):
    loaded = load_model(make_plan(tiny_llama_dir, {"": "cpu"}), ModelSpec(name="tiny", torch_dtype="float32"))
    try:
        assert cudnn_sdp_flag.cudnn_sdp_enabled()
        assert not any("cuDNN" in n for n in loaded.notes)
    finally:
        loaded.close()


@pytest.mark.slow
def test_gguf_tokenizer_gets_the_bos_its_file_asks_for(embedded_tokenizer):
    from routerllm_cli.loading import check_gguf_tokenizer

    tok, path = embedded_tokenizer("gemma3_270m")
    assert tok("def f():")["input_ids"][0] == 2  # Gemma's GGUF says add_bos_token
    tok._tokenizer.post_processor = None  # what transformers 5.18-5.22 hand back for this file
    assert tok("def f():")["input_ids"][0] != 2
    assert check_gguf_tokenizer(tok, path) == [f"tokenizer: BOS 2 added, as {path.name} asks"]
    assert tok("def f():")["input_ids"][0] == 2 and tok("def f():")["input_ids"].count(2) == 1

    smol, smol_path = embedded_tokenizer("smollm2_135m")  # its GGUF adds no BOS: left as it is
    before = smol("def f():")["input_ids"]
    assert check_gguf_tokenizer(smol, smol_path) == [] and smol("def f():")["input_ids"] == before


@pytest.mark.slow
def test_a_transformers_that_mis_splits_gguf_sentencepiece_is_refused(embedded_tokenizer, monkeypatch):
    import transformers

    from routerllm_cli.loading import check_gguf_tokenizer

    tok, path = embedded_tokenizer("gemma3_270m")
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    with pytest.raises(ConfigError) as info:
        check_gguf_tokenizer(tok, path)
    assert "wrong pieces" in str(info.value) and "transformers>=5.23" in info.value.fix
    smol, smol_path = embedded_tokenizer("smollm2_135m")  # a BPE ("gpt2") tokenizer converts fine there
    assert check_gguf_tokenizer(smol, smol_path) == []


def test_the_cli_maps_failures_outside_a_load_through_the_same_table():
    """The last line of defence (cli/errors.py) reads loading/failures.py's table, without a plan to name a GPU."""
    import errno

    import torch
    import typer

    from routerllm_cli.cli.errors import handle_errors

    def failing(exc):
        @handle_errors
        def command():
            raise exc
        return command

    cases = [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 1, "--4bit"),
        (OSError("You are trying to access a gated repo.\nMore text"), 2, "hf auth login"),
        (OSError(errno.ENOSPC, "No space left on device", "/data/x"), 1, "larger disk"),
        (OSError("Cannot reach the hub: offline mode is enabled."), 2, "hf download"),
    ]
    for exc, code, fix in cases:
        known = translate_load_error(exc)
        assert known is not None and known.exit_code == code and fix in known.fix, exc
        with pytest.raises(typer.Exit) as info:
            failing(exc)()
        assert info.value.exit_code == code
    assert translate_load_error(ValueError("something else")) is None


@pytest.mark.parametrize("endian", ["little", "big"])
def test_gguf_tokenizer_keys_are_read_without_parsing_the_vocabulary(tmp_path, endian):
    """The header reader stops at the last key it needs and agrees with gguf's own GGUFReader; a big-endian file
    (which it does not read) goes to GGUFReader."""
    import numpy as np
    from gguf import GGUFEndian, GGUFReader, GGUFWriter

    from routerllm_cli.loading.tokenizer import _GGUF_META_KEYS, _gguf_tokenizer_meta

    path = tmp_path / "tiny.gguf"
    w = GGUFWriter(str(path), "llama", endianess=GGUFEndian.BIG if endian == "big" else GGUFEndian.LITTLE)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"piece{i}" for i in range(5000)])  # the arrays a vocabulary is made of, skipped unread
    w.add_token_scores([0.25] * 5000)
    w.add_string("general.note", "a string before the last key")
    w.add_bos_token_id(2)
    w.add_add_bos_token(True)
    w.add_uint32("after.the.keys", 7)
    w.add_tensor("w", np.zeros((2, 2), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    reader = GGUFReader(str(path))
    expected = {name: reader.fields[key].contents() for key, name in _GGUF_META_KEYS.items()}
    assert _gguf_tokenizer_meta(path) == expected == {"model": "llama", "bos_token_id": 2, "add_bos_token": True}
