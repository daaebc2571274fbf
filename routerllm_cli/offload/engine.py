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

from routerllm_cli.errors import ConfigError
from routerllm_cli.offload.host import HostMemory
from routerllm_cli.offload.quant import pack_unit
from routerllm_cli.offload.sources import Unit
from routerllm_cli.offload.staging import PackedSpill, Reader, Staging, view_of
from routerllm_cli.offload.units import collect, layout, plan_units


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
    links: dict = field(default_factory=dict)  # {execution device: host links carrying its units} when relayed
    link_notes: tuple[str, ...] = ()  # relays offered but not used, with why

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
        relays: list[Any] | None = None,
        link_weights: list[float] | None = None,
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
        # other GPUs whose host links carry shares of each unit to the GPU that runs it (offload/links.py)
        self.relays = list(relays or [])
        self.link_weights = link_weights
        self.links: dict[Any, Any] = {}
        self.link_notes: list[str] = []
        self.units: list[Unit] = []
        self.staging: dict[Any, Staging] = {}
        self.reader: Reader | None = None
        self.host: HostMemory | None = None
        self.skipped: list[str] = []
        self.copied_bytes = 0
        self.unprefetched = 0
        self.clock = 0
        self.attached = False

    # ------------------------------------------------------------------ attach / detach
    def attach(self) -> "OffloadEngine":
        import torch

        if self.attached or getattr(self.model, "_routerllm_offload_engine", None) is not None:
            raise ConfigError("an offload engine is already attached to this model", fix="detach() it first")
        self.units, self.device_map, self.skipped = plan_units(
            self.model, self.device_map, execution_device=self.execution_device,
            execution_devices=self.execution_devices, host_devices=self.host_devices)
        self.reader = Reader()
        self.host = HostMemory(self.reader, pin_budget_bytes=self.pin_budget_bytes, spill=self.spill)
        headers: dict = {}
        try:
            for unit in self.units:
                collect(unit, headers)
            self.units = [u for u in self.units if u.entries]
            for index, unit in enumerate(self.units):
                unit.index = index
                if self.keep_4bit:
                    pack_unit(self.model, unit, self.reader, compress_statistics=self.compress_statistics)
                layout(unit)
            self.host.place(self.units, keep_4bit=self.keep_4bit)
            sizes: dict[Any, int] = {}
            for unit in self.units:
                sizes[unit.device] = max(sizes.get(unit.device, 0), unit.nbytes)
            self.staging = {dev: Staging(dev, n) for dev, n in sizes.items()}
            if self.relays:
                from routerllm_cli.offload.links import link_sets
                from routerllm_cli.offload.units import as_device

                offered = [as_device(r) for r in self.relays]
                weights = {dev: self.link_weights for dev in sizes} if self.link_weights else None
                self.links, self.link_notes = link_sets(sizes, {dev: offered for dev in sizes}, weights)
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
        if self.host is not None:
            self.host.release()
        elif self.reader is not None:
            self.reader.close()
        self.staging = {}
        self.links = {}

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
            ring_slot, src = self.host.streamer.acquire(unit)
        dst = st.bufs[slot][: unit.nbytes]
        links = self.links.get(unit.device)
        if links is not None and links.relays:
            # every link carries a share; the copy stream waits for all of them
            links.copy(src, dst, unit.nbytes, slot, st.stream, st.free[slot])
            if st.cuda:
                st.ready[slot].record(st.stream)
        elif st.cuda:
            with torch.cuda.stream(st.stream):
                st.stream.wait_event(st.free[slot])  # the unit that used this slot last must be done with it
                dst.copy_(src[: unit.nbytes], non_blocking=True)
                st.ready[slot].record(st.stream)
        else:
            dst.copy_(src[: unit.nbytes])
        done = None
        if st.cuda:
            done = torch.cuda.Event()
            done.record(st.stream)
        if ring_slot is not None:
            self.host.streamer.release(ring_slot, done)
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
        ring = sum(b.numel() for b in self.host.ring) if self.host is not None else 0
        ring_pinned = self.host is not None and self.host.ring_pinned
        pinned = sum(u.nbytes for u in resident if u.pinned) + (ring if ring_pinned else 0)
        host = sum(u.nbytes for u in resident) + ring
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
            pageable_reason="; ".join(self.host.pageable_reasons if self.host else []) or None,
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
            links={str(d): ls.links for d, ls in self.links.items()},
            link_notes=tuple(self.link_notes),
            held_bytes={where: sum(u.nbytes for u in self.units if u.disk == (where == "disk"))
                        for where in ("cpu", "disk") if any(u.disk == (where == "disk") for u in self.units)},
        )


def attach_offload_engine(model: Any, device_map: dict[str, Any], **kw: Any) -> OffloadEngine:
    """Build an `OffloadEngine` for a model loaded with `device_map` and attach it."""
    return OffloadEngine(model, device_map, **kw).attach()


# ----------------------------------------------------------------------------------------------- helpers
def _is_nf4(module: Any) -> bool:
    from routerllm_cli.offload.quant import NF4Linear

    return isinstance(module, NF4Linear)


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
