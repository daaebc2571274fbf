"""Offloaded weights over every GPU's host link at once.

With offload the decode step is the host-to-GPU copy, and a 2- or 3-GPU machine has 2 or 3 host links while only
the GPU that runs the offloaded layers copies. Here each offloaded unit's bytes are split into shares: the
executing GPU copies its own share from pinned host memory on its copy stream, and each relay GPU copies its
share from the same pinned buffer into a relay buffer of its own, then over NVLink/P2P into the executing GPU's
staging slot. The executing GPU's copy stream waits for every share before it marks the slot ready, so the
forward path is unchanged. Shares follow the links' weights (measured rates), aligned so that every share starts
on a tensor-friendly boundary.

On a CPU execution device the same split runs synchronously through host relay buffers, which is what the CPU
tests exercise; the GPU path is `benchmarks/offload_decode.py --multi-link`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

SHARE_ALIGN = 2 * 2**20  # shares are whole 2 MiB pieces: big copies, few of them


def split_bytes(n: int, weights: Sequence[float], align: int | None = None) -> list[tuple[int, int]]:
    """[start, end) of each link's share of `n` bytes, in link order, proportional to `weights`. Relay shares
    (all but the first) are whole `align` pieces, rounded down; the direct link takes the rest, so a small unit
    goes over the direct link alone and no share is ever larger than its proportion plus the remainder."""
    align = align or SHARE_ALIGN
    total = float(sum(max(w, 0.0) for w in weights))
    relay = [int(n * max(w, 0.0) / total // align) * align if total > 0 else 0 for w in weights[1:]]
    direct = n - sum(relay)
    bounds = [0, direct]
    for r in relay:
        bounds.append(bounds[-1] + r)
    return list(zip(bounds[:-1], bounds[1:]))


@dataclass
class Relay:
    """One relay GPU's path to one executing GPU: a copy stream and two relay buffers (one per staging slot)."""

    device: Any
    nbytes: int
    stream: Any = None
    bufs: list = field(default_factory=list)

    def allocate(self) -> None:
        import torch

        self.bufs = [torch.empty(max(self.nbytes, 1), dtype=torch.uint8, device=self.device) for _ in range(2)]
        if self.device.type == "cuda":
            self.stream = torch.cuda.Stream(self.device)


@dataclass
class LinkSet:
    """How units that run on one device are copied in: the direct link's weight, then each relay's."""

    device: Any
    relays: list[Relay]
    weights: list[float]  # the direct link first, then one per relay

    @property
    def links(self) -> int:
        return 1 + len(self.relays)

    def shares(self, nbytes: int) -> list[tuple[int, int]]:
        return split_bytes(nbytes, self.weights)

    def copy(self, src: Any, dst: Any, nbytes: int, slot: int, stream: Any, free_event: Any) -> None:
        """Copy `src[:nbytes]` into `dst[:nbytes]` over every link. On CUDA everything is queued behind
        `free_event` (the slot's last user is done) and `stream` (the executing GPU's copy stream) ends up
        waiting for every share, so an event recorded on it afterwards means the whole unit has landed."""
        import torch

        (start, end), *rest = self.shares(nbytes)
        if self.device.type != "cuda":
            dst[start:end].copy_(src[start:end])
            for relay, (a, b) in zip(self.relays, rest):
                if b > a:  # through the relay's buffer, as on a GPU
                    relay.bufs[slot][: b - a].copy_(src[a:b])
                    dst[a:b].copy_(relay.bufs[slot][: b - a])
            return
        with torch.cuda.stream(stream):
            stream.wait_event(free_event)
            if end > start:
                dst[start:end].copy_(src[start:end], non_blocking=True)
            for relay, (a, b) in zip(self.relays, rest):
                if b <= a:
                    continue
                # the executing GPU's current stream is its copy stream here, so the cross-device copy's barrier
                # orders it against the copy stream, never against compute
                with torch.cuda.stream(relay.stream):
                    relay.stream.wait_event(free_event)
                    buf = relay.bufs[slot][: b - a]
                    buf.copy_(src[a:b], non_blocking=True)
                    dst[a:b].copy_(buf, non_blocking=True)
                    landed = torch.cuda.Event()
                    landed.record(relay.stream)
                stream.wait_event(landed)


def link_sets(unit_sizes: dict[Any, int], relays: dict[Any, list[Any]],
              weights: dict[Any, list[float]] | None = None) -> tuple[dict[Any, LinkSet], list[str]]:
    """A LinkSet per executing device from the relay devices offered for it, keeping those that can reach it
    peer-to-peer; returns the sets and a note for every relay dropped. `unit_sizes`: the largest unit per
    executing device (relay buffers hold the largest share)."""
    import torch

    out: dict[Any, LinkSet] = {}
    notes: list[str] = []
    for dev, largest in unit_sizes.items():
        kept = []
        for r in relays.get(dev, []):
            if r == dev and dev.type == "cuda":
                continue
            if dev.type == "cuda" and not torch.cuda.can_device_access_peer(dev.index, r.index):
                notes.append(f"GPU {r.index} cannot reach GPU {dev.index} peer-to-peer: its host link is not used")
                continue
            kept.append(r)
        w = list((weights or {}).get(dev) or [1.0] * (1 + len(kept)))[: 1 + len(kept)]
        w += [1.0] * (1 + len(kept) - len(w))
        # shares only grow with the unit, so the largest unit's shares size the relay buffers
        spans = split_bytes(largest, w)
        set_ = LinkSet(dev, [Relay(r, b - a) for r, (a, b) in zip(kept, spans[1:])], w)
        for relay in set_.relays:
            relay.allocate()
        out[dev] = set_
    return out, notes


def measure_aggregate(execute_on: int, relays: Sequence[int], nbytes: int = 2**31, reps: int = 3) -> dict:
    """Pinned host-to-GPU bytes/s into GPU `execute_on`: over its own link alone, and over its link plus each
    relay's (host -> relay GPU -> peer copy), all at once - the floor a multi-link offload step is judged by."""
    import time

    import torch

    dev = torch.device("cuda", execute_on)
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    spans = split_bytes(nbytes, [1.0] + [1.0] * len(relays))
    bufs = {r: torch.empty(b - a, dtype=torch.uint8, device=torch.device("cuda", r)) for r, (a, b) in
            zip(relays, spans[1:])}
    streams = {r: torch.cuda.Stream(torch.device("cuda", r)) for r in relays}
    own = torch.cuda.Stream(dev)

    def once(multi: bool) -> None:
        with torch.cuda.stream(own):
            a, b = spans[0] if multi else (0, nbytes)
            dst[a:b].copy_(host[a:b], non_blocking=True)
            for r, (x, y) in zip(relays, spans[1:]) if multi else ():
                with torch.cuda.stream(streams[r]):
                    bufs[r].copy_(host[x:y], non_blocking=True)
                    dst[x:y].copy_(bufs[r], non_blocking=True)

    out = {}
    for name, multi in (("one_link", False), ("all_links", True)):
        once(multi)
        for d in [execute_on, *relays]:
            torch.cuda.synchronize(d)
        start = time.perf_counter()
        for _ in range(reps):
            once(multi)
        for d in [execute_on, *relays]:
            torch.cuda.synchronize(d)
        out[f"{name}_bytes_per_s"] = reps * nbytes / (time.perf_counter() - start)
    del host, dst, bufs
    torch.cuda.empty_cache()
    return out
