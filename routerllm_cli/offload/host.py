"""The host memory the offload engine holds: every unit resident (pinned where the budget allows) or streamed
from disk through a read-ahead ring, and the page-locking that makes host-to-device copies run at the link's
rate."""

from __future__ import annotations

from typing import Any

from routerllm_cli.units import format_bytes
from routerllm_cli.offload.sources import Source, Unit
from routerllm_cli.offload.staging import DiskStreamer, PackedSpill, Reader, view_of

RING_DEPTH = 2


class HostMemory:
    """Resident flat buffers, the disk read-ahead ring, what was page-locked, and why anything stayed pageable."""

    def __init__(self, reader: Reader, *, pin_budget_bytes: int | None, spill: PackedSpill | None):
        self.reader = reader
        self.pin_budget_bytes = pin_budget_bytes
        self.spill = spill
        self.ring: list[Any] = []
        self.ring_pinned = False
        self.streamer: DiskStreamer | None = None
        self.pageable_reasons: list[str] = []
        self._registered: list[int] = []  # data_ptrs we cudaHostRegister-ed

    def note(self, reason: str) -> None:
        if reason not in self.pageable_reasons:
            self.pageable_reasons.append(reason)

    def pin(self, tensor: Any) -> str | None:
        """Page-lock an existing host tensor (no power-of-two rounding, unlike the caching host allocator)."""
        import torch

        if tensor.numel() == 0:
            return None
        # portable: pinned for every GPU's context, so relay GPUs copy from it at the link's rate too
        flags = 1 if torch.cuda.device_count() > 1 else 0
        err = int(torch.cuda.cudart().cudaHostRegister(tensor.data_ptr(), tensor.numel(), flags))
        if err != 0:
            _clear_cuda_error()
            return f"cudaHostRegister failed with CUDA error {err}"
        self._registered.append(tensor.data_ptr())
        return None

    def place(self, units: list[Unit], *, keep_4bit: bool) -> None:
        """Decide for every unit: resident pinned, resident pageable, or streamed from disk.

        RAM-offloaded units are in RAM anyway, so they are pinned first. Disk units are cached in host RAM only
        within what the budget leaves; when some must stream, the read-ahead ring is reserved first, since
        every streamed byte crosses the bus from it. Packed 4-bit disk units go back to disk as packed files (the
        offload folder) when there is one to write to; otherwise they are small enough to keep in host RAM.
        """
        import torch

        can_pin = any(u.device.type == "cuda" for u in units) and torch.cuda.is_available()
        if not can_pin:
            self.note("execution device is the CPU: host buffers stay pageable")
        budget = float("inf") if self.pin_budget_bytes is None else self.pin_budget_bytes
        over_budget = f"pin budget of {format_bytes(self.pin_budget_bytes or 0)} reached"
        spill = keep_4bit and self.spill is not None
        in_ram = [u for u in units if not u.disk or (keep_4bit and not spill)]
        on_disk = [u for u in units if u not in in_ram]
        for unit in in_ram:
            fits = unit.nbytes <= budget
            budget -= unit.nbytes if fits else 0
            self.materialise(unit, pin=can_pin and fits)
            if not fits:
                self.note(over_budget)
        if spill:
            for unit in on_disk:
                self.spill.write(unit, self.reader)
        ring_bytes = RING_DEPTH * max((u.nbytes for u in on_disk), default=0)
        ring_fits = False
        if sum(u.nbytes for u in on_disk) > budget:
            ring_fits = ring_bytes <= budget
            budget -= ring_bytes if ring_fits else 0
        streamed = []
        for unit in on_disk:
            if unit.nbytes <= budget and not spill:  # spilled units stay on disk: RAM is why they went there
                budget -= unit.nbytes
                self.materialise(unit, pin=can_pin)
            else:
                streamed.append(unit)
        if streamed:
            self.ring = [torch.empty(ring_bytes // RING_DEPTH, dtype=torch.uint8) for _ in range(RING_DEPTH)]
            if can_pin and ring_fits:
                reasons = [self.pin(buf) for buf in self.ring]
                self.ring_pinned = not any(reasons)
                for reason in filter(None, reasons):
                    self.note(reason)
            elif can_pin:
                self.note(over_budget)
            self.streamer = DiskStreamer(streamed, self.ring, self.reader)

    def materialise(self, unit: Unit, *, pin: bool) -> None:
        import torch

        unit.host = torch.empty(unit.nbytes, dtype=torch.uint8)
        self.reader.fill(unit.entries, unit.host, count_disk=unit.read_from_disk)
        _adopt(unit)
        if pin:
            reason = self.pin(unit.host)
            unit.pinned = reason is None
            if reason:
                self.note(reason)

    def release(self) -> None:
        """Stop the streamer, close the reader, unpin and remove packed files: after the engine let go."""
        import torch

        if self.streamer is not None:
            self.streamer.close()
            self.streamer = None
        self.reader.close()
        if self._registered and torch.cuda.is_available():
            # Giving modules back re-runs accelerate's init hooks, which may queue copies out of this memory:
            # unpinning it under an in-flight DMA faults the GPU ("unspecified launch failure", seen on 2 GPUs).
            for d in range(torch.cuda.device_count()):
                torch.cuda.synchronize(d)
        for ptr in self._registered:
            torch.cuda.cudart().cudaHostUnregister(ptr)
        self._registered.clear()
        self.ring = []
        if self.spill is not None:
            self.spill.remove()


def _adopt(unit: Unit) -> None:
    """Point Accelerate's RAM copies at our buffer (frees the duplicate) and drop references to the originals."""
    for e in unit.entries:
        src = e.source
        if src.owner is not None:  # a raw copy (NF4-packed entries have no owner)
            store, key = src.owner
            store[key] = view_of(unit.host, e)
        e.source = Source(tensor=None, from_module=src.from_module)


def _clear_cuda_error() -> None:
    """A failed cudaHostRegister leaves the runtime's last error set; the next kernel launch check would raise it."""
    import ctypes

    try:
        ctypes.CDLL(None).cudaGetLastError()
    except (OSError, AttributeError):
        pass
