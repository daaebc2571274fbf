"""The planner on the catalog's shipped configs and on a tiny real checkpoint: parameter counts, byte totals,
placement identical to accelerate's, reserves, verdicts and fixes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from routerllm_cli.catalog import resolve_model
from routerllm_cli.config import NF4_BYTES_PER_PARAM, ModelSpec
from routerllm_cli.errors import ConfigError
from routerllm_cli.hardware import GPUInfo, HardwareReport, assume_hardware
from routerllm_cli.plan import (CUDA_CONTEXT_BYTES, build_meta_model, device_of, model_sizes, place_modules,
                                plan_model)

GB = 10**9
_META: dict = {}


def meta(name: str, dtype: str = "bfloat16"):
    """Meta-device models are cheap but not free (405B: ~2 s); build each once per test session."""
    key = (name, dtype)
    if key not in _META:
        _META[key] = build_meta_model(resolve_model(name), ModelSpec(name=name), dtype=dtype)
    return _META[key]


def machine(gpus: str | None, cpu: str) -> HardwareReport:
    base = HardwareReport([], None, None, "none", 512 * GB, 500 * GB, assumed=False, disk_free={})
    return assume_hardware(gpus, cpu, base)


def plan(name: str, gpus: str | None, cpu: str, batch_size: int | None = 1, **spec):
    """A catalog model planned for `batch_size` sequences of 1408 tokens (None: the planner chooses the batch)."""
    return plan_model(ModelSpec(name=name, **spec), machine(gpus, cpu), seq_len=1408, batch_size=batch_size,
                      model=meta(name, spec.get("torch_dtype", "bfloat16")))


@pytest.mark.parametrize("name, official, tolerance", [
    ("llama3_405b", 405.85e9, 0.005), ("bloom_176b", 176.25e9, 0.005), ("codellama_70b", 68.98e9, 0.005),
    ("falcon_180b", 180e9, 0.01),
])
def test_parameter_counts_match_the_official_ones(name, official, tolerance):
    params = model_sizes(meta(name), "none").params
    assert abs(params - official) / official < tolerance, f"{name}: {params / 1e9:.3f}B"


def _linear_params_405b() -> int:
    """Llama-3.1-405B's quantizable weights from its published shape, independently of the model code."""
    h, inter, heads, kv, layers, hd = 16384, 53248, 128, 8, 126, 128
    per_layer = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * inter
    return layers * per_layer


def test_405b_byte_totals_in_fp16_int8_nf4():
    model = meta("llama3_405b")
    params = model_sizes(model, "none").params
    linear = _linear_params_405b()
    rest = params - linear  # embeddings, lm_head, norms: kept 16-bit by bitsandbytes/transformers
    fp16 = model_sizes(model, "none").gpu[""]
    int8 = model_sizes(model, "8bit").gpu[""]
    nf4 = model_sizes(model, "4bit")
    buffers = fp16 - 2 * params  # rotary inv_freq, a few hundred bytes
    assert 0 <= buffers < 10_000
    assert fp16 == pytest.approx(811.7 * GB, rel=1e-3)
    assert int8 - buffers == linear + 2 * rest
    assert nf4.gpu[""] - buffers == pytest.approx(linear * NF4_BYTES_PER_PARAM + 2 * rest, abs=126 * 7)
    assert nf4.quantized_params == linear
    assert nf4.gpu[""] == pytest.approx(234.3 * GB, rel=2e-3)
    assert nf4.host[""] == fp16  # where transformers offloads, it keeps 16-bit


def test_405b_on_two_80gb_gpus_and_200gb_cpu_is_no_go_in_fp16_and_names_4bit():
    p = plan("llama3_405b", "2x80GB", "200GB")
    assert p.verdict == "no-go"
    assert any("disk" in r and "offload_folder" in r for r in p.reasons)
    assert any("use_4bit: true" in f for f in p.fixes)
    assert any("offload_folder" in f for f in p.fixes)
    assert "use codellama_70b" in p.fixes
    assert p.weight_bytes == pytest.approx(811.7 * GB, rel=1e-3)


def test_405b_4bit_on_four_80gb_gpus_needs_no_cpu_offload():
    p = plan("llama3_405b", "4x80GB", "200GB", use_4bit=True)
    assert p.verdict == "go", p.reasons
    assert set(p.device_map.values()) == {0, 1, 2, 3}
    assert p.devices["cpu"].weight_bytes == 0 and "disk" not in p.devices
    for d in "0123":
        a = p.devices[d]
        assert a.layers is not None and a.free_after_bytes >= 0
        assert a.weight_bytes + a.reserve_bytes <= 80 * GB
    covered = sorted(i for d in "0123" for i in range(p.devices[d].layers[0], p.devices[d].layers[1] + 1))
    assert covered == list(range(126))


def test_405b_4bit_on_two_gpus_holds_offloaded_layers_packed_under_routerllms_engine():
    p = plan("llama3_405b", "2x80GB", "400GB", use_4bit=True)
    assert p.verdict == "go", p.reasons
    cpu = p.devices["cpu"]
    assert cpu.layers is not None and "disk" not in p.devices and p.host_format == "nf4"
    # quantized while loading: the CPU holds its decoder layers in NF4, as the GPUs do
    sizes = model_sizes(meta("llama3_405b"), "4bit", host_packed=True)
    layers = [k for k in cpu.modules if k.startswith("model.layers.")]
    assert len(layers) == cpu.layers[1] - cpu.layers[0] + 1
    assert sum(sizes.host[k] for k in layers) == sum(sizes.gpu[k] for k in layers)
    assert cpu.weight_bytes == sum(sizes.gpu[k] for k in cpu.modules)
    assert any("quantized to NF4 while loading" in n for n in p.notes)
    assert cpu.reserve_detail["quantize_staging"] == sizes.largest_linear * 2  # one 16-bit weight at a time
    # the offload engine's double buffer sits on the GPU that runs the offloaded layers: the last one
    staging = p.devices["1"].reserve_detail["offload_staging"]
    assert staging == 2 * max(sizes.gpu[k] for k in cpu.modules)


def test_405b_4bit_under_accelerates_hooks_keeps_offloaded_layers_in_16bit():
    p = plan("llama3_405b", "2x80GB", "400GB", use_4bit=True, offload_engine="accelerate", batch_size=1)
    cpu = p.devices["cpu"]
    assert cpu.layers is not None and p.host_format == "16-bit"
    sizes = model_sizes(meta("llama3_405b"), "4bit")
    layers = [k for k in cpu.modules if k.startswith("model.layers.")]
    ratio = sum(sizes.host[k] for k in layers) / sum(sizes.gpu[k] for k in layers)
    assert ratio == pytest.approx(2 / NF4_BYTES_PER_PARAM, rel=0.01)
    assert any("load unquantized" in n for n in p.notes)


def test_kv_cache_is_reserved_on_the_device_that_runs_each_layer():
    p = plan_model(ModelSpec(name="llama3_405b", use_4bit=True), machine("4x80GB", "200GB"), batch_size=8,
                   seq_len=2048, model=meta("llama3_405b"))
    per_token = 2 * 126 * 8 * 128 * 2  # K and V, 126 layers, 8 KV heads x 128 dims, bf16
    assert p.kv_bytes_per_token == per_token
    per_layer = per_token // 126 * 8 * 2048
    for d in "0123":
        a = p.devices[d]
        n_layers = a.layers[1] - a.layers[0] + 1
        assert a.kv_bytes == n_layers * per_layer
        assert a.reserve_detail["cuda_context"] == CUDA_CONTEXT_BYTES
    assert sum(p.devices[d].kv_bytes for d in "0123") == per_token * 8 * 2048


def test_offloaded_layers_keep_their_kv_cache_on_the_execution_gpu():
    p = plan("codellama_70b", "1x80GB", "200GB")
    assert p.verdict == "go" and p.devices["cpu"].layers is not None
    per_layer = p.kv_bytes_per_token // 80 * 1408
    assert p.devices["0"].kv_bytes == 80 * per_layer  # all 80 layers run on GPU 0
    assert p.devices["cpu"].kv_bytes == 0


def test_offloaded_layers_run_where_each_engine_runs_them():
    """routerllm's engine runs offloaded layers on the GPU before them (the last one here); accelerate's hooks on
    the first GPU. Their KV cache and staging buffers go there."""
    ours = plan("codellama_70b", "2x40GB", "200GB", device_map="sequential")
    stock = plan("codellama_70b", "2x40GB", "200GB", device_map="sequential", offload_engine="accelerate")
    per_layer = ours.kv_bytes_per_token // 80 * 1408
    for p, runner, other in ((ours, "1", "0"), (stock, "0", "1")):
        a, b, cpu = p.devices[runner], p.devices[other], p.devices["cpu"]
        assert cpu.layers is not None and "offload_staging" in a.reserve_detail
        assert "offload_staging" not in b.reserve_detail
        offloaded = cpu.layers[1] - cpu.layers[0] + 1
        assert a.kv_bytes == (a.layers[1] - a.layers[0] + 1 + offloaded) * per_layer
        assert b.kv_bytes == (b.layers[1] - b.layers[0] + 1) * per_layer
    assert ours.devices["1"].reserve_detail["offload_staging"] == 2 * stock.devices["0"].reserve_detail["offload_staging"]


@pytest.mark.parametrize("name, budgets", [
    ("bloom_176b", {0: 60 * GB, 1: 70 * GB, "cpu": 100 * GB}),  # tied embeddings
    ("codellama_70b", {0: 20 * GB, 1: 30 * GB, "cpu": 40 * GB}),
    ("falcon_180b", {0: 1 * GB, 1: 1 * GB}),  # nothing fits: all on disk
    ("smollm2_135m", {"cpu": 100 * 10**6}),
])
def test_placement_is_accelerates_algorithm(name, budgets):
    from accelerate.utils import infer_auto_device_map

    model = meta(name)
    sizes = model_sizes(model, "none")
    no_split = list(model._no_split_modules)
    ours = place_modules(model, dict(budgets), no_split, lambda d: sizes.host)
    theirs = infer_auto_device_map(model, max_memory=dict(budgets), no_split_module_classes=no_split)
    assert dict(ours) == dict(theirs)


def test_tiny_checkpoint_plan_with_cpu_and_disk_loads_as_planned(tiny_llama_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "offload"
    spec = ModelSpec(name=str(tiny_llama_dir), torch_dtype="float32", max_memory={"cpu": "460KB"},
                     offload_folder=folder)
    hw = HardwareReport([], None, None, "no GPU", 16 * GB, 12 * GB, assumed=False, disk_free={})
    p = plan_model(spec, hw, seq_len=64)
    assert p.verdict == "go", p.reasons
    assert p.devices["cpu"].layers == (0, 1) and p.devices["disk"].layers == (2, 3)
    assert p.devices["cpu"].weight_bytes <= p.max_memory["cpu"]
    assert p.num_layers == 4 and p.dtype == "float32"

    no_folder = plan_model(spec.model_copy(update={"offload_folder": None, "max_memory": {}}),
                           HardwareReport([], None, None, "", 16 * GB, 12 * GB, assumed=False), seq_len=64)
    assert no_folder.verdict == "go" and "disk" not in no_folder.devices  # plenty of RAM: no disk needed

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, device_map=p.device_map, offload_folder=folder,
                                                 dtype=torch.float32)
    placed = {n: device_of(n, p.device_map) for n, _ in model.named_parameters()}
    assert {str(d) for d in placed.values()} == {"cpu", "disk"}
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 17]])
    out = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, reference.generate(ids, max_new_tokens=6, do_sample=False))


def test_disk_spill_without_offload_folder_is_no_go_naming_it(tiny_llama_dir):
    spec = ModelSpec(name=str(tiny_llama_dir), torch_dtype="float32", max_memory={"cpu": "460KB"})
    p = plan_model(spec, HardwareReport([], None, None, "", 16 * GB, 12 * GB, assumed=False), seq_len=64)
    assert p.verdict == "no-go"
    assert "offload_folder" in p.reasons[0]
    assert any(f.startswith("add offload_folder") for f in p.fixes)


def test_declared_budgets_that_only_4bit_fits_are_a_config_error():
    spec = ModelSpec(name="llama3_405b", max_memory={0: "80GB", 1: "80GB", "cpu": "200GB"})
    with pytest.raises(ConfigError) as err:
        plan_model(spec, machine("2x80GB", "256GB"), model=meta("llama3_405b"))
    assert err.value.exit_code == 2 and err.value.fix == "set use_4bit: true"


def test_user_budget_is_capped_by_the_hardware_and_reserves():
    p = plan_model(ModelSpec(name="codellama_70b", max_memory={0: "200GB", "cpu": "100GB"}),
                   machine("1x80GB", "256GB"), seq_len=1408, model=meta("codellama_70b"))
    assert p.max_memory[0] <= 80 * GB - p.devices["0"].reserve_bytes
    assert p.max_memory["cpu"] == 100 * GB
    assert any("max_memory[0]" in n and "capped" in n for n in p.notes)


def test_other_processes_on_a_gpu_shrink_its_budget():
    gpus = [GPUInfo(0, "NVIDIA H100 80GB HBM3", 80 * GB, 80 * GB), GPUInfo(1, "NVIDIA H100 80GB HBM3", 80 * GB, 50 * GB,
                                                                          [{"pid": 7, "used_bytes": 30 * GB}])]
    hw = HardwareReport(gpus, "550", "12.4", None, 256 * GB, 250 * GB, assumed=False)
    p = plan_model(ModelSpec(name="codellama_70b", device_map="sequential"), hw, seq_len=1408,
                   model=meta("codellama_70b"))
    assert p.verdict == "go"
    assert p.devices["1"].weight_bytes + p.devices["1"].reserve_bytes <= 50 * GB
    assert p.devices["cpu"].weight_bytes > 0  # what GPU 1 cannot take goes to the CPU


def test_quantization_without_any_gpu_is_no_go():
    hw = HardwareReport([], None, None, "no driver", 512 * GB, 500 * GB, assumed=False)
    p = plan_model(ModelSpec(name="codellama_7b", use_4bit=True), hw, model=meta("codellama_7b"))
    assert p.verdict == "no-go" and "GPU" in p.reasons[0]


def test_stock_accelerate_offload_is_estimated_slower_than_the_engine():
    fast = plan("codellama_70b", "1x80GB", "200GB")
    slow = plan("codellama_70b", "1x80GB", "200GB", offload_engine="accelerate")
    assert fast.device_map == {k: v for k, v in fast.device_map.items()}
    cpu_bytes = fast.devices["cpu"].weight_bytes
    extra = cpu_bytes / 7.7e9 - cpu_bytes / 54.8e9
    assert slow.estimates["seconds_per_token"] > fast.estimates["seconds_per_token"]
    assert slow.estimates["seconds_per_token_floor"] - fast.estimates["seconds_per_token_floor"] == pytest.approx(
        extra, rel=0.05)


def test_estimates_follow_bandwidths_on_gpu_only_plans():
    p = plan("codellama_70b", "2x80GB", "200GB")
    e = p.estimates
    weights = p.weight_bytes
    assert e["seconds_per_token_floor"] == pytest.approx(weights / 3.0e12, rel=0.05)
    assert e["load_seconds"] == pytest.approx(p.checkpoint_bytes / 2e9, rel=0.01)
    assert e["bench_seconds"] >= 164 * 384 * e["seconds_per_token"]
    assert set(e) >= {"load_seconds", "seconds_per_token", "bench_seconds"}


def test_plan_to_dict_is_json_ready():
    p = plan("codellama_70b", "2x80GB", "200GB")
    d = json.loads(json.dumps(p.to_dict()))
    assert d["devices"]["0"]["layers"] == p.devices["0"].layer_text
    assert {"weight_bytes", "reserve_bytes", "layers"} <= set(d["devices"]["1"])
    assert d["weight_bytes"] == p.weight_bytes and d["verdict"] == "go"


def _write_gguf(folder: Path) -> Path:
    import gguf
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(folder / "tiny.gguf"), "llama")
    for add, value in (("context_length", 256), ("embedding_length", 64), ("feed_forward_length", 128),
                       ("head_count", 4), ("head_count_kv", 2), ("block_count", 3), ("vocab_size", 100)):
        getattr(w, f"add_{add}")(value)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(100)])
    w.add_tensor("token_embd.weight", np.zeros((100, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return folder / "tiny.gguf"


def test_gguf_file_plans_from_its_metadata(tmp_path):
    path = _write_gguf(tmp_path / "gguf")
    p = plan_model(ModelSpec(name=str(path), torch_dtype="bfloat16"),
                   HardwareReport([], None, None, "", 16 * GB, 12 * GB, assumed=False))
    assert p.model.kind == "gguf" and p.model_type == "llama" and p.num_layers == 3
    assert p.kv_bytes_per_token == 2 * 3 * 2 * 16 * 2
    assert p.checkpoint_bytes == path.stat().st_size


def test_hub_id_needs_its_config_json_in_the_cache_when_offline(tiny_llama_dir, monkeypatch):
    import os
    import shutil

    spec = ModelSpec(name="someorg/tiny-llama")
    hw = HardwareReport([], None, None, "", 16 * GB, 12 * GB, assumed=False)
    with pytest.raises(ConfigError) as err:
        plan_model(spec, hw)
    assert "hf download someorg/tiny-llama config.json" in err.value.one_line()

    # the hub cache layout, as `hf download someorg/tiny-llama config.json` leaves it
    repo = Path(os.environ["HF_HOME"]) / "hub" / "models--someorg--tiny-llama"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copy(tiny_llama_dir / "config.json", snap / "config.json")
    p = plan_model(spec, hw)
    assert p.model.kind == "hub" and p.num_layers == 4 and p.verdict == "go"
    assert p.checkpoint_bytes == 2 * p.params  # weights not downloaded: the published 16-bit size


def test_explicit_device_map_is_checked_not_replaced(tiny_llama_dir):
    hw = HardwareReport([], None, None, "", 16 * GB, 12 * GB, assumed=False)
    good = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
            "lm_head": "cpu"}
    p = plan_model(ModelSpec(name=str(tiny_llama_dir), device_map=good), hw, seq_len=64)
    assert p.verdict == "go" and p.device_map == good
    partial = {k: v for k, v in good.items() if k != "lm_head"}
    p = plan_model(ModelSpec(name=str(tiny_llama_dir), device_map=partial), hw, seq_len=64)
    assert p.verdict == "no-go" and any("lm_head" in r for r in p.reasons)
    on_gpu = {**good, "lm_head": 3}
    p = plan_model(ModelSpec(name=str(tiny_llama_dir), device_map=on_gpu), hw, seq_len=64)
    assert p.verdict == "no-go" and any("GPU 3" in r for r in p.reasons)


def test_catalog_plans_offline_in_every_precision():
    for name in ("falcon_180b", "bloom_176b"):
        for quant in ({}, {"use_8bit": True}, {"use_4bit": True}):
            p = plan(name, "3x80GB", "256GB", **quant)
            assert p.verdict == "go", (name, quant, p.reasons)
            assert math.isclose(sum(a.weight_bytes for a in p.devices.values()), p.weight_bytes)


def test_decode_estimate_uses_each_gpus_memory_bandwidth():
    def on(name: str):
        gpus = [GPUInfo(i, name, 141 * GB, 141 * GB) for i in range(2)]
        hw = HardwareReport(gpus, "550", "12.4", None, 256 * GB, 250 * GB, assumed=False)
        return plan_model(ModelSpec(name="codellama_70b"), hw, seq_len=1408, model=meta("codellama_70b"))

    h200, h100 = on("NVIDIA H200"), on("NVIDIA H100 80GB HBM3")
    assert h200.devices == h100.devices  # same placement, different speed
    ratio = h100.estimates["seconds_per_token_floor"] / h200.estimates["seconds_per_token_floor"]
    assert ratio == pytest.approx(4.8 / 3.35, rel=0.02)
    assert any("H200 class" in n for n in h200.notes)


def test_auto_dtype_is_the_catalogs_for_embedded_models_else_the_machines():
    from routerllm_cli.plan import compute_dtype

    two_gpus, cpu_only = machine("2x80GB", "200GB"), machine(None, "200GB")
    assert compute_dtype(ModelSpec(name="llama3_405b"), two_gpus, resolve_model("llama3_405b")) == "bfloat16"
    assert compute_dtype(ModelSpec(name="llama3_405b"), cpu_only, resolve_model("llama3_405b")) == "float32"
    smol = resolve_model("smollm2_135m")
    assert compute_dtype(ModelSpec(name="smollm2_135m"), two_gpus, smol) == "float32"
    assert compute_dtype(ModelSpec(name="smollm2_135m", torch_dtype="bfloat16"), two_gpus, smol) == "bfloat16"


def test_gpus_left_out_of_max_memory_are_not_used():
    """The setup guide's 3-GPU layout on a 4-GPU machine: as in accelerate, GPU 3 gets nothing."""
    budgets = {0: 70 * 10**9, 1: 70 * 10**9, 2: 70 * 10**9, "cpu": 200 * 10**9}
    p = plan("llama3_405b", "4x80GB", "256GB", use_4bit=True, max_memory=budgets)
    assert set(p.device_map.values()) >= {0, 1, 2} and 3 not in set(p.device_map.values())
    assert p.devices["3"].weight_bytes == 0 and p.max_memory[3] == 0
    assert p.devices["cpu"].weight_bytes > 0  # 3 x 70 GB is not enough for 405B in 4-bit: the rest is on the CPU
    assert any("GPU 3 left unused" in n for n in p.notes)
    # naming only the CPU leaves every GPU in play
    q = plan("llama3_405b", "4x80GB", "256GB", use_4bit=True, max_memory={"cpu": 200 * 10**9})
    assert {0, 1, 2, 3} <= set(q.device_map.values())
    assert not any("left unused" in n for n in q.notes)
