"""Model references: catalog names, hub ids, local folders and GGUF files."""

from __future__ import annotations

import pytest

from routerllm_cli.catalog import CATALOG, resolve_model, resolve_spec
from routerllm_cli.errors import ConfigError


def test_guide_names_resolve_to_hub_ids_and_layer_classes():
    assert resolve_model("llama3_405b").model_id == "meta-llama/Llama-3.1-405B-Instruct"
    assert CATALOG["falcon_180b"].no_split == "FalconDecoderLayer"
    assert CATALOG["bloom_176b"].no_split == "BloomBlock"
    assert resolve_model("codellama-70b").entry.no_split == "LlamaDecoderLayer"
    assert resolve_model("meta-llama/Llama-3.1-405B-Instruct").entry.name == "llama3_405b"


def test_embedded_default_is_a_real_installed_gguf():
    ref = resolve_model("smollm2_135m")
    assert ref.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    from pathlib import Path

    path = Path(ref.model_id) / ref.gguf_file
    assert path.stat().st_size > 50_000_000
    assert path.read_bytes()[:4] == b"GGUF"


def test_hub_ids_local_dirs_and_gguf_files(tmp_path, tiny_llama_dir):
    assert resolve_model("org/some-model").kind == "hub"
    assert resolve_model(str(tiny_llama_dir)).kind == "local_dir"
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF")
    ref = resolve_model(str(g))
    assert (ref.kind, ref.gguf_file) == ("gguf", "m.gguf")
    ref = resolve_spec("llama3_405b", str(tiny_llama_dir))
    assert ref.kind == "local_dir" and ref.entry.name == "llama3_405b"


@pytest.mark.parametrize("bad,needle", [
    ("not_a_model", "unknown model"), ("./missing/dir", "does not exist"), ("/nope/x.gguf", "does not exist"), ("", "no model"),
])
def test_bad_model_references_name_the_fix(bad, needle):
    with pytest.raises(ConfigError) as info:
        resolve_model(bad)
    assert needle in str(info.value) and info.value.fix


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="without config.json"):
        resolve_model(str(tmp_path))


def test_missing_gguf_file_in_a_folder_names_the_files_there(tmp_path):
    (tmp_path / "other.Q4_1.gguf").write_bytes(b"GGUF")
    with pytest.raises(ConfigError) as info:
        resolve_model(str(tmp_path), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "SmolLM2-135M-Instruct.Q4_1.gguf does not exist" in str(info.value)
    assert "other.Q4_1.gguf" in info.value.fix
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as info:
        resolve_model(str(empty), gguf_file="x.gguf")
    assert "put the .gguf file in" in info.value.fix
