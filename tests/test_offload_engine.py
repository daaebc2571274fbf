"""The offload engine on a real tiny Llama checkpoint loaded the stock way with CPU- and disk-offloaded layers.

On this CPU-only machine the execution device is the CPU, so the engine runs its full logic (flat host buffers,
two staging slots, prefetch, disk read-ahead) with synchronous copies and no-op events.
"""

from __future__ import annotations

import copy

import pytest
import torch

from routerllm_cli.errors import ConfigError
from routerllm_cli.offload.engine import OffloadEngine, attach_offload_engine

N_LAYERS = 6
DISK_LAYERS = (3, 4, 5)  # three disk layers: more than the two-buffer read-ahead ring holds, so they stream
PROMPT = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11], [8, 8, 120, 64, 32, 16, 2, 1]])


def _device_map() -> dict:
    dm = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    for i in range(N_LAYERS):
        dm[f"model.layers.{i}"] = "disk" if i in DISK_LAYERS else "cpu"
    return dm


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYERS, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=320, max_position_embeddings=128, tie_word_embeddings=False,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def reference(checkpoint):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        logits = model(PROMPT).logits
        tokens = _generate(model)
    return model, logits, tokens


def _generate(model) -> torch.Tensor:
    return model.generate(
        PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=6, do_sample=False, pad_token_id=0
    )


def _load_offloaded(checkpoint, tmp_path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(checkpoint, device_map=_device_map(), offload_folder=tmp_path).eval()


def _layer_bytes(reference_model) -> int:
    return sum(p.numel() * p.element_size() for p in reference_model.model.layers[0].parameters())


def _attach_and_match(checkpoint, reference, tmp_path, **engine_kw):
    """Load with the offloaded map, attach the engine, and check a prompt forward + greedy generation against the
    model fully in memory. Returns the engine."""
    _, ref_logits, ref_tokens = reference
    model = _load_offloaded(checkpoint, tmp_path)
    engine = attach_offload_engine(model, _device_map(), **engine_kw)
    with torch.no_grad():
        logits = model(PROMPT).logits
        tokens = _generate(model)
    torch.testing.assert_close(logits, ref_logits)
    assert torch.equal(tokens, ref_tokens)
    return engine


def test_engine_output_equals_the_model_in_memory(checkpoint, reference, tmp_path):
    ref_model = reference[0]
    engine = _attach_and_match(checkpoint, reference, tmp_path)

    st = engine.stats()
    assert st.offloaded_layers == N_LAYERS + 3  # embeddings, layers, norm, lm_head; rotary holds only buffers
    assert st.disk_layers == len(DISK_LAYERS) and st.streamed_layers == 0  # no budget: disk layers cached in RAM
    assert st.bytes_per_step >= N_LAYERS * _layer_bytes(ref_model)
    assert "CPU" in st.pageable_reason and st.pinned_bytes == 0
    # after the very first unit, every load was a prefetch issued while the previous unit ran
    assert st.unprefetched_loads == 1
    assert st.copied_bytes >= 7 * st.bytes_per_step  # one prompt forward + six generate forwards
    engine.detach()


def test_pin_budget_zero_falls_back_to_pageable_and_streams_disk_layers(checkpoint, reference, tmp_path):
    ref_model = reference[0]
    engine = _attach_and_match(checkpoint, reference, tmp_path, pin_budget_bytes=0)

    st = engine.stats()
    assert st.pinned_bytes == 0 and st.pageable_bytes == st.host_bytes > 0
    assert "pin budget of 0 B reached" in st.pageable_reason
    assert st.streamed_layers == len(DISK_LAYERS)
    # three streamed layers and a two-buffer ring: the forwards read the disk layers from the checkpoint again and
    # again (7 forwards, 21 reads, less the one or two a read-ahead ring can still hold between calls; a cache
    # would have read each layer once)
    assert st.disk_read_bytes >= 5 * len(DISK_LAYERS) * _layer_bytes(ref_model)
    assert st.disk_read_bytes_per_s > 0
    engine.detach()


def test_detach_gives_the_model_back_to_accelerate(checkpoint, reference, tmp_path):
    _, ref_logits, ref_tokens = reference
    model = _load_offloaded(checkpoint, tmp_path)
    engine = attach_offload_engine(model, _device_map(), pin_budget_bytes=0)
    with torch.no_grad():
        model(PROMPT)
    with pytest.raises(ConfigError, match="already attached"):
        attach_offload_engine(model, _device_map())
    engine.detach()

    assert hasattr(model.model.layers[4].mlp.up_proj, "_hf_hook")  # the stock disk-offload hook is back
    assert model.model.layers[4].mlp.up_proj.weight.device.type == "meta"
    with torch.no_grad():
        torch.testing.assert_close(model(PROMPT).logits, ref_logits)
        assert torch.equal(_generate(model), ref_tokens)

    again = attach_offload_engine(model, _device_map())  # and the engine can take it over again
    with torch.no_grad():
        torch.testing.assert_close(model(PROMPT).logits, ref_logits)
    again.detach()


def test_reads_accelerate_offload_folder_memmaps(reference, tmp_path):
    from accelerate import dispatch_model

    ref_model, ref_logits, _ = reference
    model = copy.deepcopy(ref_model)
    dispatch_model(model, _device_map(), offload_dir=tmp_path)
    assert (tmp_path / "model.layers.3.mlp.down_proj.weight.dat").exists()
    engine = attach_offload_engine(model, _device_map(), pin_budget_bytes=0)
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(model(PROMPT).logits, ref_logits)
    # two forwards over three streamed layers, less the two a read-ahead ring may still hold between them
    assert engine.stats().disk_read_bytes >= (2 * len(DISK_LAYERS) - 2) * _layer_bytes(ref_model)
    engine.detach()


def test_keep_4bit_moves_packed_bytes_and_computes_nf4(checkpoint, reference, tmp_path):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    ref_model, ref_logits, _ = reference
    plain = attach_offload_engine(_load_offloaded(checkpoint, tmp_path / "a"), _device_map())
    plain_bytes = plain.stats().bytes_per_step
    plain.detach()

    model = _load_offloaded(checkpoint, tmp_path / "b")
    engine = attach_offload_engine(model, _device_map(), keep_4bit=True)
    st = engine.stats()
    assert st.quantized_4bit
    assert st.bytes_per_step < 0.45 * plain_bytes  # 4-bit layers; embeddings and lm_head stay 16-bit

    # the model transformers would run with these layers as GPU Linear4bit: same NF4 weights, lm_head kept
    nf4 = copy.deepcopy(ref_model)
    for layer in nf4.model.layers:
        for module in layer.modules():
            if type(module) is torch.nn.Linear:
                packed, state = quantize_4bit(module.weight.data, blocksize=64, compress_statistics=True, quant_type="nf4")
                module.weight.data = dequantize_4bit(packed, state)
    with torch.no_grad():
        expected = nf4(PROMPT).logits
        got = model(PROMPT).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, ref_logits, atol=1e-4)  # it really ran quantized weights

    engine.detach()
    with torch.no_grad():
        torch.testing.assert_close(model(PROMPT).logits, ref_logits)  # the 16-bit stock path is back


def test_a_device_map_naming_a_missing_module_is_a_config_error(checkpoint, tmp_path):
    model = _load_offloaded(checkpoint, tmp_path)
    with pytest.raises(ConfigError, match="not a module of this model"):
        OffloadEngine(model, {**_device_map(), "model.layers.99": "cpu"}).attach()


def test_quantize_while_loading_equals_pack_after_load(checkpoint, tmp_path):
    """Layers planned for the CPU are loaded as "disk" (left in the checkpoint's shards), then read, quantized
    and packed one weight at a time: the model never holds them in 16-bit, and the packed bytes - so the logits
    and the tokens - equal quantizing after a 16-bit load. Layers planned for disk go back there packed."""
    pytest.importorskip("bitsandbytes")
    from transformers import LlamaForCausalLM

    planned = _device_map()
    after = attach_offload_engine(_load_offloaded(checkpoint, tmp_path / "a"), planned, keep_4bit=True)
    with torch.no_grad():
        want_logits = after.model(PROMPT).logits
        want_tokens = _generate(after.model)
    want = after.stats()
    after.detach()

    loaded_as = {k: "disk" if v == "cpu" else v for k, v in planned.items()}
    model = LlamaForCausalLM.from_pretrained(checkpoint, device_map=loaded_as, offload_folder=tmp_path / "b").eval()
    assert model.model.layers[0].mlp.up_proj.weight.device.type == "meta"  # no 16-bit copy in host memory
    spill = tmp_path / "offload"
    engine = attach_offload_engine(model, loaded_as, host_devices=planned, spill_folder=spill, keep_4bit=True)
    st = engine.stats()
    with torch.no_grad():
        torch.testing.assert_close(model(PROMPT).logits, want_logits, rtol=0, atol=0)
        assert torch.equal(_generate(model), want_tokens)
    assert st.quantized_4bit and st.bytes_per_step == want.bytes_per_step
    disk_units = [u for u in engine.units if u.disk]
    assert [u.name for u in disk_units] == [f"model.layers.{i}" for i in DISK_LAYERS]
    assert st.spilled_bytes == sum(u.nbytes for u in disk_units) == st.held_bytes["disk"]
    assert st.streamed_layers == len(DISK_LAYERS)  # planned for disk: streamed from the packed files
    files = sorted(p.name for p in (spill / "routerllm-nf4").iterdir())
    assert files == [f"model.layers.{i}.nf4" for i in DISK_LAYERS]
    # the CPU units are held packed: well under half of their 16-bit bytes (embeddings and lm_head stay 16-bit)
    sixteen = sum(t.numel() * t.element_size() for n, t in _reference_tensors(checkpoint).items()
                  if any(n.startswith(u.name + ".") for u in engine.units if not u.disk))
    assert st.held_bytes["cpu"] < 0.6 * sixteen
    engine.detach()
    assert not (spill / "routerllm-nf4").exists()  # the engine removes what it wrote


def _reference_tensors(checkpoint) -> dict:
    from safetensors.torch import load_file

    out: dict = {}
    for f in sorted(checkpoint.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_split_bytes_gives_relays_whole_pieces_and_the_direct_link_the_rest():
    from routerllm_cli.offload.links import SHARE_ALIGN, split_bytes

    n = 10 * SHARE_ALIGN + 12345
    spans = split_bytes(n, [1.0, 1.0])
    assert spans[0][0] == 0 and spans[-1][1] == n and spans[0][1] == spans[1][0]
    assert (spans[1][1] - spans[1][0]) % SHARE_ALIGN == 0 and spans[1][1] - spans[1][0] == 5 * SHARE_ALIGN
    three = split_bytes(n, [1.0, 0.74, 0.74])
    assert [b - a for a, b in three][1:] == [2 * SHARE_ALIGN, 2 * SHARE_ALIGN]  # 2.98 pieces each, rounded down
    assert split_bytes(1000, [1.0, 1.0]) == [(0, 1000), (1000, 1000)]  # small units: the direct link alone


def test_units_copied_over_several_links_compute_the_same(checkpoint, reference, tmp_path):
    """The multi-link copy path on the CPU (relay buffers on the host): each unit arrives in shares, through a
    relay buffer for all but the first, and the model computes exactly as with one link."""
    from routerllm_cli.offload import links

    saved = links.SHARE_ALIGN
    links.SHARE_ALIGN = 4096  # tiny layers: pieces small enough that every relay carries a share
    try:
        engine = _attach_and_match(checkpoint, reference, tmp_path, relays=["cpu", "cpu"], link_weights=[1, 1, 1])
        st = engine.stats()
        assert st.links == {"cpu": 3}
        shares = engine.links[engine.units[1].device].shares(engine.units[1].nbytes)
        assert all(b > a for a, b in shares)
        engine.detach()
    finally:
        links.SHARE_ALIGN = saved
