"""A GGUF file is parsed once per load: transformers asks gguf-py for the config, the tokenizer and the weights
separately, and inside `read_once()` they get one parse (Gemma-3's vocabulary takes ~15 s a parse here). A real
load of the embedded model counts its parses in tests/test_cli_load.py."""

from __future__ import annotations

from routerllm_cli.loading.gguf_reader import parses_held, read_once


def test_a_file_changed_on_disk_is_parsed_again_and_inactive_touches_nothing(tmp_path, monkeypatch):
    """Shared by path, size and modification time, nested or not; `active=False` leaves gguf-py's reader alone."""
    import gguf

    made = []

    def recording_reader(p, mode="r"):  # records what it is asked to parse (no GGUF file needed for the rule)
        made.append(p)
        return object()

    monkeypatch.setattr(gguf, "GGUFReader", recording_reader)
    path = tmp_path / "m.gguf"
    path.write_bytes(b"x")
    with read_once(False):
        assert gguf.GGUFReader is recording_reader
    with read_once(True):
        first = gguf.GGUFReader(path)
        with read_once(True):
            assert gguf.GGUFReader(str(path)) is first
        path.write_bytes(b"xy")
        assert gguf.GGUFReader(path) is not first
    assert len(made) == 2 and parses_held() == 0 and gguf.GGUFReader is recording_reader


def test_the_tensor_name_table_is_built_once_per_architecture_and_equals_gguf_pys():
    import gguf

    real = gguf.get_tensor_name_map
    with read_once(True):
        table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30) is table
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is not table
    assert gguf.get_tensor_name_map is real
    fresh = real(gguf.MODEL_ARCH.LLAMA, 30)
    assert table.mapping == fresh.mapping and table.get_name("model.layers.7.mlp.up_proj") == "blk.7.ffn_up"
