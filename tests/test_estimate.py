"""EstimateSource with a fake utilisation reader and a hand-moved clock: exact watts, labels."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lightning_watt.energy.readings import ESTIMATE_W
from lightning_watt.energy.timeline import EnergyTimeline
from lightning_watt.sources.base import SourceUnavailable
from lightning_watt.sources.estimate import (
    EstimateSource,
    ProcessUtilisation,
    ProcStatUtilisation,
    cpu_topology,
    default_cpu_tdp_w,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 10.0

    def __call__(self) -> float:
        return self.t


class FakeUtilisation:
    """Plays back a list of utilisation fractions, one per call."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.values.pop(0)


def test_power_is_idle_plus_utilisation_times_headroom() -> None:
    source = EstimateSource(cpu_tdp_w=200.0, idle_fraction=0.25, utilisation=FakeUtilisation())
    assert source.idle_w == 50.0
    assert [source.power_w(u) for u in (0.0, 0.5, 1.0)] == [50.0, 125.0, 200.0]
    assert source.power_w(-0.1) == 50.0 and source.power_w(1.3) == 200.0  # clamped


def test_readings_are_estimates_stamped_at_the_end_of_their_interval() -> None:
    fake = FakeUtilisation(0.0, 1.0, 0.5)
    clock = FakeClock()
    source = EstimateSource(cpu_tdp_w=100.0, idle_fraction=0.3, utilisation=fake)
    source.open(clock)
    (channel,) = source.channels()
    assert channel.interval_s == 0.25 and channel.devices == ("cpu",)
    got = []
    for _ in range(3):
        clock.t += 0.5
        got.extend(channel.read())
    # Each reading is the mean of the interval before it; the first read also marks where its
    # interval began (open, at 10.0), so nothing of the run is left before the first reading.
    assert [(r.t, r.device, r.kind, r.value) for r in got] == [
        (10.0, "cpu", ESTIMATE_W, 30.0),
        (10.5, "cpu", ESTIMATE_W, 30.0),
        (11.0, "cpu", ESTIMATE_W, 100.0),
        (11.5, "cpu", ESTIMATE_W, 65.0),
    ]
    assert fake.calls == 3  # an injected reader is not primed by open()


def test_estimates_give_each_interval_its_own_power() -> None:
    clock = FakeClock()
    source = EstimateSource(
        cpu_tdp_w=100.0, idle_fraction=0.3, utilisation=FakeUtilisation(0.0, 1.0, 0.5)
    )
    source.open(clock)
    (channel,) = source.channels()
    tl = EnergyTimeline()
    for dt in (0.1, 0.25, 0.4):
        clock.t += dt
        tl.add(channel.read())
    tl.flush()
    # (10, 10.1] at 30 W, (10.1, 10.35] at 100 W, (10.35, 10.75] at 65 W: no lag, no ramps.
    assert tl.energy_between(10.0, 10.75)["cpu"] == pytest.approx(3.0 + 25.0 + 26.0)
    assert tl.energy_between(10.0, 10.05)["cpu"] == pytest.approx(1.5)
    assert tl.energy_between(10.3, 10.35)["cpu"] == pytest.approx(5.0)
    assert tl.energy_between(10.7, 10.75)["cpu"] == pytest.approx(3.25)
    assert tl.device("cpu").finalized_until == pytest.approx(10.75)


def test_everything_it_says_is_labelled_estimated() -> None:
    source = EstimateSource(cpu_tdp_w=120.0, utilisation=FakeUtilisation())
    source.open(FakeClock())
    (device,) = source.devices()
    assert device.estimated and device.kind == "cpu"
    assert "estimated" in device.label
    assert device.notes == ("estimated from CPU utilisation x TDP, not measured",)
    assert source.describe()["cpu"].startswith("estimated from CPU utilisation x TDP, not measured")
    assert source.channels()[0].describe.endswith("not measured")
    meta = source.metadata()
    assert meta["estimate_tdp_w"] == 120.0 and meta["estimate_tdp_source"] == "given"
    assert "not measured" in str(meta["estimate_note"])


def test_a_non_finite_utilisation_is_an_error_not_a_number() -> None:
    source = EstimateSource(cpu_tdp_w=100.0, utilisation=FakeUtilisation(math.nan))
    source.open(FakeClock())
    with pytest.raises(ValueError, match="utilisation reader returned nan"):
        source.channels()[0].read()


@pytest.mark.parametrize(
    ("cores", "sockets", "watts"),
    [(1, 1, 10.0), (8, 1, 80.0), (32, 1, 250.0), (64, 2, 500.0), (128, 2, 500.0)],
)
def test_default_tdp_is_ten_watts_per_core_capped_per_socket(
    cores: int, sockets: int, watts: float
) -> None:
    assert default_cpu_tdp_w(cores, sockets) == watts
    source = EstimateSource(cores=cores, sockets=sockets, utilisation=FakeUtilisation())
    assert source.tdp_w == watts
    assert f"{cores} physical cores" in source.tdp_source


def test_default_tdp_refuses_zero_cores() -> None:
    with pytest.raises(ValueError, match="physical_cores"):
        default_cpu_tdp_w(0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cpu_tdp_w": 0}, "cpu_tdp_w"),
        ({"cpu_tdp_w": -5.0}, "cpu_tdp_w"),
        ({"cpu_tdp_w": 1e6}, "cpu_tdp_w"),
        ({"cpu_tdp_w": math.inf}, "cpu_tdp_w"),
        ({"idle_fraction": 1.0}, "idle_fraction"),
        ({"idle_fraction": -0.1}, "idle_fraction"),
        ({"utilisation": "gpu"}, "utilisation"),
        ({"interval_s": 0}, "interval_s"),
        ({"device": ""}, "device"),
        ({"cores": 0}, "cores"),
        ({"sockets": 1.5}, "sockets"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EstimateSource(**kwargs)  # type: ignore[arg-type]


def test_proc_stat_reader_counts_busy_over_total(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    #               user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n")
    reader = ProcStatUtilisation(str(stat))
    # +60 user, +20 system, +10 irq busy; +100 idle, +10 iowait; +100 steal (not ours)
    stat.write_text("cpu  160 0 70 900 60 10 0 100 0 0\n")
    assert reader() == pytest.approx(90 / 300)
    assert reader() == 0.0  # no ticks since: nothing to say, not a division by zero


def test_proc_stat_reader_refuses_a_file_that_is_not_proc_stat(tmp_path: Path) -> None:
    bogus = tmp_path / "stat"
    bogus.write_text("intr 1 2 3\n")
    with pytest.raises(OSError, match="aggregate 'cpu' line"):
        ProcStatUtilisation(str(bogus))


def test_process_reader_normalises_by_cpus() -> None:
    cpu, wall = [0.0], [0.0]
    reader = ProcessUtilisation(cpus=4, cpu_time=lambda: cpu[0], wall=lambda: wall[0])
    cpu[0], wall[0] = 2.0, 1.0  # two cores busy for one second out of four
    assert reader() == 0.5


def test_process_utilisation_is_per_process_in_the_uuid() -> None:
    system = EstimateSource(cpu_tdp_w=50.0, utilisation="system")
    process = EstimateSource(cpu_tdp_w=50.0, utilisation="process")
    try:
        system.open(FakeClock())
    except SourceUnavailable:
        pytest.skip("no /proc/stat here")
    process.open(FakeClock())
    assert ":pid" not in system.devices()[0].uuid  # the host's load: ranks share it
    assert ":pid" in process.devices()[0].uuid
    assert "process" in process.describe()["cpu"]


def test_cpu_topology_counts_physical_cores(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    blocks = []
    for phys, core in [("0", "0"), ("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]:
        blocks.append(f"processor\t: x\nphysical id\t: {phys}\ncore id\t\t: {core}\n")
    cpuinfo.write_text("\n".join(blocks))
    assert cpu_topology(str(cpuinfo)) == (4, 2)
    assert cpu_topology(str(tmp_path / "missing"))[1] == 1
