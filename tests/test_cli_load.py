"""`routerllm load` end to end on CPU: the tiny real Llama by path, a disk spill, refusals, and the embedded GGUF."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from routerllm_cli.cli.app import app

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run(*args: str):
    return CliRunner().invoke(app, ["load", *args])


def test_json_reports_placement_memory_and_generation(tiny_llama_dir):
    result = run("--model", str(tiny_llama_dir), "--json", "--max-new-tokens", "6")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["load_seconds"] > 0
    assert data["device_map_summary"]["cpu"]["layers"] == "0-3"
    assert data["device_map_summary"]["cpu"]["bytes"] > 0
    assert data["memory_used"]["cpu"] > 0
    gen = data["generation"]
    assert 0 < gen["tokens"] <= 6 and gen["seconds"] > 0 and gen["tokens_per_second"] > 0
    assert isinstance(gen["text"], str)
    assert data["plan"]["verdict"] == "go" and data["attn_implementation"] == "sdpa"


def test_spill_to_disk_uses_the_managed_folder_and_releases_it(tiny_llama_dir):
    folder = Path(os.environ["ROUTERLLM_OFFLOAD_FOLDER"])
    result = run("--model", str(tiny_llama_dir), "--max-memory", "cpu=300KB", "--max-new-tokens", "3")
    assert result.exit_code == 0, result.stderr
    assert "disk" in result.stdout and "tokens/s" in result.stdout and "time to first token" in result.stdout
    assert "offloaded to disk" in result.stdout
    assert folder.is_dir() and not (folder / ".routerllm.lock").exists()


def test_accelerate_engine_is_selectable(tiny_llama_dir):
    result = run("--model", str(tiny_llama_dir), "--max-memory", "cpu=300KB", "--offload-engine", "accelerate",
                 "--max-new-tokens", "2", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["offload_engine"] is None and "disk" in data["device_map_summary"]


def test_no_go_plan_is_refused_with_its_fix(tiny_llama_dir):
    result = run("--model", str(tiny_llama_dir), "--4bit")
    assert result.exit_code == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("log: logs/load-")  # where the log went, said first
    assert len(lines) == 2 and "no-go" in lines[1] and "fix:" in lines[1]
    assert result.stdout == ""


def test_unknown_offload_engine_is_a_usage_error(tiny_llama_dir):
    result = run("--model", str(tiny_llama_dir), "--offload-engine", "deepspeed")
    assert result.exit_code == 2
    assert "routerllm or accelerate" in result.stderr


@pytest.mark.slow
def test_embedded_gguf_default_model_loads_and_generates(gguf_parses):
    """One real load of the default model (SmolLM2-135M GGUF) through the same plan -> load -> generate path,
    with the CPU laptop config (float32: bf16 matmuls are far slower than fp32 on most CPUs). The plan's config,
    the tokenizer and the weights share one parse of the file (they were four)."""
    result = run("--json", "--max-new-tokens", "8", "--config", str(CONFIGS / "laptop_cpu.yaml"))
    assert result.exit_code == 0, result.stderr
    assert len(gguf_parses) == 1 and gguf_parses[0].endswith(".gguf")
    from routerllm_cli.loading.gguf_reader import parses_held

    assert parses_held() == 0  # the parse went with the load
    data = json.loads(result.stdout)
    assert data["model"] == "smollm2_135m" and data["plan"]["model"]["gguf_file"].endswith(".gguf")
    assert data["device_map_summary"]["cpu"]["layers"] == "0-29" and data["dtype"] == "float32"
    gen = data["generation"]
    assert gen["tokens"] > 0 and gen["text"].strip()
    assert 0 < gen["time_to_first_token"] <= gen["seconds"]  # the first token comes within the generation
