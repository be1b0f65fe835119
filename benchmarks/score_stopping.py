"""Where ``EarlyStopping(monitor="watt/gqi", mode="max", patience=3)`` stops, per form of the score.

A simulation, no Lightning fit: learning curves of a few families, a constant energy per epoch
scaled so that a run of ``EPOCHS`` epochs uses 0.001, 0.1, 10 or 1000 kWh, the score of each
epoch from :func:`lightning_watt.score.functional.green_quotient_index` on (accuracy, cumulative
kWh), and Lightning's early-stopping rule on it (a new best is any strictly larger value; stop
once ``patience`` epochs in a row bring none; a NaN or infinite score stops at once, as
``check_finite=True`` does). For each form, curve and scale it reports

* ``stop``: the epochs trained when early stopping stops (``-`` where the form is undefined at
  that energy: the paper's form below 1 kWh),
* ``acc%``: the accuracy at that epoch as a percentage of the curve's plateau,
* ``saved%``: the energy saved against training to the plateau (the first epoch whose noiseless
  accuracy is within 1 % of the plateau): ``1 - E(stop) / E(plateau)``; negative when it trains
  past that point.

The row ``accuracy`` is early stopping on the accuracy itself, what the score must beat; rows
marked ``*`` are designs weighed and not offered (``floor10``: the paper's form with energy
floored at 10 kWh; ``run-rel``: ``log10(1 + E / E1)`` with ``E1`` the run's own first-epoch
energy, scale-free too but a score that needs the run's history and ranks no two runs
alike). The guarded form is already ``log10(1 + E / 1 kWh)``: an explicit reference energy
moves the scale where it changes character, it does not remove it. ``noisy`` is the median over
``--seeds`` seeded noisy runs.

Usage::

    python benchmarks/score_stopping.py
    python benchmarks/score_stopping.py --alpha 2 --seeds 50
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))  # run from a checkout

from lightning_watt.score.functional import FORMS, green_quotient_index, validate_score_params

EPOCHS = 40
PATIENCE = 3
SCALES_KWH = (0.001, 0.1, 10.0, 1000.0)  # per run of EPOCHS epochs
NOISE = 0.005  # accuracy noise (standard deviation) of the noisy family


def _exp_curve(start: float, plateau: float, tau: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda t: plateau - (plateau - start) * np.exp(-t / tau)


def _second_rise(t: np.ndarray) -> np.ndarray:
    """A first plateau at 0.85, then from epoch ~16 a second rise to 0.95 (a schedule drop,
    grokking): the plateau is the second one."""
    first = 0.85 - 0.35 * np.exp(-t / 2.0)
    return first + 0.10 / (1.0 + np.exp(-(t - 18.0) / 1.5))


#: name -> (noiseless accuracy of epochs 1..EPOCHS, noisy)
CURVES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], bool]] = {
    "fast": (_exp_curve(0.5, 0.95, 1.5), False),
    "textbook": (_exp_curve(0.5, 0.95, 3.0), False),
    "slow": (_exp_curve(0.3, 0.90, 8.0), False),
    "noisy": (_exp_curve(0.5, 0.95, 3.0), True),
    "second-rise": (_second_rise, False),
}


def _candidate(name: str, alpha: float, first_kwh: float) -> Callable[[float, float], float]:
    if name == "floor10":
        return lambda acc, kwh: 10.0 * acc**alpha / math.log10(max(kwh, 10.0))
    if name == "run-rel":
        return lambda acc, kwh: 10.0 * acc**alpha / math.log10(1.0 + kwh / first_kwh)
    raise ValueError(name)


def scorer(form: str, alpha: float, first_kwh: float) -> Callable[[float, float], float]:
    """``(accuracy, cumulative kWh) -> score`` for a form, ``accuracy``, or a candidate."""
    if form == "accuracy":
        return lambda acc, kwh: acc
    if form in FORMS:
        checked = validate_score_params(alpha, 10.0, form)

        def score(acc: float, kwh: float) -> float:
            try:
                return float(green_quotient_index(acc, kwh, alpha=alpha, form=checked))
            except ValueError:  # the paper's form at or below 1 kWh: logged as NaN
                return math.nan

        return score
    return _candidate(form.rstrip("*"), alpha, first_kwh)


def early_stop(scores: list[float], patience: int = PATIENCE) -> int:
    """Epochs trained (1-based) when Lightning's EarlyStopping(mode="max") stops, or
    ``len(scores)`` when it never does."""
    best, wait = -math.inf, 0
    for epoch, value in enumerate(scores, start=1):
        if not math.isfinite(value):
            return epoch
        if value > best:
            best, wait = value, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch
    return len(scores)


def simulate(
    form: str, curve: str, run_kwh: float, alpha: float, seed: int = 0
) -> tuple[int | None, float, float]:
    """(stop epoch or None where undefined, accuracy at stop / plateau, energy saved)."""
    fn, noisy = CURVES[curve]
    t = np.arange(1, EPOCHS + 1, dtype=float)
    clean = fn(t)
    acc = clean
    if noisy:
        acc = np.clip(clean + np.random.default_rng(seed).normal(0.0, NOISE, EPOCHS), 0.0, 1.0)
    kwh = t * (run_kwh / EPOCHS)
    score = scorer(form, alpha, float(kwh[0]))
    scores = [score(float(a), float(e)) for a, e in zip(acc, kwh, strict=True)]
    stop = early_stop(scores)
    plateau = float(clean[-1])
    plateau_epoch = int(np.argmax(clean >= 0.99 * plateau)) + 1
    if not math.isfinite(scores[stop - 1]):
        return None, math.nan, math.nan
    return stop, float(acc[stop - 1]) / plateau, 1.0 - stop / plateau_epoch


def run(
    forms: list[str], alpha: float, seeds: int
) -> dict[tuple[str, str, float], tuple[int | None, float, float]]:
    results: dict[tuple[str, str, float], tuple[int | None, float, float]] = {}
    for form in forms:
        for curve, (_, noisy) in CURVES.items():
            for run_kwh in SCALES_KWH:
                draws = [
                    simulate(form, curve, run_kwh, alpha, seed)
                    for seed in range(seeds if noisy else 1)
                ]
                stops = [d[0] for d in draws]
                if any(s is None for s in stops):
                    results[form, curve, run_kwh] = (None, math.nan, math.nan)
                    continue
                results[form, curve, run_kwh] = (
                    int(statistics.median_low([s for s in stops if s is not None])),
                    statistics.median(d[1] for d in draws),
                    statistics.median(d[2] for d in draws),
                )
    return results


def _cell(result: tuple[int | None, float, float]) -> str:
    stop, frac, saved = result
    if stop is None:
        return f"{'-':>3} {'undefined':>12}"
    return f"{stop:>3} {100 * frac:>5.1f} {100 * saved:>+6.0f}"


def table(results: dict[tuple[str, str, float], tuple[int | None, float, float]]) -> str:
    forms = list(dict.fromkeys(k[0] for k in results))
    head = f"{'form':<12}{'curve':<12}" + "".join(f"| {f'{s:g} kWh/run':^16}" for s in SCALES_KWH)
    sub = f"{'':<24}" + "".join(f"| {'stop  acc% saved%':<16}" for _ in SCALES_KWH)
    lines = [head, sub, "-" * len(head)]
    for form in forms:
        for curve in CURVES:
            cells = "".join(f"| {_cell(results[form, curve, s]):<16}" for s in SCALES_KWH)
            lines.append(f"{form:<12}{curve:<12}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alpha", type=float, default=5.0, help="exponent on accuracy (5)")
    parser.add_argument("--seeds", type=int, default=25, help="noisy runs per cell (25)")
    parser.add_argument("--no-candidates", action="store_true", help="offered forms only")
    args = parser.parse_args(argv)
    forms = ["accuracy", *FORMS] + ([] if args.no_candidates else ["floor10*", "run-rel*"])
    print(
        f"EarlyStopping(patience={PATIENCE}, mode='max') on the score; {EPOCHS} epochs of "
        f"constant energy per run; alpha={args.alpha:g}; noisy: median of {args.seeds} seeds"
    )
    print(table(run(forms, args.alpha, args.seeds)))
    print("\nscale_free on the textbook curve, by alpha (the stop does not depend on the scale):")
    for alpha in (1.0, 2.0, 5.0, 10.0, 20.0):
        stop, frac, saved = simulate("scale_free", "textbook", 1.0, alpha)
        print(f"  alpha={alpha:<4g} stop {stop:>2}  acc {100 * frac:5.1f} %  saved {saved:+.0%}")


if __name__ == "__main__":
    main()
