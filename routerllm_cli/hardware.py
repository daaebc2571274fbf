"""What this machine has, or the machine an operator is thinking of renting: GPUs, host memory, disk, packages.

`probe_hardware` reads the real machine (NVML for GPUs, psutil for RAM, `shutil.disk_usage` for the offload folder
and the Hugging Face cache) and never raises for a missing GPU: the report says why NVML had nothing to say.
`assume_hardware` builds a what-if report from strings like "2x80GB" and "256GB" so a laptop can answer
"can I run 405B on two 80 GB GPUs?". `machine_checks` turns a report plus a model spec into preflight checks
(GPU processes, stale offload files, package versions, the bitsandbytes CUDA backend) without importing torch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from routerllm_cli import hub
from routerllm_cli.errors import ConfigError
from routerllm_cli.units import format_bytes, parse_size

Status = Literal["ok", "warn", "fail", "info", "skip"]


@dataclass
class GPUInfo:
    index: int  # CUDA ordinal as torch/accelerate will see it (after CUDA_VISIBLE_DEVICES)
    name: str
    total_bytes: int
    free_bytes: int
    processes: list[dict] = field(default_factory=list)  # other processes holding memory: {pid, used_bytes}


@dataclass
class HardwareReport:
    gpus: list[GPUInfo]
    driver: str | None
    cuda: str | None  # the highest CUDA version the driver supports
    nvml_error: str | None
    cpu_total_bytes: int
    cpu_available_bytes: int
    assumed: bool  # True for --assume-gpus/--assume-cpu what-ifs
    disk_free: dict[str, int] = field(default_factory=dict)  # path -> free bytes (offload folder, HF cache)
    offload_folder: str | None = None  # which disk_free entry is the offload folder
    hf_cache: str | None = None  # which disk_free entry is the HF cache

    def free_disk_at(self, path: Path | str | None) -> int | None:
        if path is None:
            return None
        key = str(_abs(Path(path)))
        if key in self.disk_free:
            return self.disk_free[key]
        return _disk_free(Path(path))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Check:
    """One line of the preflight checklist."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict:
        out = {"name": self.name, "status": self.status, "detail": self.detail}
        if self.fix:
            out["fix"] = self.fix
        return out


def _abs(path: Path) -> Path:
    return Path(os.path.abspath(path.expanduser()))


def _disk_free(path: Path) -> int | None:
    """Free bytes on the filesystem that holds `path` (or would hold it, once created)."""
    probe = _abs(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


@dataclass(frozen=True)
class VisibleDevices:
    """What CUDA_VISIBLE_DEVICES leaves a process: whole GPUs as NVML indices in CUDA ordinal order, and any MIG
    slices it names (a slice has its own memory and no energy counter of its own, so neither is read as a card)."""

    nvml_indices: list[int]
    mig: tuple[str, ...] = ()


def cuda_visible_devices(env: str | None, uuids: Sequence[str]) -> VisibleDevices:
    """CUDA's reading of CUDA_VISIBLE_DEVICES, over NVML's GPUs (`uuids[i]` is NVML device i's UUID).

    Unset: every GPU, in NVML order. Empty: none. Otherwise a comma-separated list, renumbered from 0 in its
    order, of ordinals (NVML/nvidia-smi order), GPU UUIDs or unique UUID prefixes ("GPU-8932f937"), and MIG
    slices ("MIG-..."). The list ends at the first entry that names no GPU (-1, an ordinal past the last GPU,
    a prefix matching none or several, an empty item); a GPU named twice ends it too, so no card is counted
    twice."""
    if env is None:
        return VisibleDevices(list(range(len(uuids))))
    order: list[int] = []
    mig: list[str] = []
    for item in (v.strip() for v in env.split(",")) if env.strip() else ():
        if item.upper().startswith("MIG-"):
            mig.append(item)
            continue
        if item.lstrip("-").isdigit():
            match = [int(item)] if 0 <= int(item) < len(uuids) else []
        else:
            match = [i for i, u in enumerate(uuids) if item and u and u.startswith(item)]
        if len(match) != 1 or match[0] in order:
            break  # CUDA stops at the first invalid entry
        order.append(match[0])
    return VisibleDevices(order, tuple(mig))


def _cuda_version(raw: int | None) -> str | None:
    if not raw:
        return None
    return f"{raw // 1000}.{(raw % 1000) // 10}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def probe_gpus(nvml: Any = None) -> tuple[list[GPUInfo], str | None, str | None, str | None]:
    """(gpus, driver, cuda, error) from NVML. `nvml` is the pynvml module or an object with the same functions."""
    if nvml is None:
        try:
            import pynvml as nvml  # nvidia-ml-py
        except ImportError:
            return [], None, None, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return [], None, None, f"{type(exc).__name__}: {exc}"
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        try:
            cuda = _cuda_version(nvml.nvmlSystemGetCudaDriverVersion())
        except Exception:  # noqa: BLE001 - old drivers lack it
            cuda = None
        count = nvml.nvmlDeviceGetCount()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        uuids = []
        for h in handles:
            try:
                uuids.append(_text(nvml.nvmlDeviceGetUUID(h)))
            except Exception:  # noqa: BLE001
                uuids.append("")
        visible = cuda_visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"), uuids)
        if visible.mig:
            return [], driver, cuda, (f"CUDA_VISIBLE_DEVICES names MIG slices ({', '.join(visible.mig)}), which "
                                      "routerllm does not size; plan one with --assume-gpus 1x<its memory>")
        gpus = []
        own = os.getpid()
        for ordinal, nvml_index in enumerate(visible.nvml_indices):
            h = handles[nvml_index]
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            procs = []
            try:
                running = nvml.nvmlDeviceGetComputeRunningProcesses(h)
            except Exception:  # noqa: BLE001 - not permitted in some containers
                running = []
            for p in running:
                if p.pid == own:
                    continue
                used = getattr(p, "usedGpuMemory", None)
                procs.append({"pid": int(p.pid), "used_bytes": int(used) if used is not None else None})
            gpus.append(GPUInfo(ordinal, _text(nvml.nvmlDeviceGetName(h)), int(mem.total), int(mem.free), procs))
        return gpus, driver, cuda, None
    except Exception as exc:  # noqa: BLE001 - a half-working NVML must not crash preflight
        return [], None, None, f"{type(exc).__name__}: {exc}"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def probe_hardware(offload_folder: Path | None = None, *, nvml: Any = None) -> HardwareReport:
    """The real machine. No NVIDIA GPU is a valid answer (gpus == [], nvml_error says why), never an exception."""
    import psutil

    gpus, driver, cuda, error = probe_gpus(nvml)
    vm = psutil.virtual_memory()
    report = HardwareReport(gpus, driver, cuda, error, int(vm.total), int(vm.available), assumed=False)
    _add_disks(report, offload_folder)
    return report


def _add_disks(report: HardwareReport, offload_folder: Path | None) -> None:
    cache = _abs(hub.cache_dir())
    report.hf_cache = str(cache)
    free = _disk_free(cache)
    if free is not None:
        report.disk_free[str(cache)] = free
    if offload_folder is not None:
        folder = _abs(Path(offload_folder))
        report.offload_folder = str(folder)
        free = _disk_free(folder)
        if free is not None:
            report.disk_free[str(folder)] = free


_GPU_SPEC = re.compile(r"^\s*(\d+)\s*[x×*]\s*(.+?)\s*$", re.IGNORECASE)


def parse_gpu_spec(text: str) -> list[int]:
    """'2x80GB' -> [80e9, 80e9]; '80GB,40GB' -> two different cards; '0' or 'none' -> no GPU."""
    text = text.strip()
    if text.lower() in ("0", "none", "no", "cpu"):
        return []
    sizes: list[int] = []
    for part in text.split(","):
        match = _GPU_SPEC.match(part)
        count, size = (int(match.group(1)), match.group(2)) if match else (1, part)
        try:
            one = parse_size(size, what="--assume-gpus")
        except ConfigError:
            raise ConfigError(f"--assume-gpus: cannot read {text!r}",
                              fix='write COUNTxSIZE like "2x80GB" or "4x141GB", or sizes like "80GB,40GB"') from None
        if count < 1 or one <= 0:
            raise ConfigError(f"--assume-gpus: {part.strip()!r} has no GPU memory",
                              fix='write COUNTxSIZE like "2x80GB", or "0" for a machine without GPUs')
        sizes += [one] * count
    return sizes


def assume_hardware(gpus: str | None, cpu: str | None, base: HardwareReport | None = None) -> HardwareReport:
    """A what-if machine: GPUs and/or host RAM from the flags, everything else (disks, the other of GPU/CPU)
    from `base` (the real probe). Assumed GPUs are empty: free == total, no other processes."""
    if base is None:
        base = probe_hardware()
    report = HardwareReport(list(base.gpus), base.driver, base.cuda, base.nvml_error, base.cpu_total_bytes,
                            base.cpu_available_bytes, assumed=True, disk_free=dict(base.disk_free),
                            offload_folder=base.offload_folder, hf_cache=base.hf_cache)
    if gpus is not None:
        sizes = parse_gpu_spec(gpus)
        report.gpus = [GPUInfo(i, f"assumed {format_bytes(s)} GPU", s, s, []) for i, s in enumerate(sizes)]
        report.driver, report.cuda, report.nvml_error = None, None, None
    if cpu is not None:
        size = parse_size(cpu, what="--assume-cpu")
        if size <= 0:
            raise ConfigError("--assume-cpu must be more than 0", fix='write it like "256GB"')
        report.cpu_total_bytes = report.cpu_available_bytes = size
    return report


# --- checks ----------------------------------------------------------------------------------------------------


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpu_checks(hw: HardwareReport) -> list[Check]:
    if not hw.gpus:
        if hw.assumed:
            return [Check("gpus", "info", "assumed: no GPU - planning for CPU only")]
        why = f" ({hw.nvml_error})" if hw.nvml_error else ""
        return [Check("gpus", "warn", f"no NVIDIA GPU found{why}: planning for CPU only",
                      fix="run on a machine with NVIDIA GPUs, or try --assume-gpus 2x80GB to plan for one")]
    if hw.assumed:
        sizes = ", ".join(format_bytes(g.total_bytes) for g in hw.gpus)
        checks = [Check("gpus", "info", f"assumed {len(hw.gpus)} GPU(s) of {sizes}, empty")]
    else:
        names = ", ".join(f"{g.index}: {g.name} {format_bytes(g.total_bytes)} ({format_bytes(g.free_bytes)} free)"
                          for g in hw.gpus)
        checks = [Check("gpus", "ok", f"{len(hw.gpus)} GPU(s): {names}")]
    if not hw.assumed:
        checks.append(Check("driver", "ok" if hw.driver else "warn",
                            f"driver {hw.driver or 'unknown'}, CUDA {hw.cuda or 'unknown'} supported"))
    for g in hw.gpus:
        if g.processes:
            used = sum(p["used_bytes"] or 0 for p in g.processes)
            pids = ", ".join(str(p["pid"]) for p in g.processes)
            checks.append(Check(f"gpu{g.index}_processes", "warn",
                                f"GPU {g.index}: other processes hold {format_bytes(used)} (pids {pids}); "
                                "the plan uses what is free now",
                                fix=f"stop them (kill {pids.split(',')[0]}) or pick other GPUs with CUDA_VISIBLE_DEVICES"))
    return checks


def memory_checks(hw: HardwareReport) -> list[Check]:
    what = "assumed" if hw.assumed else "host RAM"
    return [Check("cpu_ram", "info" if hw.assumed else "ok",
                  f"{what}: {format_bytes(hw.cpu_total_bytes)} total, {format_bytes(hw.cpu_available_bytes)} available")]


def disk_checks(hw: HardwareReport, offload_folder: Path | None, managed_folder: Path | None = None) -> list[Check]:
    """Free disk at the HF cache and the model's offload folder, and leftovers in the folder `offload clean`
    manages (the model's offload_folder, else the top-level one)."""
    from routerllm_cli.offload.folder import LOCK_NAME, MARKER_NAME, OffloadLock, is_marked

    checks = []
    cache = hw.hf_cache or str(_abs(hub.cache_dir()))
    free = hw.free_disk_at(cache)
    checks.append(Check("hf_cache", "ok", f"HF cache {cache}: {format_bytes(free) if free is not None else 'unknown'} free"))
    if offload_folder is None:
        checks.append(Check("offload_folder", "info", "the model sets no offload_folder (disk offload unavailable)"))
    else:
        free = hw.free_disk_at(offload_folder)
        checks.append(Check("offload_folder", "ok", f"offload folder {_abs(Path(offload_folder))}: "
                            f"{format_bytes(free) if free is not None else 'unknown'} free"))
    folder = _abs(Path(offload_folder or managed_folder)) if (offload_folder or managed_folder) else None
    if folder is not None and folder.is_dir():
        lock = OffloadLock(folder).read()
        files = [p for p in folder.rglob("*") if p.is_file() and p.name not in (LOCK_NAME, MARKER_NAME)]
        if lock is not None and lock.alive:
            # only fatal for a plan that offloads to disk (run_preflight decides)
            checks.append(Check("offload_in_use", "warn", f"{folder} is in use by pid {lock.pid} ({lock.command})",
                                fix="wait for that process, or point offload_folder elsewhere"))
        elif files:
            size = sum(p.stat().st_size for p in files)
            checks.append(Check("offload_stale", "warn",
                                f"{folder} already holds {len(files)} offload files ({format_bytes(size)}) "
                                "from an earlier run", fix="routerllm offload clean" if is_marked(folder) else
                                "delete them yourself: routerllm did not make this folder, so offload clean refuses it"))
    return checks


def package_checks(hw: HardwareReport, *, quantization: str, flash_attention: bool) -> list[Check]:
    """Versions through importlib.metadata; torch itself is imported (the plan needs it anyway)."""
    checks = []
    torch_v = package_version("torch")
    if torch_v is None:
        checks.append(Check("torch", "fail", "torch is not installed", fix="pip install torch"))
    else:
        import torch

        cuda_build = torch.version.cuda
        if cuda_build:
            usable = torch.cuda.is_available() if hw.gpus and not hw.assumed else None
            detail = f"torch {torch_v}, CUDA {cuda_build} build" + (
                "" if usable is None else (", sees the GPUs" if usable else ", but CUDA is not usable"))
            status: Status = "fail" if usable is False else "ok"
            checks.append(Check("torch", status, detail,
                                fix="match the torch CUDA build to the driver (see pytorch.org)" if usable is False else None))
        elif hw.gpus and hw.assumed:
            checks.append(Check("torch", "info", f"torch {torch_v}, CPU-only build here (fine for planning; the GPU "
                                "machine needs a CUDA build)"))
        else:
            checks.append(Check("torch", "fail" if hw.gpus else "ok",
                                f"torch {torch_v}, CPU-only build" + (" - cannot use the GPUs" if hw.gpus else ""),
                                fix="install a CUDA build of torch (pip install torch --index-url "
                                    "https://download.pytorch.org/whl/cu124)" if hw.gpus else None))
    for dist in ("transformers", "accelerate"):
        v = package_version(dist)
        checks.append(Check(dist, "ok" if v else "fail", f"{dist} {v}" if v else f"{dist} is not installed",
                            fix=None if v else f"pip install {dist}"))
    checks.append(_bnb_check(hw, quantization))
    checks.append(_flash_check(hw, flash_attention))
    return checks


def _bnb_check(hw: HardwareReport, quantization: str) -> Check:
    version = package_version("bitsandbytes")
    if quantization == "none":
        return Check("bitsandbytes", "info", f"bitsandbytes {version or 'not installed'} (not needed: no 4/8-bit)")
    if version is None:
        return Check("bitsandbytes", "fail", f"{quantization} needs bitsandbytes, which is not installed",
                     fix="pip install bitsandbytes")
    if hw.assumed:
        return Check("bitsandbytes", "info",
                     f"bitsandbytes {version}; its CUDA backend is not checked for assumed hardware")
    if not hw.gpus:
        return Check("bitsandbytes", "fail", f"bitsandbytes {version} has no CUDA backend without a GPU: "
                     f"{quantization} loading needs an NVIDIA GPU",
                     fix="run on a GPU machine, or set use_4bit: false and use_8bit: false")
    return Check("bitsandbytes", *_bnb_cuda_backend(version))  # type: ignore[arg-type]


def _bnb_cuda_backend(version: str) -> tuple[str, str, str | None]:
    """Importing bitsandbytes loads its native library; only then do we know the CUDA one was found."""
    try:
        import bitsandbytes.cextension as ce
    except Exception as exc:  # noqa: BLE001 - a broken native library raises anything
        return "fail", f"bitsandbytes {version} does not import: {exc}", "pip install --force-reinstall bitsandbytes"
    backend = getattr(ce, "BNB_BACKEND", "?")
    lib = getattr(ce, "lib", None)
    if backend != "CUDA" or type(lib).__name__ == "ErrorHandlerMockBNBNativeLibrary":
        return ("fail", f"bitsandbytes {version} loaded its {backend} backend, not CUDA",
                "install a bitsandbytes build for this CUDA version (pip install -U bitsandbytes)")
    return "ok", f"bitsandbytes {version}, CUDA backend loads", None


def _flash_check(hw: HardwareReport, wanted: bool) -> Check:
    version = package_version("flash-attn") or package_version("flash_attn")
    if not wanted:
        return Check("attention", "info", "use_flash_attention is off: SDPA will be used")
    if version is None:
        return Check("attention", "warn", "flash-attn is not installed: SDPA will be used instead",
                     fix='pip install "routerllm[flash]" --no-build-isolation, or set use_flash_attention: false')
    if hw.assumed or not hw.gpus:
        return Check("attention", "info", f"flash-attn {version} installed (not imported without a GPU)")
    if importlib.util.find_spec("flash_attn") is None:
        return Check("attention", "warn", f"flash-attn {version} metadata found but the module is missing: SDPA instead",
                     fix="pip install --force-reinstall flash-attn --no-build-isolation")
    try:
        import flash_attn  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ABI mismatches raise ImportError or OSError
        return Check("attention", "warn", f"flash-attn {version} does not import ({exc}): SDPA will be used",
                     fix="rebuild flash-attn against this torch (pip install flash-attn --no-build-isolation)")
    return Check("attention", "ok", f"flash-attn {version}: flash_attention_2 will be used")


def machine_checks(hw: HardwareReport, *, offload_folder: Path | None, quantization: str,
                   flash_attention: bool, managed_folder: Path | None = None) -> list[Check]:
    return (gpu_checks(hw) + memory_checks(hw) + disk_checks(hw, offload_folder, managed_folder)
            + package_checks(hw, quantization=quantization, flash_attention=flash_attention))
