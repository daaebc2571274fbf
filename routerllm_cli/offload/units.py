"""Which modules the offload engine takes over ("units"), where each of their tensors' bytes are, and the flat
layout the engine holds them in."""

from __future__ import annotations

from typing import Any

from routerllm_cli.errors import ConfigError, RunFailed
from routerllm_cli.offload.sources import Entry, Source, Unit, offload_hooks, source_from_weights_map, strip_hook
from routerllm_cli.offload.staging import Reader, view_of

ALIGN = 256  # byte alignment of every tensor in a flat buffer: any dtype view and vectorised kernel is happy
OFFLOADED = ("cpu", "disk")


def as_device(value: Any) -> Any:
    """A device-map value (GPU index, "cuda:1", "cpu") as a torch.device with its index."""
    import torch

    if isinstance(value, int):
        return torch.device("cuda", value)
    dev = torch.device(value)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def plan_units(model: Any, device_map: dict[str, Any], *, execution_device: Any = None,
               execution_devices: dict[str, Any] | None = None,
               host_devices: dict[str, str] | None = None) -> tuple[list[Unit], dict[str, Any], list[str]]:
    """The units in execution order, the device map as the engine reads it (containers split), and the entries
    left to Accelerate with why. Each unit runs on `execution_device`, else where `execution_devices` (the plan's
    run devices; `plan.placement.run_devices` when None) says; it is held where `host_devices` says."""
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}
    for name, dev in device_map.items():
        if name not in modules:
            raise ConfigError(f"device map names {name!r}, which is not a module of this model",
                              fix="pass the device map the model was loaded with")  # fmt: skip
        if dev in OFFLOADED and name == "":
            raise ConfigError("the device map offloads the whole model", fix="map some modules to a GPU")
    runs = execution_devices
    if runs is None:
        from routerllm_cli.plan.placement import run_devices

        runs = run_devices(model, device_map)
    device_map, runs = split_containers(device_map, runs, modules)
    shared = shared_param_ids(model, device_map)
    held_on = {k: str(v) for k, v in (host_devices or {}).items()}
    units: list[Unit] = []
    skipped: list[str] = []
    for name in sorted(device_map, key=lambda n: order[n]):
        dev = device_map[name]
        if dev not in OFFLOADED:
            continue
        module = modules[name]
        if any(id(p) in shared for p in module.parameters()):
            skipped.append(f"{name}: shares a parameter with a module outside it (tied weights)")
            continue
        exec_dev = execution_device if execution_device is not None else runs.get(name)
        exec_dev = as_device("cpu" if exec_dev in (None, "disk") else exec_dev)
        held = held_on.get(name, str(dev))
        units.append(Unit(index=len(units), name=name, module=module, device=exec_dev, disk=held == "disk",
                          read_from_disk=dev == "disk"))
    return units, device_map, skipped


def shared_param_ids(model: Any, device_map: dict[str, Any]) -> set[int]:
    """Parameters used by more than one offloaded unit, or by a unit and a module outside it (tied weights)."""
    owners: dict[int, set[str]] = {}
    offloaded = [n for n, d in device_map.items() if d in OFFLOADED]
    for pname, p in model.named_parameters(remove_duplicate=False):
        unit = next((n for n in offloaded if pname.startswith(n + ".")), None)
        owners.setdefault(id(p), set()).add(unit or "")
    return {pid for pid, units in owners.items() if len(units) > 1}


def split_containers(device_map: dict[str, Any], runs: dict[str, Any],
                     modules: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A map entry for a ModuleList/ModuleDict ("model.layers": "disk" when every layer went there) becomes one
    entry per child: a container's own forward never runs, so hooks on it would never bind its weights."""
    import torch

    out_map, out_runs = {}, dict(runs)
    pending = list(device_map.items())
    while pending:
        name, dev = pending.pop(0)
        module = modules.get(name)
        if dev in OFFLOADED and isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            children = [(f"{name}.{child}", dev) for child, _ in module.named_children()]
            for child, _ in children:
                out_runs.setdefault(child, runs.get(name))
            pending = children + pending
            continue
        out_map[name] = dev
    return out_map, out_runs


def collect(unit: Unit, headers: dict) -> None:
    """Find where each tensor of the unit lives (module, Accelerate weights_map or file) and strip hooks."""
    import torch

    prefixes = {}
    hooks = []
    for rel, sub in unit.module.named_modules():
        prefixes[id(sub)] = rel
        if getattr(sub, "_hf_hook", None) is not None:
            hooks.append((sub, sub._hf_hook))
    owners = {id(m): m for _, m in unit.module.named_modules()}

    def weights_map_for(rel_module: str, local: str) -> tuple[Any, str] | None:
        parts = rel_module.split(".") if rel_module else []
        for depth in range(len(parts), -1, -1):
            anc_rel = ".".join(parts[:depth])
            anc = unit.module.get_submodule(anc_rel) if anc_rel else unit.module
            for hook in offload_hooks(anc):
                wm = getattr(hook, "weights_map", None)
                if getattr(hook, "offload", False) and wm is not None:
                    if depth == len(parts) or getattr(hook, "place_submodules", False):
                        key = ".".join(parts[depth:] + [local])
                        return wm, key
        return None

    for mid, sub in owners.items():
        rel = prefixes[mid]
        for kind, store in (("param", sub._parameters), ("buffer", sub._buffers)):
            for local, t in store.items():
                if t is None:
                    continue
                e = Entry(sub, local, kind == "param", tuple(t.shape), t.dtype)
                if t.device.type != "meta":
                    if kind == "buffer":
                        # buffers are small and Accelerate keeps them on the execution device already
                        store[local] = t.to(unit.device)
                        continue
                    e.source = Source(tensor=t.detach(), from_module=True)
                else:
                    found = weights_map_for(rel, local)
                    if found is None:
                        where = f"{unit.name}.{rel}.{local}" if rel else f"{unit.name}.{local}"
                        raise RunFailed(f"no weights found for offloaded tensor {where}",
                                        fix="load the model with the device map and offload folder it was planned with")  # fmt: skip
                    e.source = source_from_weights_map(found[0], found[1], e, headers)
                e.placeholder = torch.empty(e.shape, dtype=e.dtype, device="meta")
                if e.is_param:
                    e.placeholder = torch.nn.Parameter(e.placeholder, requires_grad=False)
                unit.entries.append(e)
    if not unit.entries:  # only buffers (rotary tables): Accelerate already keeps them on the device
        return
    for sub, hook in hooks:
        strip_hook(sub)
        unit.saved_hooks.append((sub, hook))



def layout(unit: Unit) -> None:
    """Offsets of the unit's tensors in its flat buffer, each aligned, and the buffer's size."""
    offset = 0
    for e in unit.entries:
        e.offset = offset
        e.nbytes = numel(e.shape) * itemsize(e.dtype)
        offset += -(-e.nbytes // ALIGN) * ALIGN
    unit.nbytes = offset



def read_entry(e: Entry, reader: Reader, *, count_disk: bool) -> Any:
    """One tensor's value: the tensor it is, or its bytes read into a buffer of their own."""
    import torch

    if e.source.tensor is not None:
        return e.source.tensor
    flat = torch.empty(-(-numel(e.shape) * itemsize(e.dtype) // ALIGN) * ALIGN, dtype=torch.uint8)
    tmp = Entry(e.module, e.name, e.is_param, e.shape, e.dtype, 0, numel(e.shape) * itemsize(e.dtype), e.source)
    reader.fill([tmp], flat, count_disk=count_disk)
    return view_of(flat, tmp)


def numel(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def itemsize(dtype: Any) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()
