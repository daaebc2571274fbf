"""Reading a device map: one implementation, reached from the planner's and the loader's modules alike."""

from __future__ import annotations

from routerllm_cli import device_map as dm

MAP = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "model.layers.10": "cpu",
       "model.norm": "disk", "lm_head": "disk"}


def test_a_name_is_placed_by_its_longest_matching_key():
    assert dm.key_of("model.layers.1.mlp.up_proj.weight", MAP) == "model.layers.1"
    assert dm.device_of("model.layers.10.self_attn.q_proj.weight", MAP) == "cpu"  # not layers.1's GPU
    assert dm.device_of("model.layers.1", MAP) == 1 and dm.device_of("model.rotary_emb.inv_freq", MAP) is None
    assert dm.device_of("anything.at.all", {"": "cpu", "lm_head": 0}) == "cpu"
    assert dm.device_of("lm_head.weight", {"": "cpu", "lm_head": 0}) == 0


def test_gpus_and_offload_of_a_map():
    assert dm.gpu_indices(MAP) == [0, 1] and dm.offloaded_devices(MAP) == {"cpu", "disk"}
    assert dm.gpu_indices({"a": True, "b": "cpu"}) == []  # a bool is not GPU 1
    assert dm.offloaded_devices({"": "cpu"}) == set()  # CPU-only: the CPU is where it runs, not an offload
    assert dm.offloaded_devices({"a": "cpu", "b": "disk"}) == {"disk"}
    assert dm.is_offloaded("cpu", MAP) and not dm.is_offloaded("cpu", {"": "cpu"}) and not dm.is_offloaded(0, MAP)
    assert dm.is_offloaded("cpu", {"a": "cuda:0", "b": "cpu"})  # a "cuda" device is a GPU too


def test_the_old_import_paths_are_the_same_functions():
    from routerllm_cli.loading import placement as loading_placement
    from routerllm_cli.plan import device_of, is_offloaded, key_of

    assert device_of is dm.device_of and key_of is dm.key_of and is_offloaded is dm.is_offloaded
    assert loading_placement.module_device is dm.device_of and loading_placement.gpu_indices is dm.gpu_indices
    assert loading_placement.offloaded_devices is dm.offloaded_devices
