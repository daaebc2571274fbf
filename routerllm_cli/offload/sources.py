"""Where an offloaded tensor comes from (host memory, a safetensors file, an offload-folder memmap), and
Accelerate's hooks that the engine takes over."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable



# ----------------------------------------------------------------------------------------------- sources
@dataclass
class Source:
    """Where one tensor's bytes come from: a tensor, a file region or a getter (none once they are in our buffer)."""

    tensor: Any = None
    path: str | None = None
    file_offset: int = 0
    getter: Callable[[], Any] | None = None
    owner: tuple[dict, str] | None = None  # an Accelerate state_dict slot to point at our copy afterwards
    from_module: bool = False  # the module's own CPU tensor (no Accelerate offload hook)

    @property
    def is_file(self) -> bool:
        return self.path is not None


@dataclass
class Entry:
    module: Any
    name: str
    is_param: bool
    shape: tuple
    dtype: Any
    offset: int = 0
    nbytes: int = 0
    source: Source | None = None
    placeholder: Any = None


@dataclass
class Unit:
    index: int
    name: str
    module: Any
    device: Any
    disk: bool  # held on disk (streamed every step), as the plan placed it
    entries: list[Entry] = field(default_factory=list)
    nbytes: int = 0
    host: Any = None  # resident flat host buffer, or None when streamed
    pinned: bool = False
    saved_hooks: list = field(default_factory=list)
    swapped: list = field(default_factory=list)  # (parent, child name, original module) for NF4 swaps
    handles: list = field(default_factory=list)
    bindings: dict = field(default_factory=dict)  # slot -> [(dict, name, tensor)]
    slot: int | None = None  # staging slot bound during this unit's forward
    read_from_disk: bool = False  # its bytes come from a file when attached (counted as disk reads)


_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}  # fmt: skip


def _safetensors_header(path: str, cache: dict) -> tuple[int, dict]:
    import json
    import struct

    if path not in cache:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            cache[path] = (8 + n, json.loads(f.read(n)))
    return cache[path]


def source_from_weights_map(wm: Any, key: str, entry: Entry, headers: dict) -> Source:
    """Resolve an Accelerate weights_map lookup to a file region when the bytes on disk are the bytes we need."""
    from accelerate.utils.offload import OffloadedWeightsLoader, PrefixedDataset

    ds, full = wm, key
    while isinstance(ds, PrefixedDataset):
        ds, full = ds.dataset, ds.prefix + full
    dtype_name = str(entry.dtype).removeprefix("torch.")
    if isinstance(ds, OffloadedWeightsLoader):
        if full in ds.state_dict:
            return Source(tensor=ds.state_dict[full], owner=(ds.state_dict, full))
        info = ds.index.get(full)
        if info is not None and info.get("safetensors_file"):
            base, header = _safetensors_header(info["safetensors_file"], headers)
            meta = header.get(info.get("weight_name", full))
            if (
                meta is not None
                and _ST_DTYPES.get(meta["dtype"]) == dtype_name
                and tuple(meta["shape"]) == tuple(entry.shape)
            ):
                return Source(path=info["safetensors_file"], file_offset=base + meta["data_offsets"][0])
        elif info is not None and ds.save_folder is not None:
            path = os.path.join(ds.save_folder, f"{full}.dat")
            # accelerate stores bf16 as int16 and fp8 as int8: same bytes, so the raw file is the tensor
            if info.get("dtype") == dtype_name and tuple(info.get("shape", ())) == tuple(entry.shape):
                return Source(path=path, file_offset=0)
    elif isinstance(ds, dict) and full in ds:
        return Source(tensor=ds[full], owner=(ds, full))
    return Source(getter=lambda wm=wm, key=key: wm[key])


def offload_hooks(module: Any) -> list:  # the AlignDevicesHooks on a module, unwrapping SequentialHook
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", [hook]))


def strip_hook(module: Any) -> Any:
    """Remove Accelerate's hook WITHOUT its detach_hook, which would read every offloaded weight back into RAM."""
    hook = module.__dict__.pop("_hf_hook", None)
    if hasattr(module, "_old_forward"):
        if "GraphModuleImpl" in str(type(module)):
            module.__class__.forward = module._old_forward
        else:
            module.forward = module._old_forward
        delattr(module, "_old_forward")
    return hook
