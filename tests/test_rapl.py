"""RaplSource on fake powercap trees laid out like the kernel's, with exact joule arithmetic."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lightning_watt.energy.readings import COUNTER_J
from lightning_watt.sources.base import ChannelLost, SourceUnavailable
from lightning_watt.sources.rapl import RaplSource, rapl_status, unwrap_delta

INTEL_MAX = 262143328850  # 2**32 x 61.035 uJ, as Intel client and server packages report
AMD_MAX = 65532610987  # 2**32 x 15.3 uJ, as AMD packages and Intel DRAM domains report


class FakeClock:
    """A meter clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakePowercap:
    """A powercap tree as sysfs shows it: zones live nested under
    ``devices/virtual/powercap/<control>/`` and ``root`` holds one symlink per zone (subzones
    included), plus the control-type directory that has no ``name``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "class" / "powercap"
        self.root.mkdir(parents=True)
        self.zones: dict[str, Path] = {}

    def control(self, control: str) -> Path:
        real = self.base / "devices" / "virtual" / "powercap" / control
        if not real.exists():
            real.mkdir(parents=True)
            (real / "enabled").write_text("1\n")
            os.symlink(real, self.root / control)
        return real

    def zone(
        self,
        dirname: str,
        name: str,
        energy_uj: int = 0,
        max_uj: int | None = INTEL_MAX,
        *,
        parent: str | None = None,
        control: str | None = None,
    ) -> Path:
        if parent is not None:
            real = self.zones[parent] / dirname
        else:
            real = self.control(control or dirname.split(":")[0]) / dirname
        real.mkdir()
        (real / "name").write_text(name + "\n")
        (real / "energy_uj").write_text(f"{energy_uj}\n")
        if max_uj is not None:
            (real / "max_energy_range_uj").write_text(f"{max_uj}\n")
        os.symlink(real, self.root / dirname)
        self.zones[dirname] = real
        return real

    def set(self, dirname: str, energy_uj: int) -> None:
        # Atomic, so a meter thread reading concurrently never sees a half-written file.
        tmp = self.zones[dirname] / "energy_uj.tmp"
        tmp.write_text(f"{energy_uj}\n")
        os.replace(tmp, self.zones[dirname] / "energy_uj")

    def get(self, dirname: str) -> int:
        return int((self.zones[dirname] / "energy_uj").read_text())

    def bump(self, dirname: str, delta_uj: int, max_uj: int = INTEL_MAX) -> None:
        """Advance a counter by ``delta_uj``, wrapping like the hardware (by the ``max - prev +
        new`` convention the source undoes)."""
        new = self.get(dirname) + delta_uj
        self.set(dirname, new - max_uj if new > max_uj else new)


def two_socket_intel(base: Path) -> FakePowercap:
    """Two packages, each with core, uncore and dram subzones; a psys zone; and an MMIO
    duplicate of package-0, as a recent Xeon workstation shows."""
    fake = FakePowercap(base)
    for s in (0, 1):
        fake.zone(f"intel-rapl:{s}", f"package-{s}", 1_000_000 * (s + 1))
        fake.zone(f"intel-rapl:{s}:0", "core", 7, parent=f"intel-rapl:{s}")
        fake.zone(f"intel-rapl:{s}:1", "uncore", 7, parent=f"intel-rapl:{s}")
        fake.zone(f"intel-rapl:{s}:2", "dram", 500_000, AMD_MAX, parent=f"intel-rapl:{s}")
    fake.zone("intel-rapl:2", "psys", 3)
    fake.zone("intel-rapl-mmio:0", "package-0", 42, control="intel-rapl-mmio")
    return fake


def read_all(source: RaplSource) -> dict[str, float]:
    out = {}
    for channel in source.channels():
        (reading,) = channel.read()
        assert reading.kind == COUNTER_J
        out[reading.device] = reading.value
    return out


def test_discovers_packages_and_dram_only_by_default(tmp_path: Path) -> None:
    fake = two_socket_intel(tmp_path)
    source = RaplSource(fake.root, host="hostA")
    source.open(FakeClock())
    devices = {d.name: d for d in source.devices()}
    assert sorted(devices) == ["cpu0", "cpu1", "dram0", "dram1"]
    assert devices["cpu0"].kind == "cpu" and devices["dram1"].kind == "dram"
    assert devices["cpu1"].uuid == "hostA:rapl:package-1"
    assert devices["dram0"].uuid == "hostA:rapl:package-0/dram"
    assert not any(d.estimated for d in devices.values())
    # The MSR zone wins over its MMIO duplicate; core, uncore and psys are not read.
    zones = {z.device: os.path.basename(z.path) for z in source.zones}
    assert zones == {
        "cpu0": "intel-rapl:0",
        "cpu1": "intel-rapl:1",
        "dram0": "intel-rapl:0:2",
        "dram1": "intel-rapl:1:2",
    }
    assert "includes cores and uncore" in source.describe()["cpu0"]
    channels = source.channels()
    assert {c.name for c in channels} == {"cpu0/rapl", "cpu1/rapl", "dram0/rapl", "dram1/rapl"}
    assert all(c.interval_s == 0.1 for c in channels)


def test_counter_increments_are_exact_joules(tmp_path: Path) -> None:
    fake = two_socket_intel(tmp_path)
    clock = FakeClock()
    source = RaplSource(fake.root)
    source.open(clock)
    assert read_all(source) == {"cpu0": 0.0, "cpu1": 0.0, "dram0": 0.0, "dram1": 0.0}
    fake.bump("intel-rapl:0", 1_500_000)
    fake.bump("intel-rapl:1:2", 250_000, AMD_MAX)
    clock.t += 0.1
    assert read_all(source) == {"cpu0": 1.5, "cpu1": 0.0, "dram0": 0.0, "dram1": 0.25}
    fake.bump("intel-rapl:0", 2_500_000)
    clock.t += 0.1
    readings = [r for c in source.channels() for r in c.read()]
    assert {r.device: r.value for r in readings}["cpu0"] == 4.0
    assert all(r.t == clock.t for r in readings)


def test_wrap_between_two_reads_adds_max_minus_prev_plus_new(tmp_path: Path) -> None:
    fake = FakePowercap(tmp_path)
    fake.zone("intel-rapl:0", "package-0", INTEL_MAX - 500_000)
    clock = FakeClock()
    source = RaplSource(fake.root, domains=("package",))
    source.open(clock)
    fake.set("intel-rapl:0", 1_500_000)  # wrapped: 500 000 to the top, 1 500 000 after
    clock.t += 0.1
    assert read_all(source) == {"cpu0": 2.0}
    fake.bump("intel-rapl:0", 250_000)
    clock.t += 0.1
    assert read_all(source) == {"cpu0": 2.25}
    assert source.metadata()["rapl_wraps"] == {"cpu0": 1}


@given(
    prev=st.integers(0, AMD_MAX),
    deltas=st.lists(st.integers(0, AMD_MAX - 1), min_size=1, max_size=20),
)
def test_unwrapped_total_is_the_sum_of_increments(prev: int, deltas: list[int]) -> None:
    """Whatever the start and the wraps, the unwrapped total is exactly what was added, and
    never decreases, as long as each step is under one range."""
    total, raw, last = 0, prev, -1
    for d in deltas:
        new = raw + d if raw + d <= AMD_MAX else raw + d - AMD_MAX
        step = unwrap_delta(raw, new, AMD_MAX)
        assert step == d
        total += step
        assert total >= last
        last, raw = total, new
    assert total == sum(deltas)


def test_unwrap_delta_with_a_wrong_range_does_not_invent_a_wrap() -> None:
    assert unwrap_delta(prev_uj=500, new_uj=20, max_range_uj=100) == 20


def test_amd_style_tree_is_recognised_by_zone_names(tmp_path: Path) -> None:
    fake = FakePowercap(tmp_path)
    fake.zone("amd-rapl:0", "package-0", AMD_MAX - 1_000_000, AMD_MAX)
    fake.zone("amd-rapl:0:0", "core", 5, AMD_MAX, parent="amd-rapl:0")
    clock = FakeClock()
    source = RaplSource(fake.root, host="h")
    source.open(clock)
    assert [d.name for d in source.devices()] == ["cpu0"]  # AMD has no dram zone
    fake.set("amd-rapl:0", 3_000_000)
    clock.t += 0.1
    assert read_all(source) == {"cpu0": 4.0}


def test_flat_tree_finds_the_socket_from_the_parent_zone(tmp_path: Path) -> None:
    """No nesting (a tree copied without symlinks): the parent is the ``prefix:N`` zone."""
    root = tmp_path / "powercap"
    for dirname, name in (
        ("intel-rapl:0", "package-0"),
        ("intel-rapl:1", "package-1"),
        ("intel-rapl:1:0", "dram"),
    ):
        (root / dirname).mkdir(parents=True)
        (root / dirname / "name").write_text(name)
        (root / dirname / "energy_uj").write_text("0")
        (root / dirname / "max_energy_range_uj").write_text(str(INTEL_MAX))
    source = RaplSource(root, host="h")
    source.open(FakeClock())
    assert {d.name: d.uuid for d in source.devices()} == {
        "cpu0": "h:rapl:package-0",
        "cpu1": "h:rapl:package-1",
        "dram1": "h:rapl:package-1/dram",
    }


def test_multi_die_packages_get_one_device_per_die(tmp_path: Path) -> None:
    fake = FakePowercap(tmp_path)
    fake.zone("intel-rapl:0", "package-0-die-0")
    fake.zone("intel-rapl:1", "package-0-die-1")
    fake.zone("intel-rapl:1:0", "dram", parent="intel-rapl:1")
    source = RaplSource(fake.root)
    source.open(FakeClock())
    assert [d.name for d in source.devices()] == ["cpu0-die0", "cpu0-die1", "dram0-die1"]


def test_extra_domains_are_labelled_as_overlapping(tmp_path: Path) -> None:
    fake = two_socket_intel(tmp_path)
    source = RaplSource(fake.root, domains=("package", "core"))
    source.open(FakeClock())
    devices = {d.name: d for d in source.devices()}
    assert sorted(devices) == ["core0", "core1", "cpu0", "cpu1"]
    assert "do not add" in devices["core0"].notes[0]


def test_energy_uj_readable_by_root_only(tmp_path: Path) -> None:
    """Tests run as root, where chmod blocks nothing: the reader raises as the kernel would."""
    fake = two_socket_intel(tmp_path)

    def root_only(path: str) -> str:
        if path.endswith("energy_uj") and not path.endswith("max_energy_range_uj"):
            raise PermissionError(13, "Permission denied", path)
        return Path(path).read_text()

    with pytest.raises(SourceUnavailable) as err:
        RaplSource(fake.root, read_file=root_only).open(FakeClock())
    message = str(err.value)
    assert "CVE-2020-8694" in message
    assert f"sudo chmod o+r {fake.root}/intel-rapl:*/energy_uj" in message
    assert "udev" in message
    ok, reason = rapl_status(fake.root, read_file=root_only)
    assert not ok and reason == message


def test_one_unreadable_zone_leaves_the_others(tmp_path: Path) -> None:
    fake = two_socket_intel(tmp_path)

    def dram_denied(path: str) -> str:
        if "intel-rapl:0:2" in path and path.endswith("/energy_uj"):
            raise PermissionError(13, "Permission denied", path)
        return Path(path).read_text()

    source = RaplSource(fake.root, read_file=dram_denied)
    source.open(FakeClock())
    assert [d.name for d in source.devices()] == ["cpu0", "cpu1", "dram1"]
    assert any("permission denied" in s and "package-0/dram" in s for s in source.skipped)


def test_no_powercap_and_no_zones_say_why(tmp_path: Path) -> None:
    ok, reason = rapl_status(tmp_path / "missing")
    assert not ok and "no " in reason and "missing" in reason
    empty = FakePowercap(tmp_path / "empty")
    empty.control("intel-rapl")
    ok, reason = rapl_status(empty.root)
    assert not ok and "modprobe intel_rapl_msr" in reason


def test_status_lists_what_it_can_read(tmp_path: Path) -> None:
    fake = two_socket_intel(tmp_path)
    ok, reason = rapl_status(fake.root)
    assert ok and "cpu0 (package-0)" in reason and "dram1 (package-1/dram)" in reason


def test_zone_without_a_range_is_skipped(tmp_path: Path) -> None:
    fake = FakePowercap(tmp_path)
    fake.zone("intel-rapl:0", "package-0")
    fake.zone("intel-rapl:0:0", "dram", max_uj=None, parent="intel-rapl:0")
    source = RaplSource(fake.root)
    source.open(FakeClock())
    assert [d.name for d in source.devices()] == ["cpu0"]
    assert "no max_energy_range_uj" in source.skipped[0]


@pytest.mark.parametrize("bad", [("gpu",), (), "packages"])
def test_unknown_domains_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="domains: unknown"):
        RaplSource(domains=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, float("nan"), True, "0.1"])
def test_bad_interval_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        RaplSource(interval_s=bad)  # type: ignore[arg-type]


def test_interval_that_could_miss_a_wrap_is_refused(tmp_path: Path) -> None:
    fake = FakePowercap(tmp_path)
    fake.zone("intel-rapl:0", "package-0", max_uj=AMD_MAX)  # wraps in 65.5 s at 1 kW
    RaplSource(fake.root, interval_s=30.0).open(FakeClock())
    with pytest.raises(ValueError, match=r"interval_s=40.0 is too long.*<= 32.8 s"):
        RaplSource(fake.root, interval_s=40.0).open(FakeClock())


def test_a_stalled_reader_warns_that_energy_may_be_missing(tmp_path: Path) -> None:
    fake = FakePowercap(tmp_path)
    fake.zone("intel-rapl:0", "package-0", max_uj=AMD_MAX)
    clock = FakeClock()
    source = RaplSource(fake.root)
    source.open(clock)
    fake.bump("intel-rapl:0", 1_000_000)
    clock.t += 70.0  # the process was suspended longer than a wrap can take
    with pytest.warns(RuntimeWarning, match="undercounted"):
        assert read_all(source) == {"cpu0": 1.0}
    assert source.metadata()["rapl_stalls"] == {"cpu0": 1}


def test_vanished_zone_loses_the_channel(tmp_path: Path) -> None:
    fake = FakePowercap(tmp_path)
    zone = fake.zone("intel-rapl:0", "package-0")
    source = RaplSource(fake.root)
    source.open(FakeClock())
    (zone / "energy_uj").unlink()
    with pytest.raises(ChannelLost):
        source.channels()[0].read()


def test_meter_totals_the_bumped_counters(tmp_path: Path) -> None:
    """End to end: the meter thread polls the fake tree while the test adds known energy,
    a wrap included; its total is exactly what was added after the first read."""
    from lightning_watt.energy.meter import EnergyMeter

    fake = FakePowercap(tmp_path)
    fake.zone("intel-rapl:0", "package-0", INTEL_MAX - 1_500_000)
    fake.zone("intel-rapl:0:0", "dram", 0, AMD_MAX, parent="intel-rapl:0")
    reads: dict[str, int] = {}
    lock = threading.Lock()

    def counting(path: str) -> str:
        text = Path(path).read_text()
        with lock:
            reads[path] = reads.get(path, 0) + 1
        return text

    def read_twice_more() -> None:
        """Wait until every counter has been read twice more (the first: maybe mid-bump)."""
        with lock:
            want = {p: reads.get(p, 0) + 2 for p in counters}
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            with lock:
                if all(reads.get(p, 0) >= n for p, n in want.items()):
                    return
            time.sleep(0.005)
        raise AssertionError(f"the meter stopped reading: {reads}")

    counters = [str(fake.root / z / "energy_uj") for z in ("intel-rapl:0", "intel-rapl:0:0")]
    source = RaplSource(fake.root, interval_s=0.02, read_file=counting)
    meter = EnergyMeter(sources=[source])
    meter.start()
    try:
        read_twice_more()  # energy counts from each channel's first read, not from open()
        for _ in range(5):
            fake.bump("intel-rapl:0", 1_000_000)  # the second bump wraps
            fake.bump("intel-rapl:0:0", 250_000, AMD_MAX)
            read_twice_more()
    finally:
        meter.stop()
    total = meter.total()
    assert total["cpu0"] == pytest.approx(5.0, abs=1e-9)
    assert total["dram0"] == pytest.approx(1.25, abs=1e-9)
    assert meter.errors == {}
    assert source.metadata()["rapl_wraps"] == {"cpu0": 1, "dram0": 0}
