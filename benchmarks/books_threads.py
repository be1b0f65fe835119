"""CPU time of the books' refreshes and the meter's thread per train step, without Lightning.

``overhead.py`` measures the callback inside ``Trainer.fit``, where the steps' own time and the
machine's load swamp differences of a few microseconds. This script drives an
``EnergyAccountant`` directly: a replayed H200 trace (``h200-mlp-stall``, recorded to a
temporary watt-trace unless ``--no-record``; serving the energy counter and the driver's power
buffer, what a live NVML source reads from an H200, unless ``--all-kinds``), a step marked
every ``--step-ms`` by a busy loop on the main thread (which holds the GIL as a training loop
does) and a log row read at every step (``--log-every``, default 1). Reported per step: the
CPU time of the books' refreshes (``time.thread_time`` in each; they run on the meter's thread
between its reads) and of the rest of the background threads (``/proc/self/task/<id>/schedstat``,
Linux), and of an idle refresh (no steps, every 25 ms:
cold caches, as the refresher meets them). CPU time is what other tenants of a shared machine
disturb least; run it a few times, or alternate two checkouts (``PYTHONPATH=...``), to see the
spread.

``--compare-hosts N`` measures what the threads cost a training thread that holds the GIL
throughout (a step of fixed Python work, not a paced loop): steps/s with no books, with the
refreshes on the refresher's own thread, and on the meter's thread between its reads (the
default), interleaved N times; paired ratios with their spread.

Usage::

    python benchmarks/books_threads.py                  # 6 s of 1.5 ms steps, recording on
    python benchmarks/books_threads.py --seconds 20 --no-record
    python benchmarks/books_threads.py --log-every 50      # a row every 50 steps
    python benchmarks/books_threads.py --compare-hosts 10 --seconds 2  # refreshes: which thread
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))  # run from a checkout

from lightning_watt.attribution import books as books_module
from lightning_watt.attribution.accountant import EnergyAccountant
from lightning_watt.attribution.books import StageBooks
from lightning_watt.attribution.step_clock import StepClock
from lightning_watt.energy.meter import EnergyMeter
from lightning_watt.sources.replay import LIVE_NVML_KINDS, ReplaySource

TRACE = "h200-mlp-stall"


def _thread_cpu_s(native_id: int | None) -> float:
    with open(f"/proc/self/task/{native_id}/schedstat") as fh:
        return int(fh.read().split()[0]) / 1e9


def _replay(all_kinds: bool) -> ReplaySource:
    return ReplaySource.of_fit(TRACE, kinds=None if all_kinds else LIVE_NVML_KINDS)


def _steps(
    seconds: float, step_s: float, record: bool, every: int, all_kinds: bool
) -> tuple[int, float, float]:
    """Steps marked, and the CPU seconds of the books' refreshes and of the rest of the
    background threads (the meter's reads, timeline, recording) while marking them."""
    with tempfile.TemporaryDirectory(prefix="watt-books-") as tmp:
        books = EnergyAccountant(isolation="thread")
        path = os.path.join(tmp, "run") if record else None
        books.begin("fit", EnergyMeter([_replay(all_kinds)], record=path))
        stage = books.stage
        assert stage is not None and stage._refresher is not None
        refreshes: list[float] = []
        work = stage._refresher._work

        def timed() -> object:
            c0 = time.thread_time()
            try:
                return work()
            finally:
                refreshes.append(time.thread_time() - c0)

        stage._refresher._work = timed
        time.sleep(0.2)  # the threads started
        ids = (stage._refresher._thread.native_id, stage.meter._thread.native_id)  # type: ignore[union-attr]
        cpu0 = [_thread_cpu_s(i) for i in ids]
        n, end = 0, time.perf_counter() + seconds
        due = time.perf_counter()
        while time.perf_counter() < end:
            books.mark("train", "start", n, 0)
            due += step_s
            while time.perf_counter() < due:  # the step: Python holding the GIL
                pass
            books.mark("train", "end", n, 0)
            if (n + 1) % every == 0:
                books.log_values()
            n += 1
        cpu1 = [_thread_cpu_s(i) for i in ids]
        refresh_s = sum(refreshes)
        books.finish()
    # The refreshes run on the meter's thread between its reads (on the refresher's own only
    # while the meter's is stuck): their CPU is measured in them, the meter's is the rest.
    background = cpu1[0] - cpu0[0] + cpu1[1] - cpu0[1]
    return n, refresh_s, background - refresh_s


def _python_work(n: int) -> int:
    """A training step's stand-in: pure Python, holding the GIL throughout."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def _iterations_for(step_s: float) -> int:
    n = 1000
    while True:
        t0 = time.perf_counter()
        _python_work(n)
        took = time.perf_counter() - t0
        if took > 0.01:
            return int(n * step_s / took)
        n *= 2


def _throughput(arm: str, seconds: float, n: int, every: int, all_kinds: bool) -> float:
    """Steps a second of a fixed amount of Python work each, marked and logged (every
    ``every`` steps) in a stage whose refreshes run on the meter's thread (``arm``
    ``"meter"``) or on the refresher's own (``"own"``); ``"none"``: no books at all."""
    with tempfile.TemporaryDirectory(prefix="watt-books-") as tmp:
        books = None
        if arm != "none":
            books_module.REFRESH_ON_METER = arm == "meter"
            books = EnergyAccountant(isolation="thread")
            books.begin("fit", EnergyMeter([_replay(all_kinds)], record=os.path.join(tmp, "run")))
            time.sleep(0.2)  # the threads started
        steps, t0 = 0, time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            if books is not None:
                books.mark("train", "start", steps, 0)
            _python_work(n)
            if books is not None:
                books.mark("train", "end", steps, 0)
                if (steps + 1) % every == 0:
                    books.log_values()
            steps += 1
        rate = steps / (time.perf_counter() - t0)
        if books is not None:
            books.finish()
        books_module.REFRESH_ON_METER = True
    return rate


def _compare_hosts(args: argparse.Namespace) -> None:
    """Interleaved runs of the three arms of :func:`_throughput`; paired ratios to ``none``."""
    n = _iterations_for(args.step_ms / 1e3)
    arms = ("none", "own", "meter")
    rates: dict[str, list[float]] = {a: [] for a in arms}
    for rep in range(args.compare_hosts):
        for arm in arms if rep % 2 == 0 else arms[::-1]:
            rates[arm].append(_throughput(arm, args.seconds, n, args.log_every, args.all_kinds))
    none = rates["none"]
    spread = (max(none) - min(none)) / statistics.median(none)
    print(
        f"steps of {args.step_ms} ms of Python work (holding the GIL), log_every_n_steps="
        f"{args.log_every}, recording on, {args.compare_hosts} interleaved repetitions of "
        f"{args.seconds} s; no books: {statistics.median(none):.0f} steps/s (spread "
        f"{100 * spread:.0f} %)"
    )
    for arm, label in (("own", "refreshes on their own thread"), ("meter", "on the meter's")):
        ratios = [r / o for r, o in zip(rates[arm], none, strict=True)]
        print(
            f"  {label:30} {statistics.median(ratios):.3f}x of no books "
            f"[{min(ratios):.3f}, {max(ratios):.3f}]"
        )


def _idle_refresh_s(seconds: float, all_kinds: bool) -> float:
    """Median CPU seconds of a background refresh with no steps, 25 ms apart."""
    meter = EnergyMeter([_replay(all_kinds)]).start()
    stage = StageBooks(meter, StepClock(meter.now, device=None), refresh_s=None)
    costs = []
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            time.sleep(0.025)
            t0 = time.thread_time()
            stage._refresh_in_background()
            costs.append(time.thread_time() - t0)
    finally:
        stage.abort()
    return statistics.median(costs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of steps")
    parser.add_argument("--step-ms", type=float, default=1.5, help="step time (busy loop)")
    parser.add_argument("--no-record", action="store_true", help="no watt-trace written")
    parser.add_argument("--log-every", type=int, default=1, help="steps between log rows")
    parser.add_argument(
        "--all-kinds", action="store_true", help="replay the recorded power fields too"
    )
    parser.add_argument(
        "--compare-hosts",
        type=int,
        default=0,
        metavar="REPEATS",
        help="instead: the steps/s of GIL-holding steps with no books, with the refreshes on "
        "their own thread and on the meter's (interleaved, this many repetitions of --seconds)",
    )
    args = parser.parse_args()
    if not args.seconds > 0 or not args.step_ms > 0 or args.log_every < 1:
        parser.error("--seconds, --step-ms and --log-every must be positive")
    if args.compare_hosts < 0:
        parser.error("--compare-hosts must be a number of repetitions (0: off)")
    if args.compare_hosts:
        _compare_hosts(args)
        return
    n, refresher_s, meter_s = _steps(
        args.seconds, args.step_ms / 1e3, not args.no_record, args.log_every, args.all_kinds
    )
    us = 1e6
    print(
        f"{n} steps of {args.step_ms} ms, log_every_n_steps={args.log_every}, recording "
        f"{'off' if args.no_record else 'on'}"
        f"{', every recorded kind' if args.all_kinds else ''}; CPU per step: books' refreshes "
        f"{us * refresher_s / n:.1f} µs, meter (the rest) {us * meter_s / n:.1f} µs"
    )
    idle = _idle_refresh_s(2.0, args.all_kinds)
    print(f"an idle refresh (no steps, 25 ms apart): {us * idle:.0f} µs CPU, median")


if __name__ == "__main__":
    main()
