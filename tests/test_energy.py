"""EnergyMeter over real RAPL-shaped files and real process CPU time; NVML through one named fake (no GPU here)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from routerllm_cli.energy import (
    DEFAULT_USD_PER_GPU_HOUR,
    WORLD_CO2_G_PER_KWH,
    EnergyMeter,
    EnergyReading,
    co2_grams,
    cost_usd,
    cost_usd_tokens,
    sum_readings,
)
from routerllm_cli.errors import ConfigError


class FakeNVML:
    """Stands in for pynvml on this GPU-less machine: per-GPU energy counters in mJ that the test advances."""

    class NotSupported(Exception):
        pass

    def __init__(self, counters_mj: dict[int, int], uuids: dict[int, str] | None = None,
                 unsupported: tuple[int, ...] = ()):
        self.counters = dict(counters_mj)
        self.uuids = uuids or {i: f"GPU-{i:08d}-aaaa" for i in counters_mj}
        self.unsupported = unsupported
        self.inits = self.shutdowns = 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.counters)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUUID(self, handle):
        return self.uuids[handle]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if handle in self.unsupported:
            raise FakeNVML.NotSupported()
        return self.counters[handle]


def write_zone(root: Path, name: str, energy_uj: int, max_uj: int = 262_143_328_850, label: str = "package-0"):
    zone = root / name
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (zone / "name").write_text(label + "\n")


@pytest.fixture
def no_rapl(tmp_path: Path) -> Path:
    return tmp_path / "no-powercap"


def test_gpu_energy_is_the_counter_difference_per_gpu(no_rapl, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNVML({0: 5_000_000, 1: 9_000_000})
    meter = EnergyMeter(nvml=nvml, rapl_root=no_rapl)
    with meter:
        nvml.counters[0] += 1_500_000  # 1500 J
        nvml.counters[1] += 250_500  # 250.5 J
    r = meter.reading
    assert r.gpu_source == "nvml"
    assert r.gpu_joules == {0: 1500.0, 1: 250.5}
    assert r.kwh == pytest.approx((1750.5 + r.cpu_joules) / 3.6e6)
    assert nvml.inits == nvml.shutdowns == 1


def test_only_visible_gpus_are_charged(no_rapl, monkeypatch):
    nvml = FakeNVML({0: 0, 1: 0, 2: 0, 3: 0})
    # the same reading as the hardware probe's (tests/test_hardware.py has every case)
    for env, expected in (("2", [2]), ("GPU-00000003", [3]), ("1,0", [1, 0]), ("", []), ("-1", []),
                          ("0,7,1", [0]), ("GPU-0000000", [])):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
        meter = EnergyMeter(nvml=nvml, rapl_root=no_rapl).start()
        for i in nvml.counters:
            nvml.counters[i] += 1000
        assert sorted(meter.stop().gpu_joules) == sorted(expected), env


def test_mig_slices_are_not_charged_the_whole_card(no_rapl, monkeypatch):
    nvml = FakeNVML({0: 0, 1: 0})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-4b8c2f1e-5a3d-5c7e-9f10-123456789abc")
    with EnergyMeter(nvml=nvml, rapl_root=no_rapl) as meter:
        nvml.counters[0] += 5000
    assert meter.reading.gpu_joules == {}
    assert any("MIG" in n and "not counted" in n for n in meter.reading.notes)


def test_gpu_without_energy_counter_is_left_out_with_a_note(no_rapl, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNVML({0: 0, 1: 0}, unsupported=(1,))
    with EnergyMeter(nvml=nvml, rapl_root=no_rapl) as meter:
        nvml.counters[0] += 2000
    assert meter.reading.gpu_joules == {0: 2.0}
    assert any("GPU 1" in n for n in meter.reading.notes)


def test_no_nvml_means_zero_gpu_energy(no_rapl):
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("this machine has NVML")
    except Exception:
        pass
    with EnergyMeter(rapl_root=no_rapl) as meter:
        pass
    assert (meter.reading.gpu_source, meter.reading.gpu_joules) == ("none", {})
    assert any("no NVML" in n for n in meter.reading.notes)


def test_rapl_packages_with_wraparound(tmp_path):
    max_uj = 1_000_000_000
    write_zone(tmp_path, "intel-rapl:0", 100_000_000, max_uj)
    write_zone(tmp_path, "intel-rapl:1", 990_000_000, max_uj, "package-1")
    write_zone(tmp_path, "intel-rapl:0:0", 5, max_uj, "core")  # inside package 0: must not be added again
    write_zone(tmp_path, "intel-rapl:2", 0, max_uj, "psys")  # the whole platform: overlaps the packages
    meter = EnergyMeter(nvml=None, rapl_root=tmp_path, rapl_poll_s=None).start()
    write_zone(tmp_path, "intel-rapl:0", 130_000_000, max_uj)  # +30 J
    write_zone(tmp_path, "intel-rapl:1", 5_000_000, max_uj, "package-1")  # wrapped: +10 J + 5 J
    write_zone(tmp_path, "intel-rapl:0:0", 900_000_000, max_uj, "core")
    write_zone(tmp_path, "intel-rapl:2", 999_000_000, max_uj, "psys")
    r = meter.stop()
    assert r.cpu_source == "rapl"
    assert r.cpu_joules == pytest.approx(45.0)


def test_sampling_catches_every_wrap_of_a_long_window(tmp_path):
    max_uj = 1_000_000
    write_zone(tmp_path, "intel-rapl:0", 0, max_uj)
    meter = EnergyMeter(nvml=None, rapl_root=tmp_path, rapl_poll_s=None).start()
    for value in (600_000, 100_000, 700_000, 200_000):  # two wraps; a start/stop read alone would see 0.2 J
        write_zone(tmp_path, "intel-rapl:0", value, max_uj)
        meter.sample()
    assert meter.stop().cpu_joules == pytest.approx(2.2)


def test_unreadable_rapl_falls_back_to_a_labelled_estimate(tmp_path):
    (tmp_path / "intel-rapl:0" / "energy_uj").mkdir(parents=True)  # not a readable counter
    (tmp_path / "intel-rapl:0" / "max_energy_range_uj").write_text("1000\n")
    with EnergyMeter(nvml=None, rapl_root=tmp_path) as meter:
        pass
    assert meter.reading.cpu_source == "estimate"
    assert any("unreadable" in n for n in meter.reading.notes)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_root_only_rapl_says_how_to_allow_it(tmp_path):
    write_zone(tmp_path, "intel-rapl:0", 1)
    (tmp_path / "intel-rapl:0" / "energy_uj").chmod(0)
    with EnergyMeter(nvml=None, rapl_root=tmp_path) as meter:
        pass
    assert meter.reading.cpu_source == "estimate"
    assert any("root-only" in n and "chmod" in n for n in meter.reading.notes)


def test_cpu_estimate_follows_this_process_cpu_time(no_rapl):
    with EnergyMeter(nvml=None, rapl_root=no_rapl, cpu_watts=100.0) as busy:
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
    r = busy.reading
    assert r.cpu_source == "estimate"
    # 0.3 CPU-seconds at 100 W over all logical CPUs, never more than the whole CPU for the window.
    assert 30.0 / os.cpu_count() * 0.9 <= r.cpu_joules <= 100.0 * r.seconds * 1.05
    with EnergyMeter(nvml=None, rapl_root=no_rapl, cpu_watts=0.0) as idle:
        sum(range(100_000))
    assert idle.reading.cpu_joules == 0.0


def test_stop_without_start_is_an_error():
    with pytest.raises(RuntimeError):
        EnergyMeter().stop()


def test_sum_of_windows():
    a = EnergyReading(10.0, {0: 100.0}, 5.0, "rapl", "nvml", ("x",))
    b = EnergyReading(5.0, {0: 50.0, 1: 20.0}, 2.0, "estimate", "none", ("x", "y"))
    total = sum_readings([a, b])
    assert (total.seconds, total.gpu_joules, total.cpu_joules) == (15.0, {0: 150.0, 1: 20.0}, 7.0)
    assert (total.cpu_source, total.gpu_source, total.notes) == ("estimate", "nvml", ("x", "y"))
    assert total.kwh == pytest.approx(177.0 / 3.6e6)


def test_co2_and_costs():
    assert WORLD_CO2_G_PER_KWH == 475.0
    assert co2_grams(2.0) == pytest.approx(950.0)
    assert co2_grams(1.0, 50.0) == 50.0
    assert DEFAULT_USD_PER_GPU_HOUR == 4.0
    assert cost_usd(3600, 8) == pytest.approx(32.0)  # one hour of a p4d.24xlarge
    assert cost_usd(1800, 3, 2.5) == pytest.approx(3.75)
    assert cost_usd_tokens(1_000_000, 500_000, 3.0, 15.0) == pytest.approx(10.5)
    for bad in (lambda: co2_grams(-1), lambda: cost_usd(-1, 1), lambda: cost_usd_tokens(1, 1, -3.0, 1.0)):
        with pytest.raises(ConfigError):
            bad()
