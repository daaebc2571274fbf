"""Energy over a window of work (GPU by NVML counters, CPU by RAPL or an estimate), CO2 and cost.

GPU: NVML's total-energy counter (millijoules since the driver loaded, Volta and newer) read at start and
stop on each GPU. The counter is per device, so other processes on the same GPU are counted too. Without
NVML (no GPU, no driver) GPU energy is 0 with source "none".

CPU: RAPL package counters under /sys/class/powercap when readable (they are root-only on most kernels
since 2020); they measure the whole package, idle included, and wrap at max_energy_range_uj, so a
background thread reads them every `rapl_poll_s` to catch each wrap. Otherwise an estimate: this
process tree's CPU seconds / logical CPUs x `cpu_watts`, labelled "estimate".

Defaults are named constants with their source: CO2 intensity and the GPU-hour price.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from routerllm_cli.errors import ConfigError
from routerllm_cli.hardware import cuda_visible_devices

# World average carbon intensity of electricity generation: 475 g CO2/kWh (IEA, Global Energy & CO2 Status
# Report 2019, for 2018). Ember's Global Electricity Review 2024 gives 480 g for 2023: the figure is stable.
WORLD_CO2_G_PER_KWH = 475.0
WORLD_CO2_SOURCE = "IEA Global Energy & CO2 Status Report 2019 (2018 world average)"

# AWS p4d.24xlarge (8x A100) on demand costs about $32/h, so $4.0 per GPU-hour.
DEFAULT_USD_PER_GPU_HOUR = 32.0 / 8
PRICE_SOURCE = "AWS p4d.24xlarge on demand, about $32/h for 8x A100"

# Used only when RAPL is unreadable; a desktop/server CPU package at full load, order of magnitude.
DEFAULT_CPU_WATTS = 65.0

DEFAULT_RAPL_ROOT = Path("/sys/class/powercap")
_PACKAGE_ZONE = re.compile(r"^intel-rapl:\d+$")  # packages only: subzones (core, dram) nest inside or aside

JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class EnergyReading:
    seconds: float
    gpu_joules: dict[int, float]
    cpu_joules: float
    cpu_source: Literal["rapl", "estimate"]
    gpu_source: Literal["nvml", "none"]
    notes: tuple[str, ...] = ()

    @property
    def gpu_total_joules(self) -> float:
        return float(sum(self.gpu_joules.values()))

    @property
    def joules(self) -> float:
        return self.gpu_total_joules + self.cpu_joules

    @property
    def kwh(self) -> float:
        return self.joules / JOULES_PER_KWH

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "gpu_joules": {str(k): v for k, v in self.gpu_joules.items()},
            "cpu_joules": self.cpu_joules,
            "cpu_source": self.cpu_source,
            "gpu_source": self.gpu_source,
            "kwh": self.kwh,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EnergyReading":
        """The inverse of `to_dict` (a summary written by an earlier session of the same run)."""
        return cls(seconds=float(data.get("seconds", 0.0)),
                   gpu_joules={int(k): float(v) for k, v in (data.get("gpu_joules") or {}).items()},
                   cpu_joules=float(data.get("cpu_joules", 0.0)),
                   cpu_source="rapl" if data.get("cpu_source") == "rapl" else "estimate",
                   gpu_source="nvml" if data.get("gpu_source") == "nvml" else "none",
                   notes=tuple(data.get("notes") or ()))


def sum_readings(readings: Sequence[EnergyReading]) -> EnergyReading:
    """Several windows as one (a cascade's per-model phases). An estimate anywhere labels the sum an estimate."""
    gpu: dict[int, float] = {}
    for r in readings:
        for idx, j in r.gpu_joules.items():
            gpu[idx] = gpu.get(idx, 0.0) + j
    notes = tuple(dict.fromkeys(n for r in readings for n in r.notes))
    return EnergyReading(
        seconds=sum(r.seconds for r in readings),
        gpu_joules=gpu,
        cpu_joules=sum(r.cpu_joules for r in readings),
        cpu_source="estimate" if any(r.cpu_source == "estimate" for r in readings) or not readings else "rapl",
        gpu_source="nvml" if any(r.gpu_source == "nvml" for r in readings) else "none",
        notes=notes,
    )


def co2_grams(kwh: float, intensity_g_per_kwh: float = WORLD_CO2_G_PER_KWH) -> float:
    if kwh < 0 or intensity_g_per_kwh < 0:
        raise ConfigError("energy and carbon intensity must be 0 or more",
                          fix="set energy.carbon_intensity_g_per_kwh to your grid's g CO2/kWh")
    return kwh * intensity_g_per_kwh


def cost_usd(seconds: float, n_gpus: int, price_per_gpu_hour: float = DEFAULT_USD_PER_GPU_HOUR) -> float:
    """Rented-GPU cost of a window: GPU-hours x price."""
    if seconds < 0 or n_gpus < 0 or price_per_gpu_hour < 0:
        raise ConfigError("time, GPU count and price must be 0 or more",
                          fix="set energy.price_per_gpu_hour (e.g. 4.0) and check the GPU count")
    return seconds / 3600.0 * n_gpus * price_per_gpu_hour


def cost_usd_tokens(prompt_tokens: int, completion_tokens: int, usd_per_mtok_in: float,
                    usd_per_mtok_out: float) -> float:
    """API-priced cost: tokens x price per million tokens, input and output priced separately."""
    if min(prompt_tokens, completion_tokens, usd_per_mtok_in, usd_per_mtok_out) < 0:
        raise ConfigError("token counts and prices must be 0 or more",
                          fix="set usd_per_mtok_in / usd_per_mtok_out to the provider's prices")
    return (prompt_tokens * usd_per_mtok_in + completion_tokens * usd_per_mtok_out) / 1e6


# --- GPU: NVML -----------------------------------------------------------------------------------------


def _load_pynvml() -> Any | None:
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
    except Exception:  # no package, no driver, no GPU: all mean "no NVML here"
        return None
    return pynvml


def _visible_gpu_indices(nvml: Any, count: int, env: str | None) -> tuple[list[int], tuple[str, ...]]:
    """NVML indices of the GPUs this process may use (hardware.cuda_visible_devices' reading), and the MIG slices
    it names. Counting every GPU on a shared host would charge this run for its neighbours' work."""
    uuids = []
    if env is not None and env.strip():  # only a list that may name UUIDs needs them
        for i in range(count):
            uuid = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))
            uuids.append(uuid.decode() if isinstance(uuid, bytes) else str(uuid))
    else:
        uuids = [""] * count
    visible = cuda_visible_devices(env, uuids)
    return visible.nvml_indices, visible.mig


# --- CPU: RAPL or estimate -----------------------------------------------------------------------------


@dataclass
class _RaplZone:
    path: Path
    max_range_uj: int
    last_uj: int
    total_uj: int = 0

    def read(self) -> int:
        return int((self.path / "energy_uj").read_text().strip())

    def advance(self) -> None:
        now = self.read()
        # The counter wraps at max_energy_range_uj; one wrap between reads is what polling guarantees.
        delta = now - self.last_uj if now >= self.last_uj else self.max_range_uj - self.last_uj + now
        self.total_uj += delta
        self.last_uj = now


def _open_rapl(root: Path) -> tuple[list[_RaplZone], str | None]:
    """Package zones under `root`, or ([], why not)."""
    try:
        dirs = sorted(p for p in root.iterdir() if _PACKAGE_ZONE.match(p.name))
    except OSError:
        return [], f"no RAPL at {root}"
    zones = []
    for d in dirs:
        name_file = d / "name"
        # psys (whole platform, on some laptops) overlaps the packages; counting both would double count.
        if name_file.exists() and name_file.read_text().strip() == "psys":
            continue
        try:
            max_range = int((d / "max_energy_range_uj").read_text().strip())
            zones.append(_RaplZone(d, max_range, 0))
            zones[-1].last_uj = zones[-1].read()
        except PermissionError:
            return [], f"RAPL at {root} is root-only (sudo chmod a+r {root}/intel-rapl:*/energy_uj to measure)"
        except (OSError, ValueError):
            return [], f"RAPL zone {d} unreadable"
    if not zones:
        return [], f"no RAPL package zones at {root}"
    return zones, None


def _tree_cpu_seconds(proc: Any) -> float:
    """CPU seconds of this process, its finished children, and its live descendants."""
    t = proc.cpu_times()
    total = t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
    for child in proc.children(recursive=True):
        try:
            ct = child.cpu_times()
            total += ct.user + ct.system
        except Exception:  # exited between listing and reading
            continue
    return total


class EnergyMeter:
    """Measure a window: `with EnergyMeter() as m: ...` then `m.reading`, or `start()` ... `stop()`.

    `nvml`: a pynvml-like object (nvmlInit, nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex,
    nvmlDeviceGetTotalEnergyConsumption, nvmlShutdown); None loads the real pynvml when a GPU is there.
    """

    def __init__(self, *, nvml: Any | None = None, gpu_indices: Sequence[int] | None = None,
                 rapl_root: str | Path = DEFAULT_RAPL_ROOT, cpu_watts: float = DEFAULT_CPU_WATTS,
                 rapl_poll_s: float | None = 30.0):
        if cpu_watts < 0:
            raise ConfigError(f"cpu_watts is {cpu_watts}", fix="set energy.cpu_watts to 0 or more")
        self._nvml_given = nvml
        self._gpu_indices = list(gpu_indices) if gpu_indices is not None else None
        self.rapl_root = Path(rapl_root)
        self.cpu_watts = cpu_watts
        self.rapl_poll_s = rapl_poll_s
        self.reading: EnergyReading | None = None
        self._started: float | None = None

    # The meter is single-use per window, but may be restarted after stop().
    def start(self) -> EnergyMeter:
        self._notes: list[str] = []
        self._start_gpus()
        self._zones, why = _open_rapl(self.rapl_root)
        if why:
            self._notes.append(f"CPU energy estimated at {self.cpu_watts:g} W x CPU share: {why}")
        self._stop_poll = threading.Event()
        self._poller: threading.Thread | None = None
        self._lock = threading.Lock()
        if self._zones and self.rapl_poll_s:
            self._poller = threading.Thread(target=self._poll, name="rapl-poll", daemon=True)
            self._poller.start()
        import psutil

        self._proc = psutil.Process()
        self._cpu_count = psutil.cpu_count() or 1
        self._cpu_start = _tree_cpu_seconds(self._proc)
        self._started = time.perf_counter()
        return self

    def stop(self) -> EnergyReading:
        if self._started is None:
            raise RuntimeError("EnergyMeter.stop() called before start()")
        seconds = time.perf_counter() - self._started
        gpu_joules = self._stop_gpus()
        if self._poller is not None:
            self._stop_poll.set()
            self._poller.join()
        if self._zones:
            with self._lock:
                for z in self._zones:
                    z.advance()
            cpu_joules, cpu_source = sum(z.total_uj for z in self._zones) / 1e6, "rapl"
        else:
            cpu_seconds = max(_tree_cpu_seconds(self._proc) - self._cpu_start, 0.0)
            # elapsed x watts x utilisation, where utilisation = cpu_seconds / (elapsed x logical CPUs)
            cpu_joules, cpu_source = self.cpu_watts * cpu_seconds / self._cpu_count, "estimate"
        self._started = None
        self.reading = EnergyReading(
            seconds=seconds,
            gpu_joules=gpu_joules,
            cpu_joules=cpu_joules,
            cpu_source=cpu_source,
            gpu_source="nvml" if gpu_joules else "none",
            notes=tuple(self._notes),
        )
        return self.reading

    def __enter__(self) -> EnergyMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sample(self) -> None:
        """Read the RAPL counters now, so a wrap since the last read is counted (the poller calls this)."""
        if self._started is None:
            return
        with self._lock:
            for z in self._zones:
                try:
                    z.advance()
                except (OSError, ValueError):
                    continue

    def _poll(self) -> None:
        while not self._stop_poll.wait(self.rapl_poll_s):
            self.sample()

    def _start_gpus(self) -> None:
        self._nvml = self._nvml_given if self._nvml_given is not None else _load_pynvml()
        self._gpu_start: dict[int, tuple[Any, int]] = {}
        if self._nvml is None:
            self._notes.append("no NVML (no NVIDIA GPU or driver): GPU energy counted as 0")
            return
        nvml = self._nvml
        if self._nvml_given is not None:
            nvml.nvmlInit()
        count = nvml.nvmlDeviceGetCount()
        indices = self._gpu_indices
        if indices is None:
            indices, mig = _visible_gpu_indices(nvml, count, os.environ.get("CUDA_VISIBLE_DEVICES"))
            if mig:  # a card's counter covers every slice on it: charging it would bill the neighbours
                self._notes.append("CUDA_VISIBLE_DEVICES names MIG slices, which have no energy counter of their "
                                   "own: their GPU energy is not counted")
        for i in indices:
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                self._gpu_start[i] = (handle, int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle)))
            except Exception as exc:  # pre-Volta GPUs have no energy counter
                self._notes.append(f"GPU {i}: no energy counter ({type(exc).__name__}); not counted")

    def _stop_gpus(self) -> dict[int, float]:
        if self._nvml is None:
            return {}
        joules = {}
        for i, (handle, start_mj) in self._gpu_start.items():
            try:
                joules[i] = (int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle)) - start_mj) / 1000.0
            except Exception as exc:
                self._notes.append(f"GPU {i}: energy counter failed at stop ({type(exc).__name__}); not counted")
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass
        return joules
