"""Hardware probe and machine checks. NVML cannot run here, so GPUs come from one named fake (FakeNVML); the
no-GPU path runs the real pynvml against a machine without a driver."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from routerllm_cli.errors import ConfigError
from routerllm_cli.hardware import (HardwareReport, assume_hardware, cuda_visible_devices, disk_checks, gpu_checks,
                                    machine_checks, package_checks, parse_gpu_spec, probe_hardware)

GB = 10**9


class FakeNVML:
    """Stands in for the pynvml module where no NVIDIA driver exists: the same function names, fixed answers.
    `gpus`: dicts with name, total, used, uuid and procs [(pid, used_bytes or None)]."""

    def __init__(self, gpus: list[dict], driver: str = "550.54.15", cuda: int = 12040):
        self.gpus, self.driver, self.cuda = gpus, driver, cuda
        self.shut = False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shut = True

    def nvmlSystemGetDriverVersion(self):
        return self.driver.encode()  # older bindings return bytes

    def nvmlSystemGetCudaDriverVersion(self):
        return self.cuda

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUUID(self, h):
        return self.gpus[h]["uuid"]

    def nvmlDeviceGetName(self, h):
        return self.gpus[h]["name"]

    def nvmlDeviceGetMemoryInfo(self, h):
        g = self.gpus[h]
        return SimpleNamespace(total=g["total"], used=g["used"], free=g["total"] - g["used"])

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self.gpus[h].get("procs", [])]


def two_h100s(procs=()) -> FakeNVML:
    return FakeNVML([
        {"name": "NVIDIA H100 80GB HBM3", "total": 85_520_809_984, "used": 500_000_000, "uuid": "GPU-aaaa-1111"},
        {"name": "NVIDIA H100 80GB HBM3", "total": 85_520_809_984, "used": 12_500_000_000, "uuid": "GPU-bbbb-2222",
         "procs": list(procs)},
    ])


def test_probe_reads_gpus_driver_cuda_and_other_processes(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = two_h100s(procs=[(4242, 12_000_000_000), (os.getpid(), 400_000_000)])
    hw = probe_hardware(nvml=fake)
    assert [g.name for g in hw.gpus] == ["NVIDIA H100 80GB HBM3"] * 2
    assert hw.gpus[1].free_bytes == 85_520_809_984 - 12_500_000_000
    assert hw.driver == "550.54.15" and hw.cuda == "12.4" and hw.nvml_error is None
    assert hw.gpus[1].processes == [{"pid": 4242, "used_bytes": 12_000_000_000}]  # our own pid is not "other"
    assert fake.shut
    warn = [c for c in gpu_checks(hw) if c.name == "gpu1_processes"]
    assert warn and warn[0].status == "warn" and "4242" in warn[0].detail and "12.0 GB" in warn[0].detail


def test_cuda_visible_devices_renumbers_like_cuda(monkeypatch):
    fake = two_h100s()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    hw = probe_hardware(nvml=fake)
    assert len(hw.gpus) == 1 and hw.gpus[0].index == 0
    assert hw.gpus[0].free_bytes == 85_520_809_984 - 12_500_000_000  # the second card, as CUDA ordinal 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb,GPU-aaaa")
    hw = probe_hardware(nvml=fake)
    assert [g.free_bytes for g in hw.gpus] == [85_520_809_984 - 12_500_000_000, 85_520_809_984 - 500_000_000]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert probe_hardware(nvml=fake).gpus == []


UUIDS = ["GPU-8932f937-d72c-4106-c12f-20bd9faed9f6", "GPU-8932aaaa-0000-0000-0000-000000000001",
         "GPU-bbbb0000-0000-0000-0000-000000000002"]


@pytest.mark.parametrize("env, expected", [
    (None, [0, 1, 2]),                                  # unset: every GPU
    ("", []), ("  ", []),                               # empty: none
    ("2,0", [2, 0]), (" 1 , 2 ", [1, 2]),               # ordinals, renumbered in the order given
    ("-1", []), ("0,2,-1,1", [0, 2]),                   # CUDA's own example: the list ends at -1
    ("0,3,1", [0]),                                     # past the last GPU ends it too
    ("0,,1", [0]), ("0,0,1", [0]),                      # an empty item, a GPU named twice
    (UUIDS[2], [2]), ("GPU-bbbb,1", [2, 1]),            # a UUID, or enough of it to be unique
    ("GPU-8932", []), ("GPU-8932f937,GPU-8932", [0]),   # a prefix two GPUs share names neither
    ("8932f937", []),                                   # a UUID without "GPU-" is not one
])
def test_cuda_visible_devices_reads_like_cuda(env, expected):
    visible = cuda_visible_devices(env, UUIDS)
    assert visible.nvml_indices == expected and visible.mig == ()


def test_mig_slices_are_named_not_sized_as_whole_cards(monkeypatch):
    mig = "MIG-4b8c2f1e-5a3d-5c7e-9f10-123456789abc"
    assert cuda_visible_devices(mig, UUIDS).mig == (mig,)
    assert cuda_visible_devices(f"MIG-{UUIDS[0]}/1/0", UUIDS).mig == (f"MIG-{UUIDS[0]}/1/0",)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mig)
    hw = probe_hardware(nvml=two_h100s())
    assert hw.gpus == [] and "MIG" in hw.nvml_error and "--assume-gpus" in hw.nvml_error
    check = gpu_checks(hw)[0]
    assert check.status == "warn" and mig in check.detail


def test_no_driver_is_a_clear_line_not_a_crash(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    hw = probe_hardware()  # the real pynvml: this machine has no NVIDIA driver
    assert hw.gpus == [] and hw.nvml_error
    assert hw.cpu_total_bytes > 0 and 0 < hw.cpu_available_bytes <= hw.cpu_total_bytes
    (line,) = gpu_checks(hw)
    assert line.status == "warn" and line.detail.startswith("no NVIDIA GPU found") and "CPU only" in line.detail


@pytest.mark.parametrize("text, sizes", [
    ("2x80GB", [80 * GB] * 2), ("3x80GB", [80 * GB] * 3), ("4x141GB", [141 * GB] * 4), ("80GB", [80 * GB]),
    ("2 x 80GiB", [80 * 2**30] * 2), ("80GB,40GB", [80 * GB, 40 * GB]), ("0", []),
])
def test_parse_gpu_spec(text, sizes):
    assert parse_gpu_spec(text) == sizes


@pytest.mark.parametrize("text", ["2xfoo", "x80GB", "2x0GB", "lots"])
def test_parse_gpu_spec_rejects_with_the_form_to_use(text):
    with pytest.raises(ConfigError) as err:
        parse_gpu_spec(text)
    assert "2x80GB" in err.value.one_line()


def test_assume_hardware_keeps_the_real_disks_and_replaces_what_is_assumed(tmp_path):
    base = probe_hardware(tmp_path / "offload")
    hw = assume_hardware("2x80GB", "256GB", base)
    assert hw.assumed and [g.total_bytes for g in hw.gpus] == [80 * GB] * 2
    assert all(g.free_bytes == g.total_bytes and not g.processes for g in hw.gpus)
    assert hw.cpu_total_bytes == hw.cpu_available_bytes == 256 * GB
    assert hw.disk_free == base.disk_free and str(tmp_path / "offload") in hw.disk_free
    only_cpu = assume_hardware(None, "64GB", base)
    assert only_cpu.gpus == base.gpus and only_cpu.cpu_available_bytes == 64 * GB
    with pytest.raises(ConfigError):
        assume_hardware(None, "much", base)


def test_disk_free_reported_for_offload_folder_and_hf_cache(tmp_path):
    hw = probe_hardware(tmp_path / "not" / "made" / "yet")
    assert hw.offload_folder == str(tmp_path / "not" / "made" / "yet")
    assert hw.disk_free[hw.offload_folder] > 0  # measured on the nearest existing parent
    assert hw.hf_cache and hw.hf_cache.startswith(os.environ["HF_HOME"]) and hw.disk_free[hw.hf_cache] > 0


def test_stale_offload_files_point_to_offload_clean(tmp_path):
    from routerllm_cli.offload.folder import mark_if_ours

    folder = tmp_path / "offload"
    mark_if_ours(folder)  # made by routerllm, as a load makes it
    (folder / "model.layers.3.mlp.up_proj.weight.dat").write_bytes(b"\0" * 4096)
    hw = probe_hardware(folder)
    stale = [c for c in disk_checks(hw, folder) if c.name == "offload_stale"]
    assert stale and stale[0].status == "warn" and stale[0].fix == "routerllm offload clean"
    assert "1 offload files" in stale[0].detail
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "w.dat").write_bytes(b"\0")
    (other,) = [c for c in disk_checks(probe_hardware(theirs), theirs) if c.name == "offload_stale"]
    assert "offload clean refuses it" in other.fix


def test_offload_folder_locked_by_a_live_process(tmp_path):
    folder = tmp_path / "offload"
    folder.mkdir()
    (folder / ".routerllm.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                        "started": time.time(), "command": "routerllm load x"}))
    checks = disk_checks(probe_hardware(folder), folder)
    (busy,) = [c for c in checks if c.name == "offload_in_use"]
    assert str(os.getppid()) in busy.detail
    assert not [c for c in checks if c.name == "offload_stale"]  # its files are in use, not stale


def _cpu_only() -> HardwareReport:
    return HardwareReport([], None, None, "no driver", 32 * GB, 30 * GB, assumed=False)


def test_bitsandbytes_without_gpu_fails_only_when_quantization_is_asked():
    by_name = {c.name: c for c in package_checks(_cpu_only(), quantization="4bit", flash_attention=False)}
    assert by_name["bitsandbytes"].status == "fail" and "GPU" in by_name["bitsandbytes"].detail
    assert "use_4bit: false" in by_name["bitsandbytes"].fix
    by_name = {c.name: c for c in package_checks(_cpu_only(), quantization="none", flash_attention=False)}
    assert by_name["bitsandbytes"].status == "info"
    assert by_name["attention"].detail.endswith("SDPA will be used")
    assumed = assume_hardware("2x80GB", None, _cpu_only())
    by_name = {c.name: c for c in package_checks(assumed, quantization="4bit", flash_attention=False)}
    assert by_name["bitsandbytes"].status == "info"  # what-if planning is not blocked by this laptop
    assert by_name["torch"].status == "info"


def test_flash_attention_asked_but_missing_falls_back_to_sdpa():
    by_name = {c.name: c for c in package_checks(_cpu_only(), quantization="none", flash_attention=True)}
    assert by_name["attention"].status == "warn" and "SDPA" in by_name["attention"].detail
    assert "flash" in by_name["attention"].fix


def test_machine_checks_cover_every_area(tmp_path):
    names = {c.name for c in machine_checks(_cpu_only(), offload_folder=tmp_path, quantization="none",
                                            flash_attention=False)}
    assert {"gpus", "cpu_ram", "hf_cache", "offload_folder", "torch", "transformers", "accelerate",
            "bitsandbytes", "attention"} <= names
