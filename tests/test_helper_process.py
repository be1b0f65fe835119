"""The meter and the books in a helper process (issue 14): the same books as on threads, the
training thread only marks edges and reads snapshots, and a lost helper never ends training."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch

from lightning_watt import EnergyMeter, ReplaySource, WattCallback, bundled_trace
from lightning_watt.attribution.accountant import EnergyAccountant
from lightning_watt.attribution.books import StageBooks
from lightning_watt.attribution.helper_process import (
    FLUSH_S,
    ProcessBooks,
    helper_unavailable,
)
from lightning_watt.attribution.summary import render_summary
from lightning_watt.energy.readings import DeviceInfo, Reading
from lightning_watt.energy.trace import load_trace
from lightning_watt.sources.base import Channel, EnergySource
from lightning_watt.sources.estimate import EstimateSource
from tests.helpers import TinyClassifier, blobs, csv_trainer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork: Linux only")


def _replay() -> ReplaySource:
    return ReplaySource(bundled_trace("h200-mlp-stall"), start=10.0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not reaped by a parent that is not us) counts as ended.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_where_the_helper_can_run():
    assert helper_unavailable(EnergyMeter([_replay()]), host_time=True) is None
    assert "CUDA" in (helper_unavailable(EnergyMeter([_replay()]), host_time=False) or "")
    started = EnergyMeter([_replay()]).start()
    try:
        assert "started" in (helper_unavailable(started, host_time=True) or "")
    finally:
        started.stop()
    # This process's own CPU time would be the helper's there.
    own = EnergyMeter([EstimateSource(cpu_tdp_w=100.0, utilisation="process")])
    assert helper_unavailable(own, host_time=True) is not None
    system = EnergyMeter([EstimateSource(cpu_tdp_w=100.0, utilisation="system")])
    assert helper_unavailable(system, host_time=True) is None
    assert helper_unavailable(EnergyMeter([]), host_time=True) is not None


def test_isolation_is_checked_when_built():
    with pytest.raises(ValueError, match="isolation must be one of 'auto', 'process', 'thread'"):
        WattCallback(isolation="threads")
    with pytest.raises(ValueError, match="isolation"):
        EnergyAccountant(isolation="fork")


def test_edges_marked_in_bursts_and_pauses_are_all_booked_once():
    """Edges reach the helper in writes every ``FLUSH_S`` with a watermark; edges held back
    (no mark for a while after them) are still booked, at their own times, and the ledger
    stays exactly additive."""
    books = ProcessBooks.open(EnergyMeter([_replay()]))
    books.begin({"gpu0": 1.0})
    n = 0
    for burst in range(6):
        for _ in range(40):
            books.mark("train", "start", n, epoch=burst // 3)
            time.sleep(0.0005)
            books.mark("train", "end", n, epoch=burst // 3)
            n += 1
        # One edge left unwritten for longer than a flush: the helper must not finalise past it.
        books.mark("val", "start", burst, epoch=burst // 3)
        time.sleep(3 * FLUSH_S)
        books.mark("val", "end", burst, epoch=burst // 3)
        books.tick()
    record = books.finish(epoch=1)
    totals = record.totals
    assert totals.steps["train"] == n
    assert totals.steps["val"] == 6
    assert totals.epoch_steps == {0: 120, 1: 120}
    assert math.isclose(sum(totals.phases_J.values()), totals.energy_J, rel_tol=1e-12)
    assert totals.phases_J["val"] > 0  # the held-back spans got their energy
    assert books.helper_exit_code == 0


def test_process_and_thread_books_agree_on_a_fit(tmp_path):
    """The same fit measured both ways: every step counted, the same devices and methods, and
    each energy near what the replayed recording holds over the fit's span (the two fits take
    different times over a bursty recording, so they are compared with it, not each other)."""
    seen: dict[str, type] = {}

    class Spy(WattCallback):
        def on_train_epoch_start(self, trainer, pl_module):
            super().on_train_epoch_start(trainer, pl_module)
            seen[self.isolation] = type(self._books.stage)

    summaries = {}
    for isolation in ("process", "thread"):
        cb = Spy(replay="h200-mlp-stall", isolation=isolation, log_every_n_steps=1)
        trainer = csv_trainer(tmp_path / isolation, [cb], max_epochs=2)
        trainer.fit(TinyClassifier(step_sleep=0.01))
        summaries[isolation] = cb.last_summary
    assert seen == {"process": ProcessBooks, "thread": StageBooks}
    proc, thread = summaries["process"], summaries["thread"]
    assert proc is not None and thread is not None
    # The summary says where the meter ran, in the JSON and in its table.
    assert proc["measured_in"] == {"rank0": "a helper process"}
    assert thread["measured_in"] == {"rank0": "threads of the training process"}
    assert "a helper process" in render_summary(proc)
    assert proc["steps"] == thread["steps"]
    assert [d["method"] for d in proc["devices"]] == [d["method"] for d in thread["devices"]]
    for summary in (proc, thread):
        assert math.isclose(sum(summary["phases_J"].values()), summary["energy_J"], rel_tol=1e-9)
    trace = load_trace(bundled_trace("h200-mlp-stall"))
    timeline = trace.timeline()
    start = float(trace.meta["fit_start"])
    for summary in (proc, thread):
        truth = sum(timeline.energy_between(start, start + summary["duration_s"]).values())
        assert summary["energy_J"] == pytest.approx(truth, rel=0.15)


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_log_rows_carry_measured_step_energy_both_ways(tmp_path, isolation):
    """Rows from the helper's snapshots read like rows on threads; and on either, a step
    that ends before the first reading waits for it instead of being logged at 0 J."""
    cb = WattCallback(
        replay="h200-mlp-stall", record=False, log_every_n_steps=1, isolation=isolation
    )
    trainer = csv_trainer(tmp_path, [cb], max_epochs=1, log_every_n_steps=1)
    trainer.fit(TinyClassifier(step_sleep=0.02))
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    kwh = [float(r["watt/energy_kWh"]) for r in rows if r.get("watt/energy_kWh")]
    step_j = [float(r["watt/step_J"]) for r in rows if r.get("watt/step_J")]
    assert len(kwh) >= 8 and kwh == sorted(kwh) and kwh[-1] > 0
    # 16 steps of 20 ms on a ~100-350 W replay: each a few joules (steps that end before the
    # first reading wait for it: never logged at 0 J).
    assert step_j and all(0 < j < 50 for j in step_j)


class _WarningSource(EnergySource):
    """A fake source (safe in a forked helper) whose channel fails every read: the meter warns
    about it in the helper, and the warning must reach the training process."""

    name = "failing"
    helper_safe = True

    def open(self, clock):
        self._clock = clock

    def devices(self):
        return [DeviceInfo("fake0", kind="cpu", uuid="fake:failing")]

    def channels(self):
        def read() -> list[Reading]:
            raise OSError("fake read failure")

        return [Channel("fake0/power_W", 0.02, read, ("fake0",))]


def test_the_helpers_warnings_are_raised_in_the_training_process():
    books = EnergyAccountant(isolation="process")
    with pytest.warns(RuntimeWarning, match="fake0"):
        books.begin("fit", EnergyMeter([_WarningSource(), _replay()]))
        assert isinstance(books.stage, ProcessBooks)
        time.sleep(0.4)
        books.mark("train", "start", 0, epoch=0)
        books.mark("train", "end", 0, epoch=0)
        summary = books.finish()
    assert summary["steps"] == {"train": 1}


def test_process_isolation_that_cannot_run_warns_once_and_uses_threads():
    books = EnergyAccountant(isolation="process")
    meter = EnergyMeter([EstimateSource(cpu_tdp_w=100.0, utilisation="process")])
    with pytest.warns(RuntimeWarning, match="isolation='process' is not possible here"):
        books.begin("fit", meter)
    assert isinstance(books.stage, StageBooks)
    books.finish()


def test_a_killed_helper_warns_once_and_the_fit_goes_on(tmp_path):
    """A measurement failure never ends training: the helper killed mid-fit leaves the rows
    at its last numbers, the summary marks the rest as a gap, the fit finishes."""

    class Killer(WattCallback):
        killed = False

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            if trainer.global_step == 5 and not self.killed:
                stage = self._books.stage
                assert isinstance(stage, ProcessBooks)
                os.kill(stage._pid, signal.SIGKILL)
                Killer.killed = True

    cb = Killer(replay="h200-mlp-stall", log_every_n_steps=1)
    trainer = csv_trainer(tmp_path, [cb], max_epochs=2, log_every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyClassifier(step_sleep=0.005))
    lost = [w for w in caught if "helper process was lost" in str(w.message)]
    assert len(lost) == 1
    assert trainer.current_epoch == 2  # the fit ran to its end
    summary = cb.last_summary
    assert summary is not None
    # (device, start, end, reason)
    assert any("helper process was lost" in str(g[3]) for g in summary["gaps"])
    assert summary["measured_in"] == {"rank0": "a helper process"}


def test_the_helper_ends_when_the_training_process_dies(tmp_path):
    """No orphan: a training process killed without ending its stage takes its helper with it
    (the helper sees the socket close) and the recording is closed."""
    script = textwrap.dedent(
        f"""
        import os, time
        from lightning_watt import EnergyMeter, ReplaySource, bundled_trace
        from lightning_watt.attribution.helper_process import ProcessBooks
        meter = EnergyMeter([ReplaySource(bundled_trace("h200-mlp-stall"), start=10.0)],
                            record={str(tmp_path / "trace")!r})
        books = ProcessBooks.open(meter)
        books.begin({{"gpu0": 1.0}})
        books.mark("train", "start", 0, 0)
        print(books._pid, flush=True)
        time.sleep(0.5)
        os._exit(3)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=os.getcwd()
    )
    assert proc.returncode == 3, proc.stderr
    helper = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(helper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(helper)
    assert (tmp_path / "trace.samples.csv.gz").exists() or list(tmp_path.glob("trace*"))


def _private_mb(pid: int) -> float:
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024


class _BigLinear(TinyClassifier):
    """64 MB of CPU parameters, every one written by each SGD step."""

    def __init__(self) -> None:
        super().__init__()
        self.big = torch.nn.Linear(4096, 4096, bias=False)

    def training_step(self, batch, batch_idx):
        x, _ = batch
        return super().training_step(batch, batch_idx) + 1e-6 * self.big(x.repeat(1, 512)).sum()


def test_the_helper_does_not_keep_a_copy_of_the_model_training_writes(tmp_path):
    """After the fork, every page the training process writes would leave its old copy to
    the helper; the model's parameters are released in the helper instead (MADV_DONTNEED)."""
    seen: dict[str, float] = {}

    class Probe(WattCallback):
        def on_train_end(self, trainer, pl_module):
            stage = self._books.stage
            assert isinstance(stage, ProcessBooks)
            seen["private_mb"] = _private_mb(stage._pid)
            super().on_train_end(trainer, pl_module)

    cb = Probe(replay="h200-mlp-stall", record=False, summary=False)
    trainer = csv_trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=6, limit_val_batches=0)
    trainer.fit(_BigLinear())
    # 64 MB of parameters, each written 6 times: the helper keeps none of them.
    assert seen["private_mb"] < 40, seen

    # Without the release the same writes leave their old pages to the helper.
    books = EnergyAccountant(isolation="process")
    weights = torch.ones(16 << 20)  # 64 MB, every page written before the fork
    books.begin("fit", EnergyMeter([_replay()]))
    weights += 1.0
    kept = _private_mb(books.stage._pid)  # type: ignore[union-attr]
    books.finish()
    assert kept > 60, kept


class _Workers(TinyClassifier):
    """Its loaders fork two worker processes each, after the helper was forked."""

    def train_dataloader(self):
        return torch.utils.data.DataLoader(blobs(256, 0), batch_size=16, num_workers=2)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(blobs(128, 1), batch_size=32, num_workers=2)

    def test_step(self, batch, batch_idx):
        return self.validation_step(batch, batch_idx)


def test_a_fit_whose_loaders_fork_workers_and_a_test_after_it(tmp_path):
    """DataLoader workers are forked from the training process after the helper (they inherit
    its pipe and socket ends); then ``trainer.test`` starts a second helper. Both stages are
    measured and every helper ends."""
    helpers: list[int] = []

    class Spy(WattCallback):
        def on_train_start(self, trainer, pl_module):
            super().on_train_start(trainer, pl_module)
            helpers.append(self._books.stage._pid)  # type: ignore[union-attr]

        def on_test_start(self, trainer, pl_module):
            super().on_test_start(trainer, pl_module)
            helpers.append(self._books.stage._pid)  # type: ignore[union-attr]

    cb = Spy(replay="h200-mlp-stall", record=False)
    trainer = csv_trainer(tmp_path, [cb], max_epochs=1)
    model = _Workers()
    trainer.fit(model)
    fit = cb.last_summary
    trainer.test(model, dataloaders=model.val_dataloader())
    test = cb.last_summary
    assert fit is not None and test is not None
    assert fit["steps"]["train"] == 16 and test["steps"]["test"] == 4
    assert fit["energy_J"] > 0 and test["energy_J"] > 0
    assert len(helpers) == 2 and helpers[0] != helpers[1]
    assert not any(_alive(pid) for pid in helpers)
