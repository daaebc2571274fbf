"""`routerllm preflight` through the real CLI: exit codes, --json shape, one-line errors, the no-GPU line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from routerllm_cli.cli.app import app


def run(*args: str):
    return CliRunner().invoke(app, ["preflight", *args])


def test_default_model_on_this_cpu_machine_is_go_with_the_no_gpu_line():
    result = run()
    assert result.exit_code == 0, result.output
    assert "no NVIDIA GPU found" in result.stdout and "planning for CPU only" in result.stdout
    assert "verdict: GO" in result.stdout
    assert "cpu" in result.stdout and "0-29" in result.stdout  # SmolLM2's 30 layers, all on the CPU


def test_json_has_the_documented_keys():
    result = run("--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["verdict"] == "go" and data["reasons"] == []
    assert all({"name", "status", "detail"} <= set(c) for c in data["checks"])
    assert {c["name"] for c in data["checks"]} >= {"gpus", "cpu_ram", "torch", "model"}
    cpu = data["plan"]["devices"]["cpu"]
    assert cpu["layers"] == "0-29" and cpu["weight_bytes"] > 0 and cpu["reserve_bytes"] > 0
    assert data["plan"]["weight_bytes"] == cpu["weight_bytes"]
    assert {"load_seconds", "seconds_per_token", "bench_seconds"} <= set(data["estimates"])
    assert data["plan"]["device_map"] == {"": "cpu"}


def test_405b_on_two_gpus_fp16_is_no_go_exit_1_with_fixes():
    result = run("--model", "llama3_405b", "--assume-gpus", "2x80GB", "--assume-cpu", "200GB")
    assert result.exit_code == 1, result.output
    assert "verdict: NO-GO" in result.stdout
    assert "use_4bit: true" in result.stdout and "offload_folder" in result.stdout
    data = json.loads(run("--model", "llama3_405b", "--assume-gpus", "2x80GB", "--assume-cpu", "200GB",
                          "--json").stdout)
    assert data["verdict"] == "no-go" and data["reasons"]
    assert any("use_4bit: true" in f for f in data["fixes"])
    assert data["hardware"]["assumed"] is True


def test_405b_4bit_on_four_gpus_is_go_without_cpu_layers_at_batch_1():
    result = run("--model", "llama3_405b", "--4bit", "--assume-gpus", "4x80GB", "--batch-size", "1", "--json")
    assert result.exit_code == 0, result.output
    devices = json.loads(result.stdout)["plan"]["devices"]
    assert [devices[d]["layers"] is not None for d in "0123"] == [True] * 4
    assert devices["cpu"]["layers"] is None and devices["cpu"]["weight_bytes"] == 0


def test_batch_and_seq_len_grow_the_kv_reserve():
    small = json.loads(run("--model", "codellama_70b", "--assume-gpus", "2x80GB", "--batch-size", "1",
                           "--json").stdout)
    big = json.loads(run("--model", "codellama_70b", "--assume-gpus", "2x80GB", "--batch-size", "16",
                         "--seq-len", "4096", "--json").stdout)
    kv = lambda d: sum(v["kv_bytes"] for v in d["plan"]["devices"].values())  # noqa: E731
    per_token = small["plan"]["kv_bytes_per_token"]
    assert kv(small) == per_token * 1 * 1408  # bench defaults: 1024 prompt + 384 new tokens
    assert kv(big) == per_token * 16 * 4096
    assert small["plan"]["batch_mode"] == big["plan"]["batch_mode"] == "pinned"


def test_an_auto_batch_is_chosen_for_the_bench_and_its_kv_is_reserved():
    data = json.loads(run("--model", "codellama_70b", "--assume-gpus", "2x80GB", "--json").stdout)
    plan = data["plan"]
    assert plan["batch_mode"] == "auto" and plan["batch_size"] > 1
    kv = sum(v["kv_bytes"] for v in plan["devices"].values())
    assert kv == plan["kv_bytes_per_token"] * plan["batch_size"] * plan["seq_len"]
    chosen, *others = plan["alternatives"]
    assert chosen["chosen"] and chosen["batch"] == plan["batch_size"]
    one = next(a for a in others if a["batch"] == 1)
    assert chosen["total_seconds"] < one["total_seconds"]  # the point of choosing: a faster bench
    assert any(n.startswith(f"batch {plan['batch_size']} chosen") for n in plan["notes"])


@pytest.mark.parametrize("args, message", [
    (["--assume-gpus", "2xfoo"], "--assume-gpus"),
    (["--assume-cpu", "lots"], "--assume-cpu"),
    (["--max-memory", "0:70GB"], "DEVICE=SIZE"),
    (["--model", "no_such_model"], "unknown model"),
    (["--model", "llama3_405b", "--assume-gpus", "2x80GB", "--max-memory", "0=80GB", "--max-memory", "1=80GB",
      "--max-memory", "cpu=200GB"], "use_4bit: true"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    result = run(*args)
    assert result.exit_code == 2, result.output
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert message in line
    assert "Traceback" not in result.output


def test_typo_in_yaml_is_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  large_llm:\n    name: codellama_70b\n    use_4bits: true\n")
    result = run("--config", str(cfg))
    assert result.exit_code == 2 and "use_4bits" in result.stderr and "Traceback" not in result.output


def test_list_models_prints_the_catalog():
    result = run("--list-models")
    assert result.exit_code == 0
    for name in ("llama3_405b", "falcon_180b", "bloom_176b", "codellama_70b"):
        assert name in result.stdout
    rows = json.loads(run("--list-models", "--json").stdout)["models"]
    assert {r["name"] for r in rows} >= {"llama3_405b", "smollm2_135m"}


def test_quantization_on_this_gpu_less_machine_is_no_go_naming_bitsandbytes():
    result = run("--model", "codellama_7b", "--4bit", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    (bnb,) = [c for c in data["checks"] if c["name"] == "bitsandbytes"]
    assert bnb["status"] == "fail"
    assert any("GPU" in r for r in data["reasons"])


def test_load_flag_loads_as_planned_and_generates(tiny_llama_dir):
    result = run("--model", str(tiny_llama_dir), "--load", "--prompt", "def add(a, b):", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    load = data["load"]
    assert load["generation"]["tokens"] > 0 and load["load_seconds"] > 0
    assert "cpu" in load["memory_used"] and "cpu" in load["planned_bytes"]
    assert load["device_map_summary"]["cpu"]["layers"] == data["plan"]["devices"]["cpu"]["layers"]


def test_gated_model_token_is_reported_never_printed(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secretTOKENvalue123")
    result = run("--model", "llama3_405b", "--4bit", "--assume-gpus", "4x80GB", "--json")
    assert result.exit_code == 0, result.output
    assert "hf_secretTOKENvalue123" not in result.output
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["hf_token"]["status"] == "ok" and "token configured" in checks["hf_token"]["detail"]
    assert checks["hub_access"]["status"] == "skip"  # HF_HUB_OFFLINE=1: no network call at all
    monkeypatch.delenv("HF_TOKEN")
    checks = {c["name"]: c for c in json.loads(run("--model", "llama3_405b", "--4bit", "--assume-gpus", "4x80GB",
                                                    "--json").stdout)["checks"]}
    assert checks["hf_token"]["status"] == "warn" and "hf auth login" in checks["hf_token"]["fix"]


def test_a_setup_guide_config_with_offload_state_dict_still_plans_and_says_once_it_is_ignored(tmp_path):
    cfg = tmp_path / "guide.yaml"
    cfg.write_text("models:\n  large_llm:\n    name: smollm2_135m\n    offload_state_dict: true\n")
    result = run("--config", str(cfg))
    assert result.exit_code == 0, result.output
    assert result.output.count("offload_state_dict is ignored") == 1 and "remove it" in result.output
    plain = run()  # a config that does not set it hears nothing about it
    assert plain.exit_code == 0 and "offload_state_dict" not in plain.output


def test_405b_on_two_80gb_gpus_is_a_go_with_the_chosen_batch_beside_batch_1():
    """The setup guide's headline: 405B in 4-bit on 2 x 80 GB + 200 GB of RAM, nothing on disk."""
    args = ("--model", "llama3_405b", "--4bit", "--assume-gpus", "2x80GB", "--assume-cpu", "200GB")
    plan = json.loads(run(*args, "--json").stdout)["plan"]
    assert "disk" not in plan["devices"] and plan["batch_size"] > 1
    result = run(*args)
    assert result.exit_code == 0, result.output
    table = result.output[result.output.index("batch and placement"):]
    rows = [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")]
    assert rows[:2] == [f"{plan['batch_size']} (chosen)", "1"]
    assert "verdict: GO" in result.output
