"""``lightning-watt doctor`` on the CPU, against the fake NVML (tests/fake_pynvml.py) and fake
powercap trees: every reader combination, MIG, a lost GPU, no driver, RAPL readable and not,
the estimate, the JSON round trip, exit codes and the load analysis (on a real H200 trace)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import fake_pynvml as fk  # tests/ is on sys.path (tests/conftest.py)
import pynvml
import pytest
from test_rapl import two_socket_intel

from lightning_watt import doctor
from lightning_watt.doctor import (
    DoctorReport,
    analyse_load,
    change_instants,
    diagnose,
    parse_devices,
    print_report,
    report_from_json,
    report_to_json,
    update_period,
)
from lightning_watt.energy.trace import Trace, bundled_trace, load_trace
from lightning_watt.report.cli import main as cli_main

UUIDS = [
    "GPU-0a1b2c3d-0000-4000-8000-000000000000",
    "GPU-1a1b2c3d-1111-4111-8111-111111111111",
]
MIG_UUIDS = ("MIG-9f8e7d6c-aaaa-5aaa-9aaa-aaaaaaaaaaaa",)
NO_RAPL = "/nonexistent/powercap"


def wavy() -> fk.SyntheticPower:
    """Power that changes at every 20 ms window, so every field update is a new value."""
    return fk.SyntheticPower(lambda t: 200.0 + 50.0 * math.sin(7.0 * t) + 3.0 * (t % 0.2))


def gpu(uuid: str = UUIDS[0], **kwargs: object) -> fk.FakeGpu:
    return fk.FakeGpu(uuid, wavy(), **kwargs)  # type: ignore[arg-type]


def run(
    fake: fk.FakeNvml,
    devices: list[str] | None = None,
    seconds: float = 0.6,
    rapl_root: str = NO_RAPL,
    **kwargs: object,
) -> DoctorReport:
    clock = fake.clock
    return diagnose(
        devices,
        seconds,
        nvml=fake.module(),
        rapl_root=rapl_root,
        clock=clock.monotonic,
        sleep=clock.sleep,
        wall=clock.time,
        **kwargs,  # type: ignore[arg-type]
    )


def sim(gpus: list[fk.FakeGpu], **kwargs: object) -> fk.FakeNvml:
    return fk.FakeNvml(gpus, clock=fk.SimClock(), counter_latency_s=0.0025, **kwargs)  # type: ignore[arg-type]


def works(report: DoctorReport, name: str = "gpu0") -> dict[str, bool]:
    dev = next(d for d in report.devices if d.name == name)
    return {r.name: r.works for r in dev.readers}


def verdict(report: DoctorReport, name: str = "gpu0") -> str:
    return next(d.verdict for d in report.devices if d.name == name)


# ------------------------------------------------------------------------------- GPUs
def test_counter_and_buffer_measured_like_an_h200() -> None:
    fake = sim([gpu()])
    report = run(fake)
    assert report.nvml["ok"] and report.nvml["driver"] == "580.159.04"
    assert report.nvml["nvml_version"] == "13.580.159.04"
    dev = report.devices[0]
    assert (dev.name, dev.label, dev.uuid) == ("gpu0", "NVIDIA H200", UUIDS[0])
    assert dev.info["mig"] == "disabled" and dev.measured
    assert works(report) == {"counter": True, "buffer": True, "fields": True, "usage": True}
    counter, buffer = dev.reader("counter"), dev.reader("buffer")
    assert counter is not None and buffer is not None
    assert counter.cost_ms_p50 == pytest.approx(2.5, abs=0.01)
    assert counter.update_ms == pytest.approx(100.0, rel=0.05)
    assert counter.phase_jitter_ms is not None and counter.phase_jitter_ms < 5.0
    assert buffer.update_ms == pytest.approx(20.0, abs=0.01)
    fields = dev.reader("fields")
    assert fields is not None and fields.update_ms == pytest.approx(100.0, rel=0.05)
    assert verdict(report) == "gpu0: counter + buffer: per-step energy resolved to ~20 ms"
    # The CPU is there too: the estimate, since the powercap tree is missing.
    assert report.devices[-1].kind == "estimate"
    assert report.exit_code == 0


@pytest.mark.parametrize(
    ("spec", "expected", "words"),
    [
        (
            {"buffer": False},
            {"counter": True, "buffer": False, "fields": True, "usage": True},
            "counter + power fields: per-step energy resolved to ~100 ms",
        ),
        (
            {"buffer": False, "fields": frozenset(), "usage": False},
            {"counter": True, "buffer": False, "fields": False, "usage": False},
            "counter only: per-step energy resolved to ~100 ms",
        ),
        (
            {"counter": False, "buffer": False, "usage": False},
            {"counter": False, "buffer": False, "fields": True, "usage": False},
            "power fields only, no energy counter",
        ),
        (
            {"counter": False, "buffer": False, "fields": frozenset()},
            {"counter": False, "buffer": False, "fields": False, "usage": True},
            "power usage only, no energy counter",
        ),
        (
            {"counter": False},
            {"counter": False, "buffer": True, "fields": True, "usage": True},
            "buffer only, no energy counter: ~20 ms",
        ),
    ],
)
def test_reader_combinations(spec: dict, expected: dict, words: str) -> None:
    report = run(sim([gpu(**spec)]))
    assert works(report) == expected
    assert words in verdict(report)
    dev = report.devices[0]
    for r in dev.readers:
        if r.works:
            assert r.reads > 0 and r.cost_ms_p50 is not None and r.cost_ms_p99 is not None
        else:
            assert r.why and r.fix, r  # every missing reader says why, and what to do
    if not expected["counter"]:
        counter = dev.reader("counter")
        assert counter is not None and "pre-Volta" in counter.fix
    assert report.exit_code == 0


def test_only_one_power_field_is_noted() -> None:
    report = run(sim([gpu(buffer=False, fields=frozenset({"average"}))]))
    fields = report.devices[0].reader("fields")
    assert fields is not None and fields.works
    assert any("only average" in n for n in fields.notes)


def test_mig_enabled_gpu_is_measured_whole_and_says_so() -> None:
    report = run(sim([gpu(mig_mode=1, mig_uuids=MIG_UUIDS)]))
    dev = report.devices[0]
    assert dev.info["mig"] == "enabled"
    assert dev.info["mig_instances"] == list(MIG_UUIDS)
    assert "disable MIG" in dev.info["mig_note"]
    assert "MIG enabled: the whole physical GPU" in dev.verdict
    assert dev.measured
    text = print_report(report, file=_Sink())
    assert "gpu0 MIG:" in text


def test_pre_ampere_gpu_has_no_mig() -> None:
    report = run(sim([gpu(mig_mode=None)]))
    assert report.devices[0].info["mig"] == "not supported"


def test_lost_gpu_is_reported_and_the_other_still_measured() -> None:
    fake = sim([gpu(UUIDS[0]), gpu(UUIDS[1])])
    fake.lose(1)
    report = run(fake)
    lost = report.devices[1]
    assert lost.name == "gpu1" and not lost.measured
    assert lost.info["error"] == "GPU is lost"
    assert all(not r.works and "nvidia-smi" in r.fix for r in lost.readers)
    assert "GPU is lost" in lost.verdict
    assert report.devices[0].measured and report.exit_code == 0


def test_gpu_lost_at_the_probe() -> None:
    fake = sim([gpu()])
    fake.fail(0, "counter", pynvml.NVMLError_GpuIsLost, times=1000)
    report = run(fake)
    assert report.devices[0].info["error"] == "GPU is lost"
    assert report.exit_code == 1  # nothing else measured: no RAPL here


def test_gpu_lost_while_measuring() -> None:
    fake = sim([gpu()])

    class LostAfter(fk.SyntheticPower):
        def counter_mJ(self, s: float) -> int:
            if s > 0.3:
                fake.lose(0)  # the next call on this GPU raises NVMLError_GpuIsLost
            return super().counter_mJ(s)

    fake.gpus[0].power = LostAfter(lambda t: 250.0 + 40.0 * math.sin(5.0 * t))
    report = run(fake, seconds=1.0)
    dev = report.devices[0]
    assert dev.info["error"] == "GPU is lost" and not dev.measured
    assert all(not r.works and r.why == "GPU is lost" for r in dev.readers)
    assert dev.verdict.startswith("gpu0: GPU is lost, not measured")


@pytest.mark.parametrize(
    ("error", "why", "fix"),
    [
        (pynvml.NVMLError_LibraryNotFound, "no NVIDIA driver", "install the NVIDIA driver"),
        (pynvml.NVMLError_DriverNotLoaded, "driver not loaded", "install the NVIDIA driver"),
        (pynvml.NVMLError_NoPermission, "insufficient permissions", "run as a user allowed"),
    ],
)
def test_no_driver_exits_1_with_the_reason_and_fix(error: type, why: str, fix: str) -> None:
    report = run(sim([gpu()], init_error=error))
    assert not report.nvml["ok"]
    assert why in report.nvml["why"] and fix in report.nvml["fix"]
    assert [d.kind for d in report.devices] == ["estimate"]
    assert report.exit_code == 1
    text = print_report(report, file=_Sink())
    assert "NVML: unavailable" in text and "exit status 1" in text
    named = run(sim([gpu()], init_error=error), devices=["0"])
    assert [d.name for d in named.devices] == ["gpu0"]
    assert (
        named.devices[0].verdict.startswith("gpu0: not measured (")
        and why in named.devices[0].verdict
    )


def test_pynvml_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    report = diagnose(None, 0.05, rapl_root=NO_RAPL)
    assert "pynvml" in report.nvml["why"] and report.exit_code == 1


def test_devices_selects_gpus_and_reports_missing_indices() -> None:
    report = run(sim([gpu(UUIDS[0]), gpu(UUIDS[1])]), devices=["gpu1,5"])
    assert [d.name for d in report.devices] == ["gpu1", "gpu5"]  # no CPU unless asked
    assert report.devices[0].uuid == UUIDS[1] and report.devices[0].measured
    assert "no such GPU" in report.devices[1].verdict
    assert parse_devices(["0", "cpu"]) == ([0], True)
    with pytest.raises(ValueError, match="not a GPU index"):
        parse_devices(["tpu0"])


# ------------------------------------------------------------------------------- CPU
def test_rapl_readable_measures_packages_and_dram(tmp_path: Path) -> None:
    powercap = two_socket_intel(tmp_path)
    report = run(sim([gpu()]), devices=["cpu"], rapl_root=str(powercap.root))
    assert report.rapl["ok"]
    names = [d.name for d in report.devices]
    assert names == ["cpu0", "cpu1", "dram0", "dram1"]
    for dev in report.devices:
        assert dev.measured and dev.readers[0].works and dev.readers[0].reads > 0
        assert "RAPL energy counter" in dev.verdict
    assert report.exit_code == 0


def test_rapl_permission_denied_falls_back_to_the_estimate_with_the_fix(tmp_path: Path) -> None:
    powercap = two_socket_intel(tmp_path)

    def root_only(path: str) -> str:
        if path.endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", path)
        return Path(path).read_text()

    report = diagnose(["cpu"], 0.05, rapl_root=str(powercap.root), read_file=root_only)
    assert not report.rapl["ok"]
    assert "CVE-2020-8694" in report.rapl["why"]
    assert "chmod o+r" in report.rapl["fix"]
    (dev,) = report.devices
    assert dev.kind == "estimate" and not dev.measured
    assert dev.verdict.startswith("cpu: estimated from utilisation, not measured")
    assert report.exit_code == 1


def test_estimate_only_machine_exits_1() -> None:
    report = diagnose(["cpu"], 0.05, rapl_root=NO_RAPL)
    assert [d.kind for d in report.devices] == ["estimate"]
    assert "modprobe" in report.rapl["fix"] or "powercap" in report.rapl["fix"]
    assert report.exit_code == 1


# ------------------------------------------------------------------------------- JSON, CLI
def test_json_round_trip() -> None:
    report = run(sim([gpu(mig_mode=1, mig_uuids=MIG_UUIDS), gpu(UUIDS[1], buffer=False)]))
    data = json.loads(json.dumps(report_to_json(report), allow_nan=False))
    assert data["format"] == doctor.DOCTOR_FORMAT and data["exit_code"] == 0
    assert {"devices", "nvml", "rapl", "seconds", "load", "host", "generated"} <= set(data)
    reader = data["devices"][0]["readers"][0]
    assert set(reader) == {
        "name",
        "works",
        "why",
        "fix",
        "reads",
        "cost_ms_p50",
        "cost_ms_p99",
        "update_ms",
        "phase_jitter_ms",
        "notes",
    }
    back = report_from_json(data)
    assert back == report
    with pytest.raises(ValueError, match="not a"):
        report_from_json({"format": "something else"})


def test_cli_subcommand_writes_json_and_exits_by_what_is_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = fk.FakeNvml([gpu()], clock=fk.RealClock())
    monkeypatch.setitem(sys.modules, "pynvml", fake.module())
    out = tmp_path / "doc" / "doctor.json"
    assert cli_main(["doctor", "--seconds", "0.3", "--json", str(out), "--devices", "0"]) == 0
    text = capsys.readouterr().out
    assert "verdict gpu0: counter + buffer" in text
    data = json.loads(out.read_text())
    assert data["devices"][0]["name"] == "gpu0" and data["exit_code"] == 0
    assert cli_main(["doctor", "--seconds", "0"]) == 2


def test_load_on_a_cpu_machine_says_it_needs_cuda(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the load (tests/test_doctor_gpu.py)")
    out = tmp_path / "d.json"
    code = doctor.main(["--devices", "cpu", "--seconds", "0.05", "--load", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 1 and "load: not run: --load needs CUDA" in text
    assert json.loads(out.read_text())["load"]["ran"] is False


def test_python_dash_m_on_this_machine(tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_watt.doctor", "--seconds", "0.1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    data = json.loads(out.read_text())
    assert proc.returncode == data["exit_code"], proc.stderr
    assert "verdict" in proc.stdout


# ------------------------------------------------------------------------------- analysis
def test_update_period_and_change_instants() -> None:
    series = [(0.004 * k, (0.004 * k + 0.037) // 0.1) for k in range(500)]
    period, jitter = update_period(change_instants(series))
    assert period == pytest.approx(0.1, abs=0.002)
    assert jitter is not None and jitter <= 0.004
    assert update_period([]) == (None, None)


def test_analyse_load_on_the_h200_square_wave() -> None:
    """The bundled trace read its counter in a tight loop: it is the truth; the "meter" trace
    keeps one counter read per 100 ms, as the live meter does."""
    trace = load_trace(bundled_trace("h200-square-wave"))
    truth = [(r.t, r.value) for r in trace.samples if r.kind == "counter_J"]
    kept, last = [], -math.inf
    for r in trace.samples:
        if r.kind != "counter_J" or r.t - last >= 0.1:
            kept.append(r)
            last = r.t if r.kind == "counter_J" else last
    bursts, start = [], None
    for e in trace.steps:
        if e.phase == "load" and e.edge == "start":
            start = e.t
        elif e.phase == "load" and e.edge == "end" and start is not None:
            bursts.append((start, e.t))
    result = analyse_load(Trace(kept, trace.steps, trace.meta), "gpu0", truth, bursts)
    assert result["counter_updates"] > 150 and result["window_s"] > 15
    assert abs(result["fused_error_pct"]) < 0.1
    assert set(result["readers"]) == {"counter_J", "buffer_W", "instant_W", "average_W"}
    assert abs(result["readers"]["buffer_W"]["error_pct"]) < 3.0
    assert len(result["bursts"]) == len(bursts)
    assert result["burst_median_abs_error_pct"] is not None
    assert result["readers"]["buffer_W"]["burst_median_abs_error_pct"] < 5.0
    with pytest.raises(ValueError, match="fewer than 3"):
        analyse_load(trace, "gpu0", truth[:2], bursts)


class _Sink:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def test_run_load_plumbing_with_the_fake_driver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--load end to end without CUDA: the fake GPU draws a square wave in real time, a busy
    wait stands in for the matmuls. Checks the recording, the poll trace and the analysis."""
    power = fk.SyntheticPower(lambda t: 450.0 if (t % 0.6) < 0.3 else 120.0)
    fake = fk.FakeNvml([fk.FakeGpu(UUIDS[0], power)], clock=fk.RealClock())
    monkeypatch.setitem(sys.modules, "pynvml", fake.module())

    def busy(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.001)

    prefix = str(tmp_path / "load")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = doctor.run_load(
            prefix,
            burst_s=0.6,
            idle_s=0.6,
            cycles=2,
            work=busy,
            uuid_of=lambda i: fk.bare_uuid(UUIDS[0]),
        )
    assert result["trace"] == prefix and result["device"] == "gpu0"
    assert "driver power buffer" in result["describe"]
    recorded = load_trace(prefix)
    assert [e.edge for e in recorded.steps] == ["start", "end", "start", "end"]
    poll = load_trace(result["poll_trace"])
    assert {"counter_J", "instant_W", "average_W", "usage_W"} <= set(poll.kinds)
    assert result["counter_updates"] >= 15
    assert abs(result["fused_error_pct"]) < 1.0
    assert {"counter_J", "buffer_W", "instant_W (polled)", "usage_W (polled)"} <= set(
        result["readers"]
    )
    assert abs(result["readers"]["buffer_W"]["error_pct"]) < 2.0
    assert len(result["bursts"]) == 2
    report = DoctorReport(devices=[], load={"ran": True, **result})
    assert "fused" in print_report(report, file=_Sink())
    json.dumps(report_to_json(report), allow_nan=False)


def test_a_buffer_without_samples_is_reported_stale() -> None:
    class NoSamples(fk.SyntheticPower):
        def samples(self, s: float) -> list[tuple[float, float]]:
            return []

    fake = sim([gpu()])
    fake.gpus[0].power = NoSamples(lambda t: 200.0 + 30.0 * math.sin(3.0 * t))
    report = run(fake)
    buffer = report.devices[0].reader("buffer")
    assert buffer is not None and not buffer.works and "stale" in buffer.why
    assert "counter + power fields" in verdict(report)
