"""Host I/O and GPU staging: the chunked reader, the disk read-ahead ring, and the flat staging buffers."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from routerllm_cli.errors import RunFailed
from routerllm_cli.offload.sources import Entry, Source, Unit

_READ_CHUNK = 32 * 2**20
_READ_THREADS = 8



# ----------------------------------------------------------------------------------------------- host I/O
class Reader:
    """Reads file regions straight into (pinned) host memory with large parallel preads; counts throughput."""

    def __init__(self, threads: int = _READ_THREADS):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="routerllm-offload-read")
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self.bytes = 0
        self.seconds = 0.0

    def _fd(self, path: str) -> int:
        with self._lock:
            if path not in self._fds:
                self._fds[path] = os.open(path, os.O_RDONLY)
            return self._fds[path]

    @staticmethod
    def _pread_into(fd: int, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                raise RunFailed(f"offload read ended early at byte {offset + done}", fix="check the offload folder")
            done += n

    def fill(self, entries: list[Entry], host: Any, *, count_disk: bool) -> None:
        """Write every entry's bytes into `host` (a flat uint8 CPU tensor) at its offset."""
        start = time.perf_counter()
        disk_bytes = 0
        jobs = []
        flat = host.numpy()
        for e in entries:
            src = e.source
            if src.is_file:
                fd = self._fd(src.path)
                for pos in range(0, e.nbytes, _READ_CHUNK):
                    n = min(_READ_CHUNK, e.nbytes - pos)
                    view = memoryview(flat[e.offset + pos : e.offset + pos + n])
                    jobs.append(self._pool.submit(self._pread_into, fd, view, src.file_offset + pos))
                disk_bytes += e.nbytes
            else:
                value = src.tensor if src.getter is None else src.getter()
                view_of(host, e).copy_(value)
        for job in jobs:
            job.result()
        if count_disk and disk_bytes:
            self.bytes += disk_bytes
            self.seconds += time.perf_counter() - start

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def view_of(flat: Any, e: Entry) -> Any:
    return flat[e.offset : e.offset + e.nbytes].view(e.dtype).view(e.shape)


class DiskStreamer:
    """Keeps the next streamed units (execution order, cyclic) read ahead into a small ring of host buffers."""

    def __init__(self, units: list[Unit], ring: list[Any], reader: Reader):
        self.units = units
        self.order = {u.index: i for i, u in enumerate(units)}
        self.ring = ring
        self.reader = reader
        self.held: list[int | None] = [None] * len(ring)  # streamed position held (or being read) per buffer
        self.ready = [False] * len(ring)
        self.in_use = [False] * len(ring)
        self.events: list[Any] = [None] * len(ring)  # copy-done event guarding a buffer's reuse
        self.head = 0  # position the consumer asked for last
        self.error: BaseException | None = None
        self.stop = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="routerllm-offload-stream", daemon=True)
        self.thread.start()

    def _wanted(self) -> list[int]:
        n = len(self.units)
        return [(self.head + k) % n for k in range(min(len(self.ring), n))]

    def _pick(self) -> tuple[int, int] | None:
        wanted = self._wanted()
        for pos in wanted:
            if pos in self.held:
                continue
            for b in range(len(self.ring)):
                if not self.in_use[b] and (self.held[b] is None or self.held[b] not in wanted):
                    return b, pos
            return None
        return None

    def _run(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.stop and (choice := self._pick()) is None:
                        self.cond.wait()
                    if self.stop:
                        return
                    b, pos = choice
                    self.held[b], self.ready[b] = pos, False
                    event, self.events[b] = self.events[b], None
                if event is not None:
                    event.synchronize()  # the last copy out of this buffer must finish before we overwrite it
                self.reader.fill(self.units[pos].entries, self.ring[b], count_disk=True)
                with self.cond:
                    self.ready[b] = True
                    self.cond.notify_all()
        except BaseException as exc:  # surfaced to the forward that waits for the data
            with self.cond:
                self.error = exc
                self.cond.notify_all()

    def acquire(self, unit: Unit) -> tuple[int, Any]:
        pos = self.order[unit.index]
        with self.cond:
            self.head = pos
            self.cond.notify_all()
            while True:
                if self.error is not None:
                    raise RunFailed(f"reading offloaded layer {unit.name} failed: {self.error}") from self.error
                for b, held in enumerate(self.held):
                    if held == pos and self.ready[b]:
                        self.in_use[b] = True
                        return b, self.ring[b]
                self.cond.wait()

    def release(self, b: int, event: Any) -> None:
        with self.cond:
            self.in_use[b] = False
            self.events[b] = event
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.stop = True
            self.cond.notify_all()
        self.thread.join()


class PackedSpill:
    """Packed 4-bit units the plan holds on disk: written once, as their flat layout, to one file each in a
    folder of the offload folder, then streamed back like any disk unit. The files are removed on detach."""

    SUBDIR = "routerllm-nf4"

    def __init__(self, folder: Any):
        from pathlib import Path

        self.folder = Path(folder) / self.SUBDIR
        self.files: list[Any] = []
        self.bytes = 0

    def write(self, unit: Unit, reader: Reader) -> None:
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / (unit.name.replace("/", "_") + ".nf4")
        flat = torch.empty(unit.nbytes, dtype=torch.uint8)
        reader.fill(unit.entries, flat, count_disk=unit.read_from_disk)
        with open(path, "wb") as fh:
            fh.write(memoryview(flat.numpy()))
            fh.flush()
            os.fsync(fh.fileno())
        del flat
        self.files.append(path)
        self.bytes += unit.nbytes
        for e in unit.entries:
            e.source = Source(path=str(path), file_offset=e.offset)

    def remove(self) -> None:
        for path in self.files:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        self.files.clear()
        try:
            self.folder.rmdir()
        except OSError:  # not empty (not ours) or gone
            pass


# ----------------------------------------------------------------------------------------------- staging
class Staging:
    """Two flat staging buffers on one execution device, a copy stream, and the events that order them."""

    def __init__(self, device: Any, nbytes: int):
        import torch

        self.device = device
        self.cuda = device.type == "cuda"
        self.bufs = [torch.empty(nbytes, dtype=torch.uint8, device=device) for _ in range(2)]
        self.holder: list[int | None] = [None, None]
        self.loaded_at = [0, 0]
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.ready = [torch.cuda.Event() if self.cuda else None for _ in range(2)]
        self.free = [torch.cuda.Event() if self.cuda else None for _ in range(2)]

    def slot_of(self, unit: Unit) -> int | None:
        for s, held in enumerate(self.holder):
            if held == unit.index:
                return s
        return None

    def victim(self, protect: set[int]) -> int | None:
        """The least recently loaded slot not holding a unit about to run; None when both do."""
        candidates = [s for s in (0, 1) if self.holder[s] is None or self.holder[s] not in protect]
        return min(candidates, key=lambda s: self.loaded_at[s]) if candidates else None

    def compute_stream(self) -> Any:
        import torch

        return torch.cuda.current_stream(self.device) if self.cuda else None
