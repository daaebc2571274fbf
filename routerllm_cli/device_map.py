"""Reading a device map: the dict accelerate and transformers take (`{"model.layers.3": 0, "lm_head": "cpu"}`).

The planner writes it, the loader passes it to `from_pretrained` unchanged, and everything that asks where a
tensor lives or which devices a map uses reads it here. Keys are module (or tensor) names, values a GPU
ordinal, "cpu" or "disk"; a name is placed by its longest matching key, and "" places everything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def key_of(name: str, device_map: Mapping[str, Any]) -> str | None:
    """The device-map entry that places `name`: its longest matching prefix."""
    best: str | None = None
    for key in device_map:
        if (key == "" or name == key or name.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    return best


def device_of(name: str, device_map: Mapping[str, Any]) -> Any:
    """The device of a tensor or module name under a (cleaned) device map, or None when no entry places it."""
    key = key_of(name, device_map)
    return None if key is None else device_map[key]


def is_gpu(device: Any) -> bool:
    """A GPU ordinal (not a bool) or a "cuda..." device."""
    return (isinstance(device, int) and not isinstance(device, bool)) or str(device).startswith("cuda")


def gpu_indices(device_map: Mapping[str, Any]) -> list[int]:
    """The GPU ordinals the map uses, in order."""
    return sorted({v for v in device_map.values() if isinstance(v, int) and not isinstance(v, bool)})


def is_offloaded(device: Any, device_map: Mapping[str, Any]) -> bool:
    """cpu and disk entries are offloaded when the map has a GPU to run them on; without one, cpu is where
    everything computes and only disk is offloaded."""
    if str(device) == "disk":
        return True
    return str(device) == "cpu" and any(is_gpu(d) for d in device_map.values())


def offloaded_devices(device_map: Mapping[str, Any]) -> set[str]:
    """The devices of the map that hold offloaded modules ("cpu" and/or "disk"; see `is_offloaded`)."""
    return {str(d) for d in device_map.values() if is_offloaded(d, device_map)}
