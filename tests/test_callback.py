"""WattCallback in real Trainer.fit runs on the CPU, fed by replayed real GPU traces."""

from __future__ import annotations

import csv
import itertools
import json
import math
import threading

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyClassifier, csv_trainer, rows_on_any_machine
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_watt import schema as keys
from lightning_watt.energy.trace import load_trace
from lightning_watt.integration.callback import J_PER_KWH, WattCallback


def _trainer(tmp_path, callbacks, **kw) -> pl.Trainer:
    return csv_trainer(tmp_path, callbacks, **kw)


def _csv_keys(trainer: pl.Trainer) -> set[str]:
    with open(f"{trainer.log_dir}/metrics.csv") as fh:
        return set(fh.readline().strip().split(","))


def test_fit_logs_keys_and_phases_add_up_to_total(tmp_path):
    cb = WattCallback(replay="h200-mlp-stall", score_from="val_acc")
    trainer = _trainer(tmp_path, [cb])
    trainer.fit(TinyClassifier(step_sleep=0.005))

    keys = _csv_keys(trainer)
    for key in (
        "energy_kWh",
        "power_W",
        "step_J",
        "epoch_train_J",
        "epoch_val_J",
        "epoch_gap_J",
        "epoch_kWh",
        "gqi",
    ):
        assert f"watt/{key}" in keys
    summary = json.loads((tmp_path / "run" / "version_0" / "watt_summary.json").read_text())
    assert summary["format"] == "lightning-watt summary v1"
    assert summary["replay"] == "h200-mlp-stall"
    assert summary["steps"]["train"] == trainer.global_step
    # Conservation: steps and gaps add up exactly to the devices' total.
    assert math.isclose(sum(summary["phases_J"].values()), summary["energy_J"], rel_tol=1e-9)
    assert summary["energy_J"] > 0
    # The replayed H200 draws at least its idle power (>60 W) the whole time.
    assert summary["mean_power_W"] > 60
    epochs = summary["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert math.isclose(epochs[-1]["energy_kWh"], summary["energy_kWh"], rel_tol=1e-9)
    assert "val_acc" in epochs[-1]["metrics"]
    # The live cumulative energy never steps back, even where held-power estimates ran high.
    with open(f"{trainer.log_dir}/metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    logged = [float(r["watt/energy_kWh"]) for r in rows if r["watt/energy_kWh"]]
    assert len(logged) >= rows_on_any_machine(2 * 16 // 4)  # 8 ticks: at least 4 at any pace
    assert all(b >= a for a, b in itertools.pairwise(logged))


def test_recorded_trace_matches_the_summary(tmp_path):
    cb = WattCallback(replay="h200-mlp-stall")
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(TinyClassifier(step_sleep=0.005))
    trace = load_trace(f"{trainer.log_dir}/watt_trace")
    phases = {e.phase for e in trace.steps}
    assert {"train", "val"} <= phases
    starts = [e for e in trace.steps if e.phase == "train" and e.edge == "start"]
    assert len(starts) == trainer.global_step
    energy = trace.timeline().energy_between(*trace.fit_window)["gpu0"]
    assert energy == pytest.approx(cb.last_summary["energy_J"], rel=0.005)


def test_batch_hooks_never_synchronise(tmp_path, monkeypatch):
    calls = []

    def forbidden(name):
        def _raise(*a, **k):
            calls.append(name)
            raise AssertionError(f"{name} called in a batch hook")

        return _raise

    cb = WattCallback(replay="h200-mlp-stall", record=False, summary=False)
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    model = TinyClassifier()
    trainer.strategy.connect(model)
    cb.setup(trainer, model, "fit")
    monkeypatch.setattr(torch.cuda, "synchronize", forbidden("torch.cuda.synchronize"))
    monkeypatch.setattr(torch.Tensor, "item", forbidden("Tensor.item"))
    monkeypatch.setattr(torch.cuda.Event, "synchronize", forbidden("Event.synchronize"))
    for i in range(50):
        cb.on_train_batch_start(trainer, model, None, i)
        cb.on_train_batch_end(trainer, model, None, None, i)
        cb.on_validation_batch_start(trainer, model, None, i)
        cb.on_validation_batch_end(trainer, model, None, None, i)
    monkeypatch.undo()
    cb.teardown(trainer, model, "fit")
    assert calls == []


def test_resume_from_checkpoint_counts_each_segment_once(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = WattCallback(replay="h200-mlp-stall", summary=True)
    trainer = _trainer(tmp_path, [first, ckpt], max_epochs=1)
    trainer.fit(TinyClassifier(step_sleep=0.005))
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    state = next(v for k, v in saved["callbacks"].items() if "WattCallback" in k)
    # Saved mid-run: measured energy plus at most ~0.5 s of held power not yet read back.
    assert 0 < state["energy_J"] <= first.last_summary["energy_J"] * 1.3

    second = WattCallback(replay="h200-mlp-stall")
    trainer2 = _trainer(tmp_path, [second], max_epochs=2)
    trainer2.fit(TinyClassifier(step_sleep=0.005), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    s2 = second.last_summary
    assert s2["energy_J"] == pytest.approx(state["energy_J"] + s2["segment_energy_J"], rel=1e-9)
    assert s2["steps"]["train"] == state["steps"]["train"] + (trainer2.global_step - 16)
    assert math.isclose(sum(s2["phases_J"].values()), s2["energy_J"], rel_tol=1e-9)
    # Epoch rows of both segments survive, each counted once, and they add up to the total.
    rows = s2["epochs"]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[0]["train_steps"] == 16 and rows[1]["train_steps"] == 16
    assert rows[0]["train_J"] == pytest.approx(state["epochs"][0]["train"], rel=1e-9)
    assert rows[-1]["energy_kWh"] * J_PER_KWH == pytest.approx(s2["energy_J"], rel=1e-9)


def test_lone_validate_is_measured(tmp_path):
    cb = WattCallback(replay="h100-mlp")
    trainer = _trainer(tmp_path, [cb])
    trainer.validate(TinyClassifier(), verbose=False)
    assert cb.last_summary["stage"] == "validate"
    assert cb.last_summary["steps"]["val"] == 4
    assert cb.last_summary["energy_J"] > 0


def test_meter_thread_stops_on_exception(tmp_path):
    class Boom(TinyClassifier):
        def training_step(self, batch, batch_idx):
            if batch_idx == 3:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    cb = WattCallback(replay="h200-mlp-stall")
    trainer = _trainer(tmp_path, [cb])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Boom())
    import threading

    assert not [t for t in threading.enumerate() if t.name == "lightning-watt-meter"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"log_every_n_steps": 0}, "log_every_n_steps"),
        ({"replay": "no-such-trace"}, "replay"),
        ({"replay_speed": 0}, "replay_speed"),
        ({"form": "exact"}, "form"),
        ({"alpha": -1}, "alpha"),
        ({"beta": 0}, "beta"),
        ({"target_accuracy": 90, "score_from": "val_acc"}, "percentage"),
        ({"target_accuracy": 0.9}, "score_from"),
        ({"sources": ["nvml"]}, "sources"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WattCallback(**kwargs)


def test_no_hardware_still_trains(tmp_path):
    cb = WattCallback(sources=[])
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    with pytest.warns(UserWarning, match="nothing to measure"):
        trainer.fit(TinyClassifier())
    assert cb.last_summary["energy_J"] == 0.0


def test_carbon_and_cost_are_logged_and_summarised(tmp_path):
    cb = WattCallback(
        replay="h200-mlp-stall", carbon_intensity=400.0, pue=1.2, price_per_kwh=0.3, currency="EUR"
    )
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(TinyClassifier(step_sleep=0.005))
    assert {"watt/co2e_kg", "watt/cost"} <= _csv_keys(trainer)
    s = cb.last_summary
    assert s["co2e_kg"] == pytest.approx(s["energy_kWh"] * 1.2 * 0.4, rel=1e-9)
    assert s["cost"] == pytest.approx(s["energy_kWh"] * 1.2 * 0.3, rel=1e-9)
    assert s["currency"] == "EUR"


def test_cpu_estimate_is_included_and_labelled(tmp_path):
    from lightning_watt.sources.estimate import EstimateSource

    cb = WattCallback(sources=[EstimateSource(cpu_tdp_w=50.0, utilisation=lambda: 0.5)])
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(TinyClassifier(step_sleep=0.005))
    s = cb.last_summary
    assert s["estimated"] is True
    # idle 15 W + 0.5 x 35 W = 32.5 W; the first estimate needs one utilisation interval
    # (0.25 s), which is reported as a gap before the first reading, so a short run averages less.
    assert 0.3 * 32.5 < s["mean_power_W"] <= 32.5 * 1.01
    assert {d["name"] for d in s["devices"]} == {"cpu"}
    assert math.isclose(sum(s["phases_J"].values()), s["energy_J"], rel_tol=1e-9)


def test_accuracy_logged_in_percent_warns_and_never_stops_the_fit(tmp_path):
    class Percent(TinyClassifier):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_acc", 100 * (self.net(x).argmax(-1) == y).float().mean(), on_epoch=True)

    cb = WattCallback(replay="h200-mlp-stall", score_from="val_acc", record=False)
    trainer = _trainer(tmp_path, [cb], max_epochs=2)
    with pytest.warns(UserWarning, match="percentage"):
        trainer.fit(Percent())
    assert trainer.current_epoch == 2
    assert math.isnan(float(trainer.callback_metrics["watt/gqi"]))


def _bar_trainer(tmp_path, callbacks, log_every_n_steps: int) -> pl.Trainer:
    """Two epochs of 16 steps with the progress bar on and no logger."""
    return pl.Trainer(
        default_root_dir=tmp_path,
        callbacks=callbacks,
        logger=False,
        max_epochs=2,
        log_every_n_steps=log_every_n_steps,
        enable_progress_bar=True,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
    )


def test_no_per_step_tensor_reads_with_the_progress_bar_on(tmp_path, monkeypatch):
    """On a GPU every Tensor.item() on a logged value waits for the GPU: the callback may read
    tensors at its log ticks only, not on every step (counted here on the CPU)."""
    counts = {}
    real_item = torch.Tensor.item

    def counting_item(self):
        counts["n"] = counts.get("n", 0) + 1
        return real_item(self)

    def fit(callbacks) -> int:
        counts["n"] = 0
        trainer = _bar_trainer(tmp_path, callbacks, log_every_n_steps=8)
        monkeypatch.setattr(torch.Tensor, "item", counting_item)
        trainer.fit(TinyClassifier())
        monkeypatch.setattr(torch.Tensor, "item", real_item)
        return counts["n"]

    baseline = fit([])
    with_watt = fit([WattCallback(replay="h200-mlp-stall", record=False, summary=False)])
    steps, ticks = 32, 4
    assert with_watt - baseline <= 3 * ticks, (baseline, with_watt)
    assert with_watt - baseline < steps


class _BarAndMonitorSpy(pl.Callback):
    """After the energy callback, at every train step: our numbers must be in the progress bar
    and in ``callback_metrics``; every 5th step Lightning's dicts are replaced, as its
    ``reset_metrics`` does."""

    def __init__(self) -> None:
        self.checked = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        connector = trainer._logger_connector
        assert {keys.BAR_POWER, keys.BAR_ENERGY} <= connector._progress_bar_metrics.keys()
        assert "watt/energy_kWh" in connector._callback_metrics
        self.checked += 1
        if trainer.global_step % 5 == 0:
            connector._progress_bar_metrics = {}
            connector._callback_metrics = {}


def test_rows_repeating_the_last_reach_a_replaced_bar_and_monitors(tmp_path):
    """A tick repeating the last row (no refresh in between) skips rewriting the progress bar
    and ``callback_metrics``, but not once Lightning replaced those dicts."""
    spy = _BarAndMonitorSpy()
    cb = WattCallback(replay="h200-mlp-stall", record=False, summary=False)
    trainer = _bar_trainer(tmp_path, [cb, spy], log_every_n_steps=1)
    trainer.fit(TinyClassifier())
    assert spy.checked == trainer.global_step == 32


class _MeterLockSpy:
    """The meter's lock, counting acquisitions by the training thread while ``armed``."""

    def __init__(self, lock) -> None:
        self.lock, self.armed, self.hits = lock, False, 0
        self.thread = threading.get_ident()

    def _count(self) -> None:
        if self.armed and threading.get_ident() == self.thread:
            self.hits += 1

    def __enter__(self):
        self._count()
        return self.lock.__enter__()

    def __exit__(self, *exc):
        return self.lock.__exit__(*exc)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self._count()
        return self.lock.acquire(blocking, timeout)

    def release(self) -> None:
        self.lock.release()


class _TickSpy(WattCallback):
    """Arms the spy in every log tick after the first one that reported a step."""

    def setup(self, trainer, pl_module, stage) -> None:
        super().setup(trainer, pl_module, stage)
        meter = self._books.stage.meter
        self.spy = _MeterLockSpy(meter._lock)
        meter._lock = self.spy
        self.armed_ticks = 0

    def _log_tick(self, trainer) -> None:
        armed = self._books.stage._rows.steps_reported > 0
        self.spy.armed = armed
        try:
            super()._log_tick(trainer)
        finally:
            self.spy.armed = False
        self.armed_ticks += armed


def test_a_log_tick_never_reads_the_meter_on_the_training_thread(tmp_path):
    """Issue 14: at log_every_n_steps=1 a tick hands cached numbers to the loggers; resolving,
    booking and reading energy happen on the books' own thread."""
    cb = _TickSpy(replay="h200-mlp-stall", isolation="thread")
    # Long enough (~1.5 s) for readings to reach some steps while they are booked: a step's
    # provisional energy is given once, and readings arrive up to 0.5 s after the fact.
    trainer = _trainer(tmp_path, [cb], max_epochs=3, log_every_n_steps=1, limit_val_batches=0)
    trainer.fit(TinyClassifier(step_sleep=0.02))
    assert cb.armed_ticks >= 10
    assert cb.spy.hits == 0
    with open(f"{trainer.log_dir}/metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["watt/step_J"]]
    # Rows before the first reading arrives (the replay's, like NVML's, come up to 0.5 s after
    # the fact) have 0 J: ticks log measured energy only.
    assert rows and all(float(r["watt/step_J"]) >= 0 for r in rows)
    assert sum(float(r["watt/step_J"]) for r in rows) > 0
    summary = cb.last_summary
    assert summary["steps"]["train"] == trainer.global_step
    assert math.isclose(sum(summary["phases_J"].values()), summary["energy_J"], rel_tol=1e-9)


class _RowsAndMonitors(WattCallback):
    """Records, after each tick, the row the loggers got and what ``callback_metrics`` holds
    for its keys (the tensors themselves, as a monitor would keep them)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.ticks: list[tuple[dict, int, int, dict]] = []
        self.kept: list[tuple[torch.Tensor, float]] = []

    def _deliver(self, trainer, keyed, step, epoch, save) -> None:
        super()._deliver(trainer, keyed, step, epoch, save)
        metrics = trainer.callback_metrics
        self.ticks.append((dict(keyed), step, epoch, {k: metrics[k] for k in keyed}))
        key = self.prefix + "energy_kWh"
        self.kept.append((metrics[key], float(metrics[key])))  # as EarlyStopping keeps its best


def test_tick_rows_reach_loggers_and_monitors_alike(tmp_path):
    """At log_every_n_steps=1 a row carries the step and epoch Lightning logs at; monitors see
    exactly the row's values; a value that did not change keeps its tensor and no tensor a
    monitor kept ever changes. Steps faster than the books' refreshes: a row that would repeat
    the last one is not logged, so there are fewer rows than steps, none a copy of the one
    before."""
    cb = _RowsAndMonitors(replay="h200-mlp-stall", record=False, carbon_intensity=400.0)
    trainer = _trainer(tmp_path, [cb], max_epochs=4, log_every_n_steps=1, limit_val_batches=0)
    trainer.fit(TinyClassifier(step_sleep=0.004))
    ticks = [t for t in cb.ticks if "watt/power_W" in t[0]]
    with open(f"{trainer.log_dir}/metrics.csv") as fh:
        logged = [r for r in csv.DictReader(fh) if r["watt/power_W"]]
    assert len(logged) == len(ticks)
    for (keyed, step, epoch, seen), row in zip(ticks, logged, strict=True):
        assert int(row["step"]) == step and int(row["epoch"]) == epoch
        assert all(float(row[k]) == pytest.approx(v, rel=1e-12) for k, v in keyed.items())
        assert {k: float(t) for k, t in seen.items()} == keyed
        assert all(t.dtype == torch.float64 for t in seen.values())
        assert all(isinstance(v, float) for v in keyed.values())
    steps = [step for _, step, _, _ in ticks[:-1]]  # the last: the stage's final row
    assert steps == sorted(set(steps)) and set(steps) <= set(range(trainer.global_step))
    # At least 4 tick rows at any pace (rows_on_any_machine), so 3 ``steps`` without the last.
    # Fewer than the steps while a step takes under the 25 ms refresh: 4 ms of sleep and ~2 ms
    # of Lightning here (44-49 rows of 64 with three processes sharing one core).
    assert rows_on_any_machine(64) - 1 <= len(steps) < trainer.global_step
    for (a, _, _, seen_a), (b, _, _, seen_b) in itertools.pairwise(ticks):
        for key in a.keys() & b.keys():
            assert (seen_a[key] is seen_b[key]) == (a[key] == b[key]), key
    assert all(float(t) == value for t, value in cb.kept)


class _QuickPathSpy(WattCallback):
    """Counts ticks, rows made by the books (``log_values``) and, per delivered row, whether
    rows outpaced the books' refreshes then."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.ticks = self.made = 0
        self.rows: list[tuple[dict, bool]] = []

    def setup(self, trainer, pl_module, stage) -> None:
        super().setup(trainer, pl_module, stage)
        log_values = self._books.log_values

        def counted():
            self.made += 1
            return log_values()

        self._books.log_values = counted

    def _log_tick(self, trainer) -> None:
        self.ticks += 1
        self.stage_ticks = self._books.stage._ticks + 1  # what the stage counts for this tick
        super()._log_tick(trainer)
        assert self._books.stage._ticks == self.stage_ticks

    def _deliver(self, trainer, keyed, step, epoch, save) -> None:
        self.rows.append((dict(keyed), self._books.rows_outpace_refreshes))
        super()._deliver(trainer, keyed, step, epoch, save)


@pytest.mark.parametrize("isolation", ["auto", "thread"])
def test_rows_outpacing_refreshes_repeat_nothing_and_mostly_skip_the_books(tmp_path, isolation):
    """Issue 14, log_every_n_steps=1 with steps faster than the books' refreshes: a row whose
    numbers did not move takes the quick path (the books are not asked to make one), and is
    still counted as a row by the stage (its pace decides how often the books refresh); after
    each refresh one row is logged, not a second one repeating it without its step's joules."""
    cb = _QuickPathSpy(replay="h200-mlp-stall", record=False, isolation=isolation)
    # No checkpoints: each waits up to 0.5 s for final energy, and rows judged over it are slow.
    trainer = _trainer(
        tmp_path,
        [cb],
        max_epochs=12,
        log_every_n_steps=1,
        limit_val_batches=0,
        enable_checkpointing=False,
    )
    trainer.fit(TinyClassifier(step_sleep=0.001))
    assert cb.ticks == trainer.global_step
    assert (
        0 < cb.made < cb.ticks
    )  # ~1 of 10 rows made at ~2-5 ms steps: the quick path took the rest
    step_key, energy_key, power_key = "watt/step_J", "watt/energy_kWh", "watt/power_W"
    ticked = [(keyed, busy) for keyed, busy in cb.rows if power_key in keyed]
    repeats = [
        b
        for (a, _), (b, busy) in itertools.pairwise(ticked)
        if busy
        and step_key not in b
        and b[energy_key] == a[energy_key]
        and b[power_key] == a[power_key]
    ]
    assert repeats == []
    assert any(busy for _, busy in ticked)


def test_steps_slower_than_the_refresh_get_a_row_each(tmp_path):
    """Rows no faster than the books' refreshes (steps over 25 ms) are all logged, at every
    step, as Lightning's own are."""
    cb = _RowsAndMonitors(replay="h200-mlp-stall", record=False)
    trainer = _trainer(tmp_path, [cb], max_epochs=1, log_every_n_steps=1, limit_val_batches=0)
    trainer.fit(TinyClassifier(step_sleep=0.05))
    steps = [step for keyed, step, _, _ in cb.ticks if "watt/power_W" in keyed]
    assert steps[: trainer.global_step] == list(range(trainer.global_step))
