"""The planner chooses the batch and the placement together, for the bench's wall time; the plan is the one
contract for dtype, run devices and the KV room."""

from __future__ import annotations

from pathlib import Path

import pytest

from routerllm_cli.catalog import resolve_model
from routerllm_cli.config import ModelSpec, load_settings
from routerllm_cli.hardware import HardwareReport, assume_hardware
from routerllm_cli.plan import CPU_BATCH, build_meta_model, plan_for_run, plan_model
from routerllm_cli.plan.throughput import candidates

GB = 10**9
_META: dict = {}


def meta(name: str):
    if name not in _META:
        _META[name] = build_meta_model(resolve_model(name), ModelSpec(name=name), dtype="bfloat16")
    return _META[name]


def machine(gpus: str | None, cpu: str) -> HardwareReport:
    base = HardwareReport([], None, None, "none", 512 * GB, 500 * GB, assumed=False, disk_free={})
    return assume_hardware(gpus, cpu, base)


def production(gpus: str):
    config = Path(__file__).resolve().parents[1] / "configs" / "production_config.yaml"  # cwd is a tmp dir
    settings = load_settings(config, {"models": {"large_llm": {"name": "llama3_405b"}}})
    return plan_for_run(settings, "preflight", hardware=machine(gpus, "200GB"), model=meta("llama3_405b"))


@pytest.mark.parametrize("gpus, hours", [("2x80GB", 3.0), ("3x80GB", 1.5)])
def test_405b_4bit_on_the_setup_guides_machines_benches_in_hours(gpus, hours):
    """The guide's layout (4-bit, 70 GB per GPU, 200 GB of RAM): GO with nothing on disk, and the whole bench
    (164 problems x 512 new tokens, load included) inside the guide's own time or better."""
    p = production(gpus)
    assert p.verdict == "go", p.reasons
    assert "disk" not in p.devices and p.host_format == "nf4"
    assert p.batch_mode == "auto" and p.batch_size > 1
    assert p.num_examples == 164 and p.max_new_tokens == 512
    assert p.estimates["total_seconds"] <= hours * 3600
    one = next(a for a in p.alternatives if a["batch"] == 1)
    assert one["total_seconds"] > 5 * p.estimates["total_seconds"]
    # the KV cache of every layer is reserved where the layer runs, offloaded ones included
    for d, per_token in p.kv_per_token_by_device.items():
        if d.isdigit():
            assert p.devices[d].kv_bytes == p.kv_bytes_for(d)
    assert sum(p.kv_per_token_by_device.values()) == p.kv_bytes_per_token
    assert set(p.kv_per_token_by_device) <= {"0", "1", "2"}  # offloaded layers run on a GPU, not on the CPU


def test_a_pinned_batch_is_planned_as_given():
    p = plan_model(ModelSpec(name="codellama_70b"), machine("2x80GB", "200GB"), batch_size=3, seq_len=1000,
                   model=meta("codellama_70b"))
    assert p.batch_size == 3 and p.batch_mode == "pinned" and len(p.alternatives) == 1
    assert sum(a.kv_bytes for a in p.devices.values()) == p.kv_bytes_per_token * 3 * 1000


def test_without_gpus_the_batch_is_small_and_the_cpu_holds_the_cache():
    p = plan_model(ModelSpec(name="codellama_7b"), machine(None, "200GB"), batch_size=None, seq_len=1000,
                   model=meta("codellama_7b"))
    assert p.batch_size == CPU_BATCH and p.dtype == "float32"
    assert p.kv_per_token_by_device == {"cpu": p.kv_bytes_per_token}


def test_candidates_split_the_problems_into_even_rounds():
    found = candidates(164, 256)
    assert {1, 2, 4, 128, 164, 82, 55, 41} <= set(found) and max(found) == 164
    assert candidates(3, 256) == [1, 2, 3]


def test_cpu_only_budget_is_not_told_to_use_4bit():
    """4-bit needs CUDA: a CPU-only declaration that is too small is a no-go whose fixes fit a CPU."""
    settings = load_settings(None, {"models": {"large_llm": {"name": "smollm2_135m",
                                                            "max_memory": {"cpu": "150MB"}}}})
    p = plan_for_run(settings, "bench", hardware=machine(None, "16GB"))
    assert p.dtype == "float32"
    assert not any("use_4bit" in f for f in p.fixes)


def test_gpu_declaration_that_fits_only_in_4bit_is_a_config_error():
    from routerllm_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="in 4-bit would") as caught:
        load_settings(None, {"models": {"large_llm": {"name": "llama3_405b",
                                                     "max_memory": {0: "80GB", 1: "80GB", "cpu": "200GB"}}}})
    assert caught.value.fix == "set use_4bit: true"


def test_offload_over_every_gpus_host_link_is_planned_and_shown_beside_one_link():
    one = production("3x80GB")
    assert one.offload_links == 1 and one.estimates["other_links"]["links"] == 3
    assert one.estimates["other_links"]["seconds_per_token"] < one.estimates["seconds_per_token"]
    config = Path(__file__).resolve().parents[1] / "configs" / "production_config.yaml"
    settings = load_settings(config, {"models": {"large_llm": {"name": "llama3_405b", "offload_links": "auto"}}})
    every = plan_for_run(settings, "preflight", hardware=machine("3x80GB", "200GB"), model=meta("llama3_405b"))
    assert every.offload_links == 3 and every.estimates["other_links"]["links"] == 1
    # relay GPUs double-buffer their share of the largest unit
    relays = [d for d, a in every.devices.items() if a.reserve_detail.get("offload_relay")]
    assert relays and every.estimates["total_seconds"] < one.estimates["total_seconds"]


@pytest.mark.parametrize("value", [0, -1, "two", True])
def test_offload_links_must_be_auto_or_a_count(value):
    from routerllm_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="offload_links .* use auto"):
        load_settings(None, {"models": {"large_llm": {"offload_links": value}}})


def test_free_after_is_within_the_operators_budget_where_one_is_set():
    settings = load_settings(None, {"models": {"large_llm": {"name": "smollm2_135m", "max_memory": {"cpu": "8GB"}}}})
    cpu = plan_for_run(settings, "bench", hardware=machine(None, "64GB")).devices["cpu"]
    assert cpu.budget_bytes == 8 * GB and cpu.free_after_bytes == 8 * GB - cpu.weight_bytes
