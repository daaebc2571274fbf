"""Placement: accelerate's infer_auto_device_map step for step, with a size table per device kind."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

# the planner and routerllm_cli.plan import these from here; the one implementation is routerllm_cli.device_map
from routerllm_cli.device_map import device_of, is_gpu as _is_gpu, is_offloaded, key_of  # noqa: F401
from routerllm_cli.plan.types import Device


# --- placement: accelerate's infer_auto_device_map with a size table per device kind ------------------------------


def find_tied(model) -> list:
    """accelerate's tied-parameter groups of `model` (computed once per model: placement asks for them often)."""
    from accelerate.utils import find_tied_parameters

    return find_tied_parameters(model)


def place_modules(model, max_memory: dict[Device, int], no_split: list[str],
                  sizes_for: Callable[[Device], dict[str, int]], *, largest_layer_room: bool = True,
                  tied: list | None = None) -> dict[str, Device]:
    """accelerate's `infer_auto_device_map` (1.x, without fallback_allocation), except that a module's size is
    looked up in `sizes_for(device)`. accelerate always keeps room for the largest layer on the first GPU and the
    CPU (where offloaded layers are staged), sized here in host format; `largest_layer_room=False` drops that
    room for callers that reserve staging buffers themselves, only where offload happens."""
    import torch
    from accelerate.utils.modeling import clean_device_map, get_max_layer_size, get_module_size_with_ties

    devices: list[Device] = list(max_memory)
    if "disk" not in devices:
        devices.append("disk")
    gpus = [d for d in devices if d not in ("cpu", "disk")]
    main_devices = [gpus[0], "cpu"] if gpus else ["cpu"]
    host = sizes_for("cpu")
    tied_parameters = find_tied(model) if tied is None else tied
    todo: list[tuple[str, Any]] = (list(model.named_parameters(recurse=False)) + list(model.named_children())
                                   + list(model.named_buffers(recurse=False)))

    def max_layer(mods):
        return get_max_layer_size([(n, m) for n, m in mods if isinstance(m, torch.nn.Module)], host, no_split)

    device_map: dict[str, Device] = OrderedDict()
    used = {d: 0 for d in devices}
    current = 0
    max_layer_size, max_layer_names = get_max_layer_size(todo, host, no_split)
    while todo:
        name, module = todo.pop(0)
        max_layer_names = [n for n in max_layer_names if n != name and not n.startswith(name + ".")]
        if not max_layer_names:
            max_layer_size, max_layer_names = max_layer(todo)
        device = devices[current]
        sizes = sizes_for(device)
        module_size = sizes[name]
        groups = [g for g in tied_parameters
                  if any(name + "." in k + "." for k in g) and not all(name + "." in k + "." for k in g)]
        tied_params = sum([[p for p in g if name + "." not in p + "."] for g in groups], [])
        cap = max_memory.get(device) if device != "disk" else None
        reserved = 0
        if cap is not None and largest_layer_room and device in main_devices:
            cap, reserved = cap - max_layer_size, max_layer_size
        with_ties, tied_names, tied_modules = get_module_size_with_ties(tied_params, module_size, sizes, todo)
        if cap is None or used[device] + with_ties <= cap:
            used[device] += with_ties
            device_map[name] = device
            for tied_name in tied_names:
                todo = [(n, m) for n, m in todo if n != tied_name]
                device_map[tied_name] = device
            continue
        if tied_params and used[device] + module_size <= cap:  # split a tied module rather than move on
            split = False
            for tied_name, tied_module in zip(tied_names, tied_modules):
                children = list(tied_module.named_children())
                if not children or tied_module.__class__.__name__ in no_split:
                    continue
                children = [(f"{tied_name}.{n}", v) for n, v in
                            list(tied_module.named_parameters(recurse=False)) + children]
                idx = [i for i, (n, _) in enumerate(todo) if n == tied_name][0]
                todo = [(name, module)] + todo[:idx] + children + todo[idx + 1:]
                max_layer_size, max_layer_names = max_layer(todo)
                split = True
                break
            if split:
                continue
        if used[device] + module_size >= cap:
            children = [] if isinstance(module, torch.Tensor) else list(module.named_children())
            if children and module.__class__.__name__ not in no_split:
                children = list(module.named_parameters(recurse=False)) + children
                todo = [(f"{name}.{n}", v) for n, v in children] + todo
                max_layer_size, max_layer_names = max_layer(todo)
                continue
        used[device] += reserved
        current += 1
        todo = [(name, module)] + todo
    return clean_device_map(device_map)


def _has_parameters(model, name: str) -> bool:
    if not name:
        return True
    try:
        return any(True for _ in model.get_submodule(name).parameters())
    except AttributeError:  # a parameter or buffer name rather than a module
        return True


def weightless_to_first_gpu(model, device_map: dict[str, Device]) -> dict[str, Device]:
    """Modules without parameters (a rotary table: buffers computed from the config) go to the first GPU. accelerate
    lists them after the layers, so a map that spills puts them on the CPU, where every step would stage them
    through the offload path before the first layer runs; on the GPU they cost a few kilobytes."""
    gpus = [d for d in device_map.values() if isinstance(d, int)]
    if not gpus:
        return device_map
    first = min(gpus)
    out = dict(device_map)
    for name, dev in device_map.items():
        if dev in ("cpu", "disk") and name:
            module = model.get_submodule(name)
            if not any(True for _ in module.parameters()):
                out[name] = first
    return out


def run_devices(model, device_map: dict[str, Any], *, engine: str = "routerllm") -> dict[str, Any]:
    """Where each map entry computes, and so keeps its KV cache. The one rule: an entry on a device computes
    there; an offloaded entry runs, under routerllm's engine, where the hidden states are - on the device of the
    last entry with parameters before it (the first such entry's device for leading ones); accelerate's hooks run
    every offloaded entry on the map's first GPU. Without a computing entry: the CPU."""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    keys = sorted(device_map, key=lambda k: order.get(k, -1))
    computing = {k for k in keys if not is_offloaded(device_map[k], device_map) and _has_parameters(model, k)}
    first_gpu = next((d for d in device_map.values() if _is_gpu(d)), None)
    leading = next((k for k in keys if k in computing), None)
    first = device_map[leading] if leading is not None else (first_gpu if first_gpu is not None else "cpu")
    previous = first
    out: dict[str, Any] = {}
    for k in keys:
        d = device_map[k]
        if not is_offloaded(d, device_map):
            out[k] = d
            previous = d if k in computing else previous
        else:
            out[k] = (first_gpu if first_gpu is not None else "cpu") if engine == "accelerate" else previous
    return out


def _balanced(budgets: dict[Device, int], gpu_total: int, buffer: int) -> dict[Device, int]:
    """transformers' device_map="auto"/"balanced" (accelerate's get_balanced_memory, low_zero off): cap every GPU
    but the last at an even share plus a buffer, so two GPUs share layers (and KV cache) instead of the first
    filling up."""
    gpus = [d for d, b in budgets.items() if isinstance(d, int) and b > 0]
    if len(gpus) < 2:
        return dict(budgets)
    per_gpu = gpu_total // len(gpus) + buffer
    return {d: (min(b, per_gpu) if d in gpus[:-1] else b) for d, b in budgets.items()}
