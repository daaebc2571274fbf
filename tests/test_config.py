"""Config validation rules and source precedence, each with the message a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from routerllm_cli.config import load_settings
from routerllm_cli.errors import ConfigError
from routerllm_cli.units import format_duration, parse_size

REPO = Path(__file__).resolve().parents[1]


def _err(overrides=None, config=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(config, overrides)
    assert info.value.exit_code == 2
    line = info.value.one_line()
    assert "\n" not in line
    return line


def large(**kw):
    return {"models": {"large_llm": kw}}


@pytest.mark.parametrize("text,expected", [
    ("70GB", 70 * 10**9), ("70GiB", 70 * 2**30), ("512MB", 512 * 10**6), ("1.5GB", 1_500_000_000),
    (4096, 4096), ("64Kb", 8_000), ("8Gb", 10**9), ("512KiB", 512 * 1024),
])
def test_memory_strings_follow_accelerate(text, expected):
    from accelerate.utils import convert_file_size_to_int

    assert parse_size(text) == expected
    assert convert_file_size_to_int(text) == expected


@pytest.mark.parametrize("text", ["70gb", "512mb", "2tb", "64kb"])
def test_an_all_lower_case_b_is_refused_not_read_as_bits(text):
    """accelerate reads "70gb" as gigabits (8.75 GB); that is almost never what was meant."""
    with pytest.raises(ConfigError) as info:
        parse_size(text, what="max_memory[cpu]")
    line = info.value.one_line()
    number = text[:-2]
    assert "bits" in line and f'"{number}{text[-2:].upper()}" for bytes' in line, line


def test_a_lower_case_b_in_yaml_and_on_the_command_line_is_one_line_exit_2(tmp_path):
    from typer.testing import CliRunner

    from routerllm_cli.cli.app import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  large_llm:\n    max_memory: {cpu: 70gb}\n")
    runner = CliRunner()
    for args in (["preflight", "--config", str(cfg)], ["preflight", "--max-memory", "cpu=70gb"]):
        result = runner.invoke(app, args)
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert "gigabits" in lines[0] and '"70GB" for bytes' in lines[0] and "Traceback" not in result.output


def test_extensions_beyond_accelerate():
    assert parse_size("100") == 100
    assert parse_size("2TiB") == 2 * 2**40
    assert parse_size("1.2 TB") == 1_200_000_000_000


def test_unreadable_memory_string_names_the_format():
    line = _err(large(max_memory={0: "seventy gigs"}))
    assert "max_memory[0]" in line and '"70GB"' in line and "70GiB" in line


def test_max_memory_keys_are_ordinals_cpu_or_disk():
    s = load_settings(None, large(max_memory={"0": "1GB", 1: "2GB", "CPU": "3GB"}))
    assert s.large.max_memory == {0: 10**9, 1: 2 * 10**9, "cpu": 3 * 10**9}
    line = _err(large(max_memory={"cuda:0": "1GB"}))
    assert "not a GPU ordinal" in line and "'cpu' or 'disk'" in line


def test_4bit_and_8bit_are_exclusive():
    assert "set only one of them" in _err(large(use_4bit=True, use_8bit=True))


def test_disk_offload_needs_a_folder():
    line = _err(large(max_memory={0: "1GB", "disk": "100GB"}, offload_folder=None))
    assert "offload_folder" in line
    line = _err(large(device_map={"model.layers.0": "disk"}))
    assert "offload_folder" in line


def test_flash_attention_needs_half_precision():
    line = _err(large(use_flash_attention=True, torch_dtype="float32"))
    assert "fp16/bf16" in line and "torch_dtype: bfloat16" in line


def test_weights_that_fit_only_in_4bit_say_set_use_4bit():
    line = _err(large(name="llama3_405b", max_memory={0: "80GB", 1: "80GB", "cpu": "200GB"}))
    assert line.endswith("fix: set use_4bit: true")
    assert "811.7 GB" in line  # 405.85B params x 2 bytes


def test_weights_that_fit_in_16bit_need_no_4bit():
    s = load_settings(None, large(name="codellama_70b", max_memory={0: "80GB", 1: "80GB", "cpu": "100GB"}))
    assert not s.large.use_4bit


def test_4bit_with_cpu_offload_is_allowed_and_explained():
    from routerllm_cli.fits import check_fits

    s = load_settings(None, large(name="llama3_405b", use_4bit=True, max_memory={0: "70GB", 1: "70GB", "cpu": "200GB"}))
    notes = check_fits(s.large, 405.85e9)
    assert any("16-bit" in n and "4-bit" in n for n in notes)


def test_unknown_yaml_key_is_an_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  large_llm:\n    name: codellama_70b\n    use_4bti: true\n")
    line = _err(config=cfg)
    assert "unknown key 'models.large_llm.use_4bti'" in line


def test_bad_yaml_names_the_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  large_llm:\n   name: [oops\n")
    assert "not valid YAML" in _err(config=cfg)


def test_missing_config_file():
    assert "not found" in _err(config="nope.yaml")


def test_precedence_flags_over_env_over_yaml_over_defaults(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("bench:\n  num_examples: 20\n  max_new_tokens: 100\n  timeout_s: 9\n")
    assert load_settings().bench.num_examples == 164  # default
    assert load_settings(cfg).bench.num_examples == 20  # yaml
    monkeypatch.setenv("ROUTERLLM_BENCH__NUM_EXAMPLES", "30")
    s = load_settings(cfg)
    assert (s.bench.num_examples, s.bench.max_new_tokens) == (30, 100)  # env beats yaml, yaml still read
    s = load_settings(cfg, {"bench": {"num_examples": 40}})
    assert (s.bench.num_examples, s.bench.timeout_s) == (40, 9.0)  # flag beats env
    monkeypatch.setenv("ROUTERLLM_CONFIG", str(cfg))
    monkeypatch.delenv("ROUTERLLM_BENCH__NUM_EXAMPLES")
    assert load_settings().bench.num_examples == 20  # ROUTERLLM_CONFIG picks the file


def test_shipped_configs_validate():
    names = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert {"production_config.yaml", "two_gpus.yaml", "three_gpus.yaml", "four_gpus.yaml", "laptop_cpu.yaml"} <= set(names)
    for name in names:
        s = load_settings(REPO / "configs" / name)
        assert s.large.name
    prod = load_settings(REPO / "configs" / "production_config.yaml")
    assert prod.large.use_4bit and prod.large.max_memory["cpu"] == 200 * 10**9
    assert "cpu" not in load_settings(REPO / "configs" / "four_gpus.yaml").large.max_memory


def test_benchmark_configs_validate():
    """The GPU runs read these; a broken one would only show on a lent machine."""
    paths = sorted((REPO / "benchmarks").glob("*.yaml"))
    assert paths
    for path in paths:
        s = load_settings(path)
        assert s.large.name and s.models.router.pool, path.name
    gpu = load_settings(REPO / "benchmarks" / "gpu_compare.yaml")
    assert [m.name for m in gpu.models.router.pool] == ["smollm2_135m", "gemma3_270m"]
    assert gpu.bench.num_examples == 164


def test_heuristic_thresholds_must_match_pool():
    line = _err({"models": {"router": {"policy": "heuristic", "thresholds": [0.2, 0.5, 0.7],
                                       "pool": [{"name": "smollm2_135m"}, {"name": "gemma3_270m"}]}}})
    assert "needs 1 values" in line


def test_pass_at_k_needs_sampling():
    assert "temperature" in _err({"bench": {"samples": 5}})


def test_new_model_keys_refuse_bad_values_in_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  large_llm:\n    cudnn_attention: sometimes\n")
    line = _err(config=cfg)
    assert "cudnn_attention" in line
    assert "torch_dtype" in _err(large(torch_dtype="float8"))
    ok = load_settings(None, large(cudnn_attention=True, torch_dtype="auto")).large
    assert ok.cudnn_attention is True and ok.torch_dtype == "auto"


def test_one_duration_format_for_tables_estimates_and_the_eta():
    cases = {0.85: "850 ms", 4.254: "4.25 s", 59.99: "59.99 s", 125: "2m 05s", 3723: "1h 02m", 7199: "1h 59m", 7200: "2h 00m",
             86400 * 3 + 3600 * 4: "3d 04h", None: "-", float("nan"): "-"}
    assert {s: format_duration(s) for s in cases} == cases
