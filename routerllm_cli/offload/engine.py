"""The fast offload engine: run CPU- and disk-offloaded layers at the pinned host-to-device copy rate.

Stock Accelerate CPU offload copies every offloaded weight synchronously, from pageable memory, with no prefetch,
so a decode step crosses the bus at a fraction of its rate. This engine plugs in after a stock
`from_pretrained(..., device_map=<dict>)` (or `dispatch_model`) load and takes over the modules the device map
puts on "cpu" or "disk":

- each offloaded module ("unit") gets ONE flat host buffer holding all its tensors (params become views), pinned
  with `cudaHostRegister` within `pin_budget_bytes`, pageable otherwise (the reason is kept in the stats);
- two flat GPU staging buffers per execution device, sized for the largest unit, are allocated once; a forward
  pre-hook waits for its unit's copy (CUDA event), binds the params to staging views and moves the inputs; the
  post-hook releases the slot and queues, on a side stream, the copy of the unit after next into it (execution
  order, wrapping to the first units for the next decode step), so copies overlap compute and run back to back;
- disk units that do not fit the budget are streamed: a reader thread reads ahead, in execution order, from the
  checkpoint's safetensors file or Accelerate's offload-folder memmaps into a small ring of host buffers, so disk,
  bus and compute overlap;
- with `keep_4bit`, each offloaded linear is quantized to NF4 once (see `quant.py`) and crosses the bus packed.

On a CPU execution device the same logic runs with no streams: events are no-ops and copies are synchronous.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from routerllm_cli.errors import ConfigError, RunFailed
from routerllm_cli.units import format_bytes
from routerllm_cli.offload.sources import Entry, Source, Unit, offload_hooks, source_from_weights_map, strip_hook
from routerllm_cli.offload.staging import DiskStreamer, PackedSpill, Reader, Staging, view_of

_ALIGN = 256  # byte alignment of every tensor in a flat buffer: any dtype view and vectorised kernel is happy
_RING_DEPTH = 2
_OFFLOADED = ("cpu", "disk")


@dataclass
class OffloadStats:
    """What the engine holds and moves. Byte counts are exact sizes of the engine's own buffers."""

    offloaded_layers: int
    host_bytes: int
    pinned_bytes: int
    pageable_bytes: int
    pageable_reason: str | None
    disk_layers: int
    bytes_per_step: int  # bytes crossing host->device per full forward once warm
    quantized_4bit: bool
    streamed_layers: int = 0  # disk units read from disk every step (did not fit the pin budget)
    staging_bytes: int = 0
    copied_bytes: int = 0  # host->device bytes issued since attach
    unprefetched_loads: int = 0  # loads issued at the unit's own forward (first call or out-of-order)
    disk_read_bytes: int = 0
    disk_read_seconds: float = 0.0
    execution_devices: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # offloaded map entries left to Accelerate, with why
    spilled_bytes: int = 0  # packed 4-bit disk units written to the offload folder and streamed from there
    held_bytes: dict = field(default_factory=dict)  # {"cpu" | "disk": bytes of the units held there, as held}

    @property
    def disk_read_bytes_per_s(self) -> float:
        return self.disk_read_bytes / self.disk_read_seconds if self.disk_read_seconds > 0 else 0.0


# ----------------------------------------------------------------------------------------------- engine
class OffloadEngine:
    """Takes over the modules `device_map` puts on "cpu"/"disk" and runs them from pinned, prefetched copies.

    `execution_device`: where offloaded units run; None runs each on the GPU of the map entry before it (the
    first GPU in the map for a leading unit, the CPU when the map has no GPU). `pin_budget_bytes`: the most host
    memory the engine pins (None: no limit); disk units are cached in host RAM only within it, since they were
    put on disk because RAM is short, and are streamed from disk otherwise. `keep_4bit`: quantize offloaded
    linears to NF4 once and move them packed (needs bitsandbytes).
    """

    def __init__(
        self,
        model: Any,
        device_map: dict[str, Any],
        *,
        execution_device: Any = None,
        execution_devices: dict[str, Any] | None = None,
        host_devices: dict[str, str] | None = None,
        spill_folder: Any = None,
        pin_budget_bytes: int | None = None,
        keep_4bit: bool = False,
        compress_statistics: bool = True,
    ):
        self.model = model
        self.device_map = dict(device_map)
        self.execution_device = execution_device
        # where each offloaded entry runs: the plan's run devices (`plan.placement.run_devices` when not given)
        self.execution_devices = dict(execution_devices) if execution_devices is not None else None
        # where each offloaded entry is held ("cpu" | "disk"): the plan's device, which may differ from the map the
        # model was loaded with (a 4-bit layer planned for the CPU is loaded as "disk" so that it is read from the
        # checkpoint and quantized one weight at a time, never held in 16-bit)
        self.host_devices = {k: str(v) for k, v in (host_devices or {}).items()}
        self.spill = PackedSpill(spill_folder) if spill_folder is not None else None
        self.pin_budget_bytes = pin_budget_bytes
        self.keep_4bit = keep_4bit
        self.compress_statistics = compress_statistics
        self.units: list[Unit] = []
        self.staging: dict[Any, Staging] = {}
        self.streamer: DiskStreamer | None = None
        self.reader: Reader | None = None
        self.ring: list[Any] = []
        self.ring_pinned = False
        self.pageable_reasons: list[str] = []
        self.skipped: list[str] = []
        self.copied_bytes = 0
        self.unprefetched = 0
        self.clock = 0
        self.attached = False
        self._registered: list[int] = []  # data_ptrs we cudaHostRegister-ed

    # ------------------------------------------------------------------ planning
    def _device(self, value: Any) -> Any:
        import torch

        if isinstance(value, int):
            return torch.device("cuda", value)
        dev = torch.device(value)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return dev

    def _plan_units(self) -> None:
        modules = dict(self.model.named_modules())
        order = {name: i for i, name in enumerate(modules)}
        for name, dev in self.device_map.items():
            if name not in modules:
                raise ConfigError(f"device map names {name!r}, which is not a module of this model",
                                  fix="pass the device map the model was loaded with")  # fmt: skip
            if dev in _OFFLOADED and name == "":
                raise ConfigError("the device map offloads the whole model", fix="map some modules to a GPU")
        runs = self.execution_devices
        if runs is None:
            from routerllm_cli.plan.placement import run_devices

            runs = run_devices(self.model, self.device_map)
        self.device_map, runs = _split_containers(self.device_map, runs, modules)
        ordered = sorted(self.device_map, key=lambda n: order[n])
        shared = self._shared_param_ids()
        for name in ordered:
            dev = self.device_map[name]
            if dev not in _OFFLOADED:
                continue
            module = modules[name]
            if any(id(p) in shared for p in module.parameters()):
                self.skipped.append(f"{name}: shares a parameter with a module outside it (tied weights)")
                continue
            exec_dev = self.execution_device if self.execution_device is not None else runs.get(name)
            exec_dev = self._device("cpu" if exec_dev in (None, "disk") else exec_dev)
            held = self.host_devices.get(name, str(dev))
            self.units.append(Unit(index=len(self.units), name=name, module=module, device=exec_dev,
                                    disk=held == "disk", read_from_disk=dev == "disk"))  # fmt: skip

    def _shared_param_ids(self) -> set[int]:
        owners: dict[int, set[str]] = {}
        offloaded = [n for n, d in self.device_map.items() if d in _OFFLOADED]
        for pname, p in self.model.named_parameters(remove_duplicate=False):
            unit = next((n for n in offloaded if pname.startswith(n + ".")), None)
            owners.setdefault(id(p), set()).add(unit or "")
        return {pid for pid, units in owners.items() if len(units) > 1}

    def _collect(self, unit: Unit, headers: dict) -> None:
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

    def _pack_4bit(self, unit: Unit) -> None:
        """Swap each plain linear of the unit for an NF4Linear whose packed tensors become flat-buffer entries."""
        import torch

        from routerllm_cli.offload import quant

        quant.require_bitsandbytes()
        by_tensor = {(id(e.module), e.name): e for e in unit.entries}
        skip = self._not_quantized()
        linears = [
            (rel, m)
            for rel, m in unit.module.named_modules()
            if type(m) is torch.nn.Linear and not _matches(f"{unit.name}.{rel}" if rel else unit.name, skip)
        ]
        for rel, lin in linears:
            w_entry = by_tensor.pop((id(lin), "weight"))
            weight = _read_entry(w_entry, self.reader, count_disk=unit.read_from_disk).to(unit.device)
            packed, facts = quant.quantize_nf4(weight, compress_statistics=self.compress_statistics)
            del weight
            nf4 = quant.nf4_module_for(lin, facts, compute_dtype=w_entry.dtype)
            if rel:
                parent_name, _, child = rel.rpartition(".")
                parent = unit.module.get_submodule(parent_name) if parent_name else unit.module
            else:  # the unit is itself a linear (an offloaded lm_head): swap it in the model
                parent_name, _, child = unit.name.rpartition(".")
                parent = self.model.get_submodule(parent_name) if parent_name else self.model
                unit.module = nf4
            setattr(parent, child, nf4)
            unit.swapped.append((parent, child, lin))
            unit.entries.remove(w_entry)
            bias_entry = by_tensor.pop((id(lin), "bias"), None)
            if bias_entry is not None:
                bias_entry.module = nf4
            for name, t in packed.items():
                e = Entry(nf4, name, False, tuple(t.shape), t.dtype, source=Source(tensor=t))
                e.placeholder = torch.empty(e.shape, dtype=e.dtype, device="meta")
                unit.entries.append(e)

    def _not_quantized(self) -> list[str]:
        """What transformers keeps in 16-bit even on the GPU: the output embeddings and configured skips."""
        skip = []
        out_emb = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        skip += [name for name, m in self.model.named_modules() if out_emb is not None and m is out_emb]
        qc = getattr(getattr(self.model, "config", None), "quantization_config", None)
        extra = qc.get("llm_int8_skip_modules") if isinstance(qc, dict) else getattr(qc, "llm_int8_skip_modules", None)
        skip += list(extra or [])
        skip += list(getattr(self.model, "_keep_in_fp32_modules", None) or [])
        return skip

    @staticmethod
    def _layout(unit: Unit) -> None:
        offset = 0
        for e in unit.entries:
            e.offset = offset
            e.nbytes = _numel(e.shape) * _itemsize(e.dtype)
            offset += -(-e.nbytes // _ALIGN) * _ALIGN
        unit.nbytes = offset

    def _pin(self, tensor: Any) -> str | None:
        """Page-lock an existing host tensor (no power-of-two rounding, unlike the caching host allocator)."""
        import torch

        if tensor.numel() == 0:
            return None
        err = int(torch.cuda.cudart().cudaHostRegister(tensor.data_ptr(), tensor.numel(), 0))
        if err != 0:
            _clear_cuda_error()
            return f"cudaHostRegister failed with CUDA error {err}"
        self._registered.append(tensor.data_ptr())
        return None

    def _place(self) -> None:
        """Decide for every unit: resident pinned, resident pageable, or streamed from disk.

        RAM-offloaded units are in RAM anyway, so they are pinned first. Disk units are cached in host RAM only
        within what the budget leaves; when some must stream, the read-ahead ring is reserved first, since
        every streamed byte crosses the bus from it.
        """
        import torch

        can_pin = any(u.device.type == "cuda" for u in self.units) and torch.cuda.is_available()
        if not can_pin:
            self._note_pageable("execution device is the CPU: host buffers stay pageable")
        budget = float("inf") if self.pin_budget_bytes is None else self.pin_budget_bytes
        over_budget = f"pin budget of {format_bytes(self.pin_budget_bytes or 0)} reached"
        # packed 4-bit disk units go back to disk as packed files (the offload folder) when there is one to write
        # to; otherwise, as before, they are small enough to keep in host RAM
        spill = self.keep_4bit and self.spill is not None
        in_ram = [u for u in self.units if not u.disk or (self.keep_4bit and not spill)]
        on_disk = [u for u in self.units if u not in in_ram]
        for unit in in_ram:
            fits = unit.nbytes <= budget
            budget -= unit.nbytes if fits else 0
            self._materialise(unit, pin=can_pin and fits)
            if not fits:
                self._note_pageable(over_budget)
        if spill:
            for unit in on_disk:
                self.spill.write(unit, self.reader)
        ring_bytes = _RING_DEPTH * max((u.nbytes for u in on_disk), default=0)
        ring_fits = False
        if sum(u.nbytes for u in on_disk) > budget:
            ring_fits = ring_bytes <= budget
            budget -= ring_bytes if ring_fits else 0
        streamed = []
        for unit in on_disk:
            if unit.nbytes <= budget and not spill:  # spilled units stay on disk: RAM is why they went there
                budget -= unit.nbytes
                self._materialise(unit, pin=can_pin)
            else:
                streamed.append(unit)
        if streamed:
            self.ring = [torch.empty(ring_bytes // _RING_DEPTH, dtype=torch.uint8) for _ in range(_RING_DEPTH)]
            if can_pin and ring_fits:
                reasons = [self._pin(buf) for buf in self.ring]
                self.ring_pinned = not any(reasons)
                for reason in filter(None, reasons):
                    self._note_pageable(reason)
            elif can_pin:
                self._note_pageable(over_budget)
            self.streamer = DiskStreamer(streamed, self.ring, self.reader)

    def _materialise(self, unit: Unit, *, pin: bool) -> None:
        import torch

        unit.host = torch.empty(unit.nbytes, dtype=torch.uint8)
        self.reader.fill(unit.entries, unit.host, count_disk=unit.read_from_disk)
        self._adopt(unit)
        if pin:
            reason = self._pin(unit.host)
            unit.pinned = reason is None
            if reason:
                self._note_pageable(reason)

    def _note_pageable(self, reason: str) -> None:
        if reason not in self.pageable_reasons:
            self.pageable_reasons.append(reason)

    def _adopt(self, unit: Unit) -> None:
        """Point Accelerate's RAM copies at our buffer (frees the duplicate) and drop references to the originals."""
        for e in unit.entries:
            src = e.source
            if src.owner is not None:  # a raw copy (NF4-packed entries have no owner)
                store, key = src.owner
                store[key] = view_of(unit.host, e)
            e.source = Source(tensor=None, from_module=src.from_module)

    # ------------------------------------------------------------------ attach / detach
    def attach(self) -> "OffloadEngine":
        import torch

        if self.attached or getattr(self.model, "_routerllm_offload_engine", None) is not None:
            raise ConfigError("an offload engine is already attached to this model", fix="detach() it first")
        self._plan_units()
        self.reader = Reader()
        headers: dict = {}
        try:
            for unit in self.units:
                self._collect(unit, headers)
            self.units = [u for u in self.units if u.entries]
            for index, unit in enumerate(self.units):
                unit.index = index
                if self.keep_4bit:
                    self._pack_4bit(unit)
                self._layout(unit)
            self._place()
            sizes: dict[Any, int] = {}
            for unit in self.units:
                sizes[unit.device] = max(sizes.get(unit.device, 0), unit.nbytes)
            self.staging = {dev: Staging(dev, n) for dev, n in sizes.items()}
            for unit in self.units:
                self._unbind(unit)
                unit.handles.append(unit.module.register_forward_pre_hook(
                    lambda m, a, k, u=unit: self._pre_forward(u, a, k), with_kwargs=True))  # fmt: skip
                unit.handles.append(unit.module.register_forward_hook(
                    lambda m, a, o, u=unit: self._post_forward(u), always_call=True))  # fmt: skip
        except BaseException:
            for unit in self.units:  # leave the model as Accelerate had it
                self._give_back(unit)
            self._teardown()
            raise
        self.attached = True
        self.model._routerllm_offload_engine = self
        if any(s.cuda for s in self.staging.values()):
            torch.cuda.synchronize()
        return self

    def detach(self) -> None:
        """Give the modules back to Accelerate's hooks: the model keeps working on the stock path."""
        import torch

        if not self.attached:
            return
        if any(s.cuda for s in self.staging.values()):
            torch.cuda.synchronize()
        for unit in self.units:
            self._give_back(unit)
        self._teardown()
        self.attached = False
        self.model.__dict__.pop("_routerllm_offload_engine", None)

    def _give_back(self, unit: Unit) -> None:
        """Undo what attach did to one unit, however far it got."""
        import torch
        from accelerate.hooks import add_hook_to_module

        hooked = bool(unit.handles)  # params are placeholders only once the unit is hooked
        for handle in unit.handles:
            handle.remove()
        unit.handles.clear()
        if hooked:
            self._unbind(unit)
        for parent, child, original in reversed(unit.swapped):
            setattr(parent, child, original)
        unit.swapped.clear()
        for e in unit.entries:
            if hooked and e.source.from_module and unit.host is not None and not _is_nf4(e.module):
                # the module's own tensor was freed for our copy: hand it back as a view of that copy
                store = e.module._parameters if e.is_param else e.module._buffers
                value = view_of(unit.host, e)
                store[e.name] = torch.nn.Parameter(value, requires_grad=False) if e.is_param else value
        for sub, hook in unit.saved_hooks:
            add_hook_to_module(sub, hook)
        unit.saved_hooks.clear()
        unit.bindings.clear()  # they hold views of the staging buffers
        unit.host = None

    def _teardown(self) -> None:
        import torch

        if self.streamer is not None:
            self.streamer.close()
            self.streamer = None
        if self.reader is not None:
            self.reader.close()
        if self._registered and torch.cuda.is_available():
            # Giving modules back re-runs accelerate's init hooks, which may queue copies out of this memory:
            # unpinning it under an in-flight DMA faults the GPU ("unspecified launch failure", seen on 2 GPUs).
            for d in range(torch.cuda.device_count()):
                torch.cuda.synchronize(d)
        for ptr in self._registered:
            torch.cuda.cudart().cudaHostUnregister(ptr)
        self._registered.clear()
        self.staging = {}
        self.ring = []
        if self.spill is not None:
            self.spill.remove()

    # ------------------------------------------------------------------ forward path
    def _bindings(self, unit: Unit, slot: int) -> list:
        import torch

        if slot not in unit.bindings:
            buf = self.staging[unit.device].bufs[slot]
            out = []
            for e in unit.entries:
                view = view_of(buf, e)
                if e.is_param:
                    out.append((e.module._parameters, e.name, torch.nn.Parameter(view, requires_grad=False)))
                else:
                    out.append((e.module._buffers, e.name, view))
            unit.bindings[slot] = out
        return unit.bindings[slot]

    def _unbind(self, unit: Unit) -> None:
        for e in unit.entries:
            (e.module._parameters if e.is_param else e.module._buffers)[e.name] = e.placeholder
        unit.slot = None

    def _load(self, unit: Unit, st: Staging, slot: int) -> None:
        import torch

        st.holder[slot] = unit.index
        self.clock += 1
        st.loaded_at[slot] = self.clock
        ring_slot = None
        src = unit.host
        if src is None:
            ring_slot, src = self.streamer.acquire(unit)
        dst = st.bufs[slot][: unit.nbytes]
        if st.cuda:
            with torch.cuda.stream(st.stream):
                st.stream.wait_event(st.free[slot])  # the unit that used this slot last must be done with it
                dst.copy_(src[: unit.nbytes], non_blocking=True)
                st.ready[slot].record(st.stream)
            done = torch.cuda.Event()
            done.record(st.stream)
        else:
            dst.copy_(src[: unit.nbytes])
            done = None
        if ring_slot is not None:
            self.streamer.release(ring_slot, done)
        self.copied_bytes += unit.nbytes

    def _pre_forward(self, unit: Unit, args: tuple, kwargs: dict) -> tuple:
        st = self.staging[unit.device]
        slot = st.slot_of(unit)
        if slot is None:
            slot = st.victim({u.index for u in self._upcoming(unit)[:1]})
            self._load(unit, st, slot)
            self.unprefetched += 1
        if st.cuda:
            st.compute_stream().wait_event(st.ready[slot])
        for store, name, tensor in self._bindings(unit, slot):
            store[name] = tensor
        unit.slot = slot
        return _to_device(args, unit.device), _to_device(kwargs, unit.device)

    def _post_forward(self, unit: Unit) -> None:
        if unit.slot is None:
            return
        st = self.staging[unit.device]
        slot = unit.slot
        if st.cuda:
            st.free[slot].record(st.compute_stream())
        self._unbind(unit)
        # Keep the next two units staged: the next one normally sits in the other slot already, and the slot
        # just released takes the one after it, its copy ordered after this unit's kernels by the free event.
        # Two copies in flight at the end of a step cover the host's launch of the next step's first layers.
        upcoming = self._upcoming(unit)
        protect = {u.index for u in upcoming}
        for nxt in upcoming:
            nst = self.staging[nxt.device]
            if nst.slot_of(nxt) is None:
                victim = nst.victim(protect)
                if victim is None:
                    break
                self._load(nxt, nst, victim)

    def _upcoming(self, unit: Unit) -> list[Unit]:
        n = len(self.units)
        return [self.units[(unit.index + k) % n] for k in (1, 2)]

    # ------------------------------------------------------------------ stats
    def stats(self) -> OffloadStats:
        resident = [u for u in self.units if u.host is not None]
        pinned = sum(u.nbytes for u in resident if u.pinned) + (sum(b.numel() for b in self.ring) if self.ring_pinned else 0)
        host = sum(u.nbytes for u in resident) + sum(b.numel() for b in self.ring)
        per_device: dict[Any, list[Unit]] = {}
        for u in self.units:
            per_device.setdefault(u.device, []).append(u)
        # with at most two units on a device both stay in its staging slots: nothing crosses the bus once warm
        per_step = sum(sum(u.nbytes for u in us) for us in per_device.values() if len(us) > 2)
        reader = self.reader
        return OffloadStats(
            offloaded_layers=len(self.units),
            host_bytes=host,
            pinned_bytes=pinned,
            pageable_bytes=host - pinned,
            pageable_reason="; ".join(self.pageable_reasons) or None,
            disk_layers=sum(u.disk for u in self.units),
            bytes_per_step=per_step,
            quantized_4bit=self.keep_4bit and bool(self.units),
            streamed_layers=len(self.units) - len(resident),
            staging_bytes=sum(sum(b.numel() for b in s.bufs) for s in self.staging.values()),
            copied_bytes=self.copied_bytes,
            unprefetched_loads=self.unprefetched,
            disk_read_bytes=reader.bytes if reader else 0,
            disk_read_seconds=reader.seconds if reader else 0.0,
            execution_devices=tuple(sorted({str(u.device) for u in self.units})),
            skipped=tuple(self.skipped),
            spilled_bytes=self.spill.bytes if self.spill is not None else 0,
            held_bytes={where: sum(u.nbytes for u in self.units if u.disk == (where == "disk"))
                        for where in ("cpu", "disk") if any(u.disk == (where == "disk") for u in self.units)},
        )


def attach_offload_engine(model: Any, device_map: dict[str, Any], **kw: Any) -> OffloadEngine:
    """Build an `OffloadEngine` for a model loaded with `device_map` and attach it."""
    return OffloadEngine(model, device_map, **kw).attach()


# ----------------------------------------------------------------------------------------------- helpers
def _split_containers(device_map: dict[str, Any], runs: dict[str, Any],
                      modules: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A map entry for a ModuleList/ModuleDict ("model.layers": "disk" when every layer went there) becomes one
    entry per child: a container's own forward never runs, so hooks on it would never bind its weights."""
    import torch

    out_map, out_runs = {}, dict(runs)
    pending = list(device_map.items())
    while pending:
        name, dev = pending.pop(0)
        module = modules.get(name)
        if dev in _OFFLOADED and isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            children = [(f"{name}.{child}", dev) for child, _ in module.named_children()]
            for child, _ in children:
                out_runs.setdefault(child, runs.get(name))
            pending = children + pending
            continue
        out_map[name] = dev
    return out_map, out_runs


def _read_entry(e: Entry, reader: Reader, *, count_disk: bool) -> Any:
    import torch

    if e.source.tensor is not None:
        return e.source.tensor
    flat = torch.empty(-(-_numel(e.shape) * _itemsize(e.dtype) // _ALIGN) * _ALIGN, dtype=torch.uint8)
    tmp = Entry(e.module, e.name, e.is_param, e.shape, e.dtype, 0, _numel(e.shape) * _itemsize(e.dtype), e.source)
    reader.fill([tmp], flat, count_disk=count_disk)
    return view_of(flat, tmp)


def _clear_cuda_error() -> None:
    """A failed cudaHostRegister leaves the runtime's last error set; the next kernel launch check would raise it."""
    import ctypes

    try:
        ctypes.CDLL(None).cudaGetLastError()
    except (OSError, AttributeError):
        pass


def _has_params(module: Any) -> bool:
    return next(module.parameters(), None) is not None


def _matches(name: str, patterns: list[str]) -> bool:
    return any(f".{p}." in f".{name}." for p in patterns if p)


def _is_nf4(module: Any) -> bool:
    from routerllm_cli.offload.quant import NF4Linear

    return isinstance(module, NF4Linear)


def _numel(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _itemsize(dtype: Any) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def _to_device(obj: Any, device: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj if obj.device == device else obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    if isinstance(obj, tuple):
        moved = [_to_device(v, device) for v in obj]
        return type(obj)(*moved) if hasattr(obj, "_fields") else tuple(moved)
    return obj
